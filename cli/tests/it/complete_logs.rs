//! Complete logs through `logstream dev`: every entry numbered, pages at an entry
//! number, the per-job size limit, and a running job's log archived in segments while
//! Redis keeps only its tail, read whole over HTTP and SSE, and still whole once its
//! Redis keys are gone.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The `n` of every entry of a page.
fn numbers(page: &Value) -> Vec<u64> {
    page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["n"].as_u64().expect("n"))
        .collect()
}

/// Every entry of the job over HTTP, walking back from the newest with `before`.
async fn walk_back(env: &Env, job: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut path = format!("/jobs/{job}/logs?limit=500");
    loop {
        let (code, page) = env.get_as("alice", &path).await;
        assert_eq!(code, StatusCode::OK, "{page}");
        let mut entries = page["lines"].as_array().unwrap().clone();
        entries.append(&mut all);
        all = entries;
        if page["has_more"] != true {
            return all;
        }
        path = format!(
            "/jobs/{job}/logs?limit=500&before={}",
            page["next_before"].as_str().unwrap()
        );
    }
}

fn assert_dense(entries: &[Value]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["n"], i as u64 + 1, "entry {i}: {e}");
    }
}

#[tokio::test]
async fn every_entry_is_numbered_without_a_gap_and_pages_start_at_a_number() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "a", 3).await;
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "build", "status": "started"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    env.post_lines(&job, "b", 600).await;
    env.set_status(&job, "ready").await;

    let (_, info) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(
        info["entries"], 606,
        "running, 3 lines, a stage, 600 lines, ready"
    );
    assert_eq!(info["truncated"], false);
    let text_bytes: usize = (0..3).map(|i| format!("a {i}").len()).sum::<usize>()
        + (0..600).map(|i| format!("b {i}").len()).sum::<usize>();
    assert_eq!(info["bytes"], text_bytes as u64);
    let all = walk_back(&env, &job).await;
    assert_eq!(all.len(), 606);
    assert_dense(&all);
    assert_eq!(all[4]["kind"], "stage");

    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=1&limit=10"))
        .await;
    assert_eq!(numbers(&page), (1..=10).collect::<Vec<_>>());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["next_before"], Value::Null, "nothing before entry 1");
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=300&limit=500"))
        .await;
    assert_eq!(numbers(&page), (300..=606).collect::<Vec<_>>());
    assert_eq!(page["has_more"], false);
    assert_eq!(
        page["next_before"], all[299]["id"],
        "load earlier from entry 300"
    );
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=9999"))
        .await;
    assert_eq!(numbers(&page), Vec::<u64>::new());

    for bad in [
        "at=0",
        "at=-1",
        "at=x",
        "at=",
        "at=1&before=1-0",
        "at=2&after=1-0",
    ] {
        let (code, body) = env
            .get_as("alice", &format!("/jobs/{job}/logs?{bad}"))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_cursor", "{bad}");
    }
    let (code, _) = env
        .get_as("mallory", &format!("/jobs/{job}/logs?at=1"))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // The stream carries the numbers too.
    let mut sse = SseClient::open(
        &env,
        &format!(
            "/jobs/{job}/logs/stream?from=start&access_token={}",
            viewer_token("alice", 60)
        ),
        &[],
    )
    .await;
    let first = sse.next_entry().await.unwrap().json();
    assert_eq!(first["n"], 1);
}

#[tokio::test]
async fn past_the_size_limit_lines_are_dropped_with_one_notice_and_the_job_goes_on() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_MAX_JOB_BYTES", "100"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    let line = "x".repeat(30);
    let batch = |n: usize| json!({"lines": vec![json!({"stream": "stdout", "text": line}); n]});
    let res = env.post_json(&job, &batch(5)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["accepted"].as_u64(), body["dropped"].as_u64()),
        (Some(3), Some(2))
    );
    let body: Value = env.post_json(&job, &batch(2)).await.json().await.unwrap();
    assert_eq!(
        (body["accepted"].as_u64(), body["dropped"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(body["first_id"], Value::Null);
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "test", "status": "started"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "stages still go in");
    assert_eq!(env.set_status(&job, "ready").await.0, StatusCode::OK);

    let (_, info) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(info["truncated"], true);
    assert_eq!(info["bytes"], 90);
    let all = walk_back(&env, &job).await;
    assert_dense(&all);
    let system: Vec<&Value> = all.iter().filter(|e| e["stream"] == "system").collect();
    assert_eq!(system.len(), 1, "one notice: {all:?}");
    assert_eq!(
        system[0]["text"],
        "log exceeded the limit of 100 bytes; further output is discarded"
    );
    let kinds: Vec<String> = all
        .iter()
        .map(|e| format!("{}:{}", e["kind"], e["stream"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "\"status\":null",
            "\"line\":\"stdout\"",
            "\"line\":\"stdout\"",
            "\"line\":\"stdout\"",
            "\"line\":\"system\"",
            "\"stage\":null",
            "\"status\":null",
        ]
    );
}

#[tokio::test]
async fn a_running_logs_segments_keep_it_whole_across_tiers_and_after_its_keys_are_gone() {
    // A Redis of its own; small segments and tail so a few thousand lines cross both.
    let env = env_with(&[
        ("LOGSTREAM_SEGMENT_LINES", "100"),
        ("LOGSTREAM_SEGMENT_SECS", "1"),
        ("LOGSTREAM_MAXLEN", "200"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    for b in 0..12 {
        env.post_lines(&job, &format!("batch {b} line"), 250).await;
    }
    // Every entry reaches the archive within the segment period, running or not.
    env.wait_for_manifest(&job, "3_001 entries archived", |m| m["entries"] == 3_001)
        .await;
    let mut redis = redis::Client::open(env.server.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("job:{{{job}}}:logs"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (1..=200 + 100).contains(&len),
        "Redis keeps the tail only, within LOGSTREAM_MAXLEN plus one segment: {len}"
    );

    let all = walk_back(&env, &job).await;
    assert_eq!(all.len(), 3_001);
    assert_dense(&all);
    assert_eq!(all[1]["text"], "batch 0 line 0");
    assert_eq!(all[3_000]["text"], "batch 11 line 249");
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=1&limit=3"))
        .await;
    assert_eq!(numbers(&page), [1, 2, 3]);
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after=0-0&limit=5"))
        .await;
    assert_eq!(numbers(&page), [1, 2, 3, 4, 5]);
    assert_eq!(page["source"], "redis");

    // SSE from the start replays across the tiers, then follows live.
    let token = viewer_token("alice", 120);
    let mut sse = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start&access_token={token}"),
        &[],
    )
    .await;
    for n in 1..=3_001u64 {
        let frame = sse.next_entry().await.expect("replayed entry").json();
        assert_eq!(frame["n"], n);
    }
    env.post_lines(&job, "live", 1).await;
    assert_eq!(sse.next_entry().await.unwrap().json()["text"], "live 0");

    // Redis forgets the job mid-run (eviction, a flushed cache): once the last line is
    // archived, everything is still served, from the archive, with the same owner rule.
    env.wait_for_manifest(&job, "3_002 entries archived", |m| m["entries"] == 3_002)
        .await;
    env.forget_in_redis(&job).await;
    let (code, info) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (info["status"].as_str(), info["entries"].as_u64()),
        (Some("running"), Some(3_002))
    );
    assert_eq!(
        env.get_as("mallory", &format!("/jobs/{job}")).await.0,
        StatusCode::NOT_FOUND
    );
    let again = walk_back(&env, &job).await;
    assert_eq!(again.len(), 3_002);
    assert_eq!(again[..3_001], all[..]);
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=1500&limit=2"))
        .await;
    assert_eq!(
        (page["source"].as_str(), numbers(&page)),
        (Some("archive"), vec![1_500, 1_501])
    );
    let mut sse = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start&access_token={token}"),
        &[],
    )
    .await;
    for n in 1..=3_002u64 {
        assert_eq!(
            sse.next_entry().await.expect("from the archive").json()["n"],
            n
        );
    }
}

#[tokio::test]
async fn a_lost_manifest_makes_early_pages_503_until_the_archiver_restores_it() {
    // A Redis of its own; the tail is short, so the head is in segments only.
    let env = env_with(&[
        ("LOGSTREAM_SEGMENT_LINES", "100"),
        ("LOGSTREAM_SEGMENT_SECS", "1"),
        ("LOGSTREAM_MAXLEN", "100"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "line", 1_000).await;
    env.wait_for_manifest(&job, "1_001 entries archived", |m| m["entries"] == 1_001)
        .await;
    let before = env.manifest(&job).unwrap();
    let path = env
        .archive_dir
        .join("build-logs")
        .join(&job)
        .join("manifest.json");

    // Lost: the head is in neither the stream nor any manifest, and the page says so
    // instead of starting at Redis's oldest entry.
    std::fs::remove_file(&path).unwrap();
    let (code, body) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=1&limit=5"))
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    let (code, _) = env
        .get_as("alice", &format!("/jobs/{job}/logs?limit=50"))
        .await;
    assert_eq!(code, StatusCode::OK, "the newest page is in Redis");

    // The archiver's next visit (within the segment period, the job is running)
    // writes it again from the segments: the same manifest.
    env.wait_for_manifest(&job, "the manifest written again", |_| true)
        .await;
    assert_eq!(env.manifest(&job).unwrap(), before);
    let all = walk_back(&env, &job).await;
    assert_eq!(all.len(), 1_001);
    assert_dense(&all);

    // Half-written (as a store without atomic writes could leave it): the same.
    let raw = std::fs::read(&path).unwrap();
    std::fs::write(&path, &raw[..raw.len() / 2]).unwrap();
    let (code, _) = env
        .get_as("alice", &format!("/jobs/{job}/logs?at=1&limit=5"))
        .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    env.post_lines(&job, "more", 100).await;
    env.wait_for_manifest(&job, "1_101 entries archived", |m| m["entries"] == 1_101)
        .await;
    let all = walk_back(&env, &job).await;
    assert_eq!(all.len(), 1_101);
    assert_dense(&all);
    assert_eq!(all[1_100]["text"], "more 99");
}
