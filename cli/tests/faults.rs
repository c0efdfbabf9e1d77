//! Redis going away: every route answers 503 quickly (no panic, no hang), and the
//! service recovers by itself when Redis is back.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test]
async fn redis_down_is_503_on_every_route_and_service_recovers() {
    // No REDIS_URL: the dev server starts (and owns) its own redis-server.
    let mut env = env_with(&[]).await;
    let (job, _) = env.create_job("alice").await;
    env.server.redis().expect("own redis").stop();

    let viewer = viewer_token("alice", 300);
    let requests = [
        env.http
            .post(env.url("/jobs"))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"owner": "alice"})),
        env.http
            .post(env.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"lines": [{"text": "x"}]})),
        env.http
            .put(env.url(&format!("/jobs/{job}/status")))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"status": "running"})),
        env.http
            .get(env.url(&format!("/jobs/{job}")))
            .bearer_auth(&viewer),
        env.http
            .get(env.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(&viewer),
    ];
    for req in requests {
        let started = Instant::now();
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&res.json().await.unwrap()), "unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered, not hung: {:?}",
            started.elapsed()
        );
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
