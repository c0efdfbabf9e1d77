//! The sample events in `events/` through the very types the Lambda runtime uses:
//! `LambdaRequest` in, the function's router behind lambda_http's adapter, the
//! `LambdaResponse` JSON that would go back to API Gateway out.

use logstream_core::ids::JobId;
use logstream_shared::store::Cursor;
use logstream_testkit::fixtures::lambda_clients;
use logstream_testkit::lambda::invoke;
use serde_json::Value;

const EXAMPLE_INGEST_KEY: &str = "example-ingest-key-change-me";

#[tokio::test]
async fn sample_ingest_events_run_through_the_lambda_adapter() {
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let url = redis.url();
    let clients = lambda_clients(&[
        ("REDIS_URL", &url),
        ("LOGSTREAM_INGEST_KEY", EXAMPLE_INGEST_KEY),
    ]);
    let state = logstream_ingest::IngestState::build(&clients)
        .await
        .unwrap();
    let store = state.store().clone();
    let router = logstream_ingest::router(state, &clients.config().cors_origins);

    let (code, created) = invoke(&router, "ingest.create-job.json").await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["job_id"], "build-1234");
    assert_eq!(created["status"], "queued");

    let (code, accepted) = invoke(&router, "ingest.post-logs.json").await;
    assert_eq!(code, 200, "{accepted}");
    assert_eq!(accepted["accepted"], 4);

    let (code, retried) = invoke(&router, "ingest.post-logs.json").await;
    assert_eq!(code, 200);
    assert_eq!(
        retried["duplicate"], true,
        "the fixture carries seq 1: a replay is a duplicate"
    );

    let (code, text) = invoke(&router, "ingest.post-logs-text.json").await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(text["accepted"], 2);

    let (code, event) = invoke(&router, "ingest.post-event.json").await;
    assert_eq!(code, 200, "{event}");
    assert!(event["id"].is_string());

    let (code, status) = invoke(&router, "ingest.put-status.json").await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["status"], "running");

    let job = JobId::parse("build-1234").unwrap();
    let (_, page, _) = store
        .page(&job, Cursor::Latest, 100)
        .await
        .unwrap()
        .unwrap();
    let texts: Vec<Value> = page
        .entries
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.to_json()).unwrap())
        .collect();
    assert_eq!(texts.len(), 8);
    assert_eq!(
        texts[1]["text"], "added 120 packages in 3s",
        "ANSI stripped"
    );
    assert_eq!(
        texts[3]["text"], "connecting with ***",
        "registered secret redacted"
    );
    assert_eq!(texts[5]["text"], "  ➜  Local:   http://localhost:5173/");
    assert_eq!(texts[6]["kind"], "stage");
    assert_eq!(texts[7]["kind"], "status");
}
