//! The real sse binary in Lambda Managed Instances' concurrent mode
//! (`AWS_LAMBDA_MAX_CONCURRENCY`), under a local Lambda Runtime API that speaks the real
//! wire format and hands out many invocations at once: `GET …/invocation/next` answers
//! each of the runtime's pollers with an invocation (request id, deadline), and each
//! streamed `POST …/invocation/{id}/response` (metadata prelude, eight NUL bytes, then
//! the body) is read as it arrives. The viewers of one job in one process share one
//! Redis reader, each gets every line once and in order, and each stream ends cleanly
//! at its own invocation's deadline hand-off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use logstream_core::ids::JobId;
use logstream_shared::store::LogStore;
use logstream_testkit::fixtures::{lambda_clients, numbered_lines, seed_job};
use logstream_testkit::lambda::{EXAMPLE_JWT_SECRET, fixture};
use logstream_testkit::redis_server::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Viewers in the one process.
const VIEWERS: usize = 40;
/// How long each invocation may run, and how long before that a stream hands off.
const DEADLINE: Duration = Duration::from_secs(9);
const HANDOFF_SECS: &str = "3";

/// What one invocation's streamed response has shown so far.
#[derive(Debug, Default)]
struct Viewer {
    /// The `text` of each `log` frame, in order.
    lines: Vec<String>,
    /// Bytes after the prelude not yet parsed into frames.
    rest: String,
    /// The response's prelude (status and headers).
    prelude: Option<serde_json::Value>,
    /// The response body ended (the stream closed it), when.
    ended: Option<Instant>,
    /// The function reported an error for it.
    error: Option<String>,
}

#[derive(Default)]
struct Api {
    event: String,
    handed_out: Mutex<usize>,
    deadline_ms: Mutex<u64>,
    viewers: Mutex<HashMap<String, Viewer>>,
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    let n = {
        let mut handed = api.handed_out.lock().unwrap();
        *handed += 1;
        *handed
    };
    if n > VIEWERS {
        // Every viewer is out: the other pollers wait until the process is stopped.
        return std::future::pending().await;
    }
    let id = format!("viewer-{n}");
    api.viewers
        .lock()
        .unwrap()
        .insert(id.clone(), Viewer::default());
    let deadline = *api.deadline_ms.lock().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
    headers.insert("lambda-runtime-deadline-ms", HeaderValue::from(deadline));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:eu-west-1:123456789012:function:logstream-sse"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-00000000-000000000000000000000000"),
    );
    (StatusCode::OK, headers, api.event.clone()).into_response()
}

/// Reads a streamed response as it comes: the prelude up to the eight NUL bytes, then
/// server-sent events.
async fn response(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Body) -> StatusCode {
    let mut stream = body.into_data_stream();
    let mut head: Vec<u8> = Vec::new();
    let mut in_body = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let mut viewers = api.viewers.lock().unwrap();
        let viewer = viewers.get_mut(&id).expect("an invocation handed out");
        let mut data: &[u8] = &chunk;
        if !in_body {
            head.extend_from_slice(data);
            let Some(at) = head.windows(8).position(|w| w == [0u8; 8]) else {
                continue;
            };
            viewer.prelude = serde_json::from_slice(&head[..at]).ok();
            in_body = true;
            let after = head.split_off(at + 8);
            viewer.rest.push_str(&String::from_utf8_lossy(&after));
            data = &[];
        }
        viewer.rest.push_str(&String::from_utf8_lossy(data));
        while let Some(end) = viewer.rest.find("\n\n") {
            let frame: String = viewer.rest.drain(..end + 2).collect();
            if frame.lines().any(|l| l == "event: log")
                && let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: "))
                && let Ok(entry) = serde_json::from_str::<serde_json::Value>(data)
            {
                viewer
                    .lines
                    .push(entry["text"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    if let Some(viewer) = api.viewers.lock().unwrap().get_mut(&id) {
        viewer.ended = Some(Instant::now());
    }
    StatusCode::ACCEPTED
}

async fn error(State(api): State<Arc<Api>>, Path(id): Path<String>, body: String) -> StatusCode {
    if let Some(viewer) = api.viewers.lock().unwrap().get_mut(&id) {
        viewer.error = Some(body);
    }
    StatusCode::ACCEPTED
}

async fn runtime_api(api: Arc<Api>) -> SocketAddr {
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route(
            "/2018-06-01/runtime/init/error",
            post(|body: String| async move {
                panic!("the function failed to start: {body}");
                #[allow(unreachable_code)]
                StatusCode::ACCEPTED
            }),
        )
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `CLIENT LIST` of the Redis server on `port`, one client per line.
async fn client_list(port: u16) -> Vec<String> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
        // `$LEN\r\n…\r\n`: complete once LEN bytes follow the header.
        if let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") {
            let len: usize = std::str::from_utf8(&reply[1..eol])
                .unwrap()
                .parse()
                .unwrap();
            if reply.len() >= eol + 2 + len {
                let text = String::from_utf8_lossy(&reply[eol + 2..eol + 2 + len]).into_owned();
                return text.lines().map(str::to_owned).collect();
            }
        }
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn many_viewers_in_one_process_share_one_redis_reader_and_each_gets_every_line() {
    let redis = RedisServer::start().unwrap();
    let clients = lambda_clients(&[("REDIS_URL", &redis.url())]);
    let store: LogStore = clients.store().unwrap();
    // The sample event follows job `build-1234` with a token of `user_2abc`.
    let job = JobId::parse("build-1234").unwrap();
    seed_job(&store, &job, "user_2abc").await;
    store
        .append(&job, "", None, &numbered_lines(10))
        .await
        .unwrap();

    let api = Arc::new(Api {
        event: fixture("sse.function-url.json"),
        ..Api::default()
    });
    *api.deadline_ms.lock().unwrap() =
        logstream_core::model::now_ms() + DEADLINE.as_millis() as u64;
    let addr = runtime_api(api.clone()).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_logstream-sse"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_MAX_CONCURRENCY", VIEWERS.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "logstream-sse")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/logstream-sse")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "concurrent")
        .env("REDIS_URL", redis.url())
        .env("LOGSTREAM_JWT_SECRET", EXAMPLE_JWT_SECRET)
        .env("LOGSTREAM_SSE_HANDOFF_SECS", HANDOFF_SECS)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the sse binary");
    let started = Instant::now();

    let every_viewer_has = |n: usize| {
        let viewers = api.viewers.lock().unwrap();
        viewers.len() == VIEWERS && viewers.values().all(|v| v.lines.len() >= n)
    };
    wait_until("every viewer's replay", Duration::from_secs(20), || {
        every_viewer_has(10)
    })
    .await;

    // Live: every viewer waits on the job; the process reads it with one XREAD.
    let readers = client_list(redis.port())
        .await
        .into_iter()
        .filter(|c| c.contains("cmd=xread"))
        .count();
    assert_eq!(
        readers, 1,
        "one blocking reader for the job's {VIEWERS} viewers"
    );
    // Besides it: the command connection, the test's own two, and the pooled read
    // connections the replays borrowed (one per read in flight, at most 64, closed
    // after a minute unused): a bound that does not grow with the viewers.
    let all = client_list(redis.port()).await.len();
    assert!(
        all <= 1 + 1 + 2 + 64,
        "{all} Redis connections for {VIEWERS} viewers"
    );

    for batch in 0..5 {
        let lines: Vec<String> = (0..20)
            .map(|i| {
                logstream_testkit::fixtures::stdout_line(&format!("line {}", 10 + batch * 20 + i))
            })
            .collect();
        store.append(&job, "", None, &lines).await.unwrap();
    }
    wait_until(
        "every live line at every viewer",
        Duration::from_secs(20),
        || every_viewer_has(110),
    )
    .await;
    let want: Vec<String> = (0..110).map(|i| format!("line {i}")).collect();
    for (id, viewer) in api.viewers.lock().unwrap().iter() {
        assert_eq!(viewer.lines, want, "{id}: every line once, in order");
        let prelude = viewer.prelude.as_ref().expect("a prelude");
        assert_eq!(prelude["statusCode"], 200, "{id}");
    }

    // Each stream hands off before its invocation's deadline and ends cleanly.
    wait_until(
        "every stream's hand-off",
        DEADLINE + Duration::from_secs(5),
        || {
            api.viewers
                .lock()
                .unwrap()
                .values()
                .all(|v| v.ended.is_some() || v.error.is_some())
        },
    )
    .await;
    for (id, viewer) in api.viewers.lock().unwrap().iter() {
        assert_eq!(viewer.error, None, "{id}");
        let ended = viewer.ended.unwrap() - started;
        assert!(
            ended < DEADLINE,
            "{id} ended {ended:?} after the start, past its deadline"
        );
    }
    let _ = child.kill().await;
}
