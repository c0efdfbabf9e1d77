//! Build markers over HTTP through `logstream dev`: `::group::`/`::endgroup::` and
//! GitLab's sections become stage entries, `::add-mask::` registers a secret, across
//! batches and across instances (two service processes over one Redis, as two Lambda
//! instances of ingest), and none of the marker lines is stored.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn batch(texts: &[&str]) -> Value {
    let lines: Vec<Value> = texts
        .iter()
        .map(|text| json!({"stream": "stdout", "text": text}))
        .collect();
    json!({ "lines": lines })
}

/// POSTs `texts` as one batch; asserts 200 and answers the body.
async fn post(env: &Env, job: &str, texts: &[&str]) -> Value {
    let res = env.post_json(job, &batch(texts)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.expect("json")
}

/// Every entry of the job, oldest first, as `line:TEXT`, `system:TEXT` or
/// `STATUS:NAME` (status entries left out).
async fn shown(env: &Env, job: &str) -> Vec<String> {
    let (code, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after=0-0&limit=500"))
        .await;
    assert_eq!(code, StatusCode::OK, "{page}");
    page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|e| match e["kind"].as_str() {
            Some("line") if e["stream"] == "system" => Some(format!("system:{}", e["text"])),
            Some("line") => Some(format!("line:{}", e["text"].as_str().unwrap())),
            Some("stage") => Some(format!(
                "{}:{}",
                e["status"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )),
            _ => None,
        })
        .collect()
}

async fn raw(env: &Env, job: &str) -> String {
    let res = env
        .http
        .get(env.url(&format!("/jobs/{job}/logs/raw")))
        .bearer_auth(viewer_token("alice", 300))
        .send()
        .await
        .expect("GET raw");
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.expect("text")
}

#[tokio::test]
async fn groups_and_sections_become_stages_across_batches_and_instances() {
    let url = shared_redis_url();
    let a = env_with(&[("REDIS_URL", url.as_str())]).await;
    let b = env_with(&[("REDIS_URL", url.as_str())]).await;
    let (job, _) = a.create_job("alice").await;
    a.set_status(&job, "running").await;

    let first = post(
        &a,
        &job,
        &[
            "::group::Install deps",
            "npm ci",
            "\u{1b}[0Ksection_start:1700000000:tests[collapsed=true]\r\u{1b}[0K\u{1b}[36;1mRunning tests\u{1b}[0m",
        ],
    )
    .await;
    assert_eq!(
        first["accepted"], 3,
        "two stage entries and a line: {first}"
    );
    // Instance b has never seen the job: its batch closes what a's opened.
    post(
        &b,
        &job,
        &[
            "ok 1",
            "::endgroup::",
            "\u{1b}[0Ksection_end:1700000001:tests\r\u{1b}[0K",
            "::group::Deploy",
        ],
    )
    .await;
    // And a, which last saw Install deps open, closes the group b opened.
    post(&a, &job, &["  ::endgroup::", "::endgroup::"]).await;

    assert_eq!(
        shown(&a, &job).await,
        [
            "started:Install deps",
            "line:npm ci",
            "started:Running tests",
            "line:ok 1",
            "succeeded:Install deps",
            "succeeded:Running tests",
            "started:Deploy",
            "succeeded:Deploy",
        ]
    );
    assert_eq!(
        raw(&a, &job).await,
        "npm ci\nok 1\n",
        "marker lines are not lines"
    );
}

#[tokio::test]
async fn a_mask_hides_its_value_from_the_next_line_on_in_every_instance_and_is_never_stored() {
    let url = shared_redis_url();
    let a = env_with(&[("REDIS_URL", url.as_str())]).await;
    let b = env_with(&[("REDIS_URL", url.as_str())]).await;
    let (job, _) = a.create_job("alice").await;
    a.set_status(&job, "running").await;
    // b caches the job's settings, without the mask.
    post(&b, &job, &["starting"]).await;

    let masked = post(
        &a,
        &job,
        &[
            "::add-mask::tok-9f8e7d6c5b",
            "same batch: tok-9f8e7d6c5b",
            "::group::deploy with tok-9f8e7d6c5b",
        ],
    )
    .await;
    assert_eq!(masked["accepted"], 2, "{masked}");
    // A batch of nothing but a mask stores nothing, and is answered as accepted.
    let only = post(&a, &job, &["::add-mask::second%25secret"]).await;
    assert_eq!(
        (only["accepted"].as_u64(), only["first_id"].is_null()),
        (Some(0), true)
    );
    post(
        &b,
        &job,
        &[
            "other instance: tok-9f8e7d6c5b and second%secret",
            "::add-mask::abc",
        ],
    )
    .await;

    let entries = shown(&a, &job).await;
    assert_eq!(
        entries[..4],
        [
            "line:starting",
            "line:same batch: ***",
            "started:deploy with ***",
            "line:other instance: *** and ***",
        ]
    );
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert!(
        entries[4].starts_with("system:") && entries[4].contains("::add-mask:: ignored"),
        "a mask too short to register says so: {entries:?}"
    );
    let log = raw(&a, &job).await;
    assert!(
        !log.contains("tok-9f8e") && !log.contains("second%"),
        "{log}"
    );
    assert!(
        !log.contains("add-mask::tok") && !log.contains("add-mask::second"),
        "{log}"
    );
    let (_, found) = a
        .get_as("alice", &format!("/jobs/{job}/logs?q=9f8e7d"))
        .await;
    assert_eq!(found["lines"], json!([]));
}

#[tokio::test]
async fn markers_0_stores_marker_lines_as_ordinary_lines() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_MARKERS", "0"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    post(
        &env,
        &job,
        &["::group::x", "::add-mask::abcdefgh", "abcdefgh"],
    )
    .await;
    assert_eq!(
        shown(&env, &job).await,
        [
            "line:::group::x",
            "line:::add-mask::abcdefgh",
            "line:abcdefgh"
        ]
    );
}
