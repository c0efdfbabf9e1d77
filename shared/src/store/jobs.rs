//! Job writes and the archive queue: creating a job, appending a batch, moving its
//! status, and the queue of finished jobs waiting for the archiver.

use logstream_core::ids::JobId;
use logstream_core::model::{EntryBody, JobStatus, NewEntry};

use super::keys::{ARCHIVE_QUEUE, JobKeys};
use super::reads::parse_id;
use super::scripts::{APPEND, CREATE, MARK_ARCHIVED, SET_STATUS};
use super::sockets::Socket;
use super::{AppendOutcome, JobMeta, LogStore, NewJob, Retention, StatusOutcome, StoreError};

impl LogStore {
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
        self.append_carrying(job, generation, seq, None, entries)
            .await
    }

    /// [`append`](Self::append) for a batch sanitized from private-key carry `from`
    /// that ends at carry `to` (see `logstream_core::sanitize::Batch::carry`): appended
    /// only when the job's stored carry is `from`, which then becomes `to`, in the same
    /// round trip. Otherwise [`AppendOutcome::Carry`] with the stored one.
    pub async fn append_carrying(
        &self,
        job: &JobId,
        generation: &str,
        seq: Option<u64>,
        carry: Option<(u32, u32)>,
        entries: &[String],
    ) -> Result<AppendOutcome, StoreError> {
        if entries.is_empty() {
            return Err(StoreError::Corrupt("append called with no entries".into()));
        }
        let keys = JobKeys::new(job);
        let seq = seq.map(|s| s.to_string()).unwrap_or_default();
        let Retention { ttl_secs, maxlen } = self.retention;
        let (from, to) = carry.map_or((String::new(), String::new()), |(from, to)| {
            (from.to_string(), to.to_string())
        });
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = APPEND.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.ws)
                    .arg(generation)
                    .arg(&seq)
                    .arg(ttl_secs)
                    .arg(maxlen)
                    .arg(&from)
                    .arg(&to)
                    .arg(entries);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [tag, first, last, connections @ ..] if tag == "ok" => Ok(AppendOutcome::Appended {
                first: parse_id(first)?,
                last: parse_id(last)?,
                connections: Socket::from_pairs(connections)?,
            }),
            [tag] if tag == "duplicate" => Ok(AppendOutcome::Duplicate),
            [tag] if tag == "missing" => Ok(AppendOutcome::NotFound),
            [tag] if tag == "stale" => Ok(AppendOutcome::Stale),
            [tag, carry] if tag == "carry" => {
                Ok(AppendOutcome::Carry(carry.parse().map_err(|_| {
                    StoreError::Corrupt("private-key carry".into())
                })?))
            }
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
                    connections: Socket::from_pairs(connections)?,
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
}

/// The archive queue (see [`super::keys`]): finished jobs waiting for the archiver.
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

pub(super) const META_FIELDS: [&str; 8] = [
    "owner",
    "status",
    "created_at",
    "finished_at",
    "archived",
    "token",
    "secrets",
    "gen",
];

fn parse_status(raw: &str) -> Result<JobStatus, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad job status {raw:?}")))
}

pub(super) fn parse_meta(values: Vec<Option<String>>) -> Result<Option<JobMeta>, StoreError> {
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
