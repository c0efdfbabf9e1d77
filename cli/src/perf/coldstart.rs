//! `logstream bench --cold-start`: each function binary started under a local Lambda
//! Runtime API, timed from exec to its first answer, with its peak memory.
//!
//! AWS cannot be reached from here, so this module serves the Runtime API itself,
//! speaking its real wire format (`GET /2018-06-01/runtime/invocation/next` hands out
//! a sample event from `events/` with the request-id and deadline headers; the
//! function POSTs `…/invocation/{id}/response`, streamed for the sse function). The
//! binaries are the release builds next to this executable. The archive bucket is
//! configured as on AWS, its endpoint a stand-in answering as an empty bucket does
//! (creating the sample job asks it whether an archived job holds the id; the
//! archiver writes the job there). Ingest runs on an empty Redis each time, so each
//! creates the sample job; the functions after it read that job.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Mutex, oneshot};

use logstream_testkit::redis_server::RedisServer;

/// One function's figures over [`RUNS`] cold starts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColdStart {
    pub function: String,
    /// The sample it answered.
    pub event: String,
    /// From exec to the function's first answer reaching the Runtime API: the median.
    pub first_answer_ms: f64,
    /// … and the slowest.
    pub first_answer_max_ms: f64,
    /// Peak resident memory (VmHWM) by then, the largest seen.
    pub peak_rss_mb: f64,
    /// Size of the (stripped, LTO) binary.
    pub binary_mb: f64,
    /// What the function answered, each different answer once: the HTTP status of
    /// its response (`statusCode`), `ok` for a response without one (an EventBridge
    /// handler's), `error` for an invocation error. A cold start that only reaches an
    /// error is not the cold start being measured.
    pub answers: Vec<String>,
}

/// The functions and the sample each is cold-started with.
const FUNCTIONS: [(&str, &str); 5] = [
    ("logstream-ingest", "ingest.create-job.json"),
    ("logstream-history", "history.get-logs.json"),
    ("logstream-sse", "sse.function-url.json"),
    ("logstream-archiver", "archiver.job-finished.json"),
    ("logstream-ws", "ws.connect.json"),
];

/// Cold starts per function: the first run of a binary also pays for reading it from
/// disk, and a 2-core machine is noisy.
pub const RUNS: usize = 5;

struct Api {
    event: Vec<u8>,
    handed_out: Mutex<bool>,
    answered: Mutex<Option<oneshot::Sender<(Instant, String)>>>,
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    let mut handed = api.handed_out.lock().await;
    if *handed {
        // One invocation per process: later polls wait until the process is stopped.
        drop(handed);
        return std::future::pending().await;
    }
    *handed = true;
    let deadline = logstream_core::model::now_ms() + 900_000;
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_static("cold-start-1"),
    );
    headers.insert("lambda-runtime-deadline-ms", HeaderValue::from(deadline));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:eu-west-1:123456789012:function:logstream"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-00000000-000000000000000000000000"),
    );
    (StatusCode::OK, headers, api.event.clone()).into_response()
}

/// The function's response: timed when it starts to arrive, then read for its status
/// (a streamed response's prelude, which comes first: up to its end, at most 1 s and
/// 64 KiB; an SSE stream goes on after it).
async fn answered(State(api): State<Arc<Api>>, body: axum::body::Body) -> StatusCode {
    use futures_util::StreamExt;
    let at = Instant::now();
    let mut head = Vec::new();
    let mut chunks = body.into_data_stream();
    let read = async {
        while !head.contains(&0) && head.len() < 64 * 1024 {
            match chunks.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let answer = match tokio::time::timeout(Duration::from_secs(1), read).await {
        Ok(()) => response_status(&head),
        Err(_) => "unread".to_owned(),
    };
    if let Some(tx) = api.answered.lock().await.take() {
        let _ = tx.send((at, answer));
    }
    StatusCode::ACCEPTED
}

async fn invocation_error(State(api): State<Arc<Api>>, body: String) -> StatusCode {
    let at = Instant::now();
    eprintln!("function invocation error: {body}");
    if let Some(tx) = api.answered.lock().await.take() {
        let _ = tx.send((at, "error".to_owned()));
    }
    StatusCode::ACCEPTED
}

/// The `statusCode` of a Lambda HTTP response (a streamed one's prelude ends at eight
/// NUL bytes), or `ok` when it has none.
fn response_status(body: &[u8]) -> String {
    let prelude = body
        .iter()
        .position(|&b| b == 0)
        .map_or(body, |end| &body[..end]);
    serde_json::from_slice::<serde_json::Value>(prelude)
        .ok()
        .and_then(|v| v.get("statusCode").and_then(serde_json::Value::as_u64))
        .map_or_else(|| "ok".to_owned(), |code| code.to_string())
}

async fn init_error(body: String) -> StatusCode {
    eprintln!("function init error: {body}");
    StatusCode::ACCEPTED
}

fn events_dir() -> PathBuf {
    // Works from the repository (cargo run) and from an installed binary run in it.
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    if from_manifest.is_dir() {
        from_manifest
    } else {
        PathBuf::from("events")
    }
}

/// S3 as a bucket that holds nothing the samples ask for, in S3's wire format: an
/// object read is a 404 `NoSuchKey`, a listing is empty, a write or delete succeeds
/// (and is forgotten), anything else is 501 `NotImplemented`.
async fn empty_bucket(request: axum::extract::Request) -> Response {
    let xml = [(axum::http::header::CONTENT_TYPE, "application/xml")];
    let query = request.uri().query().unwrap_or_default();
    match *request.method() {
        axum::http::Method::GET if query.contains("list-type=2") => (
            StatusCode::OK,
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult>\
             <Name>logstream-cold-start</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>\
             <IsTruncated>false</IsTruncated></ListBucketResult>",
        )
            .into_response(),
        axum::http::Method::GET | axum::http::Method::HEAD => (
            StatusCode::NOT_FOUND,
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
             <Message>The specified key does not exist.</Message></Error>",
        )
            .into_response(),
        axum::http::Method::PUT => (StatusCode::OK, [("etag", "\"cold-start\"")]).into_response(),
        axum::http::Method::DELETE => StatusCode::NO_CONTENT.into_response(),
        _ => (
            StatusCode::NOT_IMPLEMENTED,
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code>\
             <Message>Not in the cold-start stand-in.</Message></Error>",
        )
            .into_response(),
    }
}

/// Cold-starts every function binary found next to this executable.
pub async fn run() -> anyhow::Result<Vec<ColdStart>> {
    let redis = RedisServer::start()?;
    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let s3_url = format!("http://{}", s3.local_addr()?);
    let s3_server =
        tokio::spawn(async move { axum::serve(s3, Router::new().fallback(empty_bucket)).await });
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no executable directory")?
        .to_path_buf();
    let mut out = Vec::new();
    for (function, sample) in FUNCTIONS {
        let binary = bin_dir.join(function);
        if !binary.is_file() {
            bail!(
                "{} not found: build it first (cargo build --release --workspace)",
                binary.display()
            );
        }
        let event = std::fs::read(events_dir().join(sample))
            .with_context(|| format!("reading events/{sample}"))?;
        let mut times = Vec::with_capacity(RUNS);
        let mut peak_rss_mb: f64 = 0.0;
        let mut answers = Vec::new();
        for _ in 0..RUNS {
            if function == "logstream-ingest" {
                // Each run creates the sample job anew (the runs after it read it).
                forget_everything(&redis.url()).await?;
            }
            let (ms, rss, answer) =
                cold_start(&binary, function, &event, &redis.url(), &s3_url).await?;
            times.push(ms);
            peak_rss_mb = peak_rss_mb.max(rss);
            if !answers.contains(&answer) {
                answers.push(answer);
            }
        }
        times.sort_by(f64::total_cmp);
        out.push(ColdStart {
            function: function.to_owned(),
            event: sample.to_owned(),
            first_answer_ms: times[times.len() / 2],
            first_answer_max_ms: times[times.len() - 1],
            peak_rss_mb,
            binary_mb: std::fs::metadata(&binary)?.len() as f64 / (1024.0 * 1024.0),
            answers,
        });
    }
    s3_server.abort();
    Ok(out)
}

async fn forget_everything(redis_url: &str) -> anyhow::Result<()> {
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await?;
    Ok(())
}

/// Starts `binary` once under a Runtime API of its own that hands it `event`; the time
/// from exec to its answer (ms), its peak RSS by then (MB) and the answer (see
/// [`ColdStart::answers`]).
async fn cold_start(
    binary: &Path,
    function: &str,
    event: &[u8],
    redis_url: &str,
    s3_url: &str,
) -> anyhow::Result<(f64, f64, String)> {
    let (tx, rx) = oneshot::channel();
    let api = Arc::new(Api {
        event: event.to_vec(),
        handed_out: Mutex::new(false),
        answered: Mutex::new(Some(tx)),
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(answered),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "cold-start")
        .env("REDIS_URL", redis_url)
        .env("LOGSTREAM_INGEST_KEY", "example-ingest-key-change-me")
        .env(
            "LOGSTREAM_JWT_SECRET",
            "example-jwt-secret-change-me-0123456789",
        )
        // Configured as on AWS, with the stand-in above as the S3 endpoint.
        .env("LOGSTREAM_ARCHIVE_BUCKET", "logstream-cold-start")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "cold-start")
        .env("AWS_SECRET_ACCESS_KEY", "cold-start")
        .env("AWS_ENDPOINT_URL", s3_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let (at, answer) = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .with_context(|| format!("{function} did not answer within 10 s"))??;
    let peak_rss_mb = child.id().and_then(peak_rss_kb).unwrap_or(0) as f64 / 1024.0;
    let _ = child.kill().await;
    server.abort();
    Ok(((at - started).as_secs_f64() * 1000.0, peak_rss_mb, answer))
}

/// VmHWM of a process, in KiB (Linux).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The figures as a table.
pub fn table(rows: &[ColdStart]) -> String {
    let mut out = format!(
        "cold start ({RUNS} runs)    exec->first answer  median    max   peak RSS   binary  answered\n"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<19} {:<26} {:>6.1} ms {:>6.1} ms {:>7.1} MB {:>5.1} MB  {}\n",
            r.function,
            r.event,
            r.first_answer_ms,
            r.first_answer_max_ms,
            r.peak_rss_mb,
            r.binary_mb,
            r.answers.join(", ")
        ));
    }
    out
}
