//! WebSocket push: after a batch or a status change is stored, every connection of the
//! job gets it through API Gateway's management API (`PostToConnection`).
//!
//! Messages are `{"type":"entries","entries":[…]}` (split so none exceeds API Gateway's
//! 128 KB message limit) and, when the job ends, `{"type":"done","status":…}` (with the
//! job's `exit_code` and `duration_ms`). One
//! connection gets its messages in order; connections are served concurrently, at most
//! [`PUSH_CONCURRENCY`] at once. A connection that answers 410 Gone is removed from the
//! job's hash (unless it registered less than [`CONNECT_GRACE`] ago: API Gateway answers
//! 410 while a connection's `$connect` is still running).
//!
//! **Slow or broken consumers never slow ingest.** A `PostToConnection` is tried once
//! (the client has no retries: a throttled push is a slow consumer, and retrying it only
//! makes the ingest request wait). A connection whose push fails (a throttle, an error)
//! becomes *suspect* at that moment, not when the request's push round ends, and a
//! connection whose push is still running at the bound becomes suspect when the bound is
//! reached; either way every other request still waiting on a push to it stops waiting
//! at once. Later batches skip a suspect connection, except for one *probe* per
//! [`PROBE_EVERY`], which is sent in a detached task the ingest request does not wait for
//! (see [`WsPush::deliver`]); a probe that succeeds closes the breaker. A connection
//! suspect for [`DROP_AFTER`] is closed (`DeleteConnection`) and forgotten as its
//! `$disconnect` would; its client reconnects. So a client that stops reading costs one
//! push round at most the bound (and no round when it answers a throttle), not every
//! request. The breaker lives in the process (each ingest instance learns on its own),
//! which is enough: it only decides whom to skip.
//!
//! A healthy connection is never skipped because a push to it is merely in flight: two
//! requests of one job push to it concurrently, and it gets both batches.
//!
//! **Tokens expire.** Each connection carries its token's expiry (see
//! `logstream_ws::WsState::connect`): a connection past it gets nothing more and is
//! closed and forgotten at the next push to its job. (API Gateway cannot close a
//! connection on a timer; an idle expired connection ends at its 10-minute idle limit.)
//!
//! **Timing: a bounded wait, not fire-after-response.** The ingest request waits for
//! its pushes to healthy connections, but never longer than
//! `LOGSTREAM_WS_PUSH_TIMEOUT_MS` (300 ms by default); what has not finished by then is
//! abandoned and logged, and the request still succeeds. Two reasons. Lambda freezes the
//! execution environment as soon as the response is returned, so a task spawned "after
//! the response" would sit frozen until some later invocation thaws it: the push would
//! arrive late, or never. And a pipeline sends its batches one after another: a batch's
//! pushes finish before the next batch is accepted, so viewers see batches in order. A
//! dead connection answers 410 at once; only a management API that hangs costs the
//! bound. Probes are the one exception (best effort, see [`WsPush::deliver`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::http::HttpResponse;
use aws_sdk_apigatewaymanagement::error::SdkError;
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures_util::StreamExt;
use tokio::sync::Notify;

use logstream_core::ids::JobId;
use logstream_core::model::{Ending, StoredEntry, now_ms};
use logstream_shared::metrics::{self, Counter};
use logstream_shared::store::{LogStore, Socket};

/// Largest message sent to one connection: API Gateway refuses more than 128 KB.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// A connection younger than this that answers 410 is kept: it is still in its
/// `$connect` (see [`LogStore::drop_gone_connections`]).
pub const CONNECT_GRACE: Duration = Duration::from_secs(10);
/// Connections pushed to at once per request.
pub const PUSH_CONCURRENCY: usize = 32;
/// How often a suspect connection gets one probe push.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a connection may stay suspect before it is closed and forgotten.
pub const DROP_AFTER: Duration = Duration::from_secs(5);

const ENTRIES_HEAD: &str = r#"{"type":"entries","entries":["#;
const ENTRIES_TAIL: &str = "]}";

/// The push side of the ingest function: one management API client per process.
#[derive(Debug, Clone)]
pub struct WsPush {
    client: Client,
    bound: Duration,
    breaker: Arc<Breaker>,
}

/// The connections this process skips, and a signal for each one that becomes suspect.
#[derive(Debug, Default)]
struct Breaker {
    suspects: Mutex<HashMap<String, Suspect>>,
    /// Woken whenever a connection becomes suspect, so pushes to it that other requests
    /// are waiting on stop being waited on.
    tripped: Notify,
}

/// A connection whose pushes are being skipped.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    since: Instant,
    /// When its last probe started.
    probed: Instant,
    /// A probe is in flight: no second one is sent (it could overtake the first).
    probing: bool,
}

/// What to do with one connection in one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Healthy: pushed to, and waited for within the bound.
    Send,
    /// Suspect and due a probe: pushed to in a detached task.
    Probe,
    /// Suspect: skipped.
    Skip,
    /// Expired, or suspect too long: closed and forgotten.
    Close,
}

/// How one connection's messages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// 410 Gone.
    Gone,
    /// A throttle or another error: the rest of the messages were not sent.
    Failed,
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Suspect>> {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_suspect(&self, connection: &str) -> bool {
        self.lock().contains_key(connection)
    }

    /// Makes `connections` suspect (those that already are stay as they are) and wakes
    /// whoever waits on a push to one of them.
    fn trip<'a>(&self, connections: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut any = false;
        {
            let mut suspects = self.lock();
            for connection in connections {
                suspects.entry(connection.to_owned()).or_insert(Suspect {
                    since: now,
                    probed: now,
                    probing: false,
                });
                any = true;
            }
        }
        if any {
            self.tripped.notify_waiters();
        }
    }

    /// Returns once `connection` is suspect.
    async fn until_suspect(&self, connection: &str) {
        loop {
            let notified = self.tripped.notified();
            tokio::pin!(notified);
            // Registered before the check, so a trip between the two is not missed.
            notified.as_mut().enable();
            if self.is_suspect(connection) {
                return;
            }
            notified.await;
        }
    }

    /// A probe to `connection` ended: the breaker closes if it was delivered.
    fn probed(&self, connection: &str, delivered: bool) {
        let mut suspects = self.lock();
        if delivered {
            suspects.remove(connection);
        } else if let Some(state) = suspects.get_mut(connection) {
            state.probing = false;
        }
    }

    fn forget(&self, connections: &[String]) {
        let mut suspects = self.lock();
        for connection in connections {
            suspects.remove(connection);
        }
    }
}

impl WsPush {
    /// Pushes with `client` (its endpoint set to the management API), waiting at most
    /// `bound` per request. The client's retry configuration is the caller's: the
    /// clients of `logstream_shared::wsapi` try each call once.
    pub fn new(client: Client, bound: Duration) -> Self {
        Self {
            client,
            bound,
            breaker: Arc::default(),
        }
    }

    /// How many connections this process currently skips.
    pub fn tripped(&self) -> usize {
        self.breaker.lock().len()
    }

    /// Whether `socket` gets this push, a probe, is skipped, or is to be closed. A probe
    /// is marked as started here, so concurrent requests skip the connection while it
    /// runs.
    fn verdict(&self, socket: &Socket, now: Instant, now_ms: u64) -> Verdict {
        if socket.expired(now_ms) {
            return Verdict::Close;
        }
        let mut suspects = self.breaker.lock();
        let Some(state) = suspects.get_mut(&socket.id) else {
            return Verdict::Send;
        };
        if now.duration_since(state.since) >= DROP_AFTER {
            Verdict::Close
        } else if !state.probing && now.duration_since(state.probed) >= PROBE_EVERY {
            state.probed = now;
            state.probing = true;
            Verdict::Probe
        } else {
            Verdict::Skip
        }
    }

    /// Sends `messages`, in order, to every one of `connections` that is neither
    /// suspect nor expired, then drops those that answered 410 Gone from the job's hash
    /// and closes those suspect too long or past their token's expiry. Returns within
    /// the bound (plus the Redis round trips of the clean-up); never fails.
    ///
    /// A suspect connection due a probe gets `messages` in a task of its own, bounded
    /// like a request's push round, that this call does not wait for. On Lambda that
    /// task may be frozen with the execution environment once the response is returned,
    /// and run on (or time out) only when a later invocation thaws it. That is acceptable
    /// for a probe, which is best effort: the connection stays suspect (and gets no
    /// second probe) until the probe ends, and is closed after [`DROP_AFTER`] either way.
    pub async fn deliver(
        &self,
        store: &LogStore,
        job: &JobId,
        connections: &[Socket],
        messages: &[String],
    ) {
        if connections.is_empty() || messages.is_empty() {
            return;
        }
        let now = Instant::now();
        let now_ms = now_ms();
        let mut targets = Vec::with_capacity(connections.len());
        let mut probes = Vec::new();
        let mut close = Vec::new();
        for socket in connections {
            match self.verdict(socket, now, now_ms) {
                Verdict::Send => targets.push(socket.id.as_str()),
                Verdict::Probe => probes.push(socket.id.clone()),
                Verdict::Skip => {}
                Verdict::Close => close.push(socket.id.clone()),
            }
        }
        if !probes.is_empty() {
            let messages: Arc<[String]> = messages.into();
            for connection in probes {
                self.spawn_probe(store, job, connection, Arc::clone(&messages));
            }
        }
        let outcomes = Mutex::new(HashMap::with_capacity(targets.len()));
        // Built in a loop rather than by a closure over borrowed data: a closure here trips
        // the compiler's higher-ranked lifetime check on the axum handler's future.
        let mut pending = Vec::with_capacity(targets.len());
        for connection in &targets {
            pending.push(self.send_waited(connection, messages, &outcomes));
        }
        let sends = futures_util::stream::iter(pending)
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect::<()>();
        let cut_short = tokio::time::timeout(self.bound, sends).await.is_err();
        let outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
        if cut_short {
            let unfinished: Vec<&str> = targets
                .iter()
                .copied()
                .filter(|c| !outcomes.contains_key(c))
                .collect();
            tracing::warn!(
                job_id = %job,
                connections = targets.len(),
                unfinished = unfinished.len(),
                bound_ms = self.bound.as_millis() as u64,
                "websocket push cut short at its time bound"
            );
            self.breaker.trip(unfinished);
        }
        let failed = outcomes
            .values()
            .filter(|o| **o == Some(Outcome::Failed))
            .count();
        let abandoned = outcomes.values().filter(|o| o.is_none()).count();
        if failed + abandoned > 0 {
            tracing::warn!(job_id = %job, failed, abandoned, "websocket push failed for some connections; skipping them");
        }
        let gone: Vec<String> = outcomes
            .iter()
            .filter(|(_, o)| **o == Some(Outcome::Gone))
            .map(|(c, _)| (*c).to_owned())
            .collect();
        let delivered = outcomes
            .values()
            .filter(|o| **o == Some(Outcome::Delivered))
            .count();
        metrics::count(Counter::WsPushes, (delivered * messages.len()) as u64);
        metrics::count(Counter::WsGone, gone.len() as u64);
        if !gone.is_empty() {
            drop_gone(store, job, &gone).await;
        }
        if !close.is_empty() {
            self.close(store, job, &close).await;
        }
    }

    /// Sends `messages` to a healthy `connection` and records how it went (`None`: no
    /// longer waited for, because the connection became suspect meanwhile, through
    /// another request's push or this one's). A failure makes it suspect at once.
    async fn send_waited<'a>(
        &self,
        connection: &'a str,
        messages: &[String],
        outcomes: &Mutex<HashMap<&'a str, Option<Outcome>>>,
    ) {
        let outcome = tokio::select! {
            biased;
            outcome = self.send_each(connection, messages) => Some(outcome),
            () = self.breaker.until_suspect(connection) => None,
        };
        if outcome == Some(Outcome::Failed) {
            self.breaker.trip([connection]);
        }
        if let Ok(mut outcomes) = outcomes.lock() {
            outcomes.insert(connection, outcome);
        }
    }

    /// Probes a suspect `connection` with `messages` in a detached task (see
    /// [`Self::deliver`]): delivered closes the breaker, 410 drops it, anything else
    /// (a failure, the bound) leaves it suspect for the next probe.
    fn spawn_probe(
        &self,
        store: &LogStore,
        job: &JobId,
        connection: String,
        messages: Arc<[String]>,
    ) {
        let push = self.clone();
        let store = store.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(push.bound, push.send_each(&connection, &messages))
                .await
                .ok();
            push.breaker
                .probed(&connection, outcome == Some(Outcome::Delivered));
            match outcome {
                Some(Outcome::Delivered) => {
                    tracing::info!(job_id = %job, connection, "websocket probe delivered; no longer skipping the connection");
                }
                Some(Outcome::Gone) => {
                    push.breaker.forget(std::slice::from_ref(&connection));
                    drop_gone(&store, &job, &[connection]).await;
                }
                Some(Outcome::Failed) | None => {
                    tracing::debug!(job_id = %job, connection, "websocket probe failed; still skipping the connection");
                }
            }
        });
    }

    /// Closes `connections` (`DeleteConnection`, within the bound) and forgets them as
    /// their `$disconnect` would.
    async fn close(&self, store: &LogStore, job: &JobId, connections: &[String]) {
        // A loop, not a closure: see `deliver`.
        let mut pending = Vec::with_capacity(connections.len());
        for connection in connections {
            pending.push(
                self.client
                    .delete_connection()
                    .connection_id(connection.as_str())
                    .send(),
            );
        }
        let deletes = futures_util::stream::iter(pending)
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect::<Vec<_>>();
        if tokio::time::timeout(self.bound, deletes).await.is_err() {
            tracing::warn!(job_id = %job, "closing websocket connections cut short at the bound");
        }
        self.breaker.forget(connections);
        match store.forget_connections(job, connections).await {
            Ok(()) => {
                tracing::info!(job_id = %job, closed = connections.len(), "closed websocket connections (expired token or suspect too long)");
            }
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "could not forget closed connections")
            }
        }
    }

    /// Sends `messages` to `connection` in order, stopping at the first that fails.
    async fn send_each(&self, connection: &str, messages: &[String]) -> Outcome {
        for message in messages {
            let result = self
                .client
                .post_to_connection()
                .connection_id(connection)
                .data(Blob::new(message.as_bytes()))
                .send()
                .await;
            match result {
                Ok(_) => {}
                Err(e) if is_gone(&e) => return Outcome::Gone,
                Err(e) => {
                    tracing::debug!(connection, error = %e, "PostToConnection failed");
                    return Outcome::Failed;
                }
            }
        }
        Outcome::Delivered
    }
}

/// The management API client's retries: none. A throttled `PostToConnection`
/// (`LimitExceededException`, 429) is a consumer that does not keep up, which the
/// breaker handles; the SDK's default would retry it with backoff until the bound.
/// Drops `gone` from the job's hash (see [`CONNECT_GRACE`]).
async fn drop_gone(store: &LogStore, job: &JobId, gone: &[String]) {
    match store.drop_gone_connections(job, gone, CONNECT_GRACE).await {
        Ok(dropped) => {
            tracing::info!(job_id = %job, gone = gone.len(), dropped, "dropped gone websocket connections");
        }
        Err(e) => {
            tracing::warn!(job_id = %job, error = %e, "could not drop gone connections");
        }
    }
}

/// 410 Gone: the connection no longer exists. Recognised by the modelled error, or by
/// the status alone for endpoints that do not name the error (moto, other stand-ins).
fn is_gone(e: &SdkError<PostToConnectionError, HttpResponse>) -> bool {
    match e {
        SdkError::ServiceError(ctx) => {
            ctx.err().is_gone_exception() || ctx.raw().status().as_u16() == 410
        }
        _ => false,
    }
}

/// `{"type":"entries","entries":[…]}` messages carrying `entries` in order, each at
/// most [`MAX_MESSAGE_BYTES`] (an entry that alone exceeds it, which the 16 KiB line
/// cap rules out, is sent alone).
pub fn entries_messages(entries: &[StoredEntry]) -> Vec<String> {
    let mut messages = Vec::new();
    let mut current = String::from(ENTRIES_HEAD);
    let mut in_current = 0usize;
    for entry in entries {
        let json = entry.to_json();
        let extra = json.len() + usize::from(in_current > 0);
        if in_current > 0 && current.len() + extra + ENTRIES_TAIL.len() > MAX_MESSAGE_BYTES {
            current.push_str(ENTRIES_TAIL);
            messages.push(std::mem::replace(&mut current, String::from(ENTRIES_HEAD)));
            in_current = 0;
        }
        if in_current > 0 {
            current.push(',');
        }
        current.push_str(&json);
        in_current += 1;
    }
    if in_current > 0 {
        current.push_str(ENTRIES_TAIL);
        messages.push(current);
    }
    messages
}

/// `{"type":"done","status":…,"exit_code":…,"duration_ms":…}`.
pub fn done_message(ending: &Ending) -> String {
    #[derive(serde::Serialize)]
    struct Done<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        ending: &'a Ending,
    }
    // Serializing plain values cannot fail.
    serde_json::to_string(&Done {
        r#type: "done",
        ending,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use logstream_core::ids::EntryId;

    fn entry(seq: u64, text_len: usize) -> StoredEntry {
        StoredEntry {
            id: EntryId { ms: 1, seq },
            json: format!(
                r#"{{"ts":1,"kind":"line","stream":"stdout","text":"{}"}}"#,
                "x".repeat(text_len)
            ),
        }
    }

    #[test]
    fn a_small_batch_is_one_message_of_valid_json() {
        let messages = entries_messages(&[entry(0, 3), entry(1, 3)]);
        assert_eq!(messages.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&messages[0]).unwrap();
        assert_eq!(v["type"], "entries");
        assert_eq!(v["entries"][1]["id"], "1-1");
    }

    #[test]
    fn a_large_batch_is_split_under_the_limit_keeping_order() {
        let entries: Vec<_> = (0..40).map(|i| entry(i, 16 * 1024)).collect();
        let messages = entries_messages(&entries);
        assert!(messages.len() >= 5, "{} messages", messages.len());
        let mut seen = Vec::new();
        for m in &messages {
            assert!(m.len() <= MAX_MESSAGE_BYTES, "{} bytes", m.len());
            let v: serde_json::Value = serde_json::from_str(m).unwrap();
            for e in v["entries"].as_array().unwrap() {
                seen.push(e["id"].as_str().unwrap().to_owned());
            }
        }
        let expected: Vec<_> = (0..40).map(|i| format!("1-{i}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn no_entries_make_no_message() {
        assert!(entries_messages(&[]).is_empty());
    }

    #[test]
    fn done_names_the_final_status() {
        assert_eq!(
            done_message(&Ending::of(logstream_core::model::JobStatus::Failed)),
            r#"{"type":"done","status":"failed","exit_code":null,"duration_ms":null}"#
        );
        let ending = Ending {
            status: logstream_core::model::JobStatus::Ready,
            exit_code: Some(0),
            duration_ms: Some(61_000),
        };
        assert_eq!(
            done_message(&ending),
            r#"{"type":"done","status":"ready","exit_code":0,"duration_ms":61000}"#
        );
    }

    /// The breaker against a management API of the test's own, where each connection
    /// accepts, throttles (429 `LimitExceededException`, as the local emulator answers
    /// a client that does not read) or holds a push until the test answers it.
    mod breaker {
        use std::collections::{HashMap, VecDeque};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use axum::Router;
        use axum::body::Bytes;
        use axum::extract::{Path, State};
        use axum::response::{IntoResponse, Response};
        use http::StatusCode;
        use tokio::sync::{oneshot, watch};

        use logstream_core::ids::JobId;
        use logstream_shared::store::{LogStore, Retention, Socket};
        use logstream_shared::wsapi::local_client;

        use super::super::{PROBE_EVERY, WsPush};

        /// Far longer than any test: a push that is waited for ends only when the test
        /// (or the [`Fallback`]) answers it.
        const BOUND: Duration = Duration::from_secs(600);
        /// When a [`Fallback`] answers every held push, so that a test of code that
        /// (wrongly) waits for one still ends, and fails.
        const FALLBACK_AFTER: Duration = Duration::from_secs(10);
        /// Only a guard against a test hanging: these things happen within milliseconds.
        const PATIENCE: Duration = Duration::from_secs(30);

        #[derive(Debug, Clone, Copy)]
        enum Mode {
            Accept,
            Throttle,
            Hold,
        }

        struct Fake {
            modes: Mutex<HashMap<String, Mode>>,
            /// Every push each connection was sent, answered or not.
            posts: Mutex<HashMap<String, Vec<String>>>,
            /// The pushes answered 200.
            delivered: Mutex<HashMap<String, Vec<String>>>,
            held: Mutex<VecDeque<oneshot::Sender<StatusCode>>>,
            /// Bumped on every push.
            arrived: watch::Sender<usize>,
        }

        impl Fake {
            async fn start() -> (Arc<Self>, String) {
                let fake = Arc::new(Self {
                    modes: Mutex::default(),
                    posts: Mutex::default(),
                    delivered: Mutex::default(),
                    held: Mutex::default(),
                    arrived: watch::channel(0).0,
                });
                let app = Router::new()
                    .route("/@connections/{id}", axum::routing::post(post))
                    .with_state(Arc::clone(&fake));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(listener, app).await });
                (fake, format!("http://{addr}"))
            }

            fn set(&self, connection: &str, mode: Mode) {
                self.modes
                    .lock()
                    .unwrap()
                    .insert(connection.to_owned(), mode);
            }

            fn posts(&self, connection: &str) -> Vec<String> {
                let posts = self.posts.lock().unwrap();
                posts.get(connection).cloned().unwrap_or_default()
            }

            fn delivered(&self, connection: &str) -> Vec<String> {
                let delivered = self.delivered.lock().unwrap();
                delivered.get(connection).cloned().unwrap_or_default()
            }

            fn held(&self) -> usize {
                self.held.lock().unwrap().len()
            }

            /// Answers the oldest held push with `status`.
            fn answer_one(&self, status: StatusCode) {
                let held = self.held.lock().unwrap().pop_front();
                held.expect("a held push").send(status).unwrap();
            }

            /// Waits until `connection` was sent `n` pushes.
            async fn wait_posts(&self, connection: &str, n: usize) {
                let mut arrived = self.arrived.subscribe();
                tokio::time::timeout(PATIENCE, async {
                    while self.posts(connection).len() < n {
                        arrived.changed().await.unwrap();
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{connection} was not sent {n} pushes"));
            }
        }

        async fn post(
            State(fake): State<Arc<Fake>>,
            Path(connection): Path<String>,
            body: Bytes,
        ) -> Response {
            let body = String::from_utf8_lossy(&body).into_owned();
            let mode = fake.modes.lock().unwrap().get(&connection).copied();
            let held = match mode {
                Some(Mode::Hold) => {
                    let (tx, rx) = oneshot::channel();
                    fake.held.lock().unwrap().push_back(tx);
                    Some(rx)
                }
                _ => None,
            };
            {
                let mut posts = fake.posts.lock().unwrap();
                posts
                    .entry(connection.clone())
                    .or_default()
                    .push(body.clone());
            }
            fake.arrived.send_modify(|n| *n += 1);
            let status = match (mode, held) {
                (_, Some(rx)) => rx.await.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                (Some(Mode::Throttle), _) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::OK,
            };
            if status == StatusCode::OK {
                let mut delivered = fake.delivered.lock().unwrap();
                delivered.entry(connection).or_default().push(body);
                return StatusCode::OK.into_response();
            }
            (
                status,
                [
                    ("x-amzn-errortype", "LimitExceededException"),
                    ("content-type", "application/json"),
                ],
                r#"{"message":"LimitExceededException"}"#,
            )
                .into_response()
        }

        /// Answers every held push (200) after [`FALLBACK_AFTER`] and says whether it
        /// had to: a test asserts it did not, since the code under test returned first.
        struct Fallback {
            fired: Arc<AtomicBool>,
            task: tokio::task::JoinHandle<()>,
        }

        impl Fallback {
            fn arm(fake: &Arc<Fake>) -> Self {
                let fired = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn({
                    let fake = Arc::clone(fake);
                    let fired = Arc::clone(&fired);
                    async move {
                        tokio::time::sleep(FALLBACK_AFTER).await;
                        fired.store(true, Ordering::SeqCst);
                        while fake.held() > 0 {
                            fake.answer_one(StatusCode::OK);
                        }
                    }
                });
                Self { fired, task }
            }

            fn disarm(self) -> bool {
                self.task.abort();
                self.fired.load(Ordering::SeqCst)
            }
        }

        fn store() -> LogStore {
            // Never reached: nothing here answers 410 or is closed.
            let retention = Retention {
                ttl_secs: 60,
                maxlen: 1_000,
                ..Retention::defaults(false)
            };
            LogStore::open("redis://127.0.0.1:1/", retention).unwrap()
        }

        fn sockets() -> Vec<Socket> {
            ["live", "slow"]
                .into_iter()
                .map(|id| Socket {
                    id: id.to_owned(),
                    expires_at_ms: None,
                })
                .collect()
        }

        async fn deliver(push: &WsPush, message: &str) {
            let job = JobId::parse("job").unwrap();
            push.deliver(&store(), &job, &sockets(), &[message.to_owned()])
                .await;
        }

        #[tokio::test]
        async fn a_throttled_push_is_tried_once_and_later_batches_skip_the_connection() {
            let (fake, endpoint) = Fake::start().await;
            fake.set("slow", Mode::Throttle);
            let push = WsPush::new(local_client(&endpoint), BOUND);
            deliver(&push, "one").await;
            assert_eq!(
                fake.posts("slow"),
                ["one"],
                "the throttled push was retried"
            );
            assert_eq!(fake.delivered("live"), ["one"]);
            assert_eq!(push.tripped(), 1, "the throttled connection is suspect");
            deliver(&push, "two").await;
            assert_eq!(fake.posts("slow"), ["one"], "its probe is not due yet");
            assert_eq!(fake.delivered("live"), ["one", "two"]);
        }

        #[tokio::test]
        async fn a_request_stops_waiting_on_a_connection_another_request_found_failing() {
            let (fake, endpoint) = Fake::start().await;
            fake.set("slow", Mode::Hold);
            let push = WsPush::new(local_client(&endpoint), BOUND);
            let fallback = Fallback::arm(&fake);
            let first = tokio::spawn({
                let push = push.clone();
                async move { deliver(&push, "a").await }
            });
            let second = tokio::spawn({
                let push = push.clone();
                async move { deliver(&push, "b").await }
            });
            // Both requests' pushes to the slow connection are in flight; one of them is
            // throttled, the other is never answered.
            fake.wait_posts("slow", 2).await;
            fake.answer_one(StatusCode::TOO_MANY_REQUESTS);
            first.await.unwrap();
            second.await.unwrap();
            assert!(
                !fallback.disarm(),
                "a request kept waiting on a push to a connection already found failing"
            );
            assert_eq!(fake.held(), 1, "the other push is still unanswered");
            let mut live = fake.delivered("live");
            live.sort();
            assert_eq!(live, ["a", "b"], "the healthy connection got both batches");
            assert_eq!(push.tripped(), 1);
        }

        #[tokio::test]
        async fn a_probe_is_not_waited_for_and_closes_the_breaker_once_delivered() {
            let (fake, endpoint) = Fake::start().await;
            fake.set("slow", Mode::Throttle);
            let push = WsPush::new(local_client(&endpoint), BOUND);
            deliver(&push, "one").await;
            assert_eq!(push.tripped(), 1);
            // The probe is due; the connection now hangs.
            tokio::time::sleep(PROBE_EVERY).await;
            fake.set("slow", Mode::Hold);
            let fallback = Fallback::arm(&fake);
            deliver(&push, "two").await;
            assert!(!fallback.disarm(), "the request waited for the probe");
            assert_eq!(fake.delivered("live"), ["one", "two"]);
            fake.wait_posts("slow", 2).await;
            assert_eq!(
                fake.posts("slow"),
                ["one", "two"],
                "the probe carries the batch"
            );
            // While the probe is in flight, even once another is due, batches skip the
            // connection: a second probe could overtake the first.
            tokio::time::sleep(PROBE_EVERY).await;
            deliver(&push, "three").await;
            assert_eq!(fake.posts("slow"), ["one", "two"]);
            assert_eq!(fake.delivered("live"), ["one", "two", "three"]);
            // The probe is delivered: the breaker closes, the next batch is pushed.
            fake.set("slow", Mode::Accept);
            fake.answer_one(StatusCode::OK);
            tokio::time::timeout(PATIENCE, async {
                while push.tripped() > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the delivered probe closed the breaker");
            deliver(&push, "four").await;
            assert_eq!(fake.delivered("slow"), ["two", "four"]);
            assert_eq!(fake.delivered("live"), ["one", "two", "three", "four"]);
        }
    }
}
