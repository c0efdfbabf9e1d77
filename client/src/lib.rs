//! A Rust client of the logstream API: what `logstream run`, `tail` and `logs` are
//! built on, and what other Rust code (a build system, a test harness) can use instead
//! of writing its own HTTP calls.
//!
//! | piece | does |
//! |---|---|
//! | [`Client`] | one call per route: create a job, set its status, post a stage event, post one batch of lines, read the job and pages of its history |
//! | [`upload`] | a background uploader: lines in, `seq`-numbered batches out, retried without loss, doubling or reordering, with backpressure |
//! | [`follow`] | the live stream (SSE), resumed with `Last-Event-ID` after every drop |
//!
//! Retries: a connection error, a timeout, a 5xx or a 429 is retried with exponential
//! backoff ([`RetryPolicy`]) until the policy's time budget is spent; any other answer
//! (400, 401, 404, 409, 413) is final and comes back as [`ClientError::Api`]. Writes
//! that could double something on a retry are the caller's concern: a batch of lines
//! carries a `seq` (see [`upload`]), a status change is idempotent, and a stage event
//! whose answer was lost may, rarely, be stored twice (the API has no key for events).
//!
//! Streaming lines from Rust code, as `logstream run` does:
//!
//! ```no_run
//! use logstream_client::Client;
//! use logstream_client::upload::{LogLine, Upload, UploadOptions};
//! use logstream_core::ids::JobId;
//! use logstream_core::model::{JobStatus, LineStream};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new("http://127.0.0.1:8787", Some("the-ingest-key".into()))?;
//! let job = JobId::parse("build-42")?;
//! client.set_status(&job, JobStatus::Running).await?;
//! let (lines, upload) = Upload::start(client.clone(), job.clone(), UploadOptions::default());
//! lines.send(vec![LogLine::new(LineStream::Stdout, "compiling")]).await?;
//! drop(lines); // every sender gone: the upload can finish
//! let report = upload.finish().await;
//! let status = if report.error.is_none() { JobStatus::Ready } else { JobStatus::Failed };
//! client.set_status(&job, status).await?;
//! # Ok(())
//! # }
//! ```

pub mod follow;
pub mod upload;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{Entry, JobStatus, StageStatus};

/// The service `logstream dev` runs by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// Longest a single request (other than the live stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the live stream may stay silent: three missed heartbeats (20 s each) and a
/// little more mean the connection is dead even if TCP has not noticed.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(65);

/// What went wrong talking to the service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service URL is not an `http://` or `https://` URL.
    #[error("invalid service URL {0:?}: expected http://HOST[:PORT] or https://…")]
    InvalidUrl(String),
    /// The request did not get an answer: refused, reset, timed out.
    #[error("no answer from the service: {}", causes(.0))]
    Transport(#[source] reqwest::Error),
    /// The service answered with an error (the SPEC's `{"error":{…}}`).
    #[error("the service answered {status}: {message} ({code})")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The SPEC's error code (`not_found`, …), or `http_NNN` for a foreign body.
        code: String,
        /// The service's explanation.
        message: String,
    },
    /// The service answered something this client does not understand.
    #[error("unexpected answer from the service: {0}")]
    Decode(String),
    /// Retryable failures went on for longer than the [`RetryPolicy`] allows.
    #[error("gave up after {attempts} attempts in {:.0} s; last error: {last}", elapsed.as_secs_f64())]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// How long they took.
        elapsed: Duration,
        /// The last failure.
        last: Box<ClientError>,
    },
    /// The live stream was accepted but kept closing before any entry arrived.
    #[error("the live stream kept closing without delivering entries")]
    StreamClosing,
    /// The uploader's task ended abnormally (a bug).
    #[error("the uploader stopped unexpectedly: {0}")]
    UploaderStopped(String),
    /// The job already took batches with `seq` numbers this client cannot get above.
    #[error("the job's seq numbers are ahead of this client's and could not be overtaken")]
    SeqExhausted,
}

impl ClientError {
    /// Worth trying again: no answer, a 5xx or a 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(e) => !e.is_builder(),
            Self::Api { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// The HTTP status of an error answer (also inside [`ClientError::GaveUp`]).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The SPEC's error code of an error answer (`not_found`, `job_finished`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own message leaves out why,
/// such as "connection refused").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// How often a run of failures is reported while it lasts.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// How long and how often retryable failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubled after each further failure.
    pub first_delay: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
    /// Give up once failures have gone on this long.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    /// 100 ms doubling up to 5 s, for up to 10 minutes: long enough to ride out a
    /// redeploy or a Redis failover, short enough that a build is not held for ever.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` consecutive failures (1 or more).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// A client of one logstream service. Cheap to clone (clones share connections).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Where the streaming function answers (the live stream, the raw log): on AWS its
    /// own URL, locally the same as `base`.
    stream_base: String,
    token: Option<String>,
    retry: RetryPolicy,
}

/// `POST /jobs`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedJob {
    /// The job's id (the service's pick when none was asked for).
    #[serde(deserialize_with = "job_id")]
    pub job_id: JobId,
    /// A token that can write to this job only.
    pub ingest_token: String,
    /// `queued`.
    pub status: JobStatus,
}

/// `POST /jobs/{id}/logs`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Appended {
    /// Lines stored (0 for a duplicate).
    pub accepted: usize,
    /// The id of the first line stored.
    pub first_id: Option<EntryId>,
    /// The id of the last line stored.
    pub last_id: Option<EntryId>,
    /// The batch's `seq` was not above the last accepted one: nothing was appended.
    #[serde(default)]
    pub duplicate: bool,
}

/// `GET /jobs/{id}`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobInfo {
    /// The job's id.
    #[serde(deserialize_with = "job_id")]
    pub job_id: JobId,
    /// Its current status.
    pub status: JobStatus,
    /// Creation time, ms since the epoch.
    pub created_at: u64,
    /// When it reached `ready` or `failed`.
    pub finished_at: Option<u64>,
    /// Whether its log has been archived.
    pub archived: bool,
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCursor {
    /// The newest entries.
    Latest,
    /// The entries just older than this id.
    Before(EntryId),
    /// The entries just newer than this id (`EntryId { ms: 0, seq: 0 }`: the oldest).
    After(EntryId),
}

/// One page of history, chronological.
#[derive(Debug, Deserialize)]
pub struct HistoryPage {
    /// The job's id.
    #[serde(deserialize_with = "job_id")]
    pub job_id: JobId,
    /// Its current status.
    pub status: JobStatus,
    /// `redis` or `archive`.
    pub source: String,
    /// The entries exactly as the service sent them.
    pub lines: Vec<Box<RawValue>>,
    /// More entries exist in the page's direction.
    pub has_more: bool,
    /// The cursor for the page before this one, when there is one.
    pub next_before: Option<EntryId>,
}

impl HistoryPage {
    /// The page's entries, decoded.
    pub fn entries(&self) -> Result<Vec<Entry>, ClientError> {
        self.lines
            .iter()
            .map(|raw| decode_entry(raw.get()))
            .collect()
    }
}

fn job_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
    let raw = String::deserialize(d)?;
    JobId::parse(&raw).map_err(serde::de::Error::custom)
}

/// Decodes one entry of the API's JSON.
pub fn decode_entry(json: &str) -> Result<Entry, ClientError> {
    serde_json::from_str(json).map_err(|e| ClientError::Decode(format!("entry {json:.200}: {e}")))
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

impl Client {
    /// A client of the service at `base_url`, sending `token` (an ingest key, a job's
    /// ingest token or a viewer JWT, depending on the routes used) as a bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = service_url(base_url)?;
        // An explicit TLS provider, as everywhere in logstream: a binary built alone may
        // not get one through another crate's features. An error means one is installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(STREAM_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("logstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Transport)?;
        Ok(Self {
            http,
            stream_base: base.clone(),
            base,
            token,
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with the streaming function at `url` (the live stream and the
    /// raw log): on AWS its function URL (`SseUrl`), not the HTTP API's.
    pub fn with_stream_url(mut self, url: &str) -> Result<Self, ClientError> {
        self.stream_base = service_url(url)?;
        Ok(self)
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The service URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_to(&self.base, method, path)
    }

    /// A request to the streaming function.
    fn stream_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_to(&self.stream_base, method, path)
    }

    fn request_to(&self, base: &str, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{base}{path}"));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// `GET /jobs/{id}/logs/raw`: the whole log as text (each line's time first with
    /// `timestamps`), as a stream of chunks. Not retried: a download that breaks
    /// mid-way is the caller's to start again.
    pub async fn raw_log(
        &self,
        job: &JobId,
        timestamps: bool,
    ) -> Result<impl futures_util::Stream<Item = Result<Bytes, ClientError>>, ClientError> {
        use futures_util::StreamExt;
        let mut path = format!("/jobs/{job}/logs/raw");
        if timestamps {
            path.push_str("?timestamps=true");
        }
        let res = self
            .stream_request(Method::GET, &path)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let status = res.status();
        if status != StatusCode::OK {
            let body = res.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(res
            .bytes_stream()
            .map(|chunk| chunk.map_err(ClientError::Transport)))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent.
    /// `attempt` gets the number of failures so far. A run of failures is reported
    /// (as a tracing warning) when it starts, every 30 s while it lasts, and when it
    /// ends.
    pub async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let started = Instant::now();
        let mut reported = started;
        let mut failures = 0u32;
        loop {
            match attempt(failures).await {
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    let delay = self.retry.delay(failures);
                    if started.elapsed() + delay > self.retry.give_up_after {
                        return Err(ClientError::GaveUp {
                            attempts: failures,
                            elapsed: started.elapsed(),
                            last: Box::new(e),
                        });
                    }
                    if failures == 1 || reported.elapsed() >= REPORT_EVERY {
                        reported = Instant::now();
                        tracing::warn!(
                            "{what}: {e}; retrying (attempt {failures}, giving up after {} s)",
                            self.retry.give_up_after.as_secs()
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
                other => {
                    if failures > 0 && other.is_ok() {
                        tracing::warn!("{what}: done after {} retries", failures);
                    }
                    return other;
                }
            }
        }
    }

    /// `POST /jobs` (needs the deployment's ingest key). `job: None` lets the service
    /// pick an id. An existing id is [`ClientError::Api`] 409 `job_exists`.
    pub async fn create_job(
        &self,
        job: Option<&JobId>,
        owner: &str,
        secrets: &[String],
    ) -> Result<CreatedJob, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            job_id: Option<&'a str>,
            owner: &'a str,
            secrets: &'a [String],
        }
        let body = Body {
            job_id: job.map(JobId::as_str),
            owner,
            secrets,
        };
        self.retrying("creating the job", |_| {
            let req = self.request(Method::POST, "/jobs").json(&body);
            async move { answer(req.timeout(REQUEST_TIMEOUT).send().await).await }
        })
        .await
    }

    /// `PUT /jobs/{id}/status`. Setting the status the job already has is a no-op.
    pub async fn set_status(&self, job: &JobId, status: JobStatus) -> Result<(), ClientError> {
        self.put_status(job, serde_json::json!({ "status": status }))
            .await
    }

    /// `PUT /jobs/{id}/status` with a terminal status and the exit code the job's
    /// command ended with (`GET /jobs/{id}` and `done` carry it).
    pub async fn end(
        &self,
        job: &JobId,
        status: JobStatus,
        exit_code: i64,
    ) -> Result<(), ClientError> {
        self.put_status(
            job,
            serde_json::json!({ "status": status, "exit_code": exit_code }),
        )
        .await
    }

    async fn put_status(&self, job: &JobId, body: serde_json::Value) -> Result<(), ClientError> {
        #[derive(Deserialize)]
        struct Out {}
        let path = format!("/jobs/{job}/status");
        self.retrying("setting the job status", |_| {
            let req = self.request(Method::PUT, &path).json(&body);
            async move {
                answer::<Out>(req.timeout(REQUEST_TIMEOUT).send().await)
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// `POST /jobs/{id}/events`: a stage event; returns its entry id.
    pub async fn post_stage(
        &self,
        job: &JobId,
        name: &str,
        status: StageStatus,
    ) -> Result<EntryId, ClientError> {
        #[derive(Deserialize)]
        struct Out {
            id: EntryId,
        }
        let path = format!("/jobs/{job}/events");
        let body = serde_json::json!({ "type": "stage", "name": name, "status": status });
        self.retrying("posting a stage event", |_| {
            let req = self.request(Method::POST, &path).json(&body);
            async move {
                answer::<Out>(req.timeout(REQUEST_TIMEOUT).send().await)
                    .await
                    .map(|o| o.id)
            }
        })
        .await
    }

    /// `POST /jobs/{id}/logs` with a ready JSON body, once, without retrying: the
    /// caller decides (see [`upload`], which retries with the same `seq`).
    pub async fn post_lines_once(&self, job: &JobId, body: Bytes) -> Result<Appended, ClientError> {
        let req = self
            .request(Method::POST, &format!("/jobs/{job}/logs"))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(REQUEST_TIMEOUT);
        answer(req.send().await).await
    }

    /// `GET /jobs/{id}` (needs a viewer JWT).
    pub async fn job(&self, job: &JobId) -> Result<JobInfo, ClientError> {
        let path = format!("/jobs/{job}");
        self.retrying("reading the job", |_| {
            let req = self.request(Method::GET, &path);
            async move { answer(req.timeout(REQUEST_TIMEOUT).send().await).await }
        })
        .await
    }

    /// `GET /jobs/{id}/logs`: one page of at most `limit` entries (the service caps
    /// pages at 500). Needs a viewer JWT.
    pub async fn page(
        &self,
        job: &JobId,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<HistoryPage, ClientError> {
        let mut path = format!("/jobs/{job}/logs?limit={}", limit.max(1));
        match cursor {
            PageCursor::Latest => {}
            PageCursor::Before(id) => path.push_str(&format!("&before={id}")),
            PageCursor::After(id) => path.push_str(&format!("&after={id}")),
        }
        self.retrying("reading the job's history", |_| {
            let req = self.request(Method::GET, &path);
            async move { answer(req.timeout(REQUEST_TIMEOUT).send().await).await }
        })
        .await
    }
}

/// Reads a JSON answer, or the SPEC's error body for an error status.
async fn answer<T: DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, ClientError> {
    let res = sent.map_err(ClientError::Transport)?;
    let status = res.status();
    let body = res.bytes().await.map_err(ClientError::Transport)?;
    if status.is_success() {
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    } else {
        Err(api_error(status, &body))
    }
}

/// The error of an error answer, from its body when it is the SPEC's shape.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Api {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

/// A service URL without its trailing slash; an error unless `http(s)://host…`.
fn service_url(raw: &str) -> Result<String, ClientError> {
    let base = raw.trim().trim_end_matches('/').to_owned();
    let url = reqwest::Url::parse(&base).map_err(|_| ClientError::InvalidUrl(base.clone()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ClientError::InvalidUrl(base));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let delays: Vec<u128> = (1..=9).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn only_missing_answers_5xx_and_429_are_retried() {
        let api = |status: u16| ClientError::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: "x".into(),
            message: "x".into(),
        };
        for status in [500, 502, 503, 504, 429] {
            assert!(api(status).is_retryable(), "{status}");
        }
        for status in [400, 401, 404, 409, 413] {
            assert!(!api(status).is_retryable(), "{status}");
        }
        assert!(!ClientError::Decode("x".into()).is_retryable());
    }

    #[test]
    fn error_answers_keep_the_spec_code_and_message() {
        let e = api_error(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"job_finished","message":"the job has finished"}}"#,
        );
        assert_eq!(e.code(), Some("job_finished"));
        assert_eq!(e.status(), Some(StatusCode::CONFLICT));
        let odd = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(odd.code(), Some("http_502"));
        assert!(odd.is_retryable());
    }

    #[test]
    fn service_urls_must_be_http_or_https() {
        assert_eq!(
            Client::new("http://127.0.0.1:8787/", None)
                .unwrap()
                .base_url(),
            "http://127.0.0.1:8787"
        );
        for bad in ["", "127.0.0.1:8787", "ftp://host", "http://"] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::InvalidUrl(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn entries_decode_from_the_spec_json() {
        let entry = decode_entry(
            r#"{"id":"1732406400000-0","ts":1732406400000,"kind":"line","stream":"stderr","text":"x"}"#,
        )
        .unwrap();
        assert_eq!(entry.id.to_string(), "1732406400000-0");
        assert!(decode_entry(r#"{"id":"1-0","kind":"nope"}"#).is_err());
    }
}
