//! The viewer-side REST routes through real HTTP against `logstream dev`.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn job_with_lines(env: &Env, owner: &str, n: usize) -> String {
    let (job, _) = env.create_job(owner).await;
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let take = left.min(10_000);
        let lines: Vec<Value> = (i..i + take)
            .map(|k| json!({"text": format!("line {k}")}))
            .collect();
        assert_eq!(
            env.post_json(&job, &json!({ "lines": lines }))
                .await
                .status(),
            StatusCode::OK
        );
        left -= take;
        i += take;
    }
    job
}

#[tokio::test]
async fn get_job_reports_status_and_times() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let (code, body) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["job_id"], job.as_str());
    assert_eq!(body["status"], "queued");
    assert!(body["created_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(body["finished_at"], Value::Null);
    assert_eq!(body["archived"], false);
    assert_eq!(body["exit_code"], Value::Null);
    assert_eq!(body["duration_ms"], Value::Null);
    // Queued for a while: the duration counts from `running`.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    env.set_status(&job, "running").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    env.end_with(&job, "ready", 0).await;
    let (_, body) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(body["status"], "ready");
    let (created, finished) = (
        body["created_at"].as_u64().unwrap(),
        body["finished_at"].as_u64().unwrap(),
    );
    assert!(finished >= created);
    assert_eq!(body["exit_code"], 0);
    let duration = body["duration_ms"].as_u64().unwrap();
    assert!(
        (100..finished - created - 250).contains(&duration),
        "from running, not creation: {duration} of {}",
        finished - created
    );
}

#[tokio::test]
async fn a_job_that_never_ran_lasts_from_its_creation_and_exit_codes_are_checked() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let put = |body: Value| {
        env.http
            .put(env.url(&format!("/jobs/{job}/status")))
            .bearer_auth(INGEST_KEY)
            .json(&body)
            .send()
    };
    for bad in [
        json!({"status": "running", "exit_code": 0}),
        json!({"status": "failed", "exit_code": "1"}),
        json!({"status": "failed", "exit_code": 1.5}),
        json!({"status": "failed", "exit_code": true}),
        json!({"status": "failed", "exit_code": 2_147_483_648_u64}),
        json!({"status": "failed", "exit_code": -2_147_483_649_i64}),
    ] {
        let res = put(bad.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(error_code(&body), "invalid_exit_code", "{bad}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let res = put(json!({"status": "failed", "exit_code": -1}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (_, body) = env.get_as("alice", &format!("/jobs/{job}")).await;
    assert_eq!(body["exit_code"], -1);
    assert!(body["duration_ms"].as_u64().unwrap() >= 100, "{body}");
    // `exit_code: null` is no exit code; a repeat changes nothing.
    let res = put(json!({"status": "failed", "exit_code": null}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (_, mut again) = env.get_as("alice", &format!("/jobs/{job}")).await;
    // (The archiver may have archived it meanwhile.)
    again["archived"] = body["archived"].clone();
    assert_eq!(again, body);
}

#[tokio::test]
async fn someone_elses_job_looks_exactly_like_a_missing_one() {
    let env = env().await;
    let job = job_with_lines(&env, "alice", 3).await;
    for path in [format!("/jobs/{job}"), format!("/jobs/{job}/logs")] {
        let theirs = env.get_as("mallory", &path).await;
        let missing = env
            .get_as("mallory", &path.replace(&job, &job_id("missing")))
            .await;
        assert_eq!(theirs.0, StatusCode::NOT_FOUND);
        assert_eq!(theirs, missing, "{path}");
    }
}

#[tokio::test]
async fn ten_thousand_lines_page_back_without_gaps() {
    let env = env().await;
    let job = job_with_lines(&env, "alice", 10_000).await;
    env.set_status(&job, "running").await;
    env.set_status(&job, "ready").await;

    let (code, newest) = env.get_as("alice", &format!("/jobs/{job}/logs")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(newest["source"], "redis");
    assert_eq!(newest["status"], "ready");
    assert_eq!(
        newest["lines"].as_array().unwrap().len(),
        100,
        "default limit"
    );
    assert_eq!(newest["lines"][99]["kind"], "status", "newest last");

    let mut texts_seen = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &before {
            Some(id) => format!("/jobs/{job}/logs?limit=500&before={id}"),
            None => format!("/jobs/{job}/logs?limit=500"),
        };
        let (_, page) = env.get_as("alice", &path).await;
        pages += 1;
        let mut page_ids: Vec<String> = page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        page_ids.append(&mut ids);
        ids = page_ids;
        let mut t = texts(&page["lines"]);
        t.append(&mut texts_seen);
        texts_seen = t;
        assert_eq!(page["has_more"], page["next_before"].is_string());
        match page["next_before"].as_str() {
            Some(id) => before = Some(id.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 21, "10 002 entries in pages of 500");
    let expected: Vec<String> = (0..10_000).map(|k| format!("line {k}")).collect();
    assert_eq!(texts_seen, expected);
    let parsed: Vec<logstream_core::ids::EntryId> =
        ids.iter().map(|i| i.parse().unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "strictly ordered by id"
    );
}

#[tokio::test]
async fn after_cursor_reads_forward_from_an_id() {
    let env = env().await;
    let job = job_with_lines(&env, "alice", 10).await;
    let (_, all) = env
        .get_as("alice", &format!("/jobs/{job}/logs?limit=10"))
        .await;
    let third = all["lines"][2]["id"].as_str().unwrap();
    let (code, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after={third}&limit=4"))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        texts(&page["lines"]),
        ["line 3", "line 4", "line 5", "line 6"]
    );
    assert_eq!(page["has_more"], true, "newer entries remain");
    assert_eq!(
        page["next_before"], page["lines"][0]["id"],
        "older entries exist"
    );
    let last = page["lines"][3]["id"].as_str().unwrap();
    let (_, rest) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after={last}"))
        .await;
    assert_eq!(texts(&rest["lines"]), ["line 7", "line 8", "line 9"]);
    assert_eq!(rest["has_more"], false);
    let newest = rest["lines"][2]["id"].as_str().unwrap();
    let (_, empty) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after={newest}"))
        .await;
    assert_eq!(empty["lines"], json!([]));
    assert_eq!(empty["next_before"], Value::Null);
    let (_, first) = env
        .get_as("alice", &format!("/jobs/{job}/logs?after=0-0&limit=2"))
        .await;
    assert_eq!(texts(&first["lines"]), ["line 0", "line 1"]);
    assert_eq!(
        first["next_before"],
        Value::Null,
        "nothing is older than the first entry"
    );
}

#[tokio::test]
async fn limit_is_clamped_and_validated() {
    let env = env().await;
    let job = job_with_lines(&env, "alice", 600).await;
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?limit=1000"))
        .await;
    assert_eq!(page["lines"].as_array().unwrap().len(), 500);
    for huge in ["9223372036854775808", "100000000000000000000000000000"] {
        let (code, page) = env
            .get_as("alice", &format!("/jobs/{job}/logs?limit={huge}"))
            .await;
        assert_eq!(code, StatusCode::OK, "limit={huge}: {page}");
        assert_eq!(page["lines"].as_array().unwrap().len(), 500, "limit={huge}");
    }
    let (_, page) = env
        .get_as("alice", &format!("/jobs/{job}/logs?limit=1"))
        .await;
    assert_eq!(texts(&page["lines"]), ["line 599"]);
    for bad in ["0", "-3", "ten", "1.5", ""] {
        let (code, body) = env
            .get_as("alice", &format!("/jobs/{job}/logs?limit={bad}"))
            .await;
        assert_eq!(
            (code, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_limit"),
            "limit={bad}"
        );
    }
}

#[tokio::test]
async fn malformed_cursors_are_400() {
    let env = env().await;
    let job = job_with_lines(&env, "alice", 2).await;
    for query in [
        "before=abc",
        "after=1-",
        "before=-5",
        "before=1-2-3",
        "after=1732406400000",
        "before=1-0&after=2-0",
    ] {
        let (code, body) = env
            .get_as("alice", &format!("/jobs/{job}/logs?{query}"))
            .await;
        assert_eq!(
            (code, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_cursor"),
            "{query}"
        );
    }
}

#[tokio::test]
async fn viewer_tokens_are_checked() {
    let env = env().await;
    let job = job_with_lines(&env, "alice", 1).await;
    let path = format!("/jobs/{job}/logs");
    let get = |auth: Option<String>| {
        let mut req = env.http.get(env.url(&path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let expired = viewer_token("alice", -3600);
    let forged = {
        let good = viewer_token("alice", 300);
        let (head, _) = good.rsplit_once('.').unwrap();
        format!("{head}.AAAA")
    };
    for auth in [
        None,
        Some("Bearer garbage".to_owned()),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {forged}")),
        Some(format!("Basic {}", viewer_token("alice", 300))),
    ] {
        let res = get(auth.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_code(&res.json().await.unwrap()), "unauthorized");
    }
    // The ingest key is not a viewer credential.
    let res = get(Some(format!("Bearer {INGEST_KEY}"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // EventSource cannot set headers: the token may come as ?access_token=.
    let res = env
        .http
        .get(env.url(&format!(
            "{path}?access_token={}",
            viewer_token("alice", 300)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_headers_go_to_configured_origins_only() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_CORS_ORIGINS", "https://app.example"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    let path = env.url(&format!("/jobs/{job}/logs"));
    let res = env
        .http
        .get(&path)
        .header("origin", "https://app.example")
        .bearer_auth(viewer_token("alice", 60))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let res = env
        .http
        .get(&path)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let preflight = env
        .http
        .request(reqwest::Method::OPTIONS, &path)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
}

#[tokio::test]
async fn a_browser_may_send_the_delete_routes_cross_origin() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_CORS_ORIGINS", "https://app.example"),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    for path in [format!("/jobs/{job}"), format!("/jobs/{job}/share")] {
        let preflight = env
            .http
            .request(reqwest::Method::OPTIONS, env.url(&path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "DELETE")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap();
        assert!(preflight.status().is_success(), "{path}");
        let methods = preflight.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .to_ascii_uppercase();
        assert!(
            methods.split(',').any(|m| m.trim() == "DELETE"),
            "{path}: {methods}"
        );
    }
    // And the answer to the DELETE itself carries the origin.
    let res = env
        .http
        .delete(env.url(&format!("/jobs/{job}/share")))
        .header("origin", "https://app.example")
        .bearer_auth(viewer_token("alice", 60))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn rs256_tokens_verify_against_a_jwks_served_over_http() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/tests/fixtures/jwt");
    let jwks = std::fs::read_to_string(format!("{fixtures}/jwks-a.json")).unwrap();
    let key_a = std::fs::read(format!("{fixtures}/rsa-a.pem")).unwrap();
    let key_b = std::fs::read(format!("{fixtures}/rsa-b.pem")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || async move { jwks }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_JWT_SECRET", ""),
        ("LOGSTREAM_JWKS_URL", &jwks_url),
        ("LOGSTREAM_JWT_ISSUER", "https://clerk.example.com"),
        ("LOGSTREAM_JWT_AUDIENCE", "https://app.example.com"),
    ])
    .await;
    let (job, _) = env.create_job("user_2abc").await;
    let sign = |pem: &[u8], kid: &str, azp: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let now = (logstream_core::model::now_ms() / 1000) as i64;
        let claims = json!({"sub": "user_2abc", "iss": "https://clerk.example.com", "azp": azp, "exp": now + 300, "nbf": now - 5});
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        )
        .unwrap()
    };
    let get = |token: String| {
        env.http
            .get(env.url(&format!("/jobs/{job}")))
            .bearer_auth(token)
            .send()
    };

    let ok = get(sign(&key_a, "key-a", "https://app.example.com"))
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        StatusCode::OK,
        "a Clerk-style session token (azp, no aud)"
    );
    let wrong_azp = get(sign(&key_a, "key-a", "https://evil.example.com"))
        .await
        .unwrap();
    assert_eq!(wrong_azp.status(), StatusCode::UNAUTHORIZED);
    let unknown_key = get(sign(&key_b, "key-b", "https://app.example.com"))
        .await
        .unwrap();
    assert_eq!(
        unknown_key.status(),
        StatusCode::UNAUTHORIZED,
        "a key the JWKS does not hold"
    );
    let forged = get(sign(&key_b, "key-a", "https://app.example.com"))
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        StatusCode::UNAUTHORIZED,
        "signed by another key under key-a's kid"
    );
}

#[tokio::test]
async fn an_over_long_request_target_is_the_json_414_with_cors() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_CORS_ORIGINS", "https://app.example"),
    ])
    .await;
    // Up to 64 KiB: through an HTTP client.
    for len in [20_000, 60_000] {
        // A fresh connection each time, as a browser opening the link would use.
        let http = reqwest::Client::new();
        let res = http
            .get(env.url(&format!("/jobs/x/logs?access_token={}", "a".repeat(len))))
            .header("origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::URI_TOO_LONG, "{len}");
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            "https://app.example",
            "{len}"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(error_code(&body), "uri_too_long", "{len}");
    }
    // Past 64 KiB (what hyper, and the http crate, refuse outright): by hand.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(env.server.addr)
        .await
        .unwrap();
    let request = format!(
        "GET /jobs/x/logs?access_token={} HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example\r\n\r\n",
        "a".repeat(100_000)
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut raw),
    )
    .await
    .expect("answered and closed")
    .unwrap();
    let answer = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 414"), "{answer}");
    assert!(
        answer.contains("access-control-allow-origin: https://app.example"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"uri_too_long""#), "{answer}");
}
