//! A private Redis Cluster on loopback ports, for the tests that prove logstream runs
//! unchanged on one (`REDIS_URL` = a comma-separated list of node URLs).
//!
//! Six `redis-server --cluster-enabled yes` processes (three masters, three replicas)
//! in a temporary folder, joined with `redis-cli --cluster create --cluster-replicas 1`,
//! like [`crate::redis_server`] disposable and dying with their owner. The node timeout
//! is short (1 s) so a killed master is failed over within a few seconds, and a replica
//! may always take over (`cluster-replica-validity-factor 0`): the tests kill masters
//! on purpose. A replica's first copy starts at once (`repl-diskless-sync-delay 0`), and
//! [`RedisCluster::start`] returns only once every replica has it: a replica promoted
//! before its first sync would take over with no data at all. Everything else is Redis's default, `cluster-require-full-coverage`
//! included, so while a master is down and not yet replaced the whole cluster answers
//! `CLUSTERDOWN`, as a real one configured that way does.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{Guarded, free_port, wait_closed};
use crate::redis_server::RedisServerError;

/// Masters in the cluster; each gets one replica.
pub const MASTERS: usize = 3;
/// `cluster-node-timeout` (ms): how long a silent node takes to be declared failed.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// Why a cluster did not start or did not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum RedisClusterError {
    #[error(transparent)]
    Server(#[from] RedisServerError),
    #[error("redis-cli --cluster create failed: {0}")]
    Create(String),
    #[error("redis cluster: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis cluster did not get there within {what}")]
    Timeout { what: String },
}

impl From<std::io::Error> for RedisClusterError {
    fn from(e: std::io::Error) -> Self {
        Self::Server(RedisServerError::Io(e))
    }
}

/// One node of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    /// The shell command line that runs it (again, for [`RedisCluster::restart`]).
    command: String,
    guard: Option<Guarded>,
}

/// A running private Redis Cluster. Stops when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (three masters, one replica each) and waits
    /// until every node reports `cluster_state:ok` and every replica is in sync.
    ///
    /// Ports are picked free, then given to redis-server: in between, a busy test run's
    /// outgoing connections can take one, and that node never starts. Such a start is
    /// thrown away and made again on new ports, up to three times.
    pub fn start() -> Result<Self, RedisClusterError> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Err(RedisClusterError::Timeout { what }) if attempt < 3 => {
                    eprintln!("redis cluster: {what} did not come up, starting over on new ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once() -> Result<Self, RedisClusterError> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return Err(RedisServerError::NotInstalled.into());
        }
        let first = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "logstream-redis-cluster-{}-{first}",
            std::process::id()
        ));
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        for i in 0..MASTERS * 2 {
            let port = if i == 0 { first } else { free_port()? };
            let bus = free_port()?;
            let dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&dir)?;
            let command = format!(
                "redis-server --port {port} --cluster-port {bus} --bind 127.0.0.1 \
                 --cluster-enabled yes --cluster-config-file nodes.conf \
                 --cluster-node-timeout {NODE_TIMEOUT_MS} --cluster-replica-validity-factor 0 \
                 --repl-diskless-sync-delay 0 \
                 --save '' --appendonly no --dir '{dir}' --loglevel warning \
                 >>'{dir}/redis.log' 2>&1",
                dir = dir.display(),
            );
            cluster.nodes.push(Node {
                port,
                guard: Some(Guarded::spawn(&command)?),
                command,
            });
        }
        for node in &cluster.nodes {
            wait_until(
                Duration::from_secs(10),
                &format!("node {}", node.port),
                || Ok(query::<String>(node.port, &["PING"]).is_ok()),
            )?;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            return Err(RedisClusterError::Create(last.unwrap_or("").to_owned()));
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// The comma-separated node list for `REDIS_URL`: every node, so a client finds the
    /// cluster even with some of them down.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.guard.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> Result<u16, RedisClusterError> {
        self.ask(&["CLUSTER", "KEYSLOT", key])
    }

    /// The port of the master serving `slot`, as the running nodes see it (`None` while
    /// no healthy master serves it).
    pub fn master_of_slot(&self, slot: u16) -> Result<Option<u16>, RedisClusterError> {
        let nodes: String = self.ask(&["CLUSTER", "NODES"])?;
        Ok(parse_nodes(&nodes)
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|r| r.contains(&slot)))
            .map(|n| n.port))
    }

    /// The ports of the masters, as the running nodes see them.
    pub fn masters(&self) -> Result<Vec<u16>, RedisClusterError> {
        let nodes: String = self.ask(&["CLUSTER", "NODES"])?;
        Ok(parse_nodes(&nodes)
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect())
    }

    /// Kills the node on `port` with SIGKILL: a crash, no shutdown, no last words to
    /// its replica.
    pub fn kill(&mut self, port: u16) -> Result<(), RedisClusterError> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port && n.guard.is_some())
            .ok_or_else(|| RedisClusterError::Timeout {
                what: format!("a running node on port {port}"),
            })?;
        let info: String = query(port, &["INFO", "server"])?;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .map(|p| p.trim().to_owned())
            .unwrap_or_default();
        let _ = Command::new("kill").arg("-9").arg(&pid).status();
        if let Some(guard) = node.guard.take() {
            guard.stop();
        }
        wait_closed(port, Duration::from_secs(5));
        Ok(())
    }

    /// Moves `slot` to the master on port `to` the way `redis-cli --cluster reshard`
    /// does: `IMPORTING`/`MIGRATING`, `MIGRATE` every key, then `SETSLOT NODE` on every
    /// master. With `finish` false it stops after migrating the keys: the slot is then
    /// mid-migration and its old owner answers `ASK` for keys it no longer has.
    pub fn move_slot(&self, slot: u16, to: u16, finish: bool) -> Result<(), RedisClusterError> {
        let from = self.start_slot_move(slot, to)?;
        loop {
            let keys: Vec<String> = query(
                from,
                &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"],
            )?;
            if keys.is_empty() {
                break;
            }
            self.migrate_keys(from, to, &keys)?;
        }
        if finish {
            self.finish_slot_move(slot, from, to)?;
        }
        Ok(())
    }

    /// Marks `slot` as moving from its master to the master on port `to` (`IMPORTING`,
    /// `MIGRATING`); returns the old master's port. Keys then move with
    /// [`RedisCluster::migrate_keys`].
    pub fn start_slot_move(&self, slot: u16, to: u16) -> Result<u16, RedisClusterError> {
        let from = self
            .master_of_slot(slot)?
            .ok_or_else(|| RedisClusterError::Timeout {
                what: format!("a master for slot {slot}"),
            })?;
        let (from_id, to_id) = (node_id(from)?, node_id(to)?);
        let slot_s = slot.to_string();
        let _: () = query(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id])?;
        let _: () = query(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id])?;
        Ok(from)
    }

    /// `MIGRATE`s `keys` from the master on port `from` to the one on `to`.
    pub fn migrate_keys(
        &self,
        from: u16,
        to: u16,
        keys: &[String],
    ) -> Result<(), RedisClusterError> {
        let to_s = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_s, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let _: () = query(from, &args)?;
        Ok(())
    }

    /// Gives `slot` to the master on `to` for good: the new owner first, then the old
    /// one, then everyone else (as the Redis docs say).
    pub fn finish_slot_move(&self, slot: u16, from: u16, to: u16) -> Result<(), RedisClusterError> {
        let to_id = node_id(to)?;
        let slot_s = slot.to_string();
        let mut order = vec![to, from];
        order.extend(
            self.masters()?
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in order {
            let _: () = query(port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id])?;
        }
        Ok(())
    }

    /// Starts the killed node on `port` again, with its cluster configuration
    /// (`nodes.conf`) but no data: it rejoins the cluster it knew.
    pub fn restart(&mut self, port: u16) -> Result<(), RedisClusterError> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port && n.guard.is_none())
            .ok_or_else(|| RedisClusterError::Timeout {
                what: format!("a stopped node on port {port}"),
            })?;
        node.guard = Some(Guarded::spawn(&node.command)?);
        wait_until(Duration::from_secs(10), &format!("node {port}"), || {
            Ok(query::<String>(port, &["PING"]).is_ok())
        })
    }

    /// Waits until a master other than `old` serves `slot` and every running node reports
    /// `cluster_state:ok` again; returns the new master's port.
    pub fn wait_for_failover(
        &self,
        slot: u16,
        old: u16,
        limit: Duration,
    ) -> Result<u16, RedisClusterError> {
        let mut new = None;
        wait_until(limit, &format!("failover of slot {slot}"), || {
            new = self
                .master_of_slot(slot)
                .ok()
                .flatten()
                .filter(|p| *p != old);
            Ok(new.is_some() && self.all_ok())
        })?;
        new.ok_or_else(|| RedisClusterError::Timeout {
            what: "failover".into(),
        })
    }

    /// Waits until every running node reports `cluster_state:ok`, three masters serve
    /// slots and every other running node is a replica whose initial sync is done
    /// (`master_link_status:up`). A node still on its way to becoming a replica, or a
    /// replica still waiting for its first copy, would be promoted empty by a failover.
    pub fn wait_healthy(&self, limit: Duration) -> Result<(), RedisClusterError> {
        wait_until(limit, "a healthy cluster", || {
            let masters = self.masters()?;
            if !self.all_ok() || masters.len() != MASTERS {
                return Ok(false);
            }
            for port in self.live_ports() {
                if masters.contains(&port) {
                    continue;
                }
                let info: String = query(port, &["INFO", "replication"])?;
                if !(info.contains("role:slave") && info.contains("master_link_status:up")) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn all_ok(&self) -> bool {
        self.live_ports().iter().all(|&p| {
            query::<String>(p, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
        })
    }

    /// Runs a command on the first running node that answers.
    fn ask<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, RedisClusterError> {
        let mut last = None;
        for port in self.live_ports() {
            match query(port, args) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || RedisClusterError::Timeout {
                what: "a running node".into(),
            },
            RedisClusterError::Redis,
        ))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(guard) = node.guard.take() {
                guard.stop();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One private cluster for the whole process, started on first use (see
/// [`crate::redis_server::shared`]).
pub fn shared() -> Result<&'static RedisCluster, String> {
    static CLUSTER: std::sync::OnceLock<Result<RedisCluster, String>> = std::sync::OnceLock::new();
    CLUSTER
        .get_or_init(|| RedisCluster::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// One command to the node on `port`, on a short-lived connection.
fn node_id(port: u16) -> Result<String, RedisClusterError> {
    Ok(query(port, &["CLUSTER", "MYID"])?)
}

fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn)
}

fn wait_until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool, RedisClusterError>,
) -> Result<(), RedisClusterError> {
    let deadline = Instant::now() + limit;
    loop {
        if done().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(RedisClusterError::Timeout {
                what: format!("{} s: {what}", limit.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A line of `CLUSTER NODES`, the parts the tests need.
#[derive(Debug)]
struct NodeLine {
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

/// Parses `CLUSTER NODES`: `id ip:port@bus flags master-id ping pong epoch link slot…`.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let addr = fields[1].split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                    None => {
                        let n = s.parse().ok()?;
                        Some(n..=n)
                    }
                })
                .collect();
            Some(NodeLine {
                port,
                master: flags.contains(&"master"),
                failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461 5462-10922\n\
                    c 127.0.0.1:7002@17002 slave a 0 0 1 connected\n";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].master && !nodes[0].failed && nodes[0].slots == vec![0..=5460]);
        assert!(nodes[1].failed && nodes[1].slots == vec![5461..=5461, 5462..=10922]);
        assert!(!nodes[2].master && nodes[2].slots.is_empty() && nodes[2].port == 7002);
    }
}
