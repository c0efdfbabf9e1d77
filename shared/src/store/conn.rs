//! How a [`LogStore`](super::LogStore) reaches Redis: `REDIS_URL` parsed into one node
//! or a cluster's seeds, and the connection every command goes over (a
//! `ConnectionManager`, or the redis crate's cluster connection routing each command by
//! its first key).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::OnceCell;

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// How often the cluster client may retry one request (redirects, a node being
/// repaired, `TRYAGAIN`, `CLUSTERDOWN` during a failover), all within
/// [`RESPONSE_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 12;
/// The cluster client's wait between retries (ms): its defaults start above a second,
/// which would spend most of the response timeout on one wait.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (20, 400);

/// Where `REDIS_URL` points: one node, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One `redis://` or `rediss://` URL.
    Single(String),
    /// A comma-separated list of node URLs, all `redis://` or all `rediss://`. The
    /// client discovers the other nodes itself, so a few seeds are enough; a single
    /// cluster configuration endpoint (ElastiCache cluster mode) is written with a
    /// trailing comma: `rediss://clustercfg.example:6379,`.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parses `REDIS_URL`; the error is one line saying what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if !url.contains(',') {
            check_node_url(url)?;
            return Ok(Self::Single(url.to_owned()));
        }
        let mut nodes: Vec<&str> = url.split(',').map(str::trim).collect();
        // One trailing comma is allowed: a list of one seed (a configuration endpoint).
        if nodes.last() == Some(&"") {
            nodes.pop();
        }
        if nodes.is_empty() {
            return Err("a cluster list needs at least one node URL".into());
        }
        for (i, node) in nodes.iter().enumerate() {
            if node.is_empty() {
                return Err(format!("entry {} of the cluster list is empty", i + 1));
            }
            check_node_url(node).map_err(|e| format!("cluster node {} ({node:?}): {e}", i + 1))?;
        }
        let tls = nodes[0].starts_with("rediss://");
        if nodes.iter().any(|n| n.starts_with("rediss://") != tls) {
            return Err("cluster node URLs mix redis:// and rediss://; use one scheme".into());
        }
        Ok(Self::Cluster(
            nodes.into_iter().map(str::to_owned).collect(),
        ))
    }
}

fn check_node_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("must start with redis:// or rediss://".into());
    }
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } =
        client.get_connection_info().addr()
    {
        return Err("#insecure is not supported: server certificates are always checked".into());
    }
    Ok(())
}

/// A connection to Redis, single node or cluster: every method of [`LogStore`] runs
/// the same code on either.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How a [`LogStore`] reaches Redis.
// One per process (clones are few): the single-node variant's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(super) enum Backend {
    Single {
        client: redis::Client,
        conn: ConnectionManager,
    },
    Cluster(Arc<ClusterBackend>),
}

/// A cluster's seeds, its client, and the shared connection.
pub(super) struct ClusterBackend {
    pub(super) nodes: Vec<String>,
    pub(super) client: ClusterClient,
    /// Connected on first use (the cluster client connects eagerly).
    pub(super) conn: OnceCell<ClusterConnection>,
}

/// Connects `client` to its cluster: the seeds, the slot map, every node; bounded, as
/// a silent network would otherwise hold the first request for a connect timeout per
/// step.
pub(super) async fn connect_cluster(
    client: &ClusterClient,
) -> Result<ClusterConnection, RedisError> {
    tokio::time::timeout(
        CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
        client.get_async_connection(),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// A cluster client for `nodes` whose every request (redirects and retries included)
/// must be answered within `response`.
pub(super) fn cluster_client(
    nodes: &[String],
    response: Duration,
) -> Result<ClusterClient, RedisError> {
    let (min_wait, max_wait) = CLUSTER_RETRY_WAIT_MS;
    ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(min_wait)
        .max_retry_wait(max_wait)
        .build()
}

/// Installs the process-wide rustls crypto provider that `rediss://` (and HTTPS)
/// connections use. Explicit, because a function built alone may not get one through
/// another crate's features, and then TLS would panic only in deployment.
pub fn install_tls_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
