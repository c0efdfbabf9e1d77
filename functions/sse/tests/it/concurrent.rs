//! The real sse binary in Lambda Managed Instances' concurrent mode
//! (`AWS_LAMBDA_MAX_CONCURRENCY`), under a local Lambda Runtime API that speaks the real
//! wire format and hands out many invocations at once: `GET …/invocation/next` answers
//! each of the runtime's pollers with an invocation (request id, deadline), and each
//! streamed `POST …/invocation/{id}/response` (metadata prelude, eight NUL bytes, then
//! the body) is read as it arrives. The viewers of one job in one process share one
//! Redis reader, each gets every line once and in order, each stream ends cleanly at its
//! own invocation's deadline hand-off, and the process's metrics come out as CloudWatch
//! EMF lines on stdout.

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
    /// When each arrived (ms since the epoch).
    arrived: Vec<u64>,
    /// When the invocation was handed out, and when the first byte after the prelude
    /// arrived.
    handed_at: Option<Instant>,
    first_body_at: Option<Instant>,
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
    /// The invocations' events, handed out in turn, `limit` in all.
    events: Vec<String>,
    limit: usize,
    handed_out: Mutex<usize>,
    deadline_ms: Mutex<u64>,
    /// When set, each invocation's deadline is this long after it is handed out.
    lifetime_ms: u64,
    viewers: Mutex<HashMap<String, Viewer>>,
}

async fn next(State(api): State<Arc<Api>>) -> Response {
    let n = {
        let mut handed = api.handed_out.lock().unwrap();
        *handed += 1;
        *handed
    };
    if n > api.limit {
        // Every viewer is out: the other pollers wait until the process is stopped.
        return std::future::pending().await;
    }
    let id = format!("viewer-{n}");
    api.viewers.lock().unwrap().insert(
        id.clone(),
        Viewer {
            handed_at: Some(Instant::now()),
            ..Viewer::default()
        },
    );
    let deadline = match api.lifetime_ms {
        0 => *api.deadline_ms.lock().unwrap(),
        ms => logstream_core::model::now_ms() + ms,
    };
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
    let event = api.events[(n - 1) % api.events.len()].clone();
    (StatusCode::OK, headers, event).into_response()
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
        if viewer.first_body_at.is_none() && !(viewer.rest.is_empty() && data.is_empty()) {
            viewer.first_body_at = Some(Instant::now());
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
                viewer.arrived.push(logstream_core::model::now_ms());
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

/// The metric lines (CloudWatch EMF documents) a process wrote on stdout.
type Emf = Arc<Mutex<Vec<serde_json::Value>>>;

/// Starts the sse binary under the Runtime API at `addr`, `concurrency` invocations at
/// once, metric lines at most once a second; its stdout is read, and the metric lines
/// kept.
fn sse_process(
    addr: SocketAddr,
    redis_url: &str,
    concurrency: usize,
) -> (tokio::process::Child, Emf) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_logstream-sse"));
    command.env_clear();
    if concurrency > 1 {
        command.env("AWS_LAMBDA_MAX_CONCURRENCY", concurrency.to_string());
    }
    command
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "logstream-sse")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/logstream-sse")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "concurrent")
        .env("REDIS_URL", redis_url)
        .env("LOGSTREAM_JWT_SECRET", EXAMPLE_JWT_SECRET)
        .env("LOGSTREAM_SSE_HANDOFF_SECS", HANDOFF_SECS)
        .env("RUST_LOG", "warn")
        .env("LOGSTREAM_METRICS_SECS", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the sse binary");
    let emf = Emf::default();
    let stdout = child.stdout.take().expect("stdout");
    let kept = emf.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&line)
                && doc.get("_aws").is_some()
            {
                kept.lock().unwrap().push(doc);
            }
        }
    });
    (child, emf)
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

/// A private Redis holding the job the sample event follows (`build-1234`, read with a
/// token of `user_2abc`), with `lines` lines `line {i}`.
async fn sample_job(lines: usize) -> (RedisServer, LogStore, JobId) {
    let redis = RedisServer::start().unwrap();
    let clients = lambda_clients(&[("REDIS_URL", &redis.url())]);
    let store: LogStore = clients.store().unwrap();
    let job = JobId::parse("build-1234").unwrap();
    seed_job(&store, &job, "user_2abc").await;
    if lines > 0 {
        store
            .append(&job, "", None, &numbered_lines(lines))
            .await
            .unwrap();
    }
    (redis, store, job)
}

#[tokio::test]
async fn many_viewers_in_one_process_share_one_redis_reader_and_each_gets_every_line() {
    let (redis, store, job) = sample_job(10).await;

    let api = Arc::new(Api {
        events: vec![fixture("sse.function-url.json")],
        limit: VIEWERS,
        ..Api::default()
    });
    *api.deadline_ms.lock().unwrap() =
        logstream_core::model::now_ms() + DEADLINE.as_millis() as u64;
    let addr = runtime_api(api.clone()).await;
    let (mut child, emf) = sse_process(addr, &redis.url(), VIEWERS);
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
    // What the process measured went out as CloudWatch EMF lines on stdout: at most one
    // a second here, and one when a stream ends.
    let streams_counted = || -> u64 {
        emf.lock()
            .unwrap()
            .iter()
            .filter_map(|doc| doc["StreamsOpened"].as_u64())
            .sum()
    };
    wait_until("the metric line", Duration::from_secs(5), || {
        streams_counted() == VIEWERS as u64
    })
    .await;
    for doc in emf.lock().unwrap().iter() {
        assert_eq!(doc["Function"], "logstream-sse");
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "logstream");
        assert_eq!(directive["Dimensions"], serde_json::json!([["Function"]]));
    }
    // All were open at once, until their hand-offs: the gauge's highest says so.
    let most_viewers = emf
        .lock()
        .unwrap()
        .iter()
        .filter_map(|doc| doc["Viewers"].as_u64())
        .max();
    assert_eq!(most_viewers, Some(VIEWERS as u64), "the Viewers gauge");
    let lag_samples: u64 = emf
        .lock()
        .unwrap()
        .iter()
        .flat_map(|doc| {
            doc["DeliveryLag"]["Counts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|n| n.as_u64())
        .sum();
    assert!(
        lag_samples > 0,
        "delivery lags of the live lines were measured"
    );
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

/// Measures, does not check: 1 000 viewers of 10 jobs in one sse process (concurrent
/// mode), 100 lines/s per job for 10 s. Prints Redis connections, the process's RSS and
/// the delivery delay from append to frame. Run with
/// `cargo test --release -p logstream-sse --test it concurrent::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: prints figures"]
async fn measure_a_thousand_viewers_of_ten_jobs_in_one_process() {
    const JOBS: usize = 10;
    const PER_JOB: usize = 100;
    let redis = RedisServer::start().unwrap();
    let clients = lambda_clients(&[("REDIS_URL", &redis.url())]);
    let store: LogStore = clients.store().unwrap();
    let sample = fixture("sse.function-url.json");
    let mut events = Vec::new();
    let mut jobs = Vec::new();
    for j in 0..JOBS {
        let job = JobId::parse(&format!("measure-{j}")).unwrap();
        seed_job(&store, &job, "user_2abc").await;
        events.push(sample.replace("build-1234", job.as_str()));
        jobs.push(job);
    }
    let api = Arc::new(Api {
        events,
        limit: JOBS * PER_JOB,
        ..Api::default()
    });
    *api.deadline_ms.lock().unwrap() = logstream_core::model::now_ms() + 120_000;
    let addr = runtime_api(api.clone()).await;
    let (mut child, _emf) = sse_process(addr, &redis.url(), JOBS * PER_JOB);
    let pid = child.id().unwrap();
    wait_until("every viewer's stream", Duration::from_secs(60), || {
        let viewers = api.viewers.lock().unwrap();
        viewers.len() == JOBS * PER_JOB && viewers.values().all(|v| v.prelude.is_some())
    })
    .await;
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0)
    };
    let idle_rss = rss(pid);
    // 100 lines/s per job: 10 lines every 100 ms, for 10 s.
    let sent_at = Instant::now();
    for tick in 0..100u64 {
        for job in &jobs {
            let lines: Vec<String> = (0..10)
                .map(|i| {
                    logstream_testkit::fixtures::stdout_line(&format!(
                        "t={} #{}",
                        logstream_core::model::now_ms(),
                        tick * 10 + i
                    ))
                })
                .collect();
            store.append(job, "", None, &lines).await.unwrap();
        }
        tokio::time::sleep_until((sent_at + Duration::from_millis(100 * (tick + 1))).into()).await;
    }
    wait_until(
        "every line at every viewer",
        Duration::from_secs(30),
        || {
            api.viewers
                .lock()
                .unwrap()
                .values()
                .all(|v| v.lines.len() >= 1000)
        },
    )
    .await;
    let readers = client_list(redis.port())
        .await
        .iter()
        .filter(|c| c.contains("cmd=xread"))
        .count();
    let connections = client_list(redis.port()).await.len();
    let busy_rss = rss(pid);
    let mut delays: Vec<u64> = Vec::new();
    for viewer in api.viewers.lock().unwrap().values() {
        for (text, at) in viewer.lines.iter().zip(&viewer.arrived) {
            if let Some(sent) = text
                .strip_prefix("t=")
                .and_then(|t| t.split(' ').next())
                .and_then(|t| t.parse::<u64>().ok())
            {
                delays.push(at.saturating_sub(sent));
            }
        }
    }
    delays.sort_unstable();
    let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p) as usize];
    eprintln!(
        "{} viewers of {JOBS} jobs in one process: {readers} blocking readers, {connections} Redis \
         connections in all (2 the test's); RSS {} MB with every stream open, {} MB after \
         10 s at 100 lines/s per job; delivery of {} frames: p50 {} ms, p99 {} ms, max {} ms",
        JOBS * PER_JOB,
        idle_rss / 1024,
        busy_rss / 1024,
        delays.len(),
        pct(0.5),
        pct(0.99),
        delays.last().copied().unwrap_or(0),
    );
    let _ = child.kill().await;
}

/// Measures, does not check: the delay of the first live line of a stream, one
/// invocation at a time as on on-demand Lambda, 20 invocations in one process: each
/// viewer's stream is open and idle for 300 ms, then one line is appended. Run with
/// `cargo test --release -p logstream-sse --test it concurrent::first -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: prints figures"]
async fn first_live_line_delay_one_invocation_at_a_time() {
    const RUNS: usize = 20;
    // One line to replay: each stream's first frame.
    let (redis, store, job) = sample_job(1).await;
    let api = Arc::new(Api {
        events: vec![fixture("sse.function-url.json")],
        limit: RUNS,
        // Each stream hands off (3 s before its deadline) 1.5 s after it began.
        lifetime_ms: 4_500,
        ..Api::default()
    });
    let addr = runtime_api(api.clone()).await;
    let (mut child, _emf) = sse_process(addr, &redis.url(), 1);
    let mut delays = Vec::new();
    let mut firsts = Vec::new();
    for run in 1..=RUNS {
        let id = format!("viewer-{run}");
        wait_until("the stream", Duration::from_secs(20), || {
            api.viewers
                .lock()
                .unwrap()
                .get(&id)
                .is_some_and(|v| v.prelude.is_some())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = api.viewers.lock().unwrap()[&id].lines.len();
        let sent = logstream_core::model::now_ms();
        store
            .append(
                &job,
                "",
                None,
                &[logstream_testkit::fixtures::stdout_line(&format!(
                    "t={sent}"
                ))],
            )
            .await
            .unwrap();
        wait_until("the line", Duration::from_secs(5), || {
            api.viewers.lock().unwrap()[&id].lines.len() > seen
        })
        .await;
        let viewers = api.viewers.lock().unwrap();
        let viewer = &viewers[&id];
        delays.push(viewer.arrived.last().unwrap().saturating_sub(sent));
        firsts.push((viewer.first_body_at.unwrap() - viewer.handed_at.unwrap()).as_millis() as u64);
    }
    let mut sorted = firsts.clone();
    sorted.sort_unstable();
    eprintln!(
        "first frame of a stream (invocation handed out -> first byte after the prelude), \
         {RUNS} invocations one at a time: p50 {} ms, max {} ms, over 30 ms in {} of {RUNS}; \
         each (ms): {firsts:?}",
        sorted[RUNS / 2],
        sorted[RUNS - 1],
        firsts.iter().filter(|&&d| d > 30).count(),
    );
    let mut sorted = delays.clone();
    sorted.sort_unstable();
    eprintln!(
        "first live line of a stream, {RUNS} invocations one at a time: p50 {} ms, max {} ms, \
         over 30 ms in {} of {RUNS}; each (ms): {delays:?}",
        sorted[RUNS / 2],
        sorted[RUNS - 1],
        delays.iter().filter(|&&d| d > 30).count(),
    );
    let _ = child.kill().await;
}
