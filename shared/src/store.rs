//! `LogStore`: every Redis operation logstream performs, over one multiplexed
//! connection per process (per node, in a cluster).
//!
//! Each write is one round trip and atomic: a Lua script checks the job's state and
//! appends the whole batch (or nothing), so a failed or retried request never leaves
//! half a batch, and two racing terminal updates cannot both win. Reads that need the
//! job's metadata and its entries send both commands in one pipeline.
//!
//! **Single node or cluster.** `REDIS_URL` is one node URL, or a comma-separated list of
//! node URLs for Redis Cluster (see [`RedisTarget`]). Both modes run the same code: a
//! [`Conn`] is either a [`ConnectionManager`] or the redis crate's
//! [`ClusterConnection`], which routes each command, pipeline and script by its first
//! key and follows `MOVED`/`ASK`. That is legal because every script and pipeline here
//! touches the keys of one job only, which share the job's hash tag and so one slot
//! ([`crate::keys`]); keys outside a job (the archive queue, a WebSocket connection's
//! own key) are always written by commands of their own. Scripts go out as `EVALSHA`
//! and fall back to `EVAL` on `NOSCRIPT`, on the node that owns the key: a fresh node,
//! or a replica promoted after a failover, may not have them cached, and `SCRIPT LOAD`
//! would have to reach every node of the cluster at once.
//!
//! The connection is lazy: a function starts even when Redis is down, a request then
//! fails fast with [`StoreError::Unavailable`] (the API's 503), and the connection
//! recovers when Redis is back. Single node: a lazy [`ConnectionManager`]. Cluster: the
//! crate's cluster client connects eagerly, so the first request connects it (behind a
//! [`OnceCell`]; a failed attempt leaves the cell empty and the next request tries
//! again), and it then repairs node connections and its slot map by itself. A command
//! that finds the connection dropped is retried once, because the first command after
//! a Redis restart fails before the manager notices. Blocking reads (`XREAD BLOCK`, the
//! live-log path) must not use this connection: its response timeout is shorter than a
//! block, and a blocked command would hold up everything queued behind it.
//!
//! Large reads (history pages, [`LogStore::entries_after`]) are the exception: they go
//! over pooled connections of [`crate::resp`], which decode the replies in place (the
//! redis crate's parser cost more than Redis took to produce a page).
//!
//! The key layout is described in [`crate::keys`].

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture,
    ServerErrorKind, ToRedisArgs, Value,
};
use tokio::sync::OnceCell;

use crate::keys::{ARCHIVE_QUEUE, JobKeys, WS_CONNECTION_TTL_SECS, ws_connection_key};
use crate::model::{EntryBody, EntryId, JobId, JobStatus, NewEntry, StoredEntry};
use crate::resp::{DecodeError, DirectReads, Replies};

/// How long a command may wait for its answer before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the cluster client may retry one request (redirects, a node being
/// repaired, `TRYAGAIN`, `CLUSTERDOWN` during a failover), all within
/// [`RESPONSE_TIMEOUT`].
const CLUSTER_RETRIES: u32 = 12;
/// The cluster client's wait between retries (ms): its defaults start above a second,
/// which would spend most of the response timeout on one wait.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (20, 400);

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, dropped, timed out): the API's 503.
    #[error("redis unreachable: {0}")]
    Unavailable(#[source] RedisError),
    /// Redis answered with an error: a bug or a misconfigured server, the API's 500.
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
    /// Redis answered something this code did not write.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        if is_unreachable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Redis(e)
        }
    }
}

/// Whether `e` means "try again later" rather than "something is wrong": the network,
/// a timeout, or a cluster in the middle of a failover or resharding (after the cluster
/// client's own retries ran out).
fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::BusyLoading
                )
        )
}

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

/// Retention settings every write applies.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// TTL of every job key, refreshed on each write.
    pub ttl_secs: u64,
    /// Approximate cap of a job's stream (`XADD MAXLEN ~`).
    pub maxlen: u64,
}

/// A job as stored in its meta hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    pub owner: String,
    pub status: JobStatus,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    pub archived: bool,
    /// SHA-256 (hex) of the job's ingest token.
    pub token_hash: String,
    /// Literal secrets the job registered.
    pub secrets: Vec<String>,
    /// Random per creation; see [`crate::keys`].
    pub generation: String,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub owner: &'a str,
    pub token_hash: &'a str,
    pub secrets: &'a [String],
    pub generation: &'a str,
    pub created_at: u64,
}

/// The result of appending a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        first: EntryId,
        last: EntryId,
        /// The job's WebSocket connections at the time of the append, read in the same
        /// round trip, so a batch with no one watching costs nothing more.
        connections: Vec<String>,
    },
    /// The batch's `seq` was not above the last accepted one: nothing appended.
    Duplicate,
    NotFound,
    /// The job has ended: nothing appended.
    Terminal(JobStatus),
    /// The job id was recreated since the caller read its settings: nothing appended.
    Stale,
}

/// The result of a status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    Changed {
        id: EntryId,
        /// The job's WebSocket connections, read in the same round trip.
        connections: Vec<String>,
    },
    /// Already in that status: nothing appended.
    Same,
    /// The move is not allowed from the current status.
    Forbidden {
        current: JobStatus,
    },
    NotFound,
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest entries.
    Latest,
    /// The entries just older than this id.
    Before(EntryId),
    /// The entries just newer than this id.
    After(EntryId),
}

/// A page of entries, chronological.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<StoredEntry>,
    /// More entries exist in the page's direction (older for `Latest`/`Before`,
    /// newer for `After`).
    pub has_more: bool,
    /// Entries older than the page exist (the "load earlier" cursor is useful).
    pub has_older: bool,
}

const META_FIELDS: [&str; 8] = [
    "owner",
    "status",
    "created_at",
    "finished_at",
    "archived",
    "token",
    "secrets",
    "gen",
];

/// Creates the meta hash unless the job exists.
/// KEYS: meta. ARGV: ttl, then field/value pairs.
static CREATE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
",
    )
});

/// Appends a batch if the job exists, is not terminal, has the caller's `gen` and the
/// batch's `seq` is new. KEYS: meta, logs, ws. ARGV: gen, seq or '', ttl, maxlen,
/// entries…. Answers `ok`, the first and last ids, then the job's WebSocket connection
/// ids (so the caller can push the batch without another round trip). The seq check comes before the terminal check so that a retry of a batch
/// that was accepted just before the job ended is still answered as a duplicate.
static APPEND: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'gen', 'seq')
if not m[1] then return {'missing'} end
if ARGV[1] ~= '' and m[2] ~= ARGV[1] then return {'stale'} end
if ARGV[2] ~= '' then
  if m[3] and tonumber(ARGV[2]) <= tonumber(m[3]) then return {'duplicate'} end
end
if m[1] == 'ready' or m[1] == 'failed' then return {'terminal', m[1]} end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'seq', ARGV[2]) end
local first, last
for i = 5, #ARGV do
  last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[i])
  first = first or last
end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local r = {'ok', first, last}
for _, c in ipairs(redis.call('SMEMBERS', KEYS[3])) do r[#r + 1] = c end
return r
",
    )
});

/// Moves a job to a new status, appending its `status` entry; a terminal status also
/// stamps `finished_at`. The allowed moves mirror [`JobStatus::transition`]. KEYS: meta,
/// logs, ws (one job's keys only: the archive queue lives in another slot and is
/// written by [`LogStore::set_status`] after this script). ARGV: status, entry, ttl,
/// maxlen, now. Answers `ok`, the id, then the job's WebSocket connection ids; or
/// `same` with `finished_at` and `archived`, so a retried terminal update can queue the
/// job again if the first attempt stopped before it did.
static SET_STATUS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local m = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'archived')
local cur = m[1]
if not cur then return {'missing'} end
local to = ARGV[1]
if cur == to then return {'same', m[2] or '', m[3] or ''} end
local ok = (cur == 'queued' and (to == 'running' or to == 'failed'))
  or (cur == 'running' and (to == 'ready' or to == 'failed'))
if not ok then return {'forbidden', cur} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'status', to)
if to == 'ready' or to == 'failed' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[5])
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
local r = {'ok', id}
for _, c in ipairs(redis.call('SMEMBERS', KEYS[3])) do r[#r + 1] = c end
return r
",
    )
});

/// Sets `archived` on a job's meta hash, unless the hash has expired meanwhile (a plain
/// HSET would recreate it without a TTL). KEYS: meta.
static MARK_ARCHIVED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'archived', '1')
return 1
",
    )
});

/// A Lua script, sent as `EVALSHA` and, when the node answers `NOSCRIPT`, as `EVAL`
/// (which also caches it there). Both are routed by the first key, so in a cluster the
/// script runs, and gets cached, on the node that owns the job's slot.
struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    fn key(&self, key: impl ToRedisArgs) -> LuaCall<'_> {
        let mut call = LuaCall {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        };
        call.key(key);
        call
    }
}

/// One invocation of a [`Lua`] script: its keys and arguments.
struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn cmd(&self, cached: bool) -> Cmd {
        let mut cmd = if cached {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.lua.hash);
            cmd
        } else {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(self.lua.code);
            cmd
        };
        cmd.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> redis::RedisResult<T> {
        match self.cmd(true).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.cmd(false).query_async(conn).await
            }
            other => other,
        }
    }
}

/// A connection to Redis, single node or cluster: every method of [`LogStore`] runs
/// the same code on either.
#[derive(Clone)]
enum Conn {
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
enum Backend {
    Single {
        client: redis::Client,
        conn: ConnectionManager,
    },
    Cluster(Arc<ClusterBackend>),
}

/// A cluster's seeds, its client, and the shared connection.
struct ClusterBackend {
    nodes: Vec<String>,
    client: ClusterClient,
    /// Connected on first use (the cluster client connects eagerly).
    conn: OnceCell<ClusterConnection>,
}

/// The Redis side of logstream. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct LogStore {
    backend: Backend,
    /// Large reads (history pages, `entries_after`), decoded in place ([`crate::resp`]).
    direct: Arc<DirectReads>,
    retention: Retention,
}

/// Connects `client` to its cluster: the seeds, the slot map, every node; bounded, as
/// a silent network would otherwise hold the first request for a connect timeout per
/// step.
async fn connect_cluster(client: &ClusterClient) -> Result<ClusterConnection, RedisError> {
    tokio::time::timeout(
        CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
        client.get_async_connection(),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// A cluster client for `nodes` whose every request (redirects and retries included)
/// must be answered within `response`.
fn cluster_client(nodes: &[String], response: Duration) -> Result<ClusterClient, RedisError> {
    let (min_wait, max_wait) = CLUSTER_RETRY_WAIT_MS;
    ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(min_wait)
        .max_retry_wait(max_wait)
        .build()
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// Installs the process-wide rustls crypto provider that `rediss://` (and HTTPS)
/// connections use. Explicit, because a function built alone may not get one through
/// another crate's features, and then TLS would panic only in deployment.
pub fn install_tls_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl LogStore {
    /// Prepares the connection without connecting: fails only on a malformed URL.
    /// `url` is one node URL or a comma-separated cluster list ([`RedisTarget`]).
    pub fn open(url: &str, retention: Retention) -> Result<Self, StoreError> {
        install_tls_provider();
        let bad_url = |reason: String| {
            StoreError::Redis(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "bad REDIS_URL",
                reason,
            )))
        };
        let target = RedisTarget::parse(url).map_err(bad_url)?;
        let direct = match &target {
            RedisTarget::Single(url) => DirectReads::new(
                std::slice::from_ref(url),
                false,
                CONNECT_TIMEOUT,
                RESPONSE_TIMEOUT,
            ),
            RedisTarget::Cluster(nodes) => {
                DirectReads::new(nodes, true, CONNECT_TIMEOUT, RESPONSE_TIMEOUT)
            }
        }
        .map_err(StoreError::Redis)?;
        let backend = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url).map_err(StoreError::Redis)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(StoreError::Redis)?;
                Backend::Single { client, conn }
            }
            RedisTarget::Cluster(nodes) => Backend::Cluster(Arc::new(ClusterBackend {
                client: cluster_client(&nodes, RESPONSE_TIMEOUT).map_err(StoreError::Redis)?,
                nodes,
                conn: OnceCell::new(),
            })),
        };
        Ok(Self {
            backend,
            direct: Arc::new(direct),
            retention,
        })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The retention settings writes apply.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The shared connection; in a cluster, connected on first use. A failed connect
    /// is [`StoreError::Unavailable`] and is tried again by the next call.
    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.backend {
            Backend::Single { conn, .. } => Ok(Conn::Single(conn.clone())),
            Backend::Cluster(cluster) => cluster
                .conn
                .get_or_try_init(|| connect_cluster(&cluster.client))
                .await
                .map(|c| Conn::Cluster(c.clone()))
                // Whatever stopped the first connect (no node answering, no slot map
                // yet), the cluster is not reachable now: the API's 503.
                .map_err(StoreError::Unavailable),
        }
    }

    /// Runs one command (or pipeline, or script), retrying once if the connection had
    /// dropped. Retrying is safe for everything here: reads are idempotent, and a write
    /// whose connection dropped before an answer is answered as a duplicate on retry
    /// when it carries a `seq`. (The cluster client also retries redirects and node
    /// failures itself, within the response timeout.)
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn().await?;
        match op(conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                tracing::debug!(error = %e, "redis connection dropped, retrying once");
                op(conn).await.map_err(StoreError::from)
            }
            other => other.map_err(StoreError::from),
        }
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }

    /// Creates a job; `false` if the id is taken.
    pub async fn create_job(&self, job: &JobId, new: &NewJob<'_>) -> Result<bool, StoreError> {
        let keys = JobKeys::new(job);
        let secrets = serde_json::to_string(new.secrets).unwrap_or_else(|_| "[]".into());
        let created_at = new.created_at.to_string();
        let fields: [&str; 12] = [
            "owner",
            new.owner,
            "status",
            JobStatus::Queued.as_str(),
            "created_at",
            &created_at,
            "token",
            new.token_hash,
            "secrets",
            &secrets,
            "gen",
            new.generation,
        ];
        let ttl = self.retention.ttl_secs;
        let created: i64 = self
            .run(|mut c| {
                let mut inv = CREATE.key(&keys.meta);
                inv.arg(ttl).arg(&fields[..]);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        Ok(created == 1)
    }

    /// The job's metadata, or `None` if it does not exist (or expired).
    pub async fn job_meta(&self, job: &JobId) -> Result<Option<JobMeta>, StoreError> {
        let keys = JobKeys::new(job);
        let values: Vec<Option<String>> = self
            .run(|mut c| {
                let meta = keys.meta.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(meta)
                        .arg(&META_FIELDS[..])
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        parse_meta(values)
    }

    /// Appends a batch of entries (each the JSON of a [`NewEntry`]) in one round trip,
    /// all or nothing. `gen` guards against a recreated job id ('' skips the check).
    pub async fn append(
        &self,
        job: &JobId,
        generation: &str,
        seq: Option<u64>,
        entries: &[String],
    ) -> Result<AppendOutcome, StoreError> {
        if entries.is_empty() {
            return Err(StoreError::Corrupt("append called with no entries".into()));
        }
        let keys = JobKeys::new(job);
        let seq = seq.map(|s| s.to_string()).unwrap_or_default();
        let Retention { ttl_secs, maxlen } = self.retention;
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = APPEND.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.ws)
                    .arg(generation)
                    .arg(&seq)
                    .arg(ttl_secs)
                    .arg(maxlen)
                    .arg(entries);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [tag, first, last, connections @ ..] if tag == "ok" => Ok(AppendOutcome::Appended {
                first: parse_id(first)?,
                last: parse_id(last)?,
                connections: connections.to_vec(),
            }),
            [tag] if tag == "duplicate" => Ok(AppendOutcome::Duplicate),
            [tag] if tag == "missing" => Ok(AppendOutcome::NotFound),
            [tag] if tag == "stale" => Ok(AppendOutcome::Stale),
            [tag, status] if tag == "terminal" => {
                Ok(AppendOutcome::Terminal(parse_status(status)?))
            }
            other => Err(StoreError::Corrupt(format!(
                "append script answered {other:?}"
            ))),
        }
    }

    /// Moves the job to `to`, appending a `status` entry stamped `ts`. A terminal status
    /// also queues the job for archival.
    ///
    /// The status change is one script on the job's keys; queueing is a second command
    /// (`ZADD NX`), because the queue lives in another cluster slot. If that second
    /// step fails the caller gets an error (503) and retries, and the retry, answered
    /// [`StatusOutcome::Same`], queues the job then: a terminal job that is neither
    /// archived nor queued cannot come out of a request that succeeded. Only terminal
    /// changes pay the second round trip, once per job.
    pub async fn set_status(
        &self,
        job: &JobId,
        to: JobStatus,
        ts: u64,
    ) -> Result<StatusOutcome, StoreError> {
        let keys = JobKeys::new(job);
        let entry = NewEntry {
            ts,
            body: EntryBody::Status { status: to },
        }
        .to_stored_json();
        let Retention { ttl_secs, maxlen } = self.retention;
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = SET_STATUS.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.ws)
                    .arg(to.as_str())
                    .arg(&entry)
                    .arg(ttl_secs)
                    .arg(maxlen)
                    .arg(ts);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [tag, id, connections @ ..] if tag == "ok" => {
                let id = parse_id(id)?;
                if to.is_terminal() {
                    self.queue_archive(job, ts).await?;
                }
                Ok(StatusOutcome::Changed {
                    id,
                    connections: connections.to_vec(),
                })
            }
            [tag, finished_at, archived] if tag == "same" => {
                if to.is_terminal() && archived != "1" {
                    let finished_at = finished_at.parse().unwrap_or(ts);
                    self.queue_archive(job, finished_at).await?;
                }
                Ok(StatusOutcome::Same)
            }
            [tag] if tag == "missing" => Ok(StatusOutcome::NotFound),
            [tag, cur] if tag == "forbidden" => Ok(StatusOutcome::Forbidden {
                current: parse_status(cur)?,
            }),
            other => Err(StoreError::Corrupt(format!(
                "status script answered {other:?}"
            ))),
        }
    }

    /// Queues a finished job for archival, scored by its finish time (ms); a job already
    /// queued keeps its place (`NX`).
    async fn queue_archive(&self, job: &JobId, finished_at: u64) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("ZADD")
                .arg(ARCHIVE_QUEUE)
                .arg("NX")
                .arg(finished_at)
                .arg(job.as_str())
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// The job's metadata and one page of its entries, in one round trip. `None` if the
    /// job does not exist. `limit` must be at least 1.
    pub async fn page(
        &self,
        job: &JobId,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Option<(JobMeta, Page)>, StoreError> {
        let keys = JobKeys::new(job);
        let count = limit.max(1) + 1;
        // The extreme ids have nothing beyond them, and Redis refuses to step past them.
        let empty_beyond = match cursor {
            Cursor::Before(id) => id == EntryId { ms: 0, seq: 0 },
            Cursor::After(id) => {
                id == EntryId {
                    ms: u64::MAX,
                    seq: u64::MAX,
                }
            }
            Cursor::Latest => false,
        };
        let mut meta = redis::cmd("HMGET");
        meta.arg(&keys.meta).arg(&META_FIELDS[..]);
        let logs = keys.logs.as_str();
        let range = match (empty_beyond, cursor) {
            // Keep the reply shape: a range that is always empty.
            (true, _) => range_cmd("XRANGE", logs, "+", "-", None),
            (false, Cursor::Latest) => range_cmd("XREVRANGE", logs, "+", "-", Some(count)),
            (false, Cursor::Before(id)) => {
                range_cmd("XREVRANGE", logs, &format!("({id}"), "-", Some(count))
            }
            (false, Cursor::After(id)) => {
                range_cmd("XRANGE", logs, &format!("({id}"), "+", Some(count))
            }
        };
        // Whether anything precedes an `after` page: the cursor entry itself or older.
        let older = match cursor {
            Cursor::After(id) => range_cmd("XREVRANGE", logs, &id.to_string(), "-", Some(1)),
            _ => range_cmd("XRANGE", logs, "+", "-", None),
        };
        let cmds = [meta, range, older];
        let (meta, mut entries, older) = self
            .direct
            .query(keys.meta.as_bytes(), &cmds, |replies| {
                replies.next_reply()?;
                let meta = decode_strings(replies)?;
                replies.next_reply()?;
                let entries = decode_entries(replies)?;
                replies.next_reply()?;
                let older = decode_entries(replies)?;
                Ok((meta, entries, older))
            })
            .await?;
        let Some(meta) = parse_meta(meta)? else {
            return Ok(None);
        };
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        let has_older = match cursor {
            Cursor::After(_) => !older.is_empty(),
            _ => has_more,
        };
        if !matches!(cursor, Cursor::After(_)) {
            entries.reverse();
        }
        Ok(Some((
            meta,
            Page {
                entries,
                has_more,
                has_older,
            },
        )))
    }
}

impl LogStore {
    /// The job's metadata and the id of its newest entry (`None` for an empty log), in
    /// one round trip. `None` if the job does not exist.
    pub async fn job_head(
        &self,
        job: &JobId,
    ) -> Result<Option<(JobMeta, Option<EntryId>)>, StoreError> {
        let keys = JobKeys::new(job);
        let (meta, newest): (Vec<Option<String>>, Value) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET").arg(&keys.meta).arg(&META_FIELDS[..]);
                pipe.cmd("XREVRANGE")
                    .arg(&keys.logs)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        let Some(meta) = parse_meta(meta)? else {
            return Ok(None);
        };
        Ok(Some((meta, parse_entries(newest)?.first().map(|e| e.id))))
    }

    /// Up to `count` entries strictly after `after`, oldest first. Read like history
    /// pages ([`crate::resp`]): the archiver and SSE replays ask for thousands at once.
    pub async fn entries_after(
        &self,
        job: &JobId,
        after: EntryId,
        count: usize,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        if after
            == (EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            })
        {
            return Ok(Vec::new());
        }
        let logs = JobKeys::new(job).logs;
        let cmd = range_cmd("XRANGE", &logs, &format!("({after}"), "+", Some(count));
        self.direct
            .query(logs.as_bytes(), &[cmd], |replies| {
                replies.next_reply()?;
                decode_entries(replies)
            })
            .await
    }

    /// Registers WebSocket connection `connection` as following `job`: added to the
    /// job's connection set (which takes the job's TTL) and remembered under its own key
    /// for `$disconnect`, which only knows the connection id. The two keys are in
    /// different cluster slots, so they are two requests sent at once: on one node they
    /// share the multiplexed connection's round trip, in a cluster they go to their
    /// nodes in parallel.
    pub async fn add_connection(&self, job: &JobId, connection: &str) -> Result<(), StoreError> {
        let ws = JobKeys::new(job).ws;
        let by_id = ws_connection_key(connection);
        let ttl = self.retention.ttl_secs;
        let follow = self.run(|mut c| {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&ws).arg(connection).ignore();
            pipe.cmd("EXPIRE").arg(&ws).arg(ttl).ignore();
            async move { pipe.query_async::<()>(&mut c).await }
        });
        let remember = self.run(|mut c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&by_id)
                .arg(job.as_str())
                .arg("EX")
                .arg(WS_CONNECTION_TTL_SECS);
            async move { cmd.query_async::<()>(&mut c).await }
        });
        tokio::try_join!(follow, remember).map(|_| ())
    }

    /// Forgets connection `connection` (its `$disconnect`); returns the job it followed,
    /// if it was known.
    pub async fn remove_connection(&self, connection: &str) -> Result<Option<JobId>, StoreError> {
        let by_id = ws_connection_key(connection);
        let job: Option<String> = self
            .run(|mut c| {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(&by_id);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        let Some(job) = job.and_then(|raw| JobId::parse(&raw).ok()) else {
            return Ok(None);
        };
        self.drop_connections(&job, &[connection.to_owned()])
            .await?;
        Ok(Some(job))
    }

    /// Removes `connections` from `job`'s set: what a push does with connections that
    /// answered 410 Gone (`$disconnect` is best effort in API Gateway).
    pub async fn drop_connections(
        &self,
        job: &JobId,
        connections: &[String],
    ) -> Result<(), StoreError> {
        if connections.is_empty() {
            return Ok(());
        }
        let ws = JobKeys::new(job).ws;
        self.run(|mut c| {
            let mut cmd = redis::cmd("SREM");
            cmd.arg(&ws).arg(connections);
            async move { cmd.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Of `connections`, which answered 410 Gone, removes from `job`'s set those that
    /// registered at least `grace` ago (or are not registered at all), and returns how
    /// many it removed. The grace matters on AWS: a connection is added during its
    /// `$connect`, before API Gateway completes the handshake, and a push in that window
    /// is answered 410 although the client is about to be connected. Two round trips:
    /// the `TTL`s (one request per connection key, all sent at once, since the keys lie in
    /// different cluster slots), then the removal.
    pub async fn drop_gone_connections(
        &self,
        job: &JobId,
        connections: &[String],
        grace: Duration,
    ) -> Result<usize, StoreError> {
        if connections.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = connections.iter().map(|c| ws_connection_key(c)).collect();
        let ttls: Vec<i64> = futures_util::future::try_join_all(keys.iter().map(|key| {
            self.run(move |mut c| async move {
                redis::cmd("TTL").arg(key).query_async::<i64>(&mut c).await
            })
        }))
        .await?;
        let full = i64::try_from(WS_CONNECTION_TTL_SECS).unwrap_or(i64::MAX);
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let old: Vec<String> = connections
            .iter()
            .zip(ttls)
            .filter(|(_, ttl)| *ttl < 0 || full - *ttl >= grace)
            .map(|(c, _)| c.clone())
            .collect();
        self.drop_connections(job, &old).await?;
        Ok(old.len())
    }

    /// The WebSocket connections following `job`.
    pub async fn connections(&self, job: &JobId) -> Result<Vec<String>, StoreError> {
        let ws = JobKeys::new(job).ws;
        self.run(|mut c| {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(&ws);
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    /// A connection of its own for blocking reads (`XREAD BLOCK`): the shared one
    /// times out a response long before a block ends, and a blocked command would hold
    /// up every other command queued behind it. In a cluster it is a cluster connection
    /// of its own, so a read follows its job's slot through `MOVED` after a resharding
    /// or a failover.
    pub async fn blocking_reader(&self, block: Duration) -> Result<BlockingReader, StoreError> {
        let conn = match &self.backend {
            Backend::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
                ReaderConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Backend::Cluster(cluster) => ReaderConn::Cluster(
                connect_cluster(&cluster_client(&cluster.nodes, block + RESPONSE_TIMEOUT)?)
                    .await
                    .map_err(StoreError::Unavailable)?,
            ),
        };
        Ok(BlockingReader { conn, block })
    }
}

/// The archive queue (see [`crate::keys`]): finished jobs waiting for the archiver.
impl LogStore {
    /// The oldest `count` members of the archive queue with their finish times (ms),
    /// oldest first. Members come back raw: one that is not a valid job id is the
    /// caller's to drop with [`unqueue_archive`](Self::unqueue_archive).
    pub async fn archive_queue(&self, count: usize) -> Result<Vec<(String, u64)>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let members: Vec<(String, f64)> = self
            .run(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(ARCHIVE_QUEUE)
                    .arg(0)
                    .arg(count - 1)
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(members
            .into_iter()
            .map(|(member, score)| (member, score.max(0.0) as u64))
            .collect())
    }

    /// How many jobs wait in the archive queue.
    pub async fn archive_queue_len(&self) -> Result<u64, StoreError> {
        self.run(|mut c| async move {
            redis::cmd("ZCARD")
                .arg(ARCHIVE_QUEUE)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Whether `member` waits in the archive queue.
    pub async fn is_queued_for_archive(&self, member: &str) -> Result<bool, StoreError> {
        let score: Option<f64> = self
            .run(|mut c| async move {
                redis::cmd("ZSCORE")
                    .arg(ARCHIVE_QUEUE)
                    .arg(member)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(score.is_some())
    }

    /// Records that the job's archive is complete (`archived` = 1 in its meta hash),
    /// without touching its TTL. `false` if the job no longer exists in Redis.
    pub async fn mark_archived(&self, job: &JobId) -> Result<bool, StoreError> {
        let meta = JobKeys::new(job).meta;
        let marked: i64 = self
            .run(|mut c| {
                let inv = MARK_ARCHIVED.key(&meta);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        Ok(marked == 1)
    }

    /// Takes `member` off the archive queue (a no-op when it is not there).
    pub async fn unqueue_archive(&self, member: &str) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("ZREM")
                .arg(ARCHIVE_QUEUE)
                .arg(member)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}

/// A dedicated connection that waits for new entries with `XREAD BLOCK`.
pub struct BlockingReader {
    conn: ReaderConn,
    block: Duration,
}

/// A [`BlockingReader`]'s connection.
enum ReaderConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl BlockingReader {
    /// Up to `count` entries of `job` after `after`, waiting at most the block time for
    /// the first one; empty when none came. Returns as soon as anything is appended.
    pub async fn read(
        &mut self,
        job: &JobId,
        after: EntryId,
        count: usize,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let logs = JobKeys::new(job).logs;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&logs)
            .arg(after.to_string());
        let reply: Value = match &mut self.conn {
            ReaderConn::Single(c) => cmd.query_async(c).await?,
            ReaderConn::Cluster(c) => cmd.query_async(c).await?,
        };
        match reply {
            Value::Nil => Ok(Vec::new()),
            // RESP2: [[key, entries]]; RESP3: {key: entries}.
            Value::Array(streams) => match streams.into_iter().next() {
                Some(Value::Array(mut pair)) if pair.len() == 2 => {
                    parse_entries(pair.pop().unwrap_or(Value::Nil))
                }
                Some(other) => Err(StoreError::Corrupt(format!("XREAD answered {other:?}"))),
                None => Ok(Vec::new()),
            },
            Value::Map(streams) => match streams.into_iter().next() {
                Some((_, entries)) => parse_entries(entries),
                None => Ok(Vec::new()),
            },
            other => Err(StoreError::Corrupt(format!("XREAD answered {other:?}"))),
        }
    }
}

fn parse_id(raw: &str) -> Result<EntryId, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad stream id {raw:?}")))
}

fn parse_status(raw: &str) -> Result<JobStatus, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad job status {raw:?}")))
}

fn parse_meta(values: Vec<Option<String>>) -> Result<Option<JobMeta>, StoreError> {
    let [
        owner,
        status,
        created_at,
        finished_at,
        archived,
        token,
        secrets,
        generation,
    ]: [Option<String>; 8] = values
        .try_into()
        .map_err(|v: Vec<_>| StoreError::Corrupt(format!("HMGET answered {} fields", v.len())))?;
    let (Some(owner), Some(status)) = (owner, status) else {
        return Ok(None);
    };
    let number = |field: &str, raw: Option<String>| -> Result<Option<u64>, StoreError> {
        raw.map(|r| {
            r.parse()
                .map_err(|_| StoreError::Corrupt(format!("bad {field} {r:?}")))
        })
        .transpose()
    };
    Ok(Some(JobMeta {
        owner,
        status: parse_status(&status)?,
        created_at: number("created_at", created_at)?.unwrap_or(0),
        finished_at: number("finished_at", finished_at)?,
        archived: archived.as_deref() == Some("1"),
        token_hash: token.unwrap_or_default(),
        secrets: match secrets {
            Some(raw) => serde_json::from_str(&raw)
                .map_err(|_| StoreError::Corrupt("bad secrets list".into()))?,
            None => Vec::new(),
        },
        generation: generation.unwrap_or_default(),
    }))
}

/// `XRANGE`/`XREVRANGE` (`name`) of stream `key` from `start` to `end`.
fn range_cmd(name: &str, key: &str, start: &str, end: &str, count: Option<usize>) -> Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(key).arg(start).arg(end);
    if let Some(count) = count {
        cmd.arg("COUNT").arg(count);
    }
    cmd
}

/// Decodes an array of bulk strings or nils (an `HMGET` reply) in place.
fn decode_strings(replies: &mut Replies<'_>) -> Result<Vec<Option<String>>, DecodeError> {
    let n = replies.array()?.unwrap_or(0);
    (0..n)
        .map(|_| {
            replies.bulk()?.map_or(Ok(None), |b| {
                String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| DecodeError::Corrupt("a value is not UTF-8".into()))
            })
        })
        .collect()
}

/// Decodes an `XRANGE`/`XREVRANGE` reply in place: [`parse_entries`] for
/// [`crate::resp`].
fn decode_entries(replies: &mut Replies<'_>) -> Result<Vec<StoredEntry>, DecodeError> {
    let bad = || DecodeError::Corrupt("malformed stream entry".into());
    let n = replies.array()?.unwrap_or(0);
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        if replies.array()? != Some(2) {
            return Err(bad());
        }
        let id = replies.bulk()?.ok_or_else(bad)?;
        let id = std::str::from_utf8(id)
            .ok()
            .and_then(|id| parse_id(id).ok())
            .ok_or_else(bad)?;
        let fields = replies.array()?.ok_or_else(bad)?;
        let mut json = None;
        for _ in 0..fields / 2 {
            let name = replies.bulk()?;
            let value = replies.bulk()?;
            if name == Some(b"e")
                && let Some(value) = value
            {
                json = Some(String::from_utf8(value.to_vec()).map_err(|_| bad())?);
            }
        }
        if fields % 2 == 1 {
            replies.skip()?;
        }
        entries.push(StoredEntry {
            id,
            json: json.ok_or_else(bad)?,
        });
    }
    Ok(entries)
}

/// Decodes an `XRANGE`/`XREVRANGE` reply (`[[id, [field, value, …]], …]`) without the
/// per-entry hash map the generic stream reply types build.
pub fn parse_entries(raw: Value) -> Result<Vec<StoredEntry>, StoreError> {
    let items = match raw {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(StoreError::Corrupt(format!("range answered {other:?}"))),
    };
    items.into_iter().map(parse_entry).collect()
}

fn parse_entry(item: Value) -> Result<StoredEntry, StoreError> {
    let bad = || StoreError::Corrupt("malformed stream entry".into());
    let Value::Array(mut parts) = item else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let fields = parts.pop().ok_or_else(bad)?;
    let id = match parts.pop() {
        Some(Value::BulkString(b)) => parse_id(std::str::from_utf8(&b).map_err(|_| bad())?)?,
        _ => return Err(bad()),
    };
    let Value::Array(fields) = fields else {
        return Err(bad());
    };
    let mut json = None;
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        if matches!(&name, Value::BulkString(n) if n == b"e")
            && let Value::BulkString(v) = value
        {
            json = Some(String::from_utf8(v).map_err(|_| bad())?);
        }
    }
    Ok(StoredEntry {
        id,
        json: json.ok_or_else(bad)?,
    })
}
