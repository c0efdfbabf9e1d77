//! One blocking reader per followed job per process, fanned out to every viewer.
//!
//! A [`Feed`] owns a dedicated Redis connection and loops on `XREAD BLOCK` after the
//! newest id it has seen, broadcasting each batch of new entries to the viewers of its
//! job. Two hundred viewers of one job cost one Redis connection, not two hundred.
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
}

impl Hub {
    pub fn new(store: LogStore) -> Arc<Self> {
        Arc::new(Self {
            store,
            feeds: Mutex::new(HashMap::new()),
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
        let reader = self.store.blocking_reader(BLOCK).await?;
        let mut feeds = self.lock();
        // Another viewer may have started one while we connected.
        if let Some(tx) = feeds.get(job) {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(BUFFER);
        feeds.insert(job.clone(), tx.clone());
        drop(feeds);
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
