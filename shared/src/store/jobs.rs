//! Job writes and the archive queue: creating a job, appending a batch, moving its
//! status, and the queue of finished jobs waiting for the archiver.

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{
    EntryBody, JobStatus, LineStream, NewEntry, now_ms, numbered_json_parts,
};

use super::keys::{ARCHIVE_QUEUE, JobKeys};
use super::reads::parse_id;
use super::scripts::{
    ADD_SECRETS, APPEND, ARCHIVED_UPTO, CREATE, LEASE, MARK_ARCHIVED, RELEASE, REVOKE_SHARES,
    SET_STATUS, SHARE_ISSUE,
};

/// How long a job's share generation is kept after its last use: longer than any
/// share link lives.
pub const SHARE_RECORD_SECS: u64 = 8 * 24 * 3600;
use super::sockets::Socket;
use super::{
    AppendBatch, AppendOutcome, Appended, JobMeta, LogStore, NewJob, SecretsOutcome, StatusOutcome,
    StoreError, ToAppend,
};

impl LogStore {
    /// Creates a job; `false` if the id is taken (by a job, or by a deleted job's
    /// tombstone).
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
        let mut fields: Vec<&str> = fields.to_vec();
        if let Some(org) = new.org {
            fields.extend(["org", org]);
        }
        let ttl = self.retention.ttl_secs;
        if self.retention.archived {
            // Queued before it exists, so no job with an archive is ever left out of
            // the queue (a failure here creates nothing; a queued id that then turns
            // out to be taken is the existing job's visit, which is harmless).
            let first_visit = new.created_at + self.retention.segment_secs * 1000;
            self.zadd(job, "NX", first_visit).await?;
        }
        let created: i64 = self
            .run(|mut c| {
                let mut inv = CREATE.key(&keys.meta);
                inv.key(&keys.deleted).arg(ttl).arg(&fields[..]);
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
    /// all or nothing (but for lines past the job's size limit). `gen` guards against a
    /// recreated job id ('' skips the check). Decodes each entry for its size: the
    /// ingest path, which built them, uses [`append_batch`](Self::append_batch).
    pub async fn append(
        &self,
        job: &JobId,
        generation: &str,
        seq: Option<u64>,
        entries: &[String],
    ) -> Result<AppendOutcome, StoreError> {
        let entries: Vec<ToAppend> = entries
            .iter()
            .map(|json| {
                let entry: NewEntry = serde_json::from_str(json)
                    .map_err(|e| StoreError::Corrupt(format!("entry to append: {e}")))?;
                Ok(ToAppend {
                    json: json.clone(),
                    text_bytes: text_bytes(&entry),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        if entries.is_empty() {
            return Err(StoreError::Corrupt("append called with no entries".into()));
        }
        self.append_batch(
            job,
            &AppendBatch {
                check: generation,
                seq,
                carry: None,
                open: None,
                masks: &[],
                first_n: None,
                entries: &entries,
            },
        )
        .await
    }

    /// Appends `batch` (see [`AppendBatch`]): only when the job's stored private-key
    /// carry and open groups are those the batch was made from, which then become those
    /// it ends at, in the same round trip; otherwise [`AppendOutcome::Carry`] with the
    /// stored ones. A batch may have no entries (its lines were all markers): its `seq`
    /// and masks are still recorded.
    pub async fn append_batch(
        &self,
        job: &JobId,
        batch: &AppendBatch<'_>,
    ) -> Result<AppendOutcome, StoreError> {
        let keys = JobKeys::new(job);
        let seq = batch.seq.map(|s| s.to_string()).unwrap_or_default();
        let r = self.retention;
        let (from, to) = batch
            .carry
            .map_or((String::new(), String::new()), |(from, to)| {
                (from.to_string(), to.to_string())
            });
        let (open_from, open_to) = batch.open.clone().unwrap_or_default();
        let masks = if batch.masks.is_empty() {
            String::new()
        } else {
            serde_json::to_string(batch.masks)
                .map_err(|e| StoreError::Corrupt(format!("masks: {e}")))?
        };
        let entries = batch.entries;
        let first_n = batch.first_n.map(|n| n.to_string()).unwrap_or_default();
        let total: u64 = entries.iter().map(|e| e.text_bytes).sum();
        let mut sizes = String::with_capacity(entries.len() * 4);
        let mut digits = itoa::Buffer::new();
        for entry in entries {
            if !sizes.is_empty() {
                sizes.push(',');
            }
            sizes.push_str(digits.format(entry.text_bytes));
        }
        let generation = batch.check;
        let notice = size_notice(r.max_job_bytes);
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = APPEND.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.ws)
                    .key(&keys.idx)
                    .arg(generation)
                    .arg(&seq)
                    .arg(r.ttl_secs)
                    .arg(r.cap())
                    .arg(&from)
                    .arg(&to)
                    .arg(r.max_job_bytes)
                    .arg(&notice)
                    .arg(r.segment_lines.max(1))
                    .arg(r.segment_bytes.max(1))
                    .arg(&open_from)
                    .arg(&open_to)
                    .arg(&masks)
                    .arg(&first_n)
                    .arg(total)
                    .arg(&sizes);
                // `{"n":N,` is at most 26 bytes more than an entry's unnumbered JSON.
                inv.reserve(entries.iter().map(|e| e.json.len() + 26));
                match batch.first_n {
                    Some(first) => {
                        let mut digits = itoa::Buffer::new();
                        for (entry, n) in entries.iter().zip(first..) {
                            inv.arg_parts(&numbered_json_parts(&entry.json, n, &mut digits));
                        }
                    }
                    None => {
                        for entry in entries {
                            inv.arg(&entry.json);
                        }
                    }
                }
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [
                tag,
                first,
                last,
                first_n,
                accepted,
                dropped,
                notice,
                due,
                connections @ ..,
            ] if tag == "ok" => {
                let ids = if first.is_empty() {
                    None
                } else {
                    Some((parse_id(first)?, parse_id(last)?))
                };
                let number = |raw: &str| -> Result<u64, StoreError> {
                    raw.parse()
                        .map_err(|_| StoreError::Corrupt(format!("append answered {raw:?}")))
                };
                Ok(AppendOutcome::Appended(Appended {
                    ids,
                    first_n: if first_n.is_empty() {
                        0
                    } else {
                        number(first_n)?
                    },
                    accepted: number(accepted)? as usize,
                    dropped: number(dropped)? as usize,
                    notice: notice == "1",
                    segment_due: due == "1",
                    connections: Socket::from_pairs(connections)?,
                }))
            }
            [tag] if tag == "duplicate" => Ok(AppendOutcome::Duplicate),
            [tag] if tag == "missing" => Ok(AppendOutcome::NotFound),
            [tag] if tag == "stale" => Ok(AppendOutcome::Stale),
            [tag, pem, open] if tag == "carry" => Ok(AppendOutcome::Carry {
                pem: pem
                    .parse()
                    .map_err(|_| StoreError::Corrupt("private-key carry".into()))?,
                open: open.clone(),
            }),
            [tag, status] if tag == "terminal" => {
                Ok(AppendOutcome::Terminal(parse_status(status)?))
            }
            other => Err(StoreError::Corrupt(format!(
                "append script answered {other:?}"
            ))),
        }
    }

    /// Registers `secrets` for the rest of the running job (the `ADD_SECRETS` script), at
    /// most `max` in all.
    pub async fn add_secrets(
        &self,
        job: &JobId,
        secrets: &[String],
        max: usize,
    ) -> Result<SecretsOutcome, StoreError> {
        let keys = JobKeys::new(job);
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = ADD_SECRETS.key(&keys.meta);
                inv.arg(max);
                for secret in secrets {
                    inv.arg(secret);
                }
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        let count = |raw: &str| {
            raw.parse::<usize>()
                .map_err(|_| StoreError::Corrupt(format!("add_secrets answered {raw:?}")))
        };
        match reply.as_slice() {
            [tag, added] if tag == "ok" => Ok(SecretsOutcome::Added(count(added)?)),
            [tag, have] if tag == "full" => Ok(SecretsOutcome::Full(count(have)?)),
            [tag] if tag == "missing" => Ok(SecretsOutcome::NotFound),
            [tag] if tag == "terminal" => Ok(SecretsOutcome::Terminal),
            other => Err(StoreError::Corrupt(format!(
                "add_secrets answered {other:?}"
            ))),
        }
    }

    /// The job's share generation: share links issued under another one are revoked,
    /// and with none on record (no link was issued, or the record was lost) every link
    /// is.
    pub async fn share_generation(&self, job: &JobId) -> Result<Option<u64>, StoreError> {
        let key = JobKeys::new(job).share;
        self.run(|mut c| {
            let key = key.clone();
            async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
        })
        .await
    }

    /// The share generation to issue a link under, on record for [`SHARE_RECORD_SECS`]
    /// from now (a link lives at most 7 days): the job's, or a random one for its first
    /// link.
    pub async fn issue_share(&self, job: &JobId) -> Result<u64, StoreError> {
        let key = JobKeys::new(job).share;
        let value: u64 = self
            .run(|mut c| {
                let mut inv = SHARE_ISSUE.key(&key);
                inv.arg(SHARE_RECORD_SECS).arg(random_generation());
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        Ok(value)
    }

    /// Revokes every share link of the job: its share generation goes up by one, and
    /// the WebSocket connections made with a link leave the job's hash. Returns the new
    /// generation and those connections, for the caller to close (their own keys go
    /// with their `$disconnect`).
    pub async fn revoke_shares(&self, job: &JobId) -> Result<(u64, Vec<String>), StoreError> {
        let keys = JobKeys::new(job);
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = REVOKE_SHARES.key(&keys.share);
                inv.key(&keys.ws)
                    .arg(SHARE_RECORD_SECS)
                    .arg(random_generation());
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        let Some((generation, connections)) = reply.split_first() else {
            return Err(StoreError::Corrupt("revoke answered nothing".into()));
        };
        let generation = generation
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("share generation {generation:?}")))?;
        Ok((generation, connections.to_vec()))
    }

    /// Moves the job to `to`, appending a `status` entry stamped `ts`. A terminal status
    /// also makes the job due for the archiver at once.
    ///
    /// The status change is one script on the job's keys; queueing is a second command
    /// (`ZADD LT`), because the queue lives in another cluster slot. If that second
    /// step fails the caller gets an error (503) and retries, and the retry, answered
    /// [`StatusOutcome::Same`], queues the job then: a terminal job that is neither
    /// archived nor queued cannot come out of a request that succeeded. Only terminal
    /// changes pay the second round trip, once per job.
    pub async fn set_status(
        &self,
        job: &JobId,
        to: JobStatus,
        ts: u64,
        exit_code: Option<i64>,
    ) -> Result<StatusOutcome, StoreError> {
        let keys = JobKeys::new(job);
        let entry = NewEntry {
            ts,
            body: EntryBody::Status {
                status: to,
                exit_code: exit_code.filter(|_| to.is_terminal()),
                duration_ms: None,
            },
        }
        .to_stored_json();
        let exit = exit_code.map(|c| c.to_string()).unwrap_or_default();
        let r = self.retention;
        let reply: Vec<String> = self
            .run(|mut c| {
                let mut inv = SET_STATUS.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.ws)
                    .key(&keys.idx)
                    .arg(to.as_str())
                    .arg(&entry)
                    .arg(r.ttl_secs)
                    .arg(r.cap())
                    .arg(ts)
                    .arg(&exit);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [tag, id, n, duration, connections @ ..] if tag == "ok" => {
                let id = parse_id(id)?;
                if to.is_terminal() {
                    self.schedule_archive(job, ts).await?;
                }
                let corrupt = |what: &str, raw: &str| {
                    StoreError::Corrupt(format!("status answered {what} {raw:?}"))
                };
                Ok(StatusOutcome::Changed {
                    id,
                    n: n.parse().map_err(|_| corrupt("n", n))?,
                    duration_ms: match duration.as_str() {
                        "" => None,
                        d => Some(d.parse().map_err(|_| corrupt("duration", d))?),
                    },
                    connections: Socket::from_pairs(connections)?,
                })
            }
            [tag, finished_at, archived] if tag == "same" => {
                if to.is_terminal() && archived != "1" {
                    let finished_at = finished_at.parse().unwrap_or(ts);
                    self.schedule_archive(job, finished_at).await?;
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

    /// Makes the job due for the archiver at `at` (ms) or earlier: queued if it was
    /// not, moved forward if it was queued for later (`ZADD LT`), left alone if it is
    /// due sooner already.
    pub async fn schedule_archive(&self, job: &JobId, at: u64) -> Result<(), StoreError> {
        self.zadd(job, "LT", at).await
    }

    /// Queues the job for its next visit at `at` (ms), whatever it was queued for, but
    /// only if it is still queued (`ZADD XX`): what the archiver does after a visit
    /// that leaves the job running.
    pub async fn reschedule_archive(&self, job: &JobId, at: u64) -> Result<(), StoreError> {
        self.zadd(job, "XX", at).await
    }

    async fn zadd(&self, job: &JobId, flag: &'static str, at: u64) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("ZADD")
                .arg(ARCHIVE_QUEUE)
                .arg(flag)
                .arg(at)
                .arg(job.as_str())
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Takes the job's flush lease for `lease_ms` under `token`; `false` when another
    /// archiver holds it. Two archivers never write one job's segments at once.
    pub async fn take_flush_lease(
        &self,
        job: &JobId,
        token: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = JobKeys::new(job).flush;
        let taken: i64 = self
            .run(|mut c| {
                let mut inv = LEASE.key(&key);
                inv.arg(token).arg(lease_ms);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        Ok(taken == 1)
    }

    /// Gives the lease back if it is still `token`'s.
    pub async fn release_flush_lease(&self, job: &JobId, token: &str) -> Result<(), StoreError> {
        let key = JobKeys::new(job).flush;
        self.run(|mut c| {
            let mut inv = RELEASE.key(&key);
            inv.arg(token);
            async move { inv.invoke::<i64>(&mut c).await }
        })
        .await
        .map(drop)
    }

    /// Records that the archive's segments hold the job's entries up to number `n`
    /// (id `id`, `stored_bytes` of JSON up to there) and trims what Redis no longer needs
    /// (see [`ARCHIVED_UPTO`]). Answers the entries removed from the stream, or `None`
    /// when the job is gone, was recreated, or was recorded that far already.
    pub async fn archived_upto(
        &self,
        job: &JobId,
        generation: &str,
        n: u64,
        id: EntryId,
        stored_bytes: u64,
    ) -> Result<Option<u64>, StoreError> {
        let keys = JobKeys::new(job);
        let keep = self.retention.maxlen;
        let removed: i64 = self
            .run(|mut c| {
                let mut inv = ARCHIVED_UPTO.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.idx)
                    .arg(generation)
                    .arg(n)
                    .arg(id.to_string())
                    .arg(stored_bytes)
                    .arg(keep);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        Ok(u64::try_from(removed).ok())
    }
}

/// What a line counts against its job's size limit: its text bytes (other entries: 0).
pub fn text_bytes(entry: &NewEntry) -> u64 {
    match &entry.body {
        EntryBody::Line { text, .. } => text.len() as u64,
        _ => 0,
    }
}

/// The `system` line stored once, where a job passes its size limit.
fn size_notice(limit: u64) -> String {
    NewEntry {
        ts: now_ms(),
        body: EntryBody::Line {
            stream: LineStream::System,
            text: format!("log exceeded the limit of {limit} bytes; further output is discarded"),
            ansi: None,
        },
    }
    .to_stored_json()
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

    /// Up to `count` jobs due for the archiver at `now` (ms), soonest first, with the
    /// time each was due. Members come back raw, like [`archive_queue`](Self::archive_queue).
    pub async fn due_for_archive(
        &self,
        now: u64,
        count: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let members: Vec<(String, f64)> = self
            .run(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(ARCHIVE_QUEUE)
                    .arg("-inf")
                    .arg(now)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(count)
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

pub(super) const META_FIELDS: [&str; 19] = [
    "owner",
    "status",
    "created_at",
    "finished_at",
    "archived",
    "token",
    "secrets",
    "gen",
    "n",
    "bytes",
    "trunc",
    "stored",
    "arch_n",
    "arch_id",
    "arch_b",
    "sv",
    "org",
    "exit",
    "dur",
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
        entries,
        bytes,
        truncated,
        stored_bytes,
        archived_n,
        archived_id,
        archived_bytes,
        secrets_version,
        org,
        exit_code,
        duration_ms,
    ]: [Option<String>; 19] = values
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
        entries: number("n", entries)?.unwrap_or(0),
        bytes: number("bytes", bytes)?.unwrap_or(0),
        truncated: truncated.as_deref() == Some("1"),
        stored_bytes: number("stored", stored_bytes)?.unwrap_or(0),
        archived_upto: match (number("arch_n", archived_n)?, archived_id) {
            (Some(n), Some(id)) => Some((n, parse_id(&id)?)),
            _ => None,
        },
        archived_bytes: number("arch_b", archived_bytes)?.unwrap_or(0),
        secrets_version: number("sv", secrets_version)?.unwrap_or(0),
        org,
        exit_code: exit_code
            .map(|r| {
                r.parse()
                    .map_err(|_| StoreError::Corrupt(format!("bad exit {r:?}")))
            })
            .transpose()?,
        duration_ms: number("dur", duration_ms)?,
    }))
}

/// A share generation to start a job's record at: random, so that a record lost and
/// made again does not take up a number links were issued under (below 2^32: it is a
/// Lua number in the scripts).
fn random_generation() -> u64 {
    u64::from_str_radix(&logstream_core::ids::random_hex(4), 16).unwrap_or(1)
}
