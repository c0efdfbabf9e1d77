//! `DELETE /jobs/{id}` through `logstream dev`: the job is gone from Redis (but for its
//! tombstone) and from the archive, every read answers 404, its open SSE streams end
//! with `event: deleted` and its WebSocket connections get `{"type":"deleted"}` and
//! close; who may delete, twice, and a deletion racing an ingest batch.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;
use crate::team_access::{HIDDEN, READ, read_statuses};
use logstream_testkit::fixtures::viewer_token_with;

/// A server on the shared Redis whose archiver writes segments of 100 entries at least
/// every second, and whose streams check their job every second.
async fn segmented_env() -> Env {
    env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_SEGMENT_LINES", "100"),
        ("LOGSTREAM_SEGMENT_SECS", "1"),
        ("LOGSTREAM_HEARTBEAT_SECS", "1"),
    ])
    .await
}

/// `DELETE /jobs/{job}` with `token` (no `Authorization` when `None`).
async fn delete(env: &Env, job: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = env.http.delete(env.url(&format!("/jobs/{job}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.expect("DELETE");
    let code = res.status();
    (code, res.text().await.expect("body"))
}

/// The names of every Redis key of `job` (all in its hash tag).
async fn redis_keys(env: &Env, job: &str) -> Vec<String> {
    let mut names = Vec::new();
    for node in env.server.redis_url.split(',') {
        let mut redis = redis::Client::open(node)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("job:{{{job}}}:*"))
            .query_async(&mut redis)
            .await
            .expect("KEYS");
        names.extend(found);
    }
    names.sort();
    names
}

/// Every file under the job's folder of the server's archive.
fn archived_files(env: &Env, job: &str) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.archive_dir.join("build-logs").join(job), &mut out);
    out
}

#[tokio::test]
async fn a_deleted_job_is_gone_from_both_tiers_and_its_streams_and_sockets_end() {
    let env = segmented_env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "line", 250).await;
    env.wait_for_manifest(&job, "segments written", |m| {
        m["entries"].as_u64() >= Some(200)
    })
    .await;
    assert!(!archived_files(&env, &job).is_empty());

    let alice = viewer_token("alice", 300);
    let mut sse = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream"),
        &[("authorization", &format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(sse.status, StatusCode::OK);
    let url = format!(
        "ws://{}/ws?job_id={job}&access_token={alice}",
        env.server.addr
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.expect("ws");
    assert_eq!(response.status(), 101);
    // Both are following: a line posted now reaches both.
    env.post_lines(&job, "live", 1).await;
    let live = sse.next_entry().await.expect("a live entry");
    assert_eq!(live.json()["text"], "live 0");
    let pushed = next_text(&mut ws).await.expect("a push");
    assert_eq!(pushed["type"], "entries");

    let (code, body) = delete(&env, &job, Some(&alice)).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");

    let frame = sse.next_entry().await.expect("the deleted frame");
    assert_eq!(frame.event.as_deref(), Some("deleted"));
    assert!(
        sse.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends after `deleted`"
    );
    assert_eq!(
        next_text(&mut ws).await.expect("the deleted message"),
        json!({"type": "deleted"})
    );
    assert!(next_text(&mut ws).await.is_none(), "the socket is closed");

    assert_eq!(read_statuses(&env, &job, &alice).await, HIDDEN);
    assert_eq!(
        redis_keys(&env, &job).await,
        [format!("job:{{{job}}}:deleted")],
        "the tombstone is all that is left"
    );
    assert_eq!(archived_files(&env, &job), Vec::<String>::new());
    // Writes find no job; the id stays taken.
    let res = env
        .post_json(
            &job,
            &json!({"lines": [{"stream": "stdout", "text": "late"}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (code, _) = env.set_status(&job, "ready").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let res = env.create_job_as(&job, "mallory").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    // A later archiver visit finds nothing to bring back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(archived_files(&env, &job), Vec::<String>::new());
    assert_eq!(redis_keys(&env, &job).await.len(), 1);
}

/// The next text message as JSON; `None` once the socket closed.
async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no websocket message in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                return Some(serde_json::from_str(text.as_str()).expect("JSON"));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn only_the_owner_or_the_ingest_key_deletes_and_deleting_again_is_204() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        (
            "LOGSTREAM_SHARE_SECRET",
            "a-share-secret-of-at-least-32-bytes!",
        ),
    ])
    .await;
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"owner": "alice", "org": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let job = res.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.post_lines(&job, "line", 3).await;
    let alice = viewer_token("alice", 300);
    let share: Value = env
        .http
        .post(env.url(&format!("/jobs/{job}/share")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = share["token"].as_str().unwrap().to_owned();
    let member = viewer_token_with("bob", json!({"org_id": "acme"}));

    let (code, _) = delete(&env, &job, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = delete(&env, &job, Some("not-a-token")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = delete(&env, &job, Some(&viewer_token("mallory", 300))).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "someone else's job does not exist"
    );
    let (code, body) = delete(&env, &job, Some(&member)).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "an org member reads, not deletes: {body}"
    );
    let (code, body) = delete(&env, &job, Some(&link)).await;
    assert_eq!(
        code,
        StatusCode::FORBIDDEN,
        "a share link only reads: {body}"
    );
    let (code, _) = delete(&env, "bad$id", Some(INGEST_KEY)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = delete(&env, &job_id("never"), Some(INGEST_KEY)).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Nothing of that touched the job.
    assert_eq!(read_statuses(&env, &job, &alice).await, READ);

    let (code, body) = delete(&env, &job, Some(INGEST_KEY)).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    let (code, _) = delete(&env, &job, Some(INGEST_KEY)).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "idempotent");
    let (code, _) = delete(&env, &job, Some(&alice)).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "the owner deleting again");
    let (code, _) = delete(&env, &job, Some(&viewer_token("mallory", 300))).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    for token in [&alice, &member, &link] {
        assert_eq!(read_statuses(&env, &job, token).await, HIDDEN);
    }
}

#[tokio::test]
async fn a_job_redis_has_forgotten_is_deleted_from_the_archive() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "line", 5).await;
    assert_eq!(env.set_status(&job, "ready").await.0, StatusCode::OK);
    env.wait_for_manifest(&job, "archived", |m| m["complete"] == true)
        .await;
    env.forget_in_redis(&job).await;
    let (code, info) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::OK, "read from the archive: {info}");

    let (code, body) = delete(&env, &job, Some(&viewer_token("alice", 300))).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(archived_files(&env, &job), Vec::<String>::new());
    let (code, _) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_stream_whose_feed_missed_the_signal_still_ends_with_deleted() {
    let env = segmented_env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "line", 2).await;
    let alice = viewer_token("alice", 300);
    let mut sse = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start"),
        &[("authorization", &format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(sse.next_entry().await.unwrap().json()["text"], "line 0");
    assert_eq!(sse.next_entry().await.unwrap().json()["text"], "line 1");
    // A deletion whose signal entry never reached this process's feed: the keys go and
    // the tombstone appears, as another process's deletion leaves them.
    let mut redis = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(format!("job:{{{job}}}:meta"))
        .arg(format!("job:{{{job}}}:logs"))
        .cmd("HSET")
        .arg(format!("job:{{{job}}}:deleted"))
        .arg("owner")
        .arg("alice")
        .query_async(&mut redis)
        .await
        .unwrap();
    let frame = sse.next_entry().await.expect("the deleted frame");
    assert_eq!(frame.event.as_deref(), Some("deleted"));
    assert!(sse.next(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn a_deletion_racing_ingest_batches_leaves_nothing_but_its_tombstone() {
    let env = env().await;
    let (job, token) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    let writer = {
        let (http, url, token) = (
            env.http.clone(),
            env.url(&format!("/jobs/{job}/logs")),
            token.clone(),
        );
        tokio::spawn(async move {
            let mut answers = Vec::new();
            // Until the deletion stops it (bounded, so a broken deletion fails the test).
            for batch in 0..20_000 {
                let lines: Vec<Value> = (0..50)
                    .map(|i| json!({"stream": "stdout", "text": format!("batch {batch} line {i}")}))
                    .collect();
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"lines": lines, "seq": batch + 1}))
                    .send()
                    .await
                    .unwrap();
                answers.push(res.status().as_u16());
                if res.status() == StatusCode::NOT_FOUND {
                    break;
                }
            }
            answers
        })
    };
    // Let some batches land, then delete while they keep coming.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (code, body) = delete(&env, &job, Some(INGEST_KEY)).await;
    assert_eq!(code, StatusCode::NO_CONTENT, "{body}");
    let answers = writer.await.unwrap();
    assert!(
        answers.iter().all(|&c| c == 200 || c == 404),
        "every batch was stored or found no job: {answers:?}"
    );
    assert_eq!(
        answers.last(),
        Some(&404),
        "writes after the deletion find no job"
    );
    assert_eq!(
        redis_keys(&env, &job).await,
        [format!("job:{{{job}}}:deleted")]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(archived_files(&env, &job), Vec::<String>::new());
}
