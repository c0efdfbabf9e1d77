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
//! ([`keys`]); keys outside a job (the archive queue, a WebSocket connection's
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
//! over pooled connections of [`resp`], which decode the replies in place (the
//! redis crate's parser cost more than Redis took to produce a page).
//!
//! The key layout is described in [`keys`]. The rest of the store, one file per concern:
//!
//! | module | what |
//! |---|---|
//! | `conn` | `REDIS_URL` parsing, the single-node or cluster connection |
//! | `scripts` | the Lua scripts every write runs, `EVALSHA` with an `EVAL` fallback |
//! | `jobs` | creating jobs, appending, status moves, the archive queue |
//! | `deletion` | deleting a job: its tombstone, and what its followers check |
//! | `reads` | history pages, reads after an id, the blocking reader of the live path |
//! | `sockets` | the WebSocket connections that follow a job |
//! | [`resp`] | the store's own connections for large reads, decoded in place |

mod conn;
mod deletion;
mod error;
mod jobs;
pub mod keys;
mod reads;
pub(crate) mod resp;
mod scripts;
mod sockets;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};
use tokio::sync::OnceCell;

use logstream_core::ids::EntryId;
use logstream_core::model::{JobStatus, NewEntry, StoredEntry};

pub use conn::{RedisTarget, install_tls_provider};
pub use deletion::{DELETED_ENTRY, Presence, Tombstone};
pub use error::StoreError;
pub use jobs::text_bytes;
pub use reads::{BlockingReader, Head, parse_entries};
pub use sockets::{Followed, Socket};

use conn::{Backend, ClusterBackend, Conn, cluster_client, connect_cluster};
use resp::DirectReads;

/// How long a command may wait for its answer before Redis counts as unreachable.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a (re)connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Retention settings every write applies.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// TTL of every job key, refreshed on each write.
    pub ttl_secs: u64,
    /// Entries of a job kept in Redis: with an archive, the live tail left once older
    /// entries are archived; without one, the approximate cap of the stream (`XADD
    /// MAXLEN ~`, version 1's behaviour).
    pub maxlen: u64,
    /// Whether the job's entries go to an archive. Without one the stream is capped at
    /// `maxlen`; with one nothing is trimmed before it is archived.
    pub archived: bool,
    /// Stored text bytes per job (`LOGSTREAM_MAX_JOB_BYTES`); later lines are dropped.
    pub max_job_bytes: u64,
    /// A segment is due once this many entries are not archived.
    pub segment_lines: u64,
    /// … or this many bytes of stored JSON.
    pub segment_bytes: u64,
    /// … or, for any job with unarchived entries, this long after the last segment.
    pub segment_secs: u64,
}

impl Retention {
    /// The SPEC's defaults, with or without an archive.
    pub const fn defaults(archived: bool) -> Self {
        Self {
            ttl_secs: 86_400,
            maxlen: 50_000,
            archived,
            max_job_bytes: 1 << 30,
            segment_lines: 10_000,
            segment_bytes: 4 << 20,
            segment_secs: 30,
        }
    }

    /// The `XADD` cap the scripts apply: `maxlen` without an archive, none with one.
    pub(crate) fn cap(&self) -> u64 {
        if self.archived { 0 } else { self.maxlen }
    }
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
    /// Random per creation; see [`keys`].
    pub generation: String,
    /// The number of the job's last entry (its entry count).
    pub entries: u64,
    /// Stored text bytes of its lines.
    pub bytes: u64,
    /// The size limit was hit: later lines were dropped.
    pub truncated: bool,
    /// Stored JSON bytes of its entries (what segments are sized by).
    pub stored_bytes: u64,
    /// How far the archive's segments reach: the last archived entry's number and id,
    /// and the stored JSON bytes up to it.
    pub archived_upto: Option<(u64, EntryId)>,
    pub archived_bytes: u64,
    /// How many times secrets were added after creation (`sv`).
    pub secrets_version: u64,
    /// The organisation whose members read the job as its owner does.
    pub org: Option<String>,
    /// The exit code reported with its terminal status (`exit`).
    pub exit_code: Option<i64>,
    /// From `running` (or creation) to the terminal status (`dur`).
    pub duration_ms: Option<u64>,
}

impl JobMeta {
    /// What a writer that sanitized with this meta's secrets hands the append script,
    /// which refuses it (`stale`) once the job was recreated or got more secrets:
    /// `gen`, or `gen#sv` after secrets were added.
    pub fn write_check(&self) -> String {
        if self.secrets_version == 0 {
            self.generation.clone()
        } else {
            format!("{}#{}", self.generation, self.secrets_version)
        }
    }

    /// How the job ended; `None` while it runs.
    pub fn ending(&self) -> Option<logstream_core::model::Ending> {
        logstream_core::model::Ending::of_job(self.status, self.exit_code, self.duration_ms)
    }
}

/// What registering more secrets did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsOutcome {
    /// Registered; this many were new.
    Added(usize),
    /// The job would have more than allowed; it has this many.
    Full(usize),
    NotFound,
    /// The job has ended.
    Terminal,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub owner: &'a str,
    pub token_hash: &'a str,
    pub secrets: &'a [String],
    pub generation: &'a str,
    pub created_at: u64,
    /// The organisation that reads it too.
    pub org: Option<&'a str>,
}

/// The result of appending a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended(Appended),
    /// The batch's `seq` was not above the last accepted one: nothing appended.
    Duplicate,
    NotFound,
    /// The job has ended: nothing appended.
    Terminal(JobStatus),
    /// The job id was recreated since the caller read its settings: nothing appended.
    Stale,
    /// The batch was made from another private-key carry or other open groups than the
    /// job's, which these are: nothing appended; make it again from them.
    Carry {
        /// The private-key carry (`logstream_core::sanitize::Batch::carry`).
        pem: u32,
        /// The open groups and sections (`logstream_core::markers::Open::to_stored`).
        open: String,
    },
}

/// A batch for [`LogStore::append_batch`]: its entries, and the job state they were
/// made from and lead to (`logstream_core::entries::Built`).
#[derive(Debug, Clone)]
pub struct AppendBatch<'a> {
    /// The job's write check (`JobMeta::write_check`) the batch was made under; ''
    /// skips the check.
    pub check: &'a str,
    pub seq: Option<u64>,
    /// The private-key carry the batch was sanitized from, and where it ends; `None`:
    /// no check.
    pub carry: Option<(u32, u32)>,
    /// The open groups and sections (stored form) before and after the batch, for a
    /// batch with group or section markers; `None`: no check.
    pub open: Option<(String, String)>,
    /// Secrets the batch's `::add-mask::` lines register.
    pub masks: &'a [String],
    /// The caller's guess of the job's next `n`, when it has one: the entries are then
    /// numbered from it as the command is written (so that the guess can be taken
    /// late, see the ingest function's `Numbering`). A right guess spares Redis
    /// building each entry's string; a wrong one costs what unnumbered entries do.
    pub first_n: Option<u64>,
    pub entries: &'a [ToAppend],
}

/// An entry to append: its stored JSON ([`NewEntry::to_stored_json`]) and the text
/// bytes it counts against the job's size limit ([`jobs::text_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToAppend {
    pub json: String,
    pub text_bytes: u64,
}

impl ToAppend {
    pub fn new(entry: &NewEntry) -> Self {
        Self {
            json: entry.to_stored_json(),
            text_bytes: jobs::text_bytes(entry),
        }
    }
}

/// A batch that went in (maybe only in part, past the job's size limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Ids of the first and last entries stored; `None` when every line was dropped.
    pub ids: Option<(EntryId, EntryId)>,
    /// The first stored entry's number; the others follow without a gap.
    pub first_n: u64,
    /// Lines stored: the first `accepted` of the batch.
    pub accepted: usize,
    /// Lines dropped by the size limit: the rest of the batch.
    pub dropped: usize,
    /// This batch hit the limit: its notice is stored after the accepted lines.
    pub notice: bool,
    /// The job's unarchived entries just filled a segment: wake the archiver.
    pub segment_due: bool,
    /// The job's WebSocket connections at the time of the append, read in the same
    /// round trip, so a batch with no one watching costs nothing more.
    pub connections: Vec<Socket>,
}

/// The result of a status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    Changed {
        id: EntryId,
        /// The status entry's number.
        n: u64,
        /// For a terminal status: the job's duration, as its entry carries it.
        duration_ms: Option<u64>,
        /// The job's WebSocket connections, read in the same round trip.
        connections: Vec<Socket>,
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
    /// The entries from entry number `n` on (`n` ≥ 1).
    At(u64),
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

/// The Redis side of logstream. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct LogStore {
    backend: Backend,
    /// Large reads (history pages, `entries_after`), decoded in place ([`resp`]).
    direct: Arc<DirectReads>,
    retention: Retention,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
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
}
