//! Redis key layout. Every key name is built here and nowhere else.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `job:{ID}:logs` | stream | the job's entries, field `e` = entry JSON without its id; `XADD MAXLEN ~ $LOGSTREAM_MAXLEN` |
//! | `job:{ID}:meta` | hash | `owner`, `status`, `created_at`, `finished_at`, `token` (SHA-256 of the ingest token), `secrets` (JSON array), `mk` (the groups and sections build markers left open), `seq` (last accepted batch seq), `gen`, `archived` (the whole job is in `build.jsonl`), `pem` (private-key carry), `n` (the last entry's number), `bytes` (stored text bytes), `trunc` (the size limit was hit), `stored` (stored JSON bytes), `arch_n`/`arch_id`/`arch_b` (number, id and JSON bytes archived so far in segments), `idx_lo` (the lowest block left in `idx`), `sv` (how many times secrets were added), `org` (the organisation that reads it too) |
//! | `job:{ID}:idx` | hash | block `b` → the id of entry `n = 256·b + 1`: where entry numbers are found in the stream (`?at=N`) |
//! | `job:{ID}:flush` | string | the lease of the archiver flushing the job's segments (a random token, with an expiry) |
//! | `job:{ID}:deleted` | hash | the tombstone of a deleted job, its one key left: `owner`, `org`, `at` (ms); its id cannot be taken again while it lives (`LOGSTREAM_TTL_SECS`, at least 8 days), and readers and the archiver take it as "deleted", not "expired" |
//! | `job:{ID}:share` | string | the job's share generation, set (at random) by its first share link: revoking its share links increments it; a link verifies only while it holds the link's generation (8 days' TTL from its last use, beyond any link's life and the job's own keys) |
//! | `job:{ID}:ws` | hash | WebSocket connection id → its token's expiry (ms, 0 for none; a share link's followed by `:` and its share generation), for every connection following the job |
//! | `logstream:ws-conn:{CONNECTION}` | string | the job a WebSocket connection follows, for `$disconnect` (which only knows the connection id); 2 h TTL, API Gateway's longest connection |
//! | `logstream:archive-queue` | sorted set | jobs the archiver must visit, scored by when (ms): every job from its creation while there is an archive, due at once when a segment is full or the job ends, else one segment period after the last visit |
//!
//! The `{ID}` braces are a Redis Cluster hash tag: all of one job's keys live in one
//! slot, so the Lua scripts and pipelines that touch them together stay legal in
//! cluster mode. The two keys outside any job (the archive queue, a connection's own
//! key) are never in a script or pipeline with a job's keys: they get commands of their
//! own (see [`super`]).
//! Every job key gets the TTL (`LOGSTREAM_TTL_SECS`, 24 h) on creation and again on
//! every write, so an active job never expires and an abandoned one cleans itself up.
//!
//! `gen` is a random value set when the job is created. The ingest function caches a
//! job's settings (owner, token hash, secrets) per process; the append script compares
//! `gen`, and `sv` once secrets were added (`POST /jobs/{id}/secrets`), so a cache
//! entry for an expired-and-recreated job id, or one from before the job got more
//! secrets, is detected instead of sanitizing with the wrong secrets.

use logstream_core::ids::JobId;

/// The archive queue, shared by all jobs.
pub const ARCHIVE_QUEUE: &str = "logstream:archive-queue";

/// How long a connection's own key lives: API Gateway closes every WebSocket
/// connection after 2 hours.
pub const WS_CONNECTION_TTL_SECS: u64 = 7200;

/// The key remembering which job WebSocket connection `connection` follows. Outside the
/// job's hash tag (the connection id is all `$disconnect` has), so it is never touched
/// in the same script as the job's keys.
pub fn ws_connection_key(connection: &str) -> String {
    format!("logstream:ws-conn:{connection}")
}

/// The keys of one job.
#[derive(Debug, Clone)]
pub struct JobKeys {
    pub logs: String,
    pub meta: String,
    pub ws: String,
    pub idx: String,
    pub flush: String,
    /// The job's share generation (see `crate::auth::share`).
    pub share: String,
    /// The tombstone a deletion leaves.
    pub deleted: String,
}

impl JobKeys {
    pub fn new(job: &JobId) -> Self {
        Self {
            logs: format!("job:{{{job}}}:logs"),
            meta: format!("job:{{{job}}}:meta"),
            ws: format!("job:{{{job}}}:ws"),
            idx: format!("job:{{{job}}}:idx"),
            flush: format!("job:{{{job}}}:flush"),
            share: format!("job:{{{job}}}:share"),
            deleted: format!("job:{{{job}}}:deleted"),
        }
    }
}

/// Entries per block of the `idx` hash: entry `n` is found by reading from the id of
/// block `(n - 1) / IDX_BLOCK` at most this many entries ahead.
pub const IDX_BLOCK: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_share_one_hash_tag() {
        let keys = JobKeys::new(&JobId::parse("build-7").unwrap());
        assert_eq!(keys.logs, "job:{build-7}:logs");
        assert_eq!(keys.meta, "job:{build-7}:meta");
        assert_eq!(keys.ws, "job:{build-7}:ws");
        assert_eq!(keys.idx, "job:{build-7}:idx");
        assert_eq!(keys.flush, "job:{build-7}:flush");
        assert_eq!(keys.share, "job:{build-7}:share");
        assert_eq!(keys.deleted, "job:{build-7}:deleted");
    }
}
