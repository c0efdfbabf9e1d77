//! One blocking reader per followed job per process, fanned out to every viewer.
//!
//! A [`Feed`] owns a dedicated Redis connection and loops on `XREAD BLOCK` after the
//! newest id it has seen, broadcasting each batch of new entries to the viewers of its
//! job. Two hundred viewers of one job cost one Redis connection, not two hundred.
//! Viewers that arrive together, before the job has a feed, wait for the first of them
//! to connect its reader (and fail with it if it cannot) rather than each connecting.
//! The block time is bounded so a feed whose viewers have all left notices and ends.
//! On a Redis Cluster a feed's connection is a cluster connection of its own (a socket
//! per node), so its reads follow the job's slot through a failover or a resharding.
//!
//! Viewers join without a gap or a duplicate whatever the feed's position: a viewer
//! subscribes first, then reads the history after its own cursor from Redis, then
//! takes broadcast entries newer than the last one it sent. Anything appended after the
//! subscription is broadcast to it; anything before is in the history it read.
//! A viewer that falls behind the broadcast buffer (`Lagged`) rereads from Redis the
//! same way, so a slow reader loses nothing either; one that stops reading lets go of
//! the feed altogether (see the sse function's module doc), so it cannot hold the
//! buffer's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::StoredEntry;
use logstream_shared::store::{LogStore, StoreError};

/// How long one `XREAD` blocks: the longest a feed without viewers lingers.
pub const BLOCK: Duration = Duration::from_secs(1);
/// Batches a viewer may fall behind before it rereads from Redis.
const BUFFER: usize = 256;
/// Most entries one `XREAD` returns.
const READ_COUNT: usize = 1000;

/// What a feed broadcasts.
#[derive(Debug, Clone)]
pub enum FeedMsg {
    /// New entries, oldest first.
    Entries(Arc<Vec<StoredEntry>>),
    /// Redis failed; the feed has ended. Viewers end their stream (without `done`) so
    /// clients reconnect and resume with `Last-Event-ID`.
    Failed,
}

/// The feeds of one process.
pub struct Hub {
    store: LogStore,
    feeds: Mutex<HashMap<JobId, broadcast::Sender<FeedMsg>>>,
    /// Jobs whose feed a viewer is starting (connecting its reader): viewers that
    /// arrive meanwhile wait for it rather than each opening a connection to drop.
    /// The gate holds why the start failed, if it did: the waiters fail with it rather
    /// than each trying (and timing out) in turn.
    starting: Mutex<HashMap<JobId, Arc<Gate>>>,
}

impl Hub {
    pub fn new(store: LogStore) -> Arc<Self> {
        Arc::new(Self {
            store,
            feeds: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
        })
    }

    /// Subscribes to the job's feed, starting one if there is none. `start` must be an
    /// id the caller read from Redis *before* this call (or `0-0`): a new feed reads
    /// after it, so nothing appended after the subscription can be missed.
    pub async fn subscribe(
        self: &Arc<Self>,
        job: &JobId,
        start: EntryId,
    ) -> Result<broadcast::Receiver<FeedMsg>, StoreError> {
        if let Some(rx) = self.existing(job) {
            return Ok(rx);
        }
        // One viewer per job connects; the others wait for it and then find its feed,
        // or fail as it did.
        let gate = Starting::enter(self, job);
        let mut failed = gate.turn.lock().await;
        if let Some(rx) = self.existing(job) {
            return Ok(rx);
        }
        if let Some(why) = failed.as_ref() {
            return Err(StoreError::unavailable(format!(
                "the job's feed could not start: {why}"
            )));
        }
        let reader = match self.store.blocking_reader(BLOCK).await {
            Ok(reader) => reader,
            Err(e) => {
                *failed = Some(e.to_string());
                return Err(e);
            }
        };
        let (tx, rx) = broadcast::channel(BUFFER);
        self.lock().insert(job.clone(), tx.clone());
        tokio::spawn(self.clone().run_feed(job.clone(), start, tx, reader));
        Ok(rx)
    }

    /// How many jobs have a running feed (each holds one Redis connection).
    pub fn feeds(&self) -> usize {
        self.lock().len()
    }

    /// How many viewers hold `job`'s feed (a viewer too far behind lets go of it).
    pub fn receivers(&self, job: &JobId) -> usize {
        self.lock()
            .get(job)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    fn starting(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Gate>>> {
        self.starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn existing(&self, job: &JobId) -> Option<broadcast::Receiver<FeedMsg>> {
        self.lock().get(job).map(broadcast::Sender::subscribe)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, broadcast::Sender<FeedMsg>>> {
        // A poisoned map is still a valid map: a panic elsewhere left no half-update.
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run_feed(
        self: Arc<Self>,
        job: JobId,
        mut after: EntryId,
        tx: broadcast::Sender<FeedMsg>,
        mut reader: logstream_shared::store::BlockingReader,
    ) {
        tracing::debug!(job_id = %job, "feed started");
        loop {
            {
                // Checked under the map's lock: a viewer subscribing now either finds
                // this feed still registered (and counts), or starts a new one.
                let mut feeds = self.lock();
                if tx.receiver_count() == 0 {
                    feeds.remove(&job);
                    break;
                }
            }
            match reader.read(&job, after, READ_COUNT).await {
                Ok(entries) => {
                    if let Some(last) = entries.last() {
                        after = last.id;
                        let _ = tx.send(FeedMsg::Entries(Arc::new(entries)));
                    }
                }
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e, "feed read failed");
                    self.lock().remove(&job);
                    let _ = tx.send(FeedMsg::Failed);
                    break;
                }
            }
        }
        tracing::debug!(job_id = %job, "feed ended");
    }
}

/// A viewer's place among those starting one job's feed: the job's gate, taken from
/// (or put in) the hub's `starting` map, and taken out again by the last to leave.
struct Starting<'a> {
    hub: &'a Hub,
    job: &'a JobId,
    turn: Arc<Gate>,
}

/// Whose turn it is to start a job's feed, and why the last start failed.
type Gate = tokio::sync::Mutex<Option<String>>;

impl<'a> Starting<'a> {
    fn enter(hub: &'a Hub, job: &'a JobId) -> Self {
        let turn = hub.starting().entry(job.clone()).or_default().clone();
        Self { hub, job, turn }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        // Counted under the map's lock, where every waiter took its clone: the map's
        // and ours alone mean nobody else waits.
        let mut starting = self.hub.starting();
        let ours = starting
            .get(self.job)
            .is_some_and(|turn| Arc::ptr_eq(turn, &self.turn));
        if ours && Arc::strong_count(&self.turn) == 2 {
            starting.remove(self.job);
        }
    }
}
