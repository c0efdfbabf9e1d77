//! Reads: history pages with the job's metadata in one round trip, entries after an id
//! (both over the in-place reads of [`super::resp`]), and the blocking reader of the
//! live path.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Value};

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::StoredEntry;

use super::conn::{Backend, cluster_client, connect_cluster};
use super::jobs::{META_FIELDS, parse_meta};
use super::keys::{IDX_BLOCK, JobKeys};
use super::resp::{DecodeError, Replies};
use super::{CONNECT_TIMEOUT, Cursor, JobMeta, LogStore, Page, RESPONSE_TIMEOUT, StoreError};

/// The oldest entry still in a job's stream: where Redis's part of the log begins
/// (older entries, if any, are in the archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub id: EntryId,
    /// Its number; `None` for an entry stored before entries were numbered.
    pub n: Option<u64>,
}

impl LogStore {
    /// The job's metadata, one page of the entries Redis holds, and the stream's
    /// [`Head`], in one round trip. `None` if the job does not exist. `limit` must be at
    /// least 1. [`Cursor::At`] pages take a second round trip (see
    /// [`entries_from`](Self::entries_from)), and are empty when entry `n` has left
    /// Redis. Which tier answers a page is the caller's business (`crate::log`).
    pub async fn page(
        &self,
        job: &JobId,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Option<(JobMeta, Page, Option<Head>)>, StoreError> {
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
            Cursor::Latest | Cursor::At(_) => false,
        };
        let mut meta = redis::cmd("HMGET");
        meta.arg(&keys.meta).arg(&META_FIELDS[..]);
        let logs = keys.logs.as_str();
        let range = match (empty_beyond, cursor) {
            // Keep the reply shape: a range that is always empty.
            (true, _) | (false, Cursor::At(_)) => range_cmd("XRANGE", logs, "+", "-", None),
            (false, Cursor::Latest) => range_cmd("XREVRANGE", logs, "+", "-", Some(count)),
            (false, Cursor::Before(id)) => {
                range_cmd("XREVRANGE", logs, &format!("({id}"), "-", Some(count))
            }
            (false, Cursor::After(id)) => {
                range_cmd("XRANGE", logs, &format!("({id}"), "+", Some(count))
            }
        };
        let head = range_cmd("XRANGE", logs, "-", "+", Some(1));
        let cmds = [meta, range, head];
        let (meta, mut entries, head) = self
            .direct
            .query(keys.meta.as_bytes(), &cmds, |replies| {
                replies.next_reply()?;
                let meta = decode_strings(replies)?;
                replies.next_reply()?;
                let entries = decode_entries(replies)?;
                replies.next_reply()?;
                let head = decode_entries(replies)?;
                Ok((meta, entries, head))
            })
            .await?;
        let Some(meta) = parse_meta(meta)? else {
            return Ok(None);
        };
        let head = head.first().map(|e| Head { id: e.id, n: e.n() });
        if let Cursor::At(n) = cursor {
            let entries = match head {
                Some(Head { n: Some(first), .. }) if n >= first => {
                    self.entries_from(job, n, count).await?
                }
                _ => Vec::new(),
            };
            return Ok(Some((meta, at_page(entries, limit), head)));
        }
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        let has_older = match (cursor, entries.first(), head) {
            (Cursor::After(_), Some(first), Some(head)) => first.id > head.id,
            (Cursor::After(id), None, Some(head)) => id >= head.id,
            (Cursor::After(_), _, None) => false,
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
            head,
        )))
    }

    /// Up to `count` entries from entry number `n` on, found through the job's `idx`
    /// hash (the id of every 256th entry): two round trips, and at most 255 entries
    /// read in vain. Empty when entry `n` is not in Redis (trimmed, or not written yet).
    pub async fn entries_from(
        &self,
        job: &JobId,
        n: u64,
        count: usize,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let keys = JobKeys::new(job);
        if n == 0 {
            return Ok(Vec::new());
        }
        let block = (n - 1) / IDX_BLOCK;
        let start: Option<String> = self
            .run(|mut c| {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(&keys.idx).arg(block);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        let Some(start) = start else {
            return Ok(Vec::new());
        };
        let skip = (n - 1) % IDX_BLOCK;
        let cmd = range_cmd(
            "XRANGE",
            &keys.logs,
            &start,
            "+",
            Some(skip as usize + count),
        );
        let mut entries = self
            .direct
            .query(keys.logs.as_bytes(), &[cmd], |replies| {
                replies.next_reply()?;
                decode_entries(replies)
            })
            .await?;
        // The block's first entry may have been trimmed (a capped stream): then `n` is
        // not where the block says, and the answer is only right from an entry with
        // its number on.
        match entries.iter().position(|e| e.n() == Some(n)) {
            Some(at) => {
                entries.drain(..at);
                entries.truncate(count);
                Ok(entries)
            }
            None => Ok(Vec::new()),
        }
    }
}

/// A page from `entries` (up to `limit + 1`, from entry `n` on).
fn at_page(mut entries: Vec<StoredEntry>, limit: usize) -> Page {
    let has_more = entries.len() > limit;
    entries.truncate(limit);
    let has_older = entries
        .first()
        .and_then(StoredEntry::n)
        .is_some_and(|n| n > 1);
    Page {
        entries,
        has_more,
        has_older,
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
    /// pages ([`super::resp`]): the archiver and SSE replays ask for thousands at once.
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

    /// [`entries_after`](Self::entries_after), with the number of the newest entry
    /// Redis holds at or before `after` (`None` when it holds none: `after` is older
    /// than the stream, or the stream is empty), in one round trip: the entries follow
    /// `after` without a gap exactly when the first one's number is one more.
    pub async fn entries_after_joined(
        &self,
        job: &JobId,
        after: EntryId,
        count: usize,
    ) -> Result<(Option<u64>, Vec<StoredEntry>), StoreError> {
        let logs = JobKeys::new(job).logs;
        let at = range_cmd("XREVRANGE", &logs, &after.to_string(), "-", Some(1));
        let next = if after
            == (EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            }) {
            // Keep the reply shape: a range that is always empty.
            range_cmd("XRANGE", &logs, "+", "-", None)
        } else {
            range_cmd("XRANGE", &logs, &format!("({after}"), "+", Some(count))
        };
        self.direct
            .query(logs.as_bytes(), &[at, next], |replies| {
                replies.next_reply()?;
                let at = decode_entries(replies)?;
                replies.next_reply()?;
                let entries = decode_entries(replies)?;
                Ok((at.first().and_then(StoredEntry::n), entries))
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

pub(super) fn parse_id(raw: &str) -> Result<EntryId, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad stream id {raw:?}")))
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
/// [`super::resp`].
fn decode_entries(replies: &mut Replies<'_>) -> Result<Vec<StoredEntry>, DecodeError> {
    let bad = || DecodeError::Corrupt("malformed stream entry".into());
    let n = replies.array()?.unwrap_or(0);
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        if replies.array()? != Some(2) {
            return Err(bad());
        }
        let id = replies.bulk()?.ok_or_else(bad)?;
        let id = EntryId::from_ascii(id).map_err(|_| bad())?;
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
