//! The sse function: `GET /jobs/{id}/logs/stream`, live logs as Server-Sent Events.
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
//! Lambda: an invocation has a deadline (in the request's `lambda_http::Context`). The
//! stream ends cleanly `LOGSTREAM_SSE_HANDOFF_SECS` before it, without `done`, so the
//! browser's EventSource reconnects with `Last-Event-ID` and continues with no gap. A
//! deadline in the past (`cargo lambda watch` reports one in 1970) counts as none.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod frame;
pub mod hub;

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
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, StoredEntry, now_ms};
use logstream_shared::auth::jwt::ViewerAuth;
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::store::{LogStore, StoreError};
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{ApiQuery, JobPath, authenticate_viewer, finish};

use hub::{FeedMsg, Hub};

/// Entries read from Redis per replay round trip.
const REPLAY_PAGE: usize = 500;
/// The id before every entry.
const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

/// Everything the stream route shares, built once per process.
pub struct SseState {
    store: LogStore,
    viewers: ViewerAuth,
    hub: Arc<Hub>,
    heartbeat: Duration,
    handoff: Duration,
    shutdown: watch::Sender<bool>,
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
            store,
            viewers,
            heartbeat,
            handoff,
            shutdown: watch::channel(false).0,
        })
    }

    /// The sse function's state from the process's [`Clients`]; connects lazily.
    pub fn build(clients: &Clients) -> Result<Arc<Self>, ConfigError> {
        let config = clients.config();
        Ok(Self::new(
            clients.store()?,
            clients.viewers()?,
            Duration::from_secs(config.heartbeat_secs),
            Duration::from_secs(config.handoff_secs),
        ))
    }

    /// Ends every open stream (without `done`, so clients reconnect elsewhere): what a
    /// long-running host does before it stops.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The process's feeds.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// The sse routes, without fallbacks (see [`logstream_shared::web::finish`]).
pub fn routes(state: Arc<SseState>) -> Router {
    Router::new()
        .route("/jobs/{id}/logs/stream", get(stream))
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
        Some(id) if !id.trim().is_empty() => Some(id),
        _ => query
            .last_event_id
            .clone()
            .filter(|id| !id.trim().is_empty()),
    };
    match (resume, query.from.as_deref()) {
        (Some(id), _) => {
            id.trim()
                .parse()
                .map(Start::After)
                .map_err(|e: logstream_core::ids::InvalidEntryId| {
                    ApiError::bad_request("invalid_cursor", e.to_string())
                })
        }
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

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn stream(
    State(state): State<Arc<SseState>>,
    JobPath(job): JobPath,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    uri: Uri,
    context: Option<Extension<lambda_http::Context>>,
) -> Result<Response, ApiError> {
    let viewer = authenticate_viewer(&state.viewers, &headers, &uri).await?;
    let start = start_point(&headers, &query)?;
    let (meta, newest) = match state.store.job_head(&job).await? {
        Some((meta, newest)) if viewer.can_read(&meta) => (meta, newest),
        _ => return Err(ApiError::job_not_found()),
    };
    let head = newest.unwrap_or(ZERO);
    let cursor = match start {
        // An id from the future replays nothing and would hide what comes next.
        Start::After(id) => id.min(head),
        Start::Beginning => ZERO,
        Start::Live => head,
    };
    // Subscribe before the replay reads Redis: see `hub`.
    let feed = state.hub.subscribe(&job, head).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let follower = Follower {
        store: state.store.clone(),
        job,
        cursor,
        ended: meta.status.is_terminal().then_some(meta.status),
        feed,
        out: tx,
        heartbeat: state.heartbeat,
        handoff: handoff_at(context.as_ref().map(|Extension(c)| c), state.handoff),
        shutdown: state.shutdown.subscribe(),
    };
    tokio::spawn(follower.run());

    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
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
    /// Deadline, shutdown or a Redis failure: closed without `done`, to be resumed.
    HandOff,
}

/// One viewer's stream: replay, then live entries from the feed.
struct Follower {
    store: LogStore,
    job: JobId,
    /// The id of the last entry sent (or the start point).
    cursor: EntryId,
    /// The job's final status when it had already ended at connect.
    ended: Option<JobStatus>,
    feed: broadcast::Receiver<FeedMsg>,
    out: mpsc::Sender<Bytes>,
    heartbeat: Duration,
    handoff: Option<Instant>,
    shutdown: watch::Receiver<bool>,
}

impl Follower {
    async fn run(mut self) {
        let stop = self.follow().await;
        tracing::debug!(job_id = %self.job, ?stop, "stream closed");
    }

    async fn follow(&mut self) -> Stop {
        if self
            .out
            .send(Bytes::from_static(frame::RETRY))
            .await
            .is_err()
        {
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
        if let Some(status) = self.ended {
            return self.finish(status).await;
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
        loop {
            tokio::select! {
                msg = self.feed.recv() => {
                    let result = match msg {
                        Ok(FeedMsg::Entries(entries)) => self.send(&entries).await,
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
                    if self.out.send(Bytes::from_static(frame::HEARTBEAT)).await.is_err() {
                        return Stop::Gone;
                    }
                    quiet_until = Instant::now() + self.heartbeat;
                }
                () = &mut handoff => return Stop::HandOff,
                _ = self.shutdown.changed() => return Stop::HandOff,
                () = self.out.closed() => return Stop::Gone,
            }
        }
    }

    /// Sends everything in Redis after the cursor. `Some` when the stream is over.
    async fn replay(&mut self) -> Result<Option<Stop>, StoreError> {
        loop {
            let page = self
                .store
                .entries_after(&self.job, self.cursor, REPLAY_PAGE)
                .await?;
            let full = page.len() == REPLAY_PAGE;
            if let Some(stop) = self.send(&page).await {
                return Ok(Some(stop));
            }
            if !full {
                return Ok(None);
            }
        }
    }

    /// Sends the entries newer than the cursor as one chunk; on the terminal status
    /// entry, also `done`. `Some` when the stream is over.
    async fn send(&mut self, entries: &[StoredEntry]) -> Option<Stop> {
        let mut chunk = BytesMut::new();
        let mut ended = None;
        let after = self.cursor;
        for entry in entries.iter().filter(|e| e.id > after) {
            let info = frame::info(entry);
            frame::push_entry(&mut chunk, entry, info.event);
            self.cursor = entry.id;
            if let Some(status) = info.terminal {
                ended = Some(status);
                break;
            }
        }
        if !chunk.is_empty() && self.out.send(chunk.freeze()).await.is_err() {
            return Some(Stop::Gone);
        }
        match ended {
            Some(status) => Some(self.finish(status).await),
            None => None,
        }
    }

    async fn finish(&mut self, status: JobStatus) -> Stop {
        match self.out.send(frame::done(status)).await {
            Ok(()) => Stop::Done,
            Err(_) => Stop::Gone,
        }
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
