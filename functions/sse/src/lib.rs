//! The sse function, the streaming one: `GET /jobs/{id}/logs/stream`, live logs as
//! Server-Sent Events, and `GET /jobs/{id}/logs/raw`, the whole log as text (module `raw`).
//!
//! Everything that can fail is checked before the stream starts, so a bad token is a
//! plain 401, someone else's job a 404, a bad cursor a 400. Then the response streams:
//! `retry: 2000`, the requested replay, live entries as they are appended, a heartbeat
//! after each quiet interval, and `done` once the job has ended.
//!
//! Start point: `Last-Event-ID` (header, or `?last_event_id=`) replays what came
//! strictly after that id; `?from=start` replays everything; neither follows from the
//! newest entry at connect time. Replay and live join through [`hub`] without a gap or a
//! duplicate.
//!
//! A job deleted while it is followed ends its streams with `event: deleted`: at once
//! through the feed, which reads the deletion's signal entry, else at the next
//! heartbeat interval's check of the job (which also ends a share link's stream once
//! the job's links are revoked).
//!
//! Lambda: an invocation has a deadline (in the request's `lambda_http::Context`). The
//! stream ends cleanly `LOGSTREAM_SSE_HANDOFF_SECS` before it, without `done`, so the
//! browser's EventSource reconnects with `Last-Event-ID` and continues with no gap. A
//! deadline in the past (`cargo lambda watch` reports one in 1970) counts as none.
//! The stream also ends, the same way, when the viewer's token expires.
//!
//! **Slow readers.** What waits for one viewer is bounded in bytes
//! ([`VIEWER_BUFFER_BYTES`], in chunks of at most [`CHUNK_BYTES`]). A viewer that falls
//! that far behind (a client that stopped reading) lets go of its job's feed, so it
//! never holds the feed's buffer, and once it reads again it rejoins exactly as a new
//! viewer does: it subscribes, then rereads Redis after the last entry it was sent.
//! Nothing is lost and nothing is sent twice.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod frame;
pub mod hub;
mod raw;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Uri, header};
use serde::Deserialize;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::time::Instant;

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{Ending, StoredEntry, now_ms};
use logstream_shared::archive::Archive;
use logstream_shared::auth::jwt::{Viewer, ViewerAuth};
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::log::{JobLog, LogError};
use logstream_shared::metrics::{self, Counter, Gauge, Timing};
use logstream_shared::runtime_api::{self, RuntimeSockets};
use logstream_shared::store::LogStore;
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{ApiQuery, JobPath, authenticate_reader, finish};

use hub::{FeedMsg, Hub};

/// Entries read per replay round trip.
const REPLAY_PAGE: usize = 2000;
/// Most bytes waiting for one viewer (written, not yet taken by the connection).
pub const VIEWER_BUFFER_BYTES: usize = 1024 * 1024;
/// Frames are written in chunks of about this size (a chunk ends after the frame that
/// crosses it).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The id before every entry.
const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

/// Everything the stream route shares, built once per process.
pub struct SseState {
    log: JobLog,
    viewers: ViewerAuth,
    hub: Arc<Hub>,
    heartbeat: Duration,
    handoff: Duration,
    shutdown: watch::Sender<bool>,
    /// The Lambda runtime's connections, made `TCP_NODELAY` (see
    /// [`RuntimeSockets`]): else each stream's first frame waits ~40 ms.
    runtime: RuntimeSockets,
}

impl SseState {
    pub fn new(
        store: LogStore,
        viewers: ViewerAuth,
        heartbeat: Duration,
        handoff: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub: Hub::new(store.clone()),
            log: JobLog::new(store, None),
            viewers,
            heartbeat,
            handoff,
            shutdown: watch::channel(false).0,
            runtime: RuntimeSockets::from_env(),
        })
    }

    /// Replays read older entries from `archive` too ([`JobLog`]).
    pub fn with_archive(mut self: Arc<Self>, archive: Option<Archive>) -> Arc<Self> {
        if let Some(state) = Arc::get_mut(&mut self) {
            state.log = JobLog::new(state.log.store().clone(), archive);
        }
        self
    }

    /// The sse function's state from the process's [`Clients`], with the archive for
    /// replays older than Redis's tail; connects lazily.
    pub async fn build(clients: &Clients) -> Result<Arc<Self>, ConfigError> {
        let config = clients.config();
        let mut state = Self::new(
            clients.store()?,
            clients.viewers()?,
            Duration::from_secs(config.heartbeat_secs),
            Duration::from_secs(config.handoff_secs),
        )
        .with_archive(clients.archive().await);
        if !config.runtime_nodelay
            && let Some(state) = Arc::get_mut(&mut state)
        {
            state.runtime = RuntimeSockets::new(None, runtime_api::SCAN_INTERVAL);
        }
        Ok(state)
    }

    /// Ends every open stream (without `done`, so clients reconnect elsewhere): what a
    /// long-running host does before it stops.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The process's feeds.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// The sse routes, without fallbacks (see [`logstream_shared::web::finish`]).
pub fn routes(state: Arc<SseState>) -> Router {
    Router::new()
        .route("/jobs/{id}/logs/stream", get(stream))
        .route("/jobs/{id}/logs/raw", get(raw::raw))
        .with_state(state)
}

/// The sse function's whole router, as its Lambda serves it.
pub fn router(state: Arc<SseState>, cors_origins: &[HeaderValue]) -> Router {
    finish(routes(state), cors_origins)
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    from: Option<String>,
    last_event_id: Option<String>,
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    After(EntryId),
    Beginning,
    Live,
}

fn start_point(headers: &HeaderMap, query: &StreamQuery) -> Result<Start, ApiError> {
    let header = headers.get("last-event-id").map(|v| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::bad_request("invalid_cursor", "Last-Event-ID is not text"))
    });
    let resume = match header.transpose()? {
        Some(id) if !id.trim_ascii().is_empty() => Some(id),
        _ => query
            .last_event_id
            .clone()
            .filter(|id| !id.trim_ascii().is_empty()),
    };
    match (resume, query.from.as_deref()) {
        (Some(id), _) => id.trim_ascii().parse().map(Start::After).map_err(
            |e: logstream_core::ids::InvalidEntryId| {
                ApiError::bad_request("invalid_cursor", e.to_string())
            },
        ),
        (None, Some("start")) => Ok(Start::Beginning),
        (None, Some(_)) => Err(ApiError::bad_request(
            "invalid_query",
            "from must be \"start\"",
        )),
        (None, None) => Ok(Start::Live),
    }
}

/// When a stream must hand off, from the invocation's deadline.
fn handoff_at(context: Option<&lambda_http::Context>, margin: Duration) -> Option<Instant> {
    let deadline_ms = context?.deadline;
    let now = now_ms();
    if deadline_ms <= now {
        return None;
    }
    let left = Duration::from_millis(deadline_ms - now).saturating_sub(margin);
    Some(Instant::now() + left)
}

/// When the viewer's token expires: the stream ends then, without `done`, and the
/// client reconnects with a fresh token and `Last-Event-ID`. A token accepted within
/// the verifier's leeway after its `exp` ends its stream at once.
fn token_end(viewer: &Viewer) -> Option<Instant> {
    let exp = viewer.expires_at_ms?;
    let left = Duration::from_millis(exp.saturating_sub(now_ms()));
    Some(Instant::now() + left)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn stream(
    State(state): State<Arc<SseState>>,
    JobPath(job): JobPath,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    uri: Uri,
    context: Option<Extension<lambda_http::Context>>,
) -> Result<Response, ApiError> {
    // Before the runtime sends this stream over the connection it took the invocation
    // from (under Lambda; nothing elsewhere).
    state.runtime.nodelay();
    metrics::count(Counter::StreamsOpened, 1);
    let viewer =
        authenticate_reader(&state.viewers, state.log.store(), &job, &headers, &uri).await?;
    let start = start_point(&headers, &query)?;
    // A share link's stream ends when the job's links are revoked: the generation it
    // was verified under, checked again every heartbeat interval.
    let share_generation = viewer.share.as_ref().map(|grant| grant.generation);
    let (ending, newest, in_redis) = match state.log.store().job_head(&job).await? {
        Some((meta, newest)) if viewer.can_read(&job, &meta) => (meta.ending(), newest, true),
        Some(_) => return Err(ApiError::job_not_found()),
        // Redis has forgotten the job: the archive's copy, replayed and closed.
        None => match state.log.info(&job).await? {
            Some((info, _)) if viewer.can_read(&job, &info) => {
                let last = state
                    .log
                    .page(&job, logstream_shared::store::Cursor::Latest, 1)
                    .await?
                    .and_then(|(_, _, page)| page.entries.last().map(|e| e.id));
                (info.ending(), last, false)
            }
            _ => return Err(ApiError::job_not_found()),
        },
    };
    let head = newest.unwrap_or(ZERO);
    let cursor = match start {
        // An id from the future replays nothing and would hide what comes next.
        Start::After(id) => id.min(head),
        Start::Beginning => ZERO,
        Start::Live => head,
    };
    // Subscribe before the replay reads Redis: see `hub`.
    let feed = if in_redis {
        Some(state.hub.subscribe(&job, head).await?)
    } else {
        None
    };
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let budget = Arc::new(Semaphore::new(VIEWER_BUFFER_BYTES));
    let follower = Follower {
        log: state.log.clone(),
        hub: state.hub.clone(),
        job,
        cursor,
        ended: ending,
        archived_only: !in_redis,
        feed,
        out: Out {
            tx,
            budget: budget.clone(),
        },
        heartbeat: state.heartbeat,
        share_generation,
        handoff: earliest(
            handoff_at(context.as_ref().map(|Extension(c)| c), state.handoff),
            token_end(&viewer),
        ),
        shutdown: state.shutdown.subscribe(),
    };
    tokio::spawn(follower.run());

    // A chunk's bytes leave the viewer's budget when the connection takes it.
    let body = futures_util::stream::unfold((rx, budget), |(mut rx, budget)| async move {
        let chunk = rx.recv().await?;
        budget.add_permits(permits(&chunk));
        Some((Ok::<_, Infallible>(chunk), (rx, budget)))
    });
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Why a stream stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The job ended: `done` was sent.
    Done,
    /// The client went away.
    Gone,
    /// Deadline, token expiry, shutdown or a Redis failure: closed without `done`, to be
    /// resumed.
    HandOff,
    /// The job was deleted: `deleted` was sent.
    Deleted,
}

/// The permits (bytes) a chunk takes from a viewer's budget.
fn permits(chunk: &Bytes) -> usize {
    chunk.len().min(VIEWER_BUFFER_BYTES)
}

/// A viewer's outgoing chunks, bounded in bytes by its budget.
struct Out {
    tx: mpsc::UnboundedSender<Bytes>,
    budget: Arc<Semaphore>,
}

impl Out {
    /// Whether a chunk of `len` bytes fits in the budget now.
    fn has_room(&self, len: usize) -> bool {
        self.budget.available_permits() >= len.min(VIEWER_BUFFER_BYTES)
    }

    /// Waits for room, then queues `chunk`. `Err` when the viewer is gone.
    async fn send(&self, chunk: Bytes) -> Result<(), ()> {
        let n = u32::try_from(permits(&chunk)).map_err(|_| ())?;
        tokio::select! {
            permit = self.budget.acquire_many(n) => permit.map_err(|_| ())?.forget(),
            () = self.tx.closed() => return Err(()),
        }
        self.tx.send(chunk).map_err(|_| ())
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// One viewer's stream: replay, then live entries from the feed.
struct Follower {
    log: JobLog,
    hub: Arc<Hub>,
    job: JobId,
    /// The id of the last entry sent (or the start point).
    cursor: EntryId,
    /// How the job ended, when it had already ended at connect.
    ended: Option<Ending>,
    /// Redis had forgotten the job at connect: after the replay from the archive,
    /// nothing more can come (a job that never ended closes without `done`).
    archived_only: bool,
    /// The job's feed; `None` while the viewer is too far behind to hold it.
    feed: Option<broadcast::Receiver<FeedMsg>>,
    out: Out,
    heartbeat: Duration,
    /// For a share link: the job's share generation it was admitted under.
    share_generation: Option<u64>,
    handoff: Option<Instant>,
    shutdown: watch::Receiver<bool>,
}

impl Follower {
    async fn run(mut self) {
        let open = metrics::open(Gauge::Viewers);
        let stop = self.follow().await;
        drop(open);
        tracing::debug!(job_id = %self.job, ?stop, "stream closed");
        // A stream's end is often its invocation's: what it counted goes out now.
        metrics::flush_if_due();
    }

    async fn follow(&mut self) -> Stop {
        if self.emit(Bytes::from_static(frame::RETRY)).await.is_err() {
            return Stop::Gone;
        }
        match self.replay().await {
            Ok(Some(stop)) => return stop,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job_id = %self.job, error = %e, "replay failed");
                return Stop::HandOff;
            }
        }
        if let Some(ending) = self.ended {
            return self.finish(&ending).await;
        }
        if self.archived_only {
            return Stop::HandOff;
        }
        let handoff_at = self.handoff;
        let handoff = async move {
            match handoff_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(handoff);
        let mut quiet_until = Instant::now() + self.heartbeat;
        let mut presence_check =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        loop {
            if self.feed.is_none() {
                // Let go of the feed while behind: rejoin as a new viewer does.
                match self.rejoin().await {
                    Ok(Some(stop)) => return stop,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %self.job, error = %e, "rejoining the feed failed");
                        return Stop::HandOff;
                    }
                }
                continue;
            }
            let Some(feed) = self.feed.as_mut() else {
                continue;
            };
            tokio::select! {
                msg = feed.recv() => {
                    let result = match msg {
                        Ok(FeedMsg::Entries(entries)) => {
                            let sent = self.send(&entries).await;
                            // From the newest entry's append (its id's time) to its frame.
                            if let Some(last) = entries.last() {
                                let lag = now_ms().saturating_sub(last.id.ms);
                                metrics::time(Timing::DeliveryLag, Duration::from_millis(lag));
                            }
                            sent
                        }
                        Ok(FeedMsg::Failed) | Err(broadcast::error::RecvError::Closed) => return Stop::HandOff,
                        Err(broadcast::error::RecvError::Lagged(_)) => match self.replay().await {
                            Ok(stop) => stop,
                            Err(_) => return Stop::HandOff,
                        },
                    };
                    if let Some(stop) = result {
                        return stop;
                    }
                    quiet_until = Instant::now() + self.heartbeat;
                }
                () = tokio::time::sleep_until(quiet_until) => {
                    if self.emit(Bytes::from_static(frame::HEARTBEAT)).await.is_err() {
                        return Stop::Gone;
                    }
                    metrics::flush_if_due();
                    quiet_until = Instant::now() + self.heartbeat;
                }
                () = &mut handoff => return Stop::HandOff,
                _ = presence_check.tick() => {
                    if let Some(stop) = self.check_presence().await {
                        return stop;
                    }
                }
                _ = self.shutdown.changed() => return Stop::HandOff,
                () = self.out.closed() => return Stop::Gone,
            }
        }
    }

    /// What every heartbeat interval checks (one pipelined round trip): the job was
    /// deleted (a stream whose feed missed the deletion's signal: `deleted`, then the
    /// end), it left Redis some other way (closed without `done`: the client comes back
    /// to the archive's copy, or a 404), or the share link this stream was opened with
    /// was revoked. A Redis failure ends the stream too: the client comes back and is
    /// checked afresh.
    async fn check_presence(&mut self) -> Option<Stop> {
        let presence = match self.log.store().presence(&self.job).await {
            Ok(presence) => presence,
            Err(e) => {
                tracing::warn!(job_id = %self.job, error = %e, "presence check failed");
                return Some(Stop::HandOff);
            }
        };
        if presence.deleted {
            return Some(self.deleted().await);
        }
        let revoked = self
            .share_generation
            .is_some_and(|generation| Some(generation) != presence.share_generation);
        (!presence.live || revoked).then_some(Stop::HandOff)
    }

    async fn deleted(&mut self) -> Stop {
        match self.emit(Bytes::from_static(frame::DELETED)).await {
            Ok(()) => Stop::Deleted,
            Err(()) => Stop::Gone,
        }
    }

    /// Subscribes to the job's feed again, then sends what Redis holds after the
    /// cursor: the same join as at connect, so nothing is missed or doubled.
    async fn rejoin(&mut self) -> Result<Option<Stop>, LogError> {
        self.feed = Some(self.hub.subscribe(&self.job, self.cursor).await?);
        self.replay().await
    }

    /// Sends everything after the cursor, from the archive where Redis no longer has
    /// it ([`JobLog`]). `Some` when the stream is over.
    async fn replay(&mut self) -> Result<Option<Stop>, LogError> {
        let mut reader = self.log.reader(&self.job, self.cursor);
        loop {
            let entries = reader.next(REPLAY_PAGE).await?;
            if entries.is_empty() {
                return Ok(None);
            }
            if let Some(stop) = self.send(&entries).await {
                return Ok(Some(stop));
            }
        }
    }

    /// Sends the entries newer than the cursor as one chunk; on the terminal status
    /// entry, also `done`. `Some` when the stream is over.
    async fn send(&mut self, entries: &[StoredEntry]) -> Option<Stop> {
        let mut chunk = BytesMut::new();
        let mut ended = None;
        let after = self.cursor;
        let mut deleted = false;
        for entry in entries.iter().filter(|e| e.id > after) {
            let info = frame::info(entry);
            if info.event == frame::DELETED_EVENT {
                deleted = true;
                break;
            }
            frame::push_entry(&mut chunk, entry, info.event);
            self.cursor = entry.id;
            if let Some(status) = info.terminal {
                ended = Some(status);
                break;
            }
            if chunk.len() >= CHUNK_BYTES && self.emit(chunk.split().freeze()).await.is_err() {
                return Some(Stop::Gone);
            }
        }
        if !chunk.is_empty() && self.emit(chunk.freeze()).await.is_err() {
            return Some(Stop::Gone);
        }
        if deleted {
            return Some(self.deleted().await);
        }
        match ended {
            Some(ending) => Some(self.finish(&ending).await),
            None => None,
        }
    }

    async fn finish(&mut self, ending: &Ending) -> Stop {
        match self.emit(frame::done(ending)).await {
            Ok(()) => Stop::Done,
            Err(()) => Stop::Gone,
        }
    }

    /// Queues `chunk` for the viewer. When it does not fit in the viewer's budget, the
    /// viewer is behind: it drops the feed first (see the module doc), then waits.
    async fn emit(&mut self, chunk: Bytes) -> Result<(), ()> {
        if !self.out.has_room(chunk.len()) && self.feed.take().is_some() {
            tracing::debug!(job_id = %self.job, "viewer behind: letting go of the feed");
        }
        self.out.send(chunk).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, last: Option<&str>) -> StreamQuery {
        StreamQuery {
            from: from.map(str::to_owned),
            last_event_id: last.map(str::to_owned),
        }
    }

    #[test]
    fn last_event_id_header_wins_over_the_query() {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_static("5-1"));
        let start = start_point(&h, &query(Some("start"), Some("9-9"))).unwrap();
        assert_eq!(start, Start::After("5-1".parse().unwrap()));
    }

    #[test]
    fn start_points_from_the_query() {
        let h = HeaderMap::new();
        assert_eq!(start_point(&h, &query(None, None)).unwrap(), Start::Live);
        assert_eq!(
            start_point(&h, &query(Some("start"), None)).unwrap(),
            Start::Beginning
        );
        assert_eq!(
            start_point(&h, &query(None, Some("3-0"))).unwrap(),
            Start::After("3-0".parse().unwrap())
        );
        assert_eq!(
            start_point(&h, &query(None, Some(""))).unwrap(),
            Start::Live
        );
        assert_eq!(
            start_point(&h, &query(None, Some("x"))).unwrap_err().code,
            "invalid_cursor"
        );
        assert_eq!(
            start_point(&h, &query(Some("end"), None)).unwrap_err().code,
            "invalid_query"
        );
    }

    #[test]
    fn a_past_deadline_means_no_handoff() {
        let mut ctx = lambda_http::Context::default();
        ctx.deadline = 1000;
        assert!(handoff_at(Some(&ctx), Duration::from_secs(5)).is_none());
        assert!(handoff_at(None, Duration::from_secs(5)).is_none());
        ctx.deadline = now_ms() + 60_000;
        let at = handoff_at(Some(&ctx), Duration::from_secs(5)).unwrap();
        let left = at - Instant::now();
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(55),
            "{left:?}"
        );
    }
}
