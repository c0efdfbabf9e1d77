//! The pipeline-side routes through real HTTP against `logstream dev` on a real Redis.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn create_job_returns_a_token_and_refuses_a_second_create() {
    let env = env().await;
    let id = job_id("create");
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"job_id": id, "owner": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["status"], "queued");
    assert!(body["ingest_token"].as_str().unwrap().starts_with("lst_"));

    let again = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"job_id": id, "owner": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(&again.json().await.unwrap()), "job_exists");
}

#[tokio::test]
async fn create_job_without_an_id_generates_one() {
    let env = env().await;
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"owner": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let id = body["job_id"].as_str().unwrap();
    assert!(logstream_core::ids::JobId::parse(id).is_ok(), "{id}");
}

#[tokio::test]
async fn create_job_rejects_bad_input_with_clear_errors() {
    let env = env().await;
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{", StatusCode::BAD_REQUEST, "invalid_json"),
        (r#"{"owner": 5}"#, StatusCode::BAD_REQUEST, "invalid_body"),
        (
            r#"{"job_id": "a b", "owner": "x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_job_id",
        ),
        (r#"{"owner": ""}"#, StatusCode::BAD_REQUEST, "invalid_owner"),
        (
            r#"{"owner": "x", "secrets": ["ab"]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_secrets",
        ),
        (
            r#"{"owner": "x", "secrets": "hunter2"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let res = env
            .http
            .post(env.url("/jobs"))
            .bearer_auth(INGEST_KEY)
            .body(*body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), *status, "{body}");
        assert_eq!(error_code(&res.json().await.unwrap()), *code, "{body}");
    }
    // Past 100 secrets is 413 at creation, as it is for `POST /jobs/{id}/secrets`.
    let secrets: Vec<String> = (0..101).map(|i| format!("secret-{i:03}")).collect();
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"owner": "x", "secrets": secrets}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&res.json().await.unwrap()), "too_many_secrets");
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"owner": "x", "secrets": &secrets[..100]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn creating_a_job_needs_the_ingest_key() {
    let env = env().await;
    let (_, token) = env.create_job("alice").await;
    for auth in [None, Some("wrong-key-wrong-key"), Some(token.as_str())] {
        let mut req = env
            .http
            .post(env.url("/jobs"))
            .json(&json!({"owner": "alice"}));
        if let Some(auth) = auth {
            req = req.bearer_auth(auth);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_code(&res.json().await.unwrap()), "unauthorized");
    }
}

#[tokio::test]
async fn a_job_token_writes_to_its_own_job_only() {
    let env = env().await;
    let (job_a, token_a) = env.create_job("alice").await;
    let (job_b, _) = env.create_job("alice").await;
    let batch = json!({"lines": [{"stream": "stdout", "text": "hi"}]});
    let own = env
        .http
        .post(env.url(&format!("/jobs/{job_a}/logs")))
        .bearer_auth(&token_a)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let other = env
        .http
        .post(env.url(&format!("/jobs/{job_b}/logs")))
        .bearer_auth(&token_a)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    let status = env
        .http
        .put(env.url(&format!("/jobs/{job_b}/status")))
        .bearer_auth(&token_a)
        .json(&json!({"status": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_jobs_are_404_for_the_ingest_key_and_401_for_a_token() {
    let env = env().await;
    let (_, token) = env.create_job("alice").await;
    let missing = job_id("missing");
    let batch = json!({"lines": [{"stream": "stdout", "text": "hi"}]});
    let res = env.post_json(&missing, &batch).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": {"code": "not_found", "message": "job not found"}})
    );
    let res = env
        .http
        .post(env.url(&format!("/jobs/{missing}/logs")))
        .bearer_auth(&token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_json_batch_is_stored_in_order_with_ids_and_timestamps() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let res = env
        .post_json(
            &job,
            &json!({"lines": [
                {"stream": "stdout", "text": "one", "ts": 1732406400000u64},
                {"stream": "stderr", "text": "two"},
                {"text": "three"}
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["accepted"], 3);
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], body["first_id"]);
    assert_eq!(lines[2]["id"], body["last_id"]);
    assert_eq!(lines[0]["ts"], 1732406400000u64);
    assert_eq!(lines[1]["stream"], "stderr");
    assert_eq!(lines[2]["stream"], "stdout", "stream defaults to stdout");
    assert!(lines[1]["ts"].as_u64().unwrap() > 1732406400000);
    assert_eq!(texts(&page["lines"]), ["one", "two", "three"]);
}

#[tokio::test]
async fn a_plain_text_body_becomes_lines_of_the_given_stream() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/logs?stream=stderr")))
        .bearer_auth(INGEST_KEY)
        .header("content-type", "text/plain; charset=utf-8")
        .body(b"first\r\nsecond \xff\n\nlast\n".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["accepted"], 4);
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(
        texts(&page["lines"]),
        ["first", "second \u{fffd}", "", "last"]
    );
    assert!(
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["stream"] == "stderr")
    );

    let bad = env
        .http
        .post(env.url(&format!("/jobs/{job}/logs?stream=stdlog")))
        .bearer_auth(INGEST_KEY)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad.json().await.unwrap()), "invalid_stream");
}

#[tokio::test]
async fn a_content_type_that_is_neither_json_nor_plain_text_is_415() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    for (content_type, expected) in [
        ("application/xml", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("text/plainjunk", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("text/html", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/json; charset=utf-8", StatusCode::OK),
        ("Text/Plain; charset=utf-8", StatusCode::OK),
    ] {
        let body = if expected == StatusCode::OK && content_type.starts_with("Text") {
            "plain line".to_owned()
        } else {
            json!({"lines": [{"text": "json line"}]}).to_string()
        };
        let res = env
            .http
            .post(env.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(INGEST_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected, "{content_type}");
        if expected != StatusCode::OK {
            assert_eq!(
                error_code(&res.json().await.unwrap()),
                "unsupported_media_type"
            );
        }
    }
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(texts(&page["lines"]), ["json line", "plain line"]);
}

#[tokio::test]
async fn a_json_text_holding_newlines_is_stored_as_several_lines() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let res = env
        .post_json(
            &job,
            &json!({"lines": [{"stream": "stderr", "text": "one\ntwo\r\nthree\n"}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["accepted"], 3);
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(texts(&page["lines"]), ["one", "two", "three"]);
}

#[tokio::test]
async fn a_ts_above_2_to_the_53_is_refused() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let res = env
        .post_json(
            &job,
            &json!({"lines": [{"text": "late", "ts": 9_007_199_254_740_992u64}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&res.json().await.unwrap()), "invalid_ts");
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert!(texts(&page["lines"]).is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_private_key_continued_in_the_next_batch_is_redacted_there_too() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    env.post_json(
        &job,
        &json!({"lines": [
            {"text": "before"},
            {"text": "-----BEGIN PRIVATE KEY-----"},
            {"text": body},
        ]}),
    )
    .await;
    env.post_json(
        &job,
        &json!({"lines": [
            {"text": body},
            {"text": "-----END PRIVATE KEY-----"},
            {"text": "after"},
        ]}),
    )
    .await;
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let texts = texts(&page["lines"]);
    assert_eq!(texts.first().map(String::as_str), Some("before"));
    assert_eq!(texts.last().map(String::as_str), Some("after"));
    for text in &texts {
        assert!(!text.contains("MIIEvQIBADAN"), "key body stored: {texts:?}");
        assert!(
            !text.contains("END PRIVATE KEY"),
            "END marker stored: {texts:?}"
        );
    }
}

#[tokio::test]
async fn lines_are_sanitized_before_they_are_stored() {
    let env = env().await;
    let (job, _) = env
        .create_job_with("alice", &["correct-horse-battery"])
        .await;
    env.post_json(
        &job,
        &json!({"lines": [
            {"stream": "stdout", "text": "\u{1b}[32mgreen\u{1b}[0m"},
            {"stream": "stdout", "text": "10%\r50%\r100%"},
            {"stream": "stdout", "text": "login with correct-horse-battery ok"},
            {"stream": "stdout", "text": "key AKIAIOSFODNN7EXAMPLE used"},
            {"stream": "stdout", "text": "x".repeat(20_000)}
        ]}),
    )
    .await;
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let texts = texts(&page["lines"]);
    assert_eq!(texts[0], "green");
    assert_eq!(texts[1], "100%");
    assert_eq!(texts[2], "login with *** ok");
    assert_eq!(texts[3], "key *** used");
    assert!(texts[4].len() <= 16 * 1024, "{}", texts[4].len());
    assert!(
        texts[4].ends_with(" bytes]"),
        "{}",
        &texts[4][texts[4].len() - 40..]
    );
}

#[tokio::test]
async fn bad_batches_are_refused_and_store_nothing() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"text": i.to_string()}))
        .collect();
    let huge = "y".repeat(1024 * 1024 + 1);
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("not json".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            r#"{"lines": "nope"}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            r#"{"lines": [{"stream": "stdout", "text": 5}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            r#"{"lines": [{"stream": "stdlog", "text": "x"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            r#"{"lines": [{"text": "x", "ts": -1}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            r#"{"lines": [{"text": "ok"}, {"text": "x", "ts": "soon"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            r#"{"lines": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "no_lines",
        ),
        (
            r#"{"lines": [{"text": "x"}], "seq": 9007199254740992}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_seq",
        ),
        (
            json!({ "lines": too_many }).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_lines",
        ),
        (huge, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    ];
    for (body, status, code) in &cases {
        let res = env
            .http
            .post(env.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(INGEST_KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let shown = &body[..body.len().min(60)];
        assert_eq!(res.status(), *status, "{shown}");
        assert_eq!(error_code(&res.json().await.unwrap()), *code, "{shown}");
    }
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(
        page["lines"],
        json!([]),
        "nothing of a refused batch is stored"
    );
}

#[tokio::test]
async fn a_bad_job_id_in_the_path_is_400() {
    let env = env().await;
    for path in [
        "/jobs/a%20b/logs",
        "/jobs/a%7Bb%7D/logs",
        &format!("/jobs/{}/logs", "a".repeat(129)),
    ] {
        let res = env
            .http
            .post(env.url(path))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"lines": [{"text": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(&res.json().await.unwrap()), "invalid_job_id");
    }
}

#[tokio::test]
async fn a_retried_batch_with_the_same_seq_is_not_stored_twice() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let batch = |seq: u64, text: &str| json!({"seq": seq, "lines": [{"text": text}, {"text": format!("{text}-2")}]});
    let first: Value = env
        .post_json(&job, &batch(1, "a"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["accepted"], 2);
    assert!(first.get("duplicate").is_none());
    let retry: Value = env
        .post_json(&job, &batch(1, "a"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["accepted"], 0);
    let older: Value = env
        .post_json(&job, &batch(0, "old"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(older["duplicate"], true);
    let next: Value = env
        .post_json(&job, &batch(2, "b"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["accepted"], 2);
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(texts(&page["lines"]), ["a", "a-2", "b", "b-2"]);
}

#[tokio::test]
async fn stage_events_are_stored_as_stage_entries() {
    let env = env().await;
    let (job, token) = env.create_job("alice").await;
    let post = |body: Value| {
        env.http
            .post(env.url(&format!("/jobs/{job}/events")))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let res = post(json!({"type": "stage", "name": "install", "status": "started"}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (bad, code) in [
        (
            json!({"type": "deploy", "name": "x", "status": "started"}),
            "invalid_event",
        ),
        (
            json!({"type": "stage", "name": "", "status": "started"}),
            "invalid_event",
        ),
        (
            json!({"type": "stage", "name": "x", "status": "done"}),
            "invalid_body",
        ),
        (
            json!({"type": "stage", "status": "started"}),
            "invalid_body",
        ),
        // Past 2^53 - 1, which JavaScript cannot read exactly.
        (
            json!({"type": "stage", "name": "x", "status": "started", "ts": 9_007_199_254_740_992_u64}),
            "invalid_ts",
        ),
    ] {
        let res = post(bad.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(&res.json().await.unwrap()), code, "{bad}");
    }
    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let entries = page["lines"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], id.as_str());
    assert_eq!(entries[0]["kind"], "stage");
    assert_eq!(entries[0]["name"], "install");
    assert_eq!(entries[0]["status"], "started");
}

#[tokio::test]
async fn status_moves_follow_the_state_machine() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    assert_eq!(
        env.set_status(&job, "ready").await.0,
        StatusCode::CONFLICT,
        "queued cannot become ready"
    );
    let (code, body) = env.set_status(&job, "queued").await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_status")
    );
    let (code, body) = env.set_status(&job, "paused").await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    assert_eq!(
        env.set_status(&job, "running").await,
        (StatusCode::OK, json!({"status": "running"}))
    );
    assert_eq!(
        env.set_status(&job, "ready").await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    assert_eq!(
        env.set_status(&job, "ready").await,
        (StatusCode::OK, json!({"status": "ready"})),
        "repeat is a no-op"
    );
    let (code, body) = env.set_status(&job, "failed").await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::CONFLICT, "invalid_transition")
    );
    let (code, body) = env.set_status(&job_id("missing"), "running").await;
    assert_eq!(
        (code, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    let statuses: Vec<&str> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["running", "ready"],
        "one status entry per real change"
    );
}

#[tokio::test]
async fn a_finished_job_refuses_lines_and_events() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "failed").await;
    let res = env
        .post_json(&job, &json!({"lines": [{"text": "late"}]}))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(&res.json().await.unwrap()), "job_finished");
    let res = env
        .http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "x", "status": "started"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn racing_terminal_updates_have_exactly_one_winner() {
    let env = env().await;
    for _ in 0..5 {
        let (job, _) = env.create_job("alice").await;
        env.set_status(&job, "running").await;
        let (a, b) = tokio::join!(
            env.set_status(&job, "ready"),
            env.set_status(&job, "failed")
        );
        let wins = [a.0, b.0].iter().filter(|c| **c == StatusCode::OK).count();
        assert_eq!(wins, 1, "{a:?} {b:?}");
        let (_, page) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
        assert_eq!(
            page["lines"].as_array().unwrap().len(),
            2,
            "running + one terminal entry"
        );
    }
}

#[tokio::test]
async fn eight_concurrent_writers_never_interleave_batches() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    const WRITERS: usize = 8;
    const BATCHES: usize = 10;
    const LINES: usize = 50;
    let writers = (0..WRITERS).map(|w| {
        let env = &env;
        let job = &job;
        async move {
            for b in 0..BATCHES {
                let lines: Vec<Value> = (0..LINES)
                    .map(|i| json!({"text": format!("w{w} b{b} l{i}")}))
                    .collect();
                let res = env.post_json(job, &json!({ "lines": lines })).await;
                assert_eq!(res.status(), StatusCode::OK);
            }
        }
    });
    futures_util::future::join_all(writers).await;

    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(id) => format!("/jobs/{job}/logs?limit=500&before={id}"),
            None => format!("/jobs/{job}/logs?limit=500"),
        };
        let (code, page) = env.get_as("alice", &path).await;
        assert_eq!(code, StatusCode::OK);
        let mut texts = texts(&page["lines"]);
        texts.append(&mut all);
        all = texts;
        match page["next_before"].as_str() {
            Some(id) => before = Some(id.to_owned()),
            None => break,
        }
    }
    assert_eq!(all.len(), WRITERS * BATCHES * LINES, "nothing lost");
    for chunk in all.chunks(LINES) {
        let head = chunk[0].rsplit_once(' ').unwrap().0;
        for (i, text) in chunk.iter().enumerate() {
            assert_eq!(
                text,
                &format!("{head} l{i}"),
                "a batch is contiguous and in order"
            );
        }
    }
    let mut seen: Vec<&String> = all.iter().collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), all.len(), "nothing doubled");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let env = env().await;
    let res = env.http.get(env.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&res.json().await.unwrap()), "not_found");
    let res = env
        .http
        .delete(env.url("/jobs/x/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&res.json().await.unwrap()), "method_not_allowed");
}

#[tokio::test]
async fn a_job_token_cannot_write_to_a_new_job_that_took_its_id() {
    // Two service processes on one Redis, as two ingest instances: `here` holds the
    // old job's settings when `there` creates the new job. The old job is not archived
    // (its one line is no segment yet), so its id is free once Redis forgets it.
    let here = env().await;
    let there = env().await;
    let job = job_id("reused");
    let token = |res: reqwest::Response| async move {
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json::<Value>().await.unwrap()["ingest_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let post = |token: &str, text: &str| {
        here.http
            .post(here.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(token)
            .json(&json!({"lines": [{"text": text}]}))
            .send()
    };
    let old = token(here.create_job_as(&job, "alice").await).await;
    assert_eq!(
        post(&old, "alice's").await.unwrap().status(),
        StatusCode::OK
    );
    here.forget_in_redis(&job).await;
    let new = token(there.create_job_as(&job, "mallory").await).await;

    // `here` still has the old job's settings, and the old token matches them.
    assert_eq!(
        post(&old, "into mallory's").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let event = here
        .http
        .post(here.url(&format!("/jobs/{job}/events")))
        .bearer_auth(&old)
        .json(&json!({"type": "stage", "name": "x", "status": "started"}))
        .send()
        .await
        .unwrap();
    assert_eq!(event.status(), StatusCode::UNAUTHORIZED);
    let status = here
        .http
        .put(here.url(&format!("/jobs/{job}/status")))
        .bearer_auth(&old)
        .json(&json!({"status": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::UNAUTHORIZED);
    let secrets = here
        .http
        .post(here.url(&format!("/jobs/{job}/secrets")))
        .bearer_auth(&old)
        .json(&json!({"secrets": ["hunter2hunter2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(secrets.status(), StatusCode::UNAUTHORIZED);

    // The new job's own token writes through either; nothing of the old token's is in it.
    assert_eq!(
        post(&new, "mallory's").await.unwrap().status(),
        StatusCode::OK
    );
    let (_, page) = there.get_as("mallory", &format!("/jobs/{job}/logs")).await;
    assert_eq!(texts(&page["lines"]), ["mallory's"]);
    assert_eq!(page["status"], "queued");
}
