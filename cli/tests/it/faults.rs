//! Redis faults, each against a real `redis-server`:
//!
//! - Redis going away: every route answers 503 quickly (no panic, no hang), and the
//!   service recovers by itself when Redis is back.
//! - Redis unreachable when the service starts: it starts anyway, answers 503, and the
//!   same process serves once a Redis appears on that port.
//! - Redis restarting while viewers follow a job and a pipeline writes to it: viewers
//!   resume with `Last-Event-ID` and each sees every line exactly once, in order.
//!   That Redis keeps an fsynced append-only file, so the restart loses nothing it
//!   acknowledged: the test is about the service, not about Redis losing data.
//! - Redis loading its data after a restart (it answers `LOADING` meanwhile): requests
//!   wait, then answer 503 within a bound (never 500), then everything is back.
//! - Redis stalling (`CLIENT PAUSE`): requests answer 503 within a bound instead of
//!   waiting for Redis, an open stream ends (to be resumed) instead of hanging, and the
//!   service works again when the stall ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::StreamExt;
use logstream_client::Client;
use logstream_client::follow::SseParser;
use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::JobStatus;
use logstream_testkit::process::free_port;
use logstream_testkit::redis_server::RedisServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long a request may take while Redis is away or stalled: a check that it
/// answers rather than hangs (the store gives Redis 3 s), not a performance bound.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);

/// Sends `req`; asserts a 503 with the SPEC's `unavailable` code, in time.
async fn assert_unavailable(what: &str, req: reqwest::RequestBuilder) {
    let started = Instant::now();
    let res = req.send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(
        error_code(&res.json().await.unwrap()),
        "unavailable",
        "{what}"
    );
    assert!(took < ANSWER_WITHIN, "{what}: answered, not hung: {took:?}");
}

/// Every route, for `job` (which need not exist), as `alice`.
fn every_route(env: &Env, job: &str) -> Vec<(&'static str, reqwest::RequestBuilder)> {
    let viewer = viewer_token("alice", 300);
    vec![
        (
            "POST /jobs",
            env.http
                .post(env.url("/jobs"))
                .bearer_auth(INGEST_KEY)
                .json(&json!({"owner": "alice"})),
        ),
        (
            "POST /jobs/{id}/logs",
            env.http
                .post(env.url(&format!("/jobs/{job}/logs")))
                .bearer_auth(INGEST_KEY)
                .json(&json!({"lines": [{"text": "x"}]})),
        ),
        (
            "POST /jobs/{id}/events",
            env.http
                .post(env.url(&format!("/jobs/{job}/events")))
                .bearer_auth(INGEST_KEY)
                .json(&json!({"type": "stage", "name": "build", "status": "started"})),
        ),
        (
            "PUT /jobs/{id}/status",
            env.http
                .put(env.url(&format!("/jobs/{job}/status")))
                .bearer_auth(INGEST_KEY)
                .json(&json!({"status": "running"})),
        ),
        (
            "GET /jobs/{id}",
            env.http
                .get(env.url(&format!("/jobs/{job}")))
                .bearer_auth(&viewer),
        ),
        (
            "GET /jobs/{id}/logs",
            env.http
                .get(env.url(&format!("/jobs/{job}/logs")))
                .bearer_auth(&viewer),
        ),
        (
            "GET /jobs/{id}/logs/stream",
            env.http
                .get(env.url(&format!("/jobs/{job}/logs/stream?from=start")))
                .bearer_auth(&viewer),
        ),
    ]
}

#[tokio::test]
async fn redis_down_is_503_on_every_route_and_service_recovers() {
    // No REDIS_URL: the dev server starts (and owns) its own redis-server.
    let mut env = env_with(&[]).await;
    let (job, _) = env.create_job("alice").await;
    env.server.redis().expect("own redis").stop();

    for (what, req) in every_route(&env, &job) {
        assert_unavailable(what, req).await;
    }

    env.server.redis().expect("own redis").restart().unwrap();
    // The restarted Redis is empty; the service reconnects without a restart of its own.
    let mut recovered = false;
    for _ in 0..50 {
        let res = env
            .http
            .post(env.url("/jobs"))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"owner": "alice"}))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes work again once Redis is back");
}

#[tokio::test]
async fn redis_unreachable_at_start_is_503_until_it_appears_then_the_same_process_serves() {
    // Nothing listens on this port yet.
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let env = env_with(&[("REDIS_URL", &url)]).await;

    for (what, req) in every_route(&env, "never-created") {
        assert_unavailable(what, req).await;
    }

    let _redis = RedisServer::start_on(port).unwrap();
    let mut created = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while created.is_none() && Instant::now() < deadline {
        let res = env
            .http
            .post(env.url("/jobs"))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"owner": "alice"}))
            .send()
            .await
            .unwrap();
        match res.status() {
            StatusCode::CREATED => created = Some(res.json::<Value>().await.unwrap()),
            StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("POST /jobs answered {other} once Redis was up"),
        }
    }
    let created = created.expect("the service serves once Redis is up, without a restart");
    let job = created["job_id"].as_str().unwrap().to_owned();

    // Every route works now, in the same process.
    env.post_lines(&job, "after", 3).await;
    assert_eq!(env.set_status(&job, "running").await.0, StatusCode::OK);
    let (code, _) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::OK);
    let (code, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(texts(&page["lines"]), ["after 0", "after 1", "after 2"]);
    let token = viewer_token("alice", 300);
    let mut sse = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start&access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, StatusCode::OK);
    let first = sse.next_entry().await.expect("a replayed entry");
    assert_eq!(first.json()["text"], "after 0");
}

/// What one viewer received: every line entry in arrival order (duplicates included,
/// nothing filtered here) and how many streams it opened.
struct Seen {
    lines: Vec<(EntryId, String)>,
    connections: u32,
    done: String,
}

/// A viewer following `job` from its start, resuming with `Last-Event-ID` whenever its
/// stream ends without `done` or breaks, and retrying refused connections, as a
/// browser's EventSource does. Signals `ready` once its first stream is open.
async fn resuming_viewer(
    base: String,
    job: String,
    ready: tokio::sync::mpsc::Sender<()>,
    give_up: Instant,
) -> Seen {
    // A client of its own: separate connections, as separate browsers have.
    let http = reqwest::Client::new();
    let token = viewer_token("alice", 600);
    let mut ready = Some(ready);
    let mut seen = Seen {
        lines: Vec::new(),
        connections: 0,
        done: String::new(),
    };
    let mut last: Option<String> = None;
    loop {
        assert!(Instant::now() < give_up, "a viewer never saw `done`");
        let mut url = format!("{base}/jobs/{job}/logs/stream?access_token={token}");
        let mut req = http.get(&url);
        match &last {
            Some(id) => req = req.header("last-event-id", id),
            None => {
                url.push_str("&from=start");
                req = http.get(&url);
            }
        }
        let res = match req.send().await {
            Ok(res) if res.status() == StatusCode::OK => res,
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "refusal");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        seen.connections += 1;
        let mut body = res.bytes_stream();
        let mut parser = SseParser::default();
        // Redis failing ends a stream at once: 30 s of silence would mean it hung.
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("a viewer's stream went silent for 30 s")
        {
            let Ok(chunk) = chunk else { break };
            for frame in parser.push(&chunk) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(()).await;
                }
                match frame.event.as_str() {
                    "log" => {
                        let entry: Value = serde_json::from_str(&frame.data).unwrap();
                        let id = frame.id.clone().expect("an entry frame has an id");
                        seen.lines.push((
                            id.parse().unwrap(),
                            entry["text"].as_str().unwrap().to_owned(),
                        ));
                        last = Some(id);
                    }
                    "stage" | "status" => last = frame.id.clone(),
                    "done" => {
                        seen.done = frame.data;
                        return seen;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_while_viewers_follow_and_a_pipeline_writes_lose_and_double_nothing() {
    const VIEWERS: usize = 8;
    const BATCHES: usize = 240;
    const PER_BATCH: usize = 5;
    // A Redis of our own, persistent (see the module doc), so it can be restarted.
    let redis = RedisServer::start_persistent().unwrap();
    let env = env_with(&[("REDIS_URL", &redis.url())]).await;
    let (job, _) = env.create_job("alice").await;
    let job_id = JobId::parse(&job).unwrap();
    let base = env.server.url();
    let give_up = Instant::now() + Duration::from_secs(120);

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(VIEWERS);
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| {
            tokio::spawn(resuming_viewer(
                base.clone(),
                job.clone(),
                ready_tx.clone(),
                give_up,
            ))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..VIEWERS {
        ready_rx.recv().await.expect("a viewer connected");
    }

    // The pipeline: numbered lines in `seq`-numbered batches, each retried on a 503 or
    // a connection error until it is acknowledged, as `logstream run` does.
    let writer = Client::new(&base, Some(INGEST_KEY.into())).unwrap();
    writer
        .set_status(&job_id, JobStatus::Running)
        .await
        .unwrap();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writing = {
        let (writer, job_id, acknowledged) = (writer.clone(), job_id.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let (mut retries, mut duplicates) = (0u32, 0u32);
            for batch in 0..BATCHES {
                let lines: Vec<Value> = (0..PER_BATCH)
                    .map(|i| json!({"text": format!("line {}", batch * PER_BATCH + i)}))
                    .collect();
                let body = serde_json::to_vec(&json!({"seq": batch + 1, "lines": lines})).unwrap();
                loop {
                    assert!(Instant::now() < give_up, "the writer never got through");
                    match writer.post_lines_once(&job_id, body.clone().into()).await {
                        Ok(answer) => {
                            duplicates += u32::from(answer.duplicate);
                            break;
                        }
                        Err(e) if e.is_retryable() => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("batch {batch}: {e}"),
                    }
                }
                acknowledged.store(batch + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (retries, duplicates)
        })
    };

    // Two restarts while lines flow: one with Redis away for 700 ms (requests meanwhile
    // are refused: the writer retries, viewers reconnect and are refused a while), one
    // at once (the service mostly rides it out with its own reconnect).
    let mut redis = redis;
    for (at, away) in [(BATCHES / 3, 700), (2 * BATCHES / 3, 0)] {
        while acknowledged.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        redis = tokio::task::spawn_blocking(move || {
            redis.stop();
            std::thread::sleep(Duration::from_millis(away));
            redis.restart().expect("redis restarts");
            redis
        })
        .await
        .unwrap();
    }
    let (retries, duplicates) = writing.await.unwrap();
    assert!(retries > 0, "the writer met the outage and retried");
    writer.set_status(&job_id, JobStatus::Ready).await.unwrap();

    let expected: Vec<String> = (0..BATCHES * PER_BATCH)
        .map(|i| format!("line {i}"))
        .collect();
    for (n, viewer) in viewers.into_iter().enumerate() {
        let seen = viewer.await.unwrap();
        let texts: Vec<&str> = seen.lines.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts.len(),
            expected.len(),
            "viewer {n}: every line exactly once"
        );
        assert_eq!(texts, expected, "viewer {n}: every line once, in order");
        assert!(
            seen.lines.windows(2).all(|w| w[0].0 < w[1].0),
            "viewer {n}: ids strictly increasing"
        );
        let done: serde_json::Value = serde_json::from_str(&seen.done).unwrap();
        assert_eq!(
            (&done["status"], &done["exit_code"]),
            (&serde_json::json!("ready"), &serde_json::Value::Null),
            "viewer {n}"
        );
        assert!(done["duration_ms"].is_u64(), "viewer {n}: {done}");
        assert!(
            seen.connections >= 3,
            "viewer {n} resumed after each restart: {} connections",
            seen.connections
        );
    }
    // The store agrees: nothing lost, nothing doubled.
    let mut stored = Vec::new();
    let mut after = "0-0".to_owned();
    loop {
        let (code, page) = env
            .get_as(
                "alice",
                &format!("/jobs/{job}/logs?limit=500&after={after}"),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        let lines = page["lines"].as_array().unwrap();
        if lines.is_empty() {
            break;
        }
        after = lines.last().unwrap()["id"].as_str().unwrap().to_owned();
        stored.extend(texts(&page["lines"]));
    }
    assert_eq!(stored, expected, "history: every line once, in order");
    eprintln!(
        "{VIEWERS} viewers, {} lines, 2 restarts: writer retried {retries} times, \
         {duplicates} retries answered as duplicates",
        expected.len()
    );
    // Every feed ended with its viewers: no Redis connection left behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.server.sse().hub().feeds() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.server.sse().hub().feeds(),
        0,
        "feeds end with their viewers"
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loading_its_data_after_a_restart_is_503_not_500() {
    // Each command replayed from the append-only file takes 5 ms more: some 6 s of
    // `LOADING` for the job below, longer than the store's 3 s response timeout. The
    // redis client waits through `LOADING`; what must not happen is a 500 or a hang.
    let redis = RedisServer::start_persistent_with("--key-load-delay 5000").unwrap();
    let env = env_with(&[("REDIS_URL", &redis.url())]).await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "line", 1000).await;

    let mut restart = tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        // Returns once Redis answers PING, that is once it has loaded everything.
        redis.restart().expect("redis restarts");
        redis
    });
    let viewer = viewer_token("alice", 300);
    let mut answers: Vec<(&str, StatusCode)> = Vec::new();
    let redis = loop {
        tokio::select! {
            done = &mut restart => break done.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let checks = [
            (
                "GET /jobs/{id}/logs",
                env.http
                    .get(env.url(&format!("/jobs/{job}/logs?limit=1")))
                    .bearer_auth(&viewer),
            ),
            (
                "POST /jobs/{id}/logs",
                env.http
                    .post(env.url(&format!("/jobs/{job}/logs")))
                    .bearer_auth(INGEST_KEY)
                    .json(&json!({"lines": [{"text": "during"}], "seq": 1})),
            ),
            (
                "GET /jobs/{id}/logs/stream",
                env.http
                    .get(env.url(&format!("/jobs/{job}/logs/stream")))
                    .bearer_auth(&viewer),
            ),
        ];
        for (what, req) in checks {
            let started = Instant::now();
            let res = req.send().await.unwrap();
            assert!(started.elapsed() < ANSWER_WITHIN, "{what} answered in time");
            answers.push((what, res.status()));
        }
    };
    assert!(
        answers
            .iter()
            .all(|(_, s)| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "only 200 or 503 while Redis loads: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "the loading window was met: {answers:?}"
    );
    // Loaded: everything is there, once.
    let (code, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?limit=500&after=0-0"))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(texts(&page["lines"])[..2], ["line 0", "line 1"]);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_503_within_a_bound_and_open_streams_end_instead_of_hanging() {
    // A Redis of its own: pausing it must not stall other tests.
    let env = env_with(&[]).await;
    let (job, _) = env.create_job("alice").await;
    assert_eq!(env.set_status(&job, "running").await.0, StatusCode::OK);
    env.post_lines(&job, "before", 3).await;
    let token = viewer_token("alice", 300);
    let mut open = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start&access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(open.status, StatusCode::OK);
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        let frame = open.next_entry().await.expect("replayed");
        if frame.event.as_deref() == Some("log") {
            replayed.push(frame.json()["text"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(replayed, ["before 0", "before 1", "before 2"]);

    // Every client of this Redis waits for 10 s, longer than the bound (no mode
    // argument: all commands, and Redis before 6.2 understands it too).
    let mut side = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .query_async(&mut side)
        .await
        .unwrap();
    let paused = Instant::now();

    // All at once, so every request meets the stall.
    let checks = every_route(&env, &job)
        .into_iter()
        .map(|(what, req)| assert_unavailable(what, req));
    let stream_ends = async {
        // The open stream: its feed's read times out and the stream closes without
        // `done`, so the client resumes rather than waiting on a dead feed.
        let end = tokio::time::timeout(ANSWER_WITHIN, async {
            loop {
                match open.next(ANSWER_WITHIN + Duration::from_secs(2)).await {
                    None => return None,
                    Some(f) if f.event.as_deref() == Some("heartbeat") => {}
                    Some(f) => return Some(f),
                }
            }
        })
        .await;
        assert!(
            matches!(end, Ok(None)),
            "the open stream ended without done within {ANSWER_WITHIN:?}: {end:?}"
        );
    };
    tokio::join!(futures_util::future::join_all(checks), stream_ends);
    assert!(
        paused.elapsed() < Duration::from_secs(10),
        "all of that happened during the stall"
    );

    // When the stall ends, the same process serves again.
    let mut back = false;
    let deadline = paused + Duration::from_secs(25);
    while !back && Instant::now() < deadline {
        let (code, _) = env.get_as("alice", &format!("/jobs/{job}")).await;
        back = code == StatusCode::OK;
        if !back {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(back, "reads work again once Redis answers");
    env.post_lines(&job, "after", 2).await;
    let mut resumed = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?access_token={token}"),
        &[("last-event-id", "0-0")],
    )
    .await;
    assert_eq!(resumed.status, StatusCode::OK);
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("after 1") {
        let frame = resumed.next_entry().await.expect("an entry");
        if frame.event.as_deref() == Some("log") {
            got.push(frame.json()["text"].as_str().unwrap().to_owned());
        }
    }
    // The append answered 503 during the stall may still have run when Redis resumed
    // (Redis had queued it): a 503 means "not known to be stored", which is why a
    // pipeline retries with `seq`. Apart from that line, the log is intact.
    got.retain(|text| text != "x");
    assert_eq!(
        got,
        ["before 0", "before 1", "before 2", "after 0", "after 1"]
    );
}

#[tokio::test]
async fn viewers_arriving_together_while_redis_refuses_fail_together_after_one_attempt() {
    // A "Redis" that accepts connections and closes them at once, counting them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let store = logstream_shared::store::LogStore::open(
        &format!("redis://127.0.0.1:{port}"),
        logstream_shared::store::Retention::defaults(false),
    )
    .unwrap();
    let hub = logstream_sse::hub::Hub::new(store);
    let job = JobId::parse("refused-1").unwrap();
    let start = EntryId { ms: 0, seq: 0 };
    let results = futures_util::future::join_all((0..50).map(|_| hub.subscribe(&job, start))).await;
    for result in &results {
        assert!(
            matches!(
                result,
                Err(logstream_shared::store::StoreError::Unavailable(_))
            ),
            "every viewer is told to come back later: {:?}",
            result.as_ref().err()
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the viewers that waited for the first one's connection failed with it instead \
         of each connecting in turn"
    );
    assert_eq!(hub.feeds(), 0);
    // A later viewer tries again (and is refused again).
    assert!(hub.subscribe(&job, start).await.is_err());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
