//! WebSocket push end to end: real WebSocket clients (tokio-tungstenite) against
//! `logstream dev`, whose ingest routes push through the real aws-sdk-apigatewaymanagement
//! client to the server's own `POST /@connections/{id}` route, over a real Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(env: &Env, query: &str) -> String {
    format!("ws://{}/ws?{query}", env.server.addr)
}

/// Opens a WebSocket on `job` as viewer `user`.
async fn connect(env: &Env, job: &str, user: &str) -> Client {
    connect_with_token(env, job, &viewer_token(user, 600)).await
}

/// Opens a WebSocket on `job` with `token`.
async fn connect_with_token(env: &Env, job: &str, token: &str) -> Client {
    let url = ws_url(env, &format!("job_id={job}&access_token={token}"));
    let (client, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect");
    assert_eq!(response.status(), 101);
    client
}

/// The HTTP status a refused handshake was answered with.
async fn refused(url: String) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("the connection was admitted"),
    }
}

/// The next text message as JSON; panics after 10 s without one.
async fn next_json(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("no websocket message in time")
            .expect("the websocket closed")
            .expect("websocket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON message");
        }
    }
}

/// Reads messages until `done`; returns every entry received before it and the done
/// message.
async fn entries_until_done(client: &mut Client) -> (Vec<Value>, Value) {
    let mut entries = Vec::new();
    loop {
        let message = next_json(client).await;
        match message["type"].as_str() {
            Some("entries") => entries.extend(message["entries"].as_array().unwrap().clone()),
            Some("done") => return (entries, message),
            other => panic!("unexpected message type {other:?}: {message}"),
        }
    }
}

async fn redis(env: &Env) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn connection_ids(env: &Env, job: &str) -> Vec<String> {
    let mut conn = redis(env).await;
    let mut ids: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("job:{{{job}}}:ws"))
        .query_async(&mut conn)
        .await
        .unwrap();
    ids.sort();
    ids
}

/// Adds a connection id that no client holds, as a client that vanished without
/// `$disconnect` (which API Gateway delivers only on a best-effort basis) leaves behind.
async fn add_vanished_connection(env: &Env, job: &str, id: &str) {
    let mut conn = redis(env).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("job:{{{job}}}:ws"))
        .arg(id)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn post_event(env: &Env, job: &str, name: &str, status: &str) {
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": name, "status": status}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_without_a_valid_token_or_for_someone_elses_job_are_refused() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let alice = viewer_token("alice", 600);
    assert_eq!(refused(ws_url(&env, &format!("job_id={job}"))).await, 401);
    assert_eq!(
        refused(ws_url(
            &env,
            &format!("job_id={job}&access_token=not-a-jwt")
        ))
        .await,
        401
    );
    assert_eq!(
        refused(ws_url(
            &env,
            &format!("job_id={job}&access_token={}", viewer_token("alice", -600))
        ))
        .await,
        401,
        "an expired token"
    );
    assert_eq!(
        refused(ws_url(
            &env,
            &format!("job_id={job}&access_token={}", viewer_token("mallory", 600))
        ))
        .await,
        404,
        "someone else's job answers like a missing one"
    );
    assert_eq!(
        refused(ws_url(
            &env,
            &format!("job_id=no-such-job&access_token={alice}")
        ))
        .await,
        404
    );
    assert_eq!(
        refused(ws_url(
            &env,
            &format!("job_id=bad%20id&access_token={alice}")
        ))
        .await,
        400
    );
    assert!(connection_ids(&env, &job).await.is_empty());
}

#[tokio::test]
async fn two_clients_get_every_entry_in_order_then_done_and_another_jobs_client_gets_none() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let (other_job, _) = env.create_job("bob").await;
    let mut first = connect(&env, &job, "alice").await;
    let mut second = connect(&env, &job, "alice").await;
    let mut other = connect(&env, &other_job, "bob").await;
    assert_eq!(connection_ids(&env, &job).await.len(), 2);

    env.set_status(&job, "running").await;
    post_event(&env, &job, "install", "started").await;
    for batch in 0..5 {
        env.post_lines(&job, &format!("batch {batch}"), 4).await;
    }
    env.set_status(&job, "ready").await;

    let expected: Vec<String> = (0..5)
        .flat_map(|b| (0..4).map(move |i| format!("batch {b} {i}")))
        .collect();
    for client in [&mut first, &mut second] {
        let (entries, mut done) = entries_until_done(client).await;
        assert!(done["duration_ms"].is_u64(), "{done}");
        done["duration_ms"] = json!(0);
        assert_eq!(
            done,
            json!({"type": "done", "status": "ready", "exit_code": null, "duration_ms": 0})
        );
        let kinds: Vec<&str> = entries
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.first(), Some(&"status"), "running comes first");
        assert_eq!(entries[1]["kind"], "stage");
        assert_eq!(texts(&Value::Array(entries.clone())), expected);
        let last = entries.last().unwrap();
        assert_eq!(
            (&last["kind"], &last["status"]),
            (&json!("status"), &json!("ready"))
        );
        let ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
        });
        assert_eq!(ids, sorted, "entries arrive in id order");
    }

    // The other job's client has had nothing: its first message is its own job's line.
    env.post_lines(&other_job, "bob's line", 1).await;
    let message = next_json(&mut other).await;
    assert_eq!(message["type"], "entries");
    assert_eq!(texts(&message["entries"]), ["bob's line 0"]);
}

#[tokio::test]
async fn a_failed_job_ends_with_done_failed() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut client = connect(&env, &job, "alice").await;
    // With the exit code the pipeline reports.
    env.end_with(&job, "failed", 137).await;
    let (entries, mut done) = entries_until_done(&mut client).await;
    assert!(done["duration_ms"].is_u64(), "{done}");
    done["duration_ms"] = json!(0);
    assert_eq!(
        done,
        json!({"type": "done", "status": "failed", "exit_code": 137, "duration_ms": 0})
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["status"], "failed");
}

#[tokio::test]
async fn a_vanished_connection_is_dropped_after_a_410_unless_it_is_still_connecting() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut live = connect(&env, &job, "alice").await;
    add_vanished_connection(&env, &job, "VanishedConn0=").await;
    assert_eq!(connection_ids(&env, &job).await.len(), 2);

    // Registered as the ws function registers, 200 s ago and just now.
    register_connection(&env, &job, "OldConnection=", 200).await;
    register_connection(&env, &job, "InItsConnect=", 0).await;
    assert_eq!(connection_ids(&env, &job).await.len(), 4);

    let res = env.post_lines(&job, "line", 3).await;
    assert_eq!(res["accepted"], 3);
    let message = next_json(&mut live).await;
    assert_eq!(texts(&message["entries"]), ["line 0", "line 1", "line 2"]);
    let ids = connection_ids(&env, &job).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&"VanishedConn0=".to_owned()));
    assert!(!ids.contains(&"OldConnection=".to_owned()));
    assert!(
        ids.contains(&"InItsConnect=".to_owned()),
        "a connection still in its $connect answers 410 on AWS and is kept"
    );
}

/// Registers connection `id` on `job` the way the ws function does, `age` seconds ago.
async fn register_connection(env: &Env, job: &str, id: &str, age: u64) {
    add_vanished_connection(env, job, id).await;
    let mut conn = redis(env).await;
    let _: () = redis::cmd("SET")
        .arg(format!("logstream:ws-conn:{id}"))
        .arg(job)
        .arg("EX")
        .arg(logstream_shared::store::keys::WS_CONNECTION_TTL_SECS - age)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn closing_a_client_removes_its_connection_id() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut client = connect(&env, &job, "alice").await;
    assert_eq!(connection_ids(&env, &job).await.len(), 1);
    client.close(None).await.unwrap();
    for _ in 0..100 {
        if connection_ids(&env, &job).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection id is still registered after the client closed");
}

#[tokio::test]
async fn a_ping_gets_a_pong() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut client = connect(&env, &job, "alice").await;
    client
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await, json!({"type": "pong"}));
    client.send(Message::Text("hello".into())).await.unwrap();
    client.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "pong"}),
        "other messages are ignored"
    );
}

#[tokio::test]
async fn a_batch_over_128_kb_arrives_split_into_messages_under_the_limit_in_order() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut client = connect(&env, &job, "alice").await;
    let lines: Vec<Value> = (0..20)
        .map(|i| json!({"text": format!("{i:02} {}", "x".repeat(15_000))}))
        .collect();
    let res = env.post_json(&job, &json!({ "lines": lines })).await;
    assert_eq!(res.status(), StatusCode::OK);

    let mut received = Vec::new();
    let mut messages = 0;
    while received.len() < 20 {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        assert!(
            text.len() <= 128 * 1024,
            "a message of {} bytes",
            text.len()
        );
        messages += 1;
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        received.extend(texts(&v["entries"]).into_iter().map(|t| t[..2].to_owned()));
    }
    assert!(messages >= 3, "{messages} messages");
    let expected: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn an_ingest_request_completes_while_the_push_target_hangs() {
    // A management endpoint that accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let env = env_with(&[
        ("REDIS_URL", &redis.url()),
        ("LOGSTREAM_WS_ENDPOINT", &format!("http://{hang_addr}")),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    add_vanished_connection(&env, &job, "HangingConn0=").await;

    let posted = tokio::time::timeout(Duration::from_secs(20), env.post_lines(&job, "l", 2))
        .await
        .expect("the ingest request hung with its push target");
    assert_eq!(posted["accepted"], 2);
    let (code, _) = tokio::time::timeout(Duration::from_secs(20), env.set_status(&job, "failed"))
        .await
        .expect("the status change hung with its push target");
    assert_eq!(code, StatusCode::OK);
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the push was attempted against the hanging endpoint"
    );
    assert_eq!(
        connection_ids(&env, &job).await,
        ["HangingConn0="],
        "a connection that did not answer is not dropped: only a 410 drops it"
    );
}

/// Push latency through `logstream dev`: from just before a one-line POST to the
/// message parsed by each of 10 WebSocket clients. Run explicitly:
/// `cargo test -p logstream-cli --test it -- ws_api:: --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check: run explicitly"]
async fn push_latency_is_measured_for_one_line_posts() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(&env, &job, "alice").await);
    }
    let rounds = 300;
    let mut samples = Vec::with_capacity(rounds * clients.len());
    for i in 0..rounds {
        let started = Instant::now();
        let post = env.post_lines(&job, "tick", 1);
        let receive = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
            next_json(c).await;
            started.elapsed()
        }));
        let (_, times) = tokio::join!(post, receive);
        if i >= 10 {
            samples.extend(times);
        }
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "websocket push, {} clients, {} one-line posts: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms ({} samples)",
        clients.len(),
        rounds - 10,
        at(0.5),
        at(0.99),
        at(1.0),
        samples.len()
    );
}

#[tokio::test]
async fn a_connection_whose_token_expired_gets_nothing_more_and_is_closed() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut client = connect_with_token(&env, &job, &viewer_token("alice", 2)).await;
    env.post_lines(&job, "before", 1).await;
    let first = next_json(&mut client).await;
    assert_eq!(first["entries"][0]["text"], "before 0");
    // Past the token's expiry (and the verifier's leeway plays no part here).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    env.post_lines(&job, "after", 1).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("the connection was neither closed nor pushed to")
        {
            Some(Ok(Message::Text(text))) => {
                panic!("a message after the token expired: {text}")
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(
        connection_ids(&env, &job).await.is_empty(),
        "the closed connection is forgotten"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_skipped_then_closed_and_the_others_get_everything() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    // Connected, then never read from again.
    let stalled = connect(&env, &job, "alice").await;
    let mut live = connect(&env, &job, "alice").await;
    let reader = tokio::spawn(async move {
        let mut texts = Vec::new();
        let (entries, done) = entries_until_done(&mut live).await;
        for e in entries {
            if e["kind"] == "line" {
                texts.push(e["text"].as_str().unwrap().to_owned());
            }
        }
        (texts, done)
    });
    let ids_before = connection_ids(&env, &job).await;
    assert_eq!(ids_before.len(), 2);
    // About 20 MB, more than the kernel's socket buffers and the emulator's per-client
    // bound hold for the client that does not read.
    let padding = "x".repeat(900);
    let mut sent = Vec::new();
    for b in 0..40 {
        let lines: Vec<Value> = (0..500)
            .map(|i| {
                let text = format!("batch {b} line {i} {padding}");
                sent.push(text.clone());
                json!({"stream": "stdout", "text": text})
            })
            .collect();
        let res = env.post_json(&job, &json!({ "lines": lines })).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "a stalled client never fails ingest"
        );
    }
    // More batches, each more than the emulator queues for a client that does not
    // read, keep pushes going until the stalled connection is closed.
    let mut closed = false;
    for i in 0..100 {
        if connection_ids(&env, &job).await.len() == 1 {
            closed = true;
            break;
        }
        let lines: Vec<Value> = (0..900)
            .map(|k| {
                let text = format!("tick {i} line {k} {padding}");
                sent.push(text.clone());
                json!({"stream": "stdout", "text": text})
            })
            .collect();
        let res = env.post_json(&job, &json!({ "lines": lines })).await;
        assert_eq!(res.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "the stalled connection was closed and forgotten");
    env.set_status(&job, "running").await;
    env.set_status(&job, "ready").await;
    let (texts, done) = reader.await.unwrap();
    assert_eq!(done["status"], "ready");
    assert_eq!(texts.len(), sent.len(), "the reading client got every line");
    assert_eq!(texts, sent);
    drop(stalled);
}

#[tokio::test]
async fn revoking_share_links_closes_their_websockets_and_no_other() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let owner = viewer_token("alice", 600);
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/share")))
        .bearer_auth(&owner)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let link = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut shared = connect_with_token(&env, &job, &link).await;
    let mut own = connect_with_token(&env, &job, &owner).await;
    env.post_lines(&job, "before", 1).await;
    assert_eq!(
        next_json(&mut shared).await["entries"][0]["text"],
        "before 0"
    );
    assert_eq!(next_json(&mut own).await["entries"][0]["text"], "before 0");

    let res = env
        .http
        .delete(env.url(&format!("/jobs/{job}/share")))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    env.post_lines(&job, "after", 1).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), shared.next())
            .await
            .expect("the link's connection was neither closed nor pushed to")
        {
            Some(Ok(Message::Text(text))) => panic!("a message after the revocation: {text}"),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(next_json(&mut own).await["entries"][0]["text"], "after 0");
    assert_eq!(connection_ids(&env, &job).await.len(), 1);
    let again = ws_url(&env, &format!("job_id={job}&access_token={link}"));
    assert_eq!(refused(again).await, 401);
}
