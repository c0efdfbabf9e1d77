//! Deleting a job: its keys go, a tombstone stays, and whoever follows the job hears of
//! it.
//!
//! [`LogStore::delete_job`] takes three steps, in this order:
//! 1. the entry [`DELETED_ENTRY`] is appended to the job's stream, in a command of its
//!    own. Redis serves every client blocked in `XREAD` on the stream before it runs
//!    the next command, so every live feed of the job (each SSE process's `hub`) reads
//!    it and ends its streams with `event: deleted` at once. A feed that was between
//!    two reads misses it; its streams find the tombstone at their next check
//!    ([`LogStore::presence`], every heartbeat interval);
//! 2. one script deletes every key of the job and leaves the tombstone
//!    (`job:{ID}:deleted`, see [`super::keys`]), the one key left; it answers the
//!    job's WebSocket connections, for the caller to close;
//! 3. with an archive, the job is queued for the archiver at once: its visit finds the
//!    tombstone and removes whatever of the job the archive still holds, so a segment
//!    an archiver was writing while the job was deleted does not outlive it (see the
//!    archiver's module doc).
//!
//! The tombstone keeps the owner (a second delete by the same caller is answered as the
//! first was) and keeps the id from being taken again while it lives (the job's TTL, and
//! at least as long as a share link lives: 8 days), so nothing of a later job of the
//! same id can be mistaken for the deleted one's, and no share link of the deleted job
//! (its share generation is gone with its keys) outlives it to read a later one.

use logstream_core::ids::JobId;
use logstream_core::model::now_ms;

use super::jobs::SHARE_RECORD_SECS;
use super::keys::JobKeys;
use super::scripts::DELETE;
use super::{LogStore, StoreError};

/// The entry that tells a job's followers it was deleted. It has no `n`: it is never
/// part of the log, only a signal, and the stream is deleted right after it.
pub const DELETED_ENTRY: &str = r#"{"kind":"deleted"}"#;

/// What a deleted job's tombstone remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub owner: String,
    pub org: Option<String>,
    /// When it was deleted (ms).
    pub at: u64,
}

impl crate::auth::ReadableJob for Tombstone {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }
}

/// Where a job stands, as a stream that follows it checks now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Its keys are in Redis.
    pub live: bool,
    /// It was deleted (its tombstone is there).
    pub deleted: bool,
    /// Its share generation (see `crate::auth::share`), when one is on record.
    pub share_generation: Option<u64>,
}

impl LogStore {
    /// Deletes the job's keys (see the module doc), leaving a tombstone naming `owner`
    /// and `org`; answers the ids of the WebSocket connections that followed it.
    /// Idempotent: deleting a deleted job renews its tombstone.
    pub async fn delete_job(
        &self,
        job: &JobId,
        owner: &str,
        org: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let keys = JobKeys::new(job);
        let _: Option<String> = self
            .run(|mut c| {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&keys.logs)
                    .arg("NOMKSTREAM")
                    .arg("*")
                    .arg("e")
                    .arg(DELETED_ENTRY);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        // The tombstone outlives the job's keys would have, and any share link.
        let ttl = self.retention.ttl_secs.max(SHARE_RECORD_SECS);
        let now = now_ms();
        let connections: Vec<String> = self
            .run(|mut c| {
                let mut inv = DELETE.key(&keys.meta);
                inv.key(&keys.logs)
                    .key(&keys.ws)
                    .key(&keys.idx)
                    .key(&keys.flush)
                    .key(&keys.share)
                    .key(&keys.deleted)
                    .arg(ttl)
                    .arg(owner)
                    .arg(org.unwrap_or(""))
                    .arg(now);
                async move { inv.invoke(&mut c).await }
            })
            .await?;
        if self.retention.archived {
            self.schedule_archive(job, now).await?;
        }
        Ok(connections)
    }

    /// The job's tombstone, if it was deleted (and the tombstone lives).
    pub async fn tombstone(&self, job: &JobId) -> Result<Option<Tombstone>, StoreError> {
        let key = JobKeys::new(job).deleted;
        let (owner, org, at): (Option<String>, Option<String>, Option<u64>) = self
            .run(|mut c| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key).arg("owner").arg("org").arg("at");
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(owner.map(|owner| Tombstone {
            owner,
            org,
            at: at.unwrap_or(0),
        }))
    }

    /// Whether the job is in Redis, whether it was deleted, and its share generation:
    /// one pipelined round trip.
    pub async fn presence(&self, job: &JobId) -> Result<Presence, StoreError> {
        let keys = JobKeys::new(job);
        let (live, deleted, share): (bool, bool, Option<u64>) = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("EXISTS")
                    .arg(&keys.meta)
                    .cmd("EXISTS")
                    .arg(&keys.deleted)
                    .cmd("GET")
                    .arg(&keys.share);
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(Presence {
            live,
            deleted,
            share_generation: share,
        })
    }
}
