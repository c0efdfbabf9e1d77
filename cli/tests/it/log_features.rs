//! The log features over HTTP through `logstream dev`: the raw log (a download of the
//! whole job, with or without times) and search (`?q=`) over the whole job, both across
//! Redis and the archive.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// GETs `path` as `user`: status, headers and text.
async fn get_text(
    env: &Env,
    user: &str,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let res = env
        .http
        .get(env.url(path))
        .bearer_auth(viewer_token(user, 300))
        .send()
        .await
        .expect("GET");
    let (code, headers) = (res.status(), res.headers().clone());
    (code, headers, res.text().await.expect("text"))
}

/// A job with lines on both streams, a stage and statuses.
async fn mixed_job(env: &Env) -> String {
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    let batch = json!({
        "lines": [
            {"stream": "stdout", "text": "npm ci", "ts": 1_796_230_800_123_u64},
            {"stream": "stderr", "text": "warn \"deprecated\"\ttab", "ts": 1_796_230_800_200_u64},
        ]
    });
    assert_eq!(env.post_json(&job, &batch).await.status(), StatusCode::OK);
    let stage = json!({"stage": {"name": "build", "status": "started"}});
    env.post_json(&job, &stage).await;
    let batch =
        json!({"lines": [{"stream": "stdout", "text": "done é", "ts": 1_796_230_801_000_u64}]});
    env.post_json(&job, &batch).await;
    env.set_status(&job, "ready").await;
    job
}

#[tokio::test]
async fn the_raw_log_is_every_lines_text_as_a_text_download() {
    let env = env().await;
    let job = mixed_job(&env).await;
    let (code, headers, text) = get_text(&env, "alice", &format!("/jobs/{job}/logs/raw")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        headers["content-disposition"],
        format!("attachment; filename=\"{job}.log\"")
    );
    assert_eq!(text, "npm ci\nwarn \"deprecated\"\ttab\ndone é\n");

    let (code, _, text) = get_text(
        &env,
        "alice",
        &format!("/jobs/{job}/logs/raw?timestamps=true"),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        text,
        "2026-12-02T17:00:00.123Z npm ci\n\
         2026-12-02T17:00:00.200Z warn \"deprecated\"\ttab\n\
         2026-12-02T17:00:01.000Z done é\n"
    );

    // The rules of every read route.
    let (code, _, _) = get_text(&env, "mallory", &format!("/jobs/{job}/logs/raw")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _, body) = get_text(
        &env,
        "alice",
        &format!("/jobs/{job}/logs/raw?timestamps=yes"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let res = env
        .http
        .get(env.url(&format!("/jobs/{job}/logs/raw")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (code, _, _) = get_text(&env, "alice", "/jobs/no-such-job/logs/raw").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// A running job of `batches` × 250 lines in segments of 100 with a tail of 100, once
/// all of it is archived; every 97th line says `NEEDLE`.
async fn archived_job(env: &Env, batches: usize) -> String {
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    for b in 0..batches {
        let lines: Vec<Value> = (0..250)
            .map(|i| {
                let k = b * 250 + i;
                let text = if k % 97 == 0 {
                    format!("line {k} NEEDLE here")
                } else {
                    format!("line {k}")
                };
                json!({"stream": "stdout", "text": text})
            })
            .collect();
        let res = env.post_json(&job, &json!({ "lines": lines })).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let want = batches as u64 * 250 + 1;
    env.wait_for_manifest(&job, "every entry archived", |m| m["entries"] == want)
        .await;
    job
}

fn segmented() -> [(&'static str, &'static str); 3] {
    [
        ("LOGSTREAM_SEGMENT_LINES", "100"),
        ("LOGSTREAM_SEGMENT_SECS", "1"),
        ("LOGSTREAM_MAXLEN", "100"),
    ]
}

#[tokio::test]
async fn the_raw_log_of_a_job_in_segments_is_whole_before_and_after_its_keys_are_gone() {
    let env = env_with(&segmented()).await;
    let job = archived_job(&env, 12).await;
    let expected: String = (0..3_000)
        .map(|k| {
            if k % 97 == 0 {
                format!("line {k} NEEDLE here\n")
            } else {
                format!("line {k}\n")
            }
        })
        .collect();
    let (code, _, text) = get_text(&env, "alice", &format!("/jobs/{job}/logs/raw")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        text == expected,
        "{} bytes, not {}",
        text.len(),
        expected.len()
    );

    env.forget_in_redis(&job).await;
    let (code, _, text) = get_text(&env, "alice", &format!("/jobs/{job}/logs/raw")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        text == expected,
        "from the archive alone: {} bytes",
        text.len()
    );
    let (code, _, _) = get_text(&env, "mallory", &format!("/jobs/{job}/logs/raw")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

fn texts_of(page: &Value) -> Vec<String> {
    page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_finds_lines_over_the_whole_job_in_both_directions() {
    let env = env_with(&segmented()).await;
    let job = archived_job(&env, 12).await;
    let needles: Vec<String> = (0..3_000)
        .filter(|k| k % 97 == 0)
        .map(|k| format!("line {k} NEEDLE here"))
        .collect();
    assert_eq!(needles.len(), 31);

    // The newest matches, any case, then back page by page to the first.
    let (code, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?q=needle&limit=7"))
        .await;
    assert_eq!(code, StatusCode::OK, "{page}");
    assert_eq!(texts_of(&page), needles[24..]);
    assert_eq!(page["has_more"], true);
    let mut walked = texts_of(&page);
    let mut before = page["next_before"].as_str().unwrap().to_owned();
    loop {
        let (_, page) = env
            .get_as(
                "alice",
                &format!("/jobs/{job}/logs?q=NeEdLe&limit=7&before={before}"),
            )
            .await;
        let mut texts = texts_of(&page);
        texts.append(&mut walked);
        walked = texts;
        match page["next_before"].as_str() {
            Some(next) => before = next.to_owned(),
            None => {
                assert_eq!(page["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(walked, needles, "every match once, in order");

    // Forward from the start, and from an entry number.
    let (_, page) = env
        .get_as(
            "alice",
            &format!("/jobs/{job}/logs?q=NEEDLE&after=0-0&limit=3"),
        )
        .await;
    assert_eq!(texts_of(&page), needles[..3]);
    let after = page["next_after"].as_str().unwrap().to_owned();
    let (_, page) = env
        .get_as(
            "alice",
            &format!("/jobs/{job}/logs?q=NEEDLE&after={after}&limit=3"),
        )
        .await;
    assert_eq!(texts_of(&page), needles[3..6]);
    let (_, page) = env
        .get_as(
            "alice",
            &format!("/jobs/{job}/logs?q=NEEDLE&at=1000&limit=2"),
        )
        .await;
    // Entry 1000 is line 998 (entry 1 is the running status).
    assert_eq!(
        texts_of(&page),
        ["line 1067 NEEDLE here", "line 1164 NEEDLE here"]
    );
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?q=no%20such%20text"))
        .await;
    assert_eq!(
        (texts_of(&page).len(), &page["has_more"]),
        (0, &json!(false))
    );

    // Bad queries; someone else's job.
    for q in ["", &"x".repeat(257)] {
        let (code, body) = env
            .get_as("alice", &format!("/jobs/{job}/logs?q={q}"))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_query");
    }
    let (code, _) = env
        .get_as("mallory", &format!("/jobs/{job}/logs?q=needle"))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// POSTs `body` to `/jobs/{job}/secrets` with `token`.
async fn add_secrets(env: &Env, job: &str, token: &str, body: &Value) -> (StatusCode, Value) {
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/secrets")))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("POST secrets");
    let code = res.status();
    (code, res.json().await.expect("json"))
}

/// The `text` of every line of the job, oldest first.
async fn stored_texts(env: &Env, job: &str) -> Vec<String> {
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after=0-0&limit=500"))
        .await;
    page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "line")
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn secrets_added_mid_job_are_redacted_by_every_instance_from_then_on() {
    // Two service processes over one Redis: two Lambda instances of ingest.
    let redis = logstream_testkit::redis_server::RedisServer::start().unwrap();
    let url = redis.url();
    let a = env_with(&[("REDIS_URL", url.as_str())]).await;
    let b = env_with(&[("REDIS_URL", url.as_str())]).await;
    let (job, token) = a.create_job("alice").await;
    a.set_status(&job, "running").await;
    let line = |text: &str| json!({"lines": [{"stream": "stdout", "text": text}]});
    // Instance a has the job's settings cached from here on.
    assert_eq!(
        a.post_json(&job, &line("db password is s3cr3t-value"))
            .await
            .status(),
        StatusCode::OK
    );

    let (code, body) = add_secrets(&b, &job, &token, &json!({"secrets": ["s3cr3t-value"]})).await;
    assert_eq!((code, &body), (StatusCode::OK, &json!({"registered": 1})));
    let (code, body) = add_secrets(&b, &job, &token, &json!({"secrets": ["s3cr3t-value"]})).await;
    assert_eq!(
        (code, &body),
        (StatusCode::OK, &json!({"registered": 0})),
        "known already"
    );

    assert_eq!(
        a.post_json(&job, &line("now: s3cr3t-value, upper S3CR3T-VALUE"))
            .await
            .status(),
        StatusCode::OK
    );
    let stage = json!({"type": "stage", "name": "deploy s3cr3t-value", "status": "started"});
    let res = a
        .http
        .post(a.url(&format!("/jobs/{job}/events")))
        .bearer_auth(&token)
        .json(&stage)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        stored_texts(&a, &job).await,
        ["db password is s3cr3t-value", "now: ***, upper ***"],
        "lines before the registration are not rewritten"
    );
    let (_, page) = a
        .get_as("alice", &format!("/jobs/{job}/logs?limit=1"))
        .await;
    assert_eq!(page["lines"][0]["name"], "deploy ***");
}

#[tokio::test]
async fn adding_secrets_refuses_bad_input_a_full_list_an_ended_job_and_strangers() {
    let env = env().await;
    let (job, token) = env.create_job("alice").await;
    let (other, other_token) = env.create_job("alice").await;

    for bad in [
        json!({"secrets": ["abc"]}),
        json!({"secrets": ["x".repeat(4097)]}),
        json!({"secrets": "abcd"}),
        json!({"secrets": [1234]}),
        json!({}),
    ] {
        let (code, body) = add_secrets(&env, &job, &token, &bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
    let many: Vec<String> = (0..99).map(|i| format!("secret-{i:03}")).collect();
    assert_eq!(
        add_secrets(&env, &job, &token, &json!({ "secrets": many })).await,
        (StatusCode::OK, json!({"registered": 99}))
    );
    let two = json!({"secrets": ["one-more", "and-another"]});
    let (code, body) = add_secrets(&env, &job, &token, &two).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_secrets");
    assert_eq!(
        add_secrets(&env, &job, &token, &json!({"secrets": ["the-100th"]})).await,
        (StatusCode::OK, json!({"registered": 1}))
    );

    // Another job's token, no token, an unknown job.
    let (code, _) = add_secrets(&env, &job, &other_token, &json!({"secrets": ["abcd"]})).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/secrets")))
        .json(&json!({"secrets": ["abcd"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (code, _) = add_secrets(
        &env,
        "no-such-job",
        INGEST_KEY,
        &json!({"secrets": ["abcd"]}),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // An ended job takes no more.
    env.set_status(&other, "running").await;
    env.set_status(&other, "failed").await;
    let (code, body) = add_secrets(&env, &other, &other_token, &json!({"secrets": ["abcd"]})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn colours_are_kept_as_ansi_beside_the_text_everywhere_and_secrets_stay_out() {
    let env = env().await;
    let (job, _) = env.create_job_with("alice", &["hunter2"]).await;
    env.set_status(&job, "running").await;
    let res = env
        .post_json(
            &job,
            &json!({"lines": [
                {"text": "\u{1b}[1;31merror\u{1b}[0m: \u{1b}[38;2;255;128;0mhot"},
                {"text": "plain"},
                {"text": "pw hun\u{1b}[32mter2\u{1b}[0m \u{1b}]8;;https://x.test\u{7}link\u{1b}]8;;\u{7}"},
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let lines: Vec<&Value> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "line")
        .collect();
    assert_eq!(lines[0]["text"], "error: hot");
    assert_eq!(
        lines[0]["ansi"],
        "\u{1b}[1;31merror\u{1b}[0m: \u{1b}[38;2;255;128;0mhot"
    );
    assert_eq!(lines[1]["text"], "plain");
    assert!(
        lines[1].get("ansi").is_none(),
        "no colour, no ansi: {}",
        lines[1]
    );
    assert_eq!(lines[2]["text"], "pw *** link");
    assert_eq!(lines[2]["ansi"], "pw ***\u{1b}[32m\u{1b}[0m link");

    // The live stream carries it too; the raw log and search read the text only.
    let mut sse = SseClient::open(
        &env,
        &format!("/jobs/{job}/logs/stream?from=start"),
        &[(
            "authorization",
            &format!("Bearer {}", viewer_token("alice", 300)),
        )],
    )
    .await;
    let mut first = sse.next_entry().await.unwrap();
    while first.json()["kind"] != "line" {
        first = sse.next_entry().await.unwrap();
    }
    assert_eq!(first.json()["ansi"], lines[0]["ansi"]);
    let (_, _, raw) = get_text(&env, "alice", &format!("/jobs/{job}/logs/raw")).await;
    assert_eq!(raw, "error: hot\nplain\npw *** link\n");
    let (_, found) = env
        .get_as("alice", &format!("/jobs/{job}/logs?q=31m"))
        .await;
    assert_eq!(found["lines"], json!([]), "escape codes are not searched");
}

#[tokio::test]
async fn keep_color_0_stores_the_text_alone() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_KEEP_COLOR", "0"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    let res = env
        .post_json(
            &job,
            &json!({"lines": [{"text": "\u{1b}[31mred\u{1b}[0m"}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let line = &page["lines"][0];
    assert_eq!(line["text"], "red");
    assert!(line.get("ansi").is_none(), "{line}");
}
