//! `LogStore`: every Redis operation logstream performs, over one multiplexed
//! connection per process.
//!
//! Each write is one round trip and atomic: a Lua script checks the job's state and
//! appends the whole batch (or nothing), so a failed or retried request never leaves
//! half a batch, and two racing terminal updates cannot both win. Reads that need the
//! job's metadata and its entries send both commands in one pipeline.
//!
//! The connection is a lazy [`ConnectionManager`]: a function starts even when Redis is
//! down, a request then fails fast with [`StoreError::Unavailable`] (the API's 503), and
//! the manager reconnects when Redis is back. A command that finds the connection
//! dropped is retried once, because the first command after a Redis restart fails
//! before the manager notices. Blocking reads (`XREAD BLOCK`, the live-log path) must
//! not use this connection: its response timeout is shorter than a block.
//!
//! The key layout is described in [`crate::keys`].

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError, Script, Value};

use crate::keys::{ARCHIVE_QUEUE, JobKeys, WS_CONNECTION_TTL_SECS, ws_connection_key};
use crate::model::{EntryBody, EntryId, JobId, JobStatus, NewEntry, StoredEntry};

/// How long a command may wait for its answer before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
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
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
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
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
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
/// stamps `finished_at` and queues the job for archival. The allowed moves mirror
/// [`JobStatus::transition`]. KEYS: meta, logs, ws, archive queue. ARGV: status,
/// entry, ttl, maxlen, now, job id. Answers `ok`, the id, then the job's WebSocket
/// connection ids.
static SET_STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing'} end
local to = ARGV[1]
if cur == to then return {'same'} end
local ok = (cur == 'queued' and (to == 'running' or to == 'failed'))
  or (cur == 'running' and (to == 'ready' or to == 'failed'))
if not ok then return {'forbidden', cur} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'status', to)
if to == 'ready' or to == 'failed' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
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
static MARK_ARCHIVED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'archived', '1')
return 1
",
    )
});

/// The Redis side of logstream. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct LogStore {
    client: redis::Client,
    conn: ConnectionManager,
    retention: Retention,
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
    pub fn open(url: &str, retention: Retention) -> Result<Self, StoreError> {
        install_tls_provider();
        let client = redis::Client::open(url).map_err(StoreError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(StoreError::Redis)?;
        Ok(Self {
            client,
            conn,
            retention,
        })
    }

    /// The retention settings writes apply.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Runs one command (or pipeline, or script), retrying once if the connection had
    /// dropped. Retrying is safe for everything here: reads are idempotent, and a write
    /// whose connection dropped before an answer is answered as a duplicate on retry
    /// when it carries a `seq`.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match op(self.conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                tracing::debug!(error = %e, "redis connection dropped, retrying once");
                op(self.conn.clone()).await.map_err(StoreError::from)
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
                async move { inv.invoke_async(&mut c).await }
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
                async move { inv.invoke_async(&mut c).await }
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

    /// Moves the job to `to`, appending a `status` entry stamped `ts`.
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
                    .key(ARCHIVE_QUEUE)
                    .arg(to.as_str())
                    .arg(&entry)
                    .arg(ttl_secs)
                    .arg(maxlen)
                    .arg(ts)
                    .arg(job.as_str());
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [tag, id, connections @ ..] if tag == "ok" => Ok(StatusOutcome::Changed {
                id: parse_id(id)?,
                connections: connections.to_vec(),
            }),
            [tag] if tag == "same" => Ok(StatusOutcome::Same),
            [tag] if tag == "missing" => Ok(StatusOutcome::NotFound),
            [tag, cur] if tag == "forbidden" => Ok(StatusOutcome::Forbidden {
                current: parse_status(cur)?,
            }),
            other => Err(StoreError::Corrupt(format!(
                "status script answered {other:?}"
            ))),
        }
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
        let (meta, raw, older): (Vec<Option<String>>, Value, Value) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("HMGET").arg(&keys.meta).arg(&META_FIELDS[..]);
                if empty_beyond {
                    // Keep the reply shape: a range that is always empty.
                    pipe.cmd("XRANGE").arg(&keys.logs).arg("+").arg("-");
                } else {
                    match cursor {
                        Cursor::Latest => pipe.cmd("XREVRANGE").arg(&keys.logs).arg("+").arg("-"),
                        Cursor::Before(id) => pipe
                            .cmd("XREVRANGE")
                            .arg(&keys.logs)
                            .arg(format!("({id}"))
                            .arg("-"),
                        Cursor::After(id) => pipe
                            .cmd("XRANGE")
                            .arg(&keys.logs)
                            .arg(format!("({id}"))
                            .arg("+"),
                    };
                    pipe.arg("COUNT").arg(count);
                }
                // Whether anything precedes an `after` page: the cursor entry itself or older.
                match cursor {
                    Cursor::After(id) => pipe
                        .cmd("XREVRANGE")
                        .arg(&keys.logs)
                        .arg(id.to_string())
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                    _ => pipe.cmd("XRANGE").arg(&keys.logs).arg("+").arg("-"),
                };
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        let Some(meta) = parse_meta(meta)? else {
            return Ok(None);
        };
        let mut entries = parse_entries(raw)?;
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        let has_older = match cursor {
            Cursor::After(_) => !parse_entries(older)?.is_empty(),
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

    /// Up to `count` entries strictly after `after`, oldest first.
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
        let raw: Value = self
            .run(|mut c| {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(&logs)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        parse_entries(raw)
    }

    /// Registers WebSocket connection `connection` as following `job`: added to the
    /// job's connection set (which takes the job's TTL) and remembered under its own key
    /// for `$disconnect`, which only knows the connection id. One round trip.
    pub async fn add_connection(&self, job: &JobId, connection: &str) -> Result<(), StoreError> {
        let ws = JobKeys::new(job).ws;
        let by_id = ws_connection_key(connection);
        let ttl = self.retention.ttl_secs;
        self.run(|mut c| {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&ws).arg(connection).ignore();
            pipe.cmd("EXPIRE").arg(&ws).arg(ttl).ignore();
            pipe.cmd("SET")
                .arg(&by_id)
                .arg(job.as_str())
                .arg("EX")
                .arg(WS_CONNECTION_TTL_SECS)
                .ignore();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
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
    /// is answered 410 although the client is about to be connected. Two round trips.
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
        let ttls: Vec<i64> = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("TTL").arg(key);
                }
                async move { pipe.query_async(&mut c).await }
            })
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
    /// up every other command queued behind it.
    pub async fn blocking_reader(&self, block: Duration) -> Result<BlockingReader, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
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
                async move { inv.invoke_async(&mut c).await }
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
    conn: MultiplexedConnection,
    block: Duration,
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
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&logs)
            .arg(after.to_string())
            .query_async(&mut self.conn)
            .await?;
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
