//! Live logs over Server-Sent Events, through real HTTP against `logstream dev`.

use std::time::Duration;

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn stream_path(job: &str, user: &str, query: &str) -> String {
    let sep = if query.is_empty() { "" } else { "&" };
    format!(
        "/jobs/{job}/logs/stream?access_token={}{sep}{query}",
        viewer_token(user, 600)
    )
}

async fn expect_log(client: &mut SseClient, text: &str) -> Frame {
    let frame = client.next_entry().await.expect("stream ended early");
    assert_eq!(frame.event.as_deref(), Some("log"), "{frame:?}");
    assert_eq!(frame.json()["text"], text);
    assert_eq!(
        frame.id.as_deref(),
        frame.json()["id"].as_str(),
        "id: matches the entry id"
    );
    frame
}

#[tokio::test]
async fn the_stream_has_sse_headers_and_starts_with_retry() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut client = SseClient::open(&env, &stream_path(&job, "alice", ""), &[]).await;
    assert_eq!(client.status, StatusCode::OK);
    assert_eq!(client.headers["content-type"], "text/event-stream");
    assert_eq!(client.headers["cache-control"], "no-cache");
    assert_eq!(client.headers["x-accel-buffering"], "no");
    let first = client.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.retry, Some(2000));
}

#[tokio::test]
async fn from_start_replays_then_follows_live_then_ends_with_done() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "before", 3).await;
    let mut client = SseClient::open(&env, &stream_path(&job, "alice", "from=start"), &[]).await;
    for i in 0..3 {
        expect_log(&mut client, &format!("before {i}")).await;
    }
    env.post_lines(&job, "after", 2).await;
    expect_log(&mut client, "after 0").await;
    expect_log(&mut client, "after 1").await;
    env.http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "build", "status": "started"}))
        .send()
        .await
        .unwrap();
    let stage = client.next_entry().await.unwrap();
    assert_eq!(stage.event.as_deref(), Some("stage"), "{stage:?}");
    assert_eq!(stage.json()["name"], "build");
    env.set_status(&job, "running").await;
    let running = client.next_entry().await.unwrap();
    assert_eq!(
        (running.event.as_deref(), running.json()["status"].as_str()),
        (Some("status"), Some("running"))
    );
    env.set_status(&job, "ready").await;
    let ready = client.next_entry().await.unwrap();
    assert_eq!(
        (ready.event.as_deref(), ready.json()["status"].as_str()),
        (Some("status"), Some("ready"))
    );
    let done = client.next_entry().await.unwrap();
    assert_eq!(done.event.as_deref(), Some("done"));
    let mut ending = done.json();
    assert!(ending["duration_ms"].is_u64(), "{ending}");
    ending["duration_ms"] = json!(0);
    assert_eq!(
        ending,
        json!({"status": "ready", "exit_code": null, "duration_ms": 0})
    );
    assert_eq!(
        client.next(Duration::from_secs(5)).await,
        None,
        "the stream closes after done"
    );
}

#[tokio::test]
async fn without_a_start_point_only_new_entries_are_sent() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "old", 5).await;
    let mut client = SseClient::open(&env, &stream_path(&job, "alice", ""), &[]).await;
    assert_eq!(
        client.next(Duration::from_secs(5)).await.unwrap().retry,
        Some(2000)
    );
    env.post_lines(&job, "new", 1).await;
    expect_log(&mut client, "new 0").await;
}

#[tokio::test]
async fn last_event_id_resumes_strictly_after_that_entry() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let posted = env.post_lines(&job, "line", 4).await;
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let second = page["lines"][1]["id"].as_str().unwrap().to_owned();
    // As a header (what EventSource sends on reconnect) ...
    let mut client = SseClient::open(
        &env,
        &stream_path(&job, "alice", ""),
        &[("last-event-id", &second)],
    )
    .await;
    expect_log(&mut client, "line 2").await;
    let last = expect_log(&mut client, "line 3").await;
    assert_eq!(last.id.as_deref(), posted["last_id"].as_str());
    // ... or in the query.
    let mut client = SseClient::open(
        &env,
        &stream_path(&job, "alice", &format!("last_event_id={second}")),
        &[],
    )
    .await;
    expect_log(&mut client, "line 2").await;
}

#[tokio::test]
async fn a_finished_job_replays_then_says_done_at_once() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "l", 2).await;
    env.end_with(&job, "failed", 2).await;
    let mut client = SseClient::open(&env, &stream_path(&job, "alice", "from=start"), &[]).await;
    expect_log(&mut client, "l 0").await;
    expect_log(&mut client, "l 1").await;
    let status = client.next_entry().await.unwrap();
    assert_eq!(status.json()["status"], "failed");
    assert_eq!(status.json()["exit_code"], 2);
    let duration = status.json()["duration_ms"].as_u64().expect("duration_ms");
    let done = client.next_entry().await.unwrap();
    assert_eq!(
        (done.event.as_deref(), done.json()),
        (
            Some("done"),
            json!({"status": "failed", "exit_code": 2, "duration_ms": duration})
        )
    );
    assert_eq!(client.next(Duration::from_secs(5)).await, None);

    // Reconnecting after the status entry: nothing to replay, just done.
    let last = status.id.unwrap();
    let mut again = SseClient::open(
        &env,
        &stream_path(&job, "alice", ""),
        &[("last-event-id", &last)],
    )
    .await;
    let done = again.next_entry().await.unwrap();
    assert_eq!(done.event.as_deref(), Some("done"));
    // Live-only on a finished job: done, its data read from the job's meta.
    let mut live = SseClient::open(&env, &stream_path(&job, "alice", ""), &[]).await;
    let done = live.next_entry().await.unwrap();
    assert_eq!(
        (done.event.as_deref(), done.json()),
        (
            Some("done"),
            json!({"status": "failed", "exit_code": 2, "duration_ms": duration})
        )
    );
}

#[tokio::test]
async fn a_reader_resuming_after_a_forced_disconnect_sees_every_line_once() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    const BATCHES: usize = 100;
    const PER_BATCH: usize = 20;
    let writer = {
        let http = env.http.clone();
        let url = env.url(&format!("/jobs/{job}/logs"));
        let status_url = env.url(&format!("/jobs/{job}/status"));
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let lines: Vec<Value> = (0..PER_BATCH)
                    .map(|i| json!({"text": format!("{}", b * PER_BATCH + i)}))
                    .collect();
                let res = http
                    .post(&url)
                    .bearer_auth(INGEST_KEY)
                    .json(&json!({ "lines": lines }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            http.put(&status_url)
                .bearer_auth(INGEST_KEY)
                .json(&json!({"status": "ready"}))
                .send()
                .await
                .unwrap();
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut connections = 0;
    'outer: loop {
        connections += 1;
        let mut client = match &last_id {
            None => SseClient::open(&env, &stream_path(&job, "alice", "from=start"), &[]).await,
            Some(id) => {
                SseClient::open(
                    &env,
                    &stream_path(&job, "alice", ""),
                    &[("last-event-id", id)],
                )
                .await
            }
        };
        // Drop the connection after a few hundred frames, mid-stream, while the writer runs.
        let mut taken = 0;
        while let Some(frame) = client.next_entry().await {
            match frame.event.as_deref() {
                Some("log") => {
                    seen.push(frame.json()["text"].as_str().unwrap().parse().unwrap());
                    last_id = frame.id.clone();
                    taken += 1;
                    if taken == 300 && connections < 5 {
                        continue 'outer;
                    }
                }
                Some("status") => {}
                Some("done") => break 'outer,
                other => panic!("unexpected frame {other:?}"),
            }
        }
        panic!("stream ended without done");
    }
    writer.await.unwrap();
    assert!(connections > 1, "the test did disconnect");
    let expected: Vec<u64> = (0..(BATCHES * PER_BATCH) as u64).collect();
    assert_eq!(seen, expected, "no gap, no duplicate, in order");
}

#[tokio::test]
async fn heartbeats_fill_silence() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_HEARTBEAT_SECS", "1"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    let mut client = SseClient::open(&env, &stream_path(&job, "alice", ""), &[]).await;
    assert_eq!(
        client.next(Duration::from_secs(5)).await.unwrap().retry,
        Some(2000)
    );
    for _ in 0..2 {
        let beat = client.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(beat.event.as_deref(), Some("heartbeat"));
        assert_eq!(beat.data, "{}");
    }
}

#[tokio::test]
async fn refusals_come_before_the_stream_as_json() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let cases = [
        (
            format!("/jobs/{job}/logs/stream"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            format!("/jobs/{job}/logs/stream?access_token=nope"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            format!(
                "/jobs/{job}/logs/stream?access_token={}",
                viewer_token("alice", -600)
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            stream_path(&job, "mallory", ""),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            stream_path(&job_id("missing"), "alice", ""),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            stream_path(&job, "alice", "last_event_id=yesterday"),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            stream_path(&job, "alice", "from=end"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            stream_path("bad%20id", "alice", ""),
            StatusCode::BAD_REQUEST,
            "invalid_job_id",
        ),
    ];
    for (path, status, code) in cases {
        let res = env.http.get(env.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json", "{path}");
        assert_eq!(error_code(&res.json().await.unwrap()), code, "{path}");
    }
}

/// Connections to Redis other than the probe's own (one probe connection is reused:
/// a closed one may linger in the count for a moment).
async fn connected_clients(probe: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(probe)
        .await
        .unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("connected_clients:"))
        .unwrap();
    line["connected_clients:".len()..]
        .trim()
        .parse::<u64>()
        .unwrap()
        - 1
}

#[tokio::test]
async fn two_hundred_viewers_of_one_job_share_one_redis_reader() {
    // A Redis of its own, so other tests' connections do not blur the count.
    let env = env_with(&[]).await;
    let (job, _) = env.create_job("alice").await;
    let mut probe = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let idle = connected_clients(&mut probe).await;

    let mut clients = Vec::new();
    for n in 0..200 {
        let mut c = SseClient::open(&env, &stream_path(&job, "alice", ""), &[]).await;
        assert_eq!(c.status, StatusCode::OK);
        assert_eq!(
            c.next(Duration::from_secs(5)).await.unwrap().retry,
            Some(2000)
        );
        clients.push(c);
        if n == 0 {
            // The feed connects in a task of its own: give it a moment.
            let mut connected = 0;
            for _ in 0..50 {
                connected = connected_clients(&mut probe).await;
                if connected >= idle + 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                connected,
                idle + 2,
                "the first viewer's feed is one connection; its replay read opened the \
                 store's pool of read connections (one, as the reads came one at a time)"
            );
        }
    }
    assert_eq!(env.server.sse().hub().feeds(), 1, "one feed for the job");
    // A viewer's replay read may still be in flight when the next viewer's starts (the
    // first frame goes out before it): the pool then holds a second read connection
    // for a while. What 199 more viewers must not add is a connection each.
    let connected = connected_clients(&mut probe).await;
    assert!(
        (idle + 2..=idle + 3).contains(&connected),
        "199 more viewers added no Redis connection but a pooled read's: {connected} \
         connected, {idle} before"
    );

    env.post_lines(&job, "to all", 1).await;
    for c in &mut clients {
        expect_log(c, "to all 0").await;
    }
    drop(clients);
    // The feed notices its viewers are gone within one block time and closes.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env.server.sse().hub().feeds() == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the feed ended after its viewers left");
}

#[tokio::test]
async fn viewers_arriving_together_open_one_feed_connection() {
    // A Redis of its own, so other tests' connections do not blur the count.
    let env = env_with(&[]).await;
    let (job, _) = env.create_job("alice").await;
    let job_id = logstream_core::ids::JobId::parse(&job).unwrap();
    let mut probe = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let received = async |probe: &mut redis::aio::MultiplexedConnection| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(probe)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = received(&mut probe).await;
    // Straight to the hub, all at once, with no feed running yet: no replay reads, so
    // every connection Redis accepts meanwhile is a feed's.
    let hub = env.server.sse().hub();
    let start = logstream_core::ids::EntryId { ms: 0, seq: 0 };
    let viewers: Vec<_> =
        futures_util::future::join_all((0..200).map(|_| hub.subscribe(&job_id, start)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(
        received(&mut probe).await - before,
        1,
        "200 viewers arriving together opened one connection, the feed's"
    );
    assert_eq!(hub.feeds(), 1);
    assert_eq!(hub.receivers(&job_id), 200);
    drop(viewers);
}

#[tokio::test]
async fn a_stream_ends_without_done_when_its_token_expires_and_resumes_with_a_fresh_one() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "early", 1).await;
    let short = viewer_token("alice", 2);
    let path = format!("/jobs/{job}/logs/stream?from=start&access_token={short}");
    let mut client = SseClient::open(&env, &path, &[]).await;
    let first = expect_log(&mut client, "early 0").await;
    // Nothing more is posted and the heartbeat is 20 s away: within 10 s only the
    // token's expiry can end this stream (`next` panics if nothing comes).
    let end = client.next(Duration::from_secs(10)).await;
    assert_eq!(end, None, "the stream ends, with no done frame");
    env.post_lines(&job, "later", 1).await;
    let fresh = stream_path(&job, "alice", "");
    let last_id = first.id.clone().unwrap();
    let mut again = SseClient::open(&env, &fresh, &[("last-event-id", &last_id)]).await;
    assert_eq!(again.status, StatusCode::OK);
    expect_log(&mut again, "later 0").await;
}

#[tokio::test]
async fn a_viewer_that_stops_reading_lets_go_of_the_feed_and_later_gets_everything_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let job_id = logstream_core::ids::JobId::parse(&job).unwrap();
    // A viewer that reads along, and one that sends its request and then stops reading
    // (a small receive buffer, so the server's side fills up soon).
    let mut reading = SseClient::open(&env, &stream_path(&job, "alice", "from=start"), &[]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(env.server.addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: localhost\r\n\r\n",
        stream_path(&job, "alice", "from=start")
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let hub = env.server.sse().hub();
    for _ in 0..100 {
        if hub.receivers(&job_id) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.receivers(&job_id), 2, "both viewers follow the feed");

    // About 24 MB: far more than socket buffers and the viewer's bound hold.
    let padding = "y".repeat(1000);
    let mut expected = 0usize;
    let drain = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(frame) = reading.next_entry().await {
            match frame.event.as_deref() {
                Some("log") => n += 1,
                Some("done") => break,
                _ => {}
            }
        }
        n
    });
    for b in 0..48 {
        let lines: Vec<Value> = (0..500)
            .map(|i| json!({"stream": "stdout", "text": format!("b{b} l{i} {padding}")}))
            .collect();
        assert_eq!(
            env.post_json(&job, &json!({ "lines": lines }))
                .await
                .status(),
            StatusCode::OK
        );
        expected += 500;
    }
    let mut let_go = false;
    for _ in 0..200 {
        if hub.receivers(&job_id) == 1 {
            let_go = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        let_go,
        "the viewer that stopped reading no longer holds the feed"
    );
    env.set_status(&job, "running").await;
    env.set_status(&job, "ready").await;
    assert_eq!(
        drain.await.unwrap(),
        expected,
        "the reading viewer got every line"
    );

    // Now the stalled viewer reads: every entry once, in order, then `done`.
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stalled.read_to_end(&mut raw))
        .await
        .expect("the stream ended")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    let entries =
        crate::cli_support::all_entries(&env.http, &env.server.url(), &job, "alice").await;
    let all: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, all, "every entry once, in order");
    assert!(text.contains("event: done"), "then done");
}
