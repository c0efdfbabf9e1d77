//! WebSocket push: after a batch or a status change is stored, every connection of the
//! job gets it through API Gateway's management API (`PostToConnection`).
//!
//! Messages are `{"type":"entries","entries":[…]}` (split so none exceeds API Gateway's
//! 128 KB message limit) and, when the job ends, `{"type":"done","status":…}`. One
//! connection gets its messages in order; connections are served concurrently, at most
//! [`PUSH_CONCURRENCY`] at once. A connection that answers 410 Gone is removed from the
//! job's hash (unless it registered less than [`CONNECT_GRACE`] ago: API Gateway answers
//! 410 while a connection's `$connect` is still running).
//!
//! **Slow or broken consumers never slow ingest.** A connection whose push fails (a
//! throttle, an error) or is still running when the bound is reached is *tripped*: later
//! batches skip it at once, except for one probe per [`PROBE_EVERY`], which closes the
//! breaker when it succeeds. A connection tripped for [`DROP_AFTER`] is closed
//! (`DeleteConnection`) and forgotten as its `$disconnect` would; its client reconnects.
//! So a client that stops reading costs one request at most the bound, not every
//! request. The breaker lives in the process (each ingest instance learns on its own),
//! which is enough: it only decides whom to skip.
//!
//! **Tokens expire.** Each connection carries its token's expiry (see
//! `logstream_ws::WsState::connect`): a connection past it gets nothing more and is
//! closed and forgotten at the next push to its job. (API Gateway cannot close a
//! connection on a timer; an idle expired connection ends at its 10-minute idle limit.)
//!
//! **Timing: a bounded wait, not fire-after-response.** The ingest request waits for
//! its pushes, but never longer than `LOGSTREAM_WS_PUSH_TIMEOUT_MS` (300 ms by default);
//! what has not finished by then is abandoned and logged, and the request still succeeds.
//! Two reasons. Lambda freezes the execution environment as soon as the response is
//! returned, so a task spawned "after the response" would sit frozen until some later
//! invocation thaws it: the push would arrive late, or never. And a pipeline sends its
//! batches one after another: a batch's pushes finish before the next batch is accepted,
//! so viewers see batches in order. A dead connection answers 410 at once; only a
//! management API that hangs costs the bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::http::HttpResponse;
use aws_sdk_apigatewaymanagement::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_apigatewaymanagement::error::SdkError;
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures_util::StreamExt;

use logstream_core::ids::JobId;
use logstream_core::model::{JobStatus, StoredEntry, now_ms};
use logstream_shared::store::{LogStore, Socket};

/// Largest message sent to one connection: API Gateway refuses more than 128 KB.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// A connection younger than this that answers 410 is kept: it is still in its
/// `$connect` (see [`LogStore::drop_gone_connections`]).
pub const CONNECT_GRACE: Duration = Duration::from_secs(10);
/// Connections pushed to at once per request.
pub const PUSH_CONCURRENCY: usize = 32;
/// How often a tripped connection gets one probe push.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a connection may stay tripped before it is closed and forgotten.
pub const DROP_AFTER: Duration = Duration::from_secs(5);

const ENTRIES_HEAD: &str = r#"{"type":"entries","entries":["#;
const ENTRIES_TAIL: &str = "]}";

/// The push side of the ingest function: one management API client per process.
#[derive(Debug, Clone)]
pub struct WsPush {
    client: Client,
    bound: Duration,
    tripped: Arc<Mutex<HashMap<String, Tripped>>>,
}

/// A connection whose pushes are being skipped.
#[derive(Debug, Clone, Copy)]
struct Tripped {
    since: Instant,
    probed: Instant,
}

/// What to do with one connection in one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Send,
    Skip,
    Close,
}

impl WsPush {
    /// Pushes with `client` (its endpoint set to the management API), waiting at most
    /// `bound` per request.
    pub fn new(client: Client, bound: Duration) -> Self {
        Self {
            client,
            bound,
            tripped: Arc::default(),
        }
    }

    /// How many connections this process currently skips.
    pub fn tripped(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tripped>> {
        self.tripped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `socket` gets this push, is skipped, or is to be closed.
    fn verdict(&self, socket: &Socket, now: Instant, now_ms: u64) -> Verdict {
        if socket.expired(now_ms) {
            return Verdict::Close;
        }
        let mut tripped = self.lock();
        let Some(state) = tripped.get_mut(&socket.id) else {
            return Verdict::Send;
        };
        if now.duration_since(state.since) >= DROP_AFTER {
            Verdict::Close
        } else if now.duration_since(state.probed) >= PROBE_EVERY {
            state.probed = now;
            Verdict::Send
        } else {
            Verdict::Skip
        }
    }

    /// The client a Lambda uses: region and credentials from the environment (the
    /// function's role), `endpoint` = the WebSocket API's management endpoint.
    pub async fn from_environment(endpoint: &str, bound: Duration) -> Self {
        let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(&shared)
            .endpoint_url(endpoint)
            .build();
        Self::new(Client::from_conf(config), bound)
    }

    /// A client for a local management endpoint (`logstream dev`), which checks no
    /// signature: fixed placeholder credentials and region.
    pub fn local(endpoint: &str, bound: Duration) -> Self {
        let config = aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("local"))
            .credentials_provider(Credentials::new("local", "local", None, None, "logstream"))
            .endpoint_url(endpoint)
            .build();
        Self::new(Client::from_conf(config), bound)
    }

    /// Sends `messages`, in order, to every one of `connections` that is neither
    /// tripped nor expired, then drops those that answered 410 Gone from the job's hash
    /// and closes those tripped too long or past their token's expiry. Returns within
    /// the bound (plus the Redis round trips of the clean-up); never fails.
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
        let mut close = Vec::new();
        for socket in connections {
            match self.verdict(socket, now, now_ms) {
                Verdict::Send => targets.push(socket.id.as_str()),
                Verdict::Skip => {}
                Verdict::Close => close.push(socket.id.clone()),
            }
        }
        let gone = Mutex::new(Vec::new());
        let failed = Mutex::new(Vec::new());
        let unfinished = Mutex::new(targets.iter().copied().collect::<HashSet<&str>>());
        // Built in a loop rather than by a closure over borrowed data: a closure here trips
        // the compiler's higher-ranked lifetime check on the axum handler's future.
        let mut pending = Vec::with_capacity(targets.len());
        for connection in &targets {
            pending.push(self.send_all(connection, messages, &gone, &failed, &unfinished));
        }
        let sends = futures_util::stream::iter(pending)
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect::<()>();
        let cut_short = tokio::time::timeout(self.bound, sends).await.is_err();
        let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
        if cut_short {
            let unfinished = unfinished.into_inner().unwrap_or_else(|e| e.into_inner());
            tracing::warn!(
                job_id = %job,
                connections = targets.len(),
                unfinished = unfinished.len(),
                bound_ms = self.bound.as_millis() as u64,
                "websocket push cut short at its time bound"
            );
            failed.extend(unfinished.into_iter().map(str::to_owned));
        }
        self.record(&targets, &failed, now);
        if !failed.is_empty() {
            tracing::warn!(job_id = %job, failed = failed.len(), "websocket push failed for some connections; skipping them");
        }
        let gone = gone.into_inner().unwrap_or_else(|e| e.into_inner());
        if !gone.is_empty() {
            match store.drop_gone_connections(job, &gone, CONNECT_GRACE).await {
                Ok(dropped) => {
                    tracing::info!(job_id = %job, gone = gone.len(), dropped, "dropped gone websocket connections");
                }
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e, "could not drop gone connections");
                }
            }
        }
        if !close.is_empty() {
            self.close(store, job, &close).await;
        }
    }

    /// Trips the connections that failed, closes the breaker of those that succeeded.
    fn record(&self, targets: &[&str], failed: &[String], now: Instant) {
        let failed: HashSet<&str> = failed.iter().map(String::as_str).collect();
        let mut tripped = self.lock();
        for connection in targets {
            if failed.contains(connection) {
                tripped.entry((*connection).to_owned()).or_insert(Tripped {
                    since: now,
                    probed: now,
                });
            } else {
                tripped.remove(*connection);
            }
        }
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
        {
            let mut tripped = self.lock();
            for connection in connections {
                tripped.remove(connection);
            }
        }
        match store.forget_connections(job, connections).await {
            Ok(()) => {
                tracing::info!(job_id = %job, closed = connections.len(), "closed websocket connections (expired token or tripped too long)");
            }
            Err(e) => {
                tracing::warn!(job_id = %job, error = %e, "could not forget closed connections")
            }
        }
    }

    async fn send_all(
        &self,
        connection: &str,
        messages: &[String],
        gone: &Mutex<Vec<String>>,
        failed: &Mutex<Vec<String>>,
        unfinished: &Mutex<HashSet<&str>>,
    ) {
        self.send_each(connection, messages, gone, failed).await;
        if let Ok(mut unfinished) = unfinished.lock() {
            unfinished.remove(connection);
        }
    }

    async fn send_each(
        &self,
        connection: &str,
        messages: &[String],
        gone: &Mutex<Vec<String>>,
        failed: &Mutex<Vec<String>>,
    ) {
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
                Err(e) if is_gone(&e) => {
                    if let Ok(mut gone) = gone.lock() {
                        gone.push(connection.to_owned());
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(connection, error = %e, "PostToConnection failed");
                    if let Ok(mut failed) = failed.lock() {
                        failed.push(connection.to_owned());
                    }
                    return;
                }
            }
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

/// `{"type":"done","status":…}`.
pub fn done_message(status: JobStatus) -> String {
    format!(r#"{{"type":"done","status":"{status}"}}"#)
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
            done_message(JobStatus::Failed),
            r#"{"type":"done","status":"failed"}"#
        );
    }
}
