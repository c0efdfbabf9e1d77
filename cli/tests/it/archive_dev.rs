//! `logstream dev` archives finished jobs to its local folder on its own, and history
//! serves them from there once Redis has forgotten them.

use std::time::{Duration, Instant};

use crate::support::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Polls `path` as `user` until `done` holds for the answer (at most 30 s).
async fn wait_for(env: &Env, user: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (code, body) = env.get_as(user, path).await;
        if code == StatusCode::OK && done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path} never got there: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_finished_job_is_archived_to_the_folder_and_served_after_its_ttl() {
    // A Redis of its own: the archive queue is not shared with other tests.
    let (env, _cluster) = env_isolated(&[("LOGSTREAM_TTL_SECS", "2")]).await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "line", 1_000).await;
    assert_eq!(env.set_status(&job, "ready").await.0, StatusCode::OK);

    let meta = wait_for(&env, "alice", &format!("/jobs/{job}"), |b| {
        b["archived"] == true
    })
    .await;
    assert_eq!(meta["status"], "ready");
    let log = env
        .archive_dir
        .join("build-logs")
        .join(&job)
        .join("build.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().count(),
        1_002,
        "1 000 lines and two status entries"
    );

    // Redis forgets the job two seconds after its last write; history keeps answering.
    let page = wait_for(&env, "alice", &format!("/jobs/{job}/logs?limit=500"), |b| {
        b["source"] == "archive"
    })
    .await;
    assert_eq!(page["status"], "ready");
    assert_eq!(page["has_more"], true);
    let last = page["lines"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "status");
    assert_eq!(last["status"], "ready");
    let mut seen = texts(&page["lines"]);
    let mut before = page["next_before"].as_str().map(str::to_owned);
    while let Some(id) = before {
        let (code, older) = env
            .get_as("alice", &format!("/jobs/{job}/logs?limit=500&before={id}"))
            .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(older["source"], "archive");
        let mut t = texts(&older["lines"]);
        t.append(&mut seen);
        seen = t;
        before = older["next_before"].as_str().map(str::to_owned);
    }
    let expected: Vec<String> = (0..1_000).map(|i| format!("line {i}")).collect();
    assert_eq!(seen, expected);

    let (code, meta) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(meta["archived"], true);
    let (code, body) = env.get_as("mallory", &format!("/jobs/{job}/logs")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}
