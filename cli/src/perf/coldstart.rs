//! `logstream bench --cold-start`: each function binary started under a local Lambda
//! Runtime API, timed from exec to its first answer, with its peak memory.
//!
//! AWS cannot be reached from here, so this module serves the Runtime API itself,
//! speaking its real wire format (`GET /2018-06-01/runtime/invocation/next` hands out
//! a sample event from `events/` with the request-id and deadline headers; the
//! function POSTs `…/invocation/{id}/response`, streamed for the sse function). The
//! binaries are the release builds next to this executable. The archive bucket is
//! configured as on AWS and stands in as S3 answers for an object that was never
//! written (a 404 `NoSuchKey`): creating the sample job asks it whether an archived
//! job holds the id.

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
    answered: Mutex<Option<oneshot::Sender<Instant>>>,
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

async fn answered(State(api): State<Arc<Api>>) -> StatusCode {
    let at = Instant::now();
    if let Some(tx) = api.answered.lock().await.take() {
        let _ = tx.send(at);
    }
    StatusCode::ACCEPTED
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

/// S3's answer for a key that does not exist, in its wire format.
async fn no_such_key() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(axum::http::header::CONTENT_TYPE, "application/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
         <Message>The specified key does not exist.</Message></Error>",
    )
        .into_response()
}

/// Cold-starts every function binary found next to this executable.
pub async fn run() -> anyhow::Result<Vec<ColdStart>> {
    let redis = RedisServer::start()?;
    let s3 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let s3_url = format!("http://{}", s3.local_addr()?);
    let s3_server =
        tokio::spawn(async move { axum::serve(s3, Router::new().fallback(no_such_key)).await });
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
        for _ in 0..RUNS {
            let (ms, rss) = cold_start(&binary, function, &event, &redis.url(), &s3_url).await?;
            times.push(ms);
            peak_rss_mb = peak_rss_mb.max(rss);
        }
        times.sort_by(f64::total_cmp);
        out.push(ColdStart {
            function: function.to_owned(),
            event: sample.to_owned(),
            first_answer_ms: times[times.len() / 2],
            first_answer_max_ms: times[times.len() - 1],
            peak_rss_mb,
            binary_mb: std::fs::metadata(&binary)?.len() as f64 / (1024.0 * 1024.0),
        });
    }
    s3_server.abort();
    Ok(out)
}

/// Starts `binary` once under a Runtime API of its own that hands it `event`; the time
/// from exec to its answer (ms) and its peak RSS by then (MB).
async fn cold_start(
    binary: &Path,
    function: &str,
    event: &[u8],
    redis_url: &str,
    s3_url: &str,
) -> anyhow::Result<(f64, f64)> {
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
        .route("/2018-06-01/runtime/invocation/{id}/error", post(answered))
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
    let at = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .with_context(|| format!("{function} did not answer within 10 s"))??;
    let peak_rss_mb = child.id().and_then(peak_rss_kb).unwrap_or(0) as f64 / 1024.0;
    let _ = child.kill().await;
    server.abort();
    Ok(((at - started).as_secs_f64() * 1000.0, peak_rss_mb))
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
        "cold start ({RUNS} runs)    exec->first answer  median    max   peak RSS   binary\n"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<19} {:<26} {:>6.1} ms {:>6.1} ms {:>7.1} MB {:>5.1} MB\n",
            r.function,
            r.event,
            r.first_answer_ms,
            r.first_answer_max_ms,
            r.peak_rss_mb,
            r.binary_mb
        ));
    }
    out
}
