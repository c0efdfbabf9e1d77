//! The history sample events through the Lambda runtime's own request/response types.

use logstream_core::ids::JobId;
use logstream_testkit::fixtures::{lambda_clients, seed_job_with_lines};
use logstream_testkit::lambda::{EXAMPLE_JWT_SECRET, invoke};

#[tokio::test]
async fn sample_history_events_run_through_the_lambda_adapter() {
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let url = redis.url();
    let clients = lambda_clients(&[
        ("REDIS_URL", &url),
        ("LOGSTREAM_JWT_SECRET", EXAMPLE_JWT_SECRET),
    ]);
    let state = logstream_history::HistoryState::build(&clients)
        .await
        .unwrap();
    let router = logstream_history::router(state, &clients.config().cors_origins);

    let (code, body) = invoke(&router, "history.get-job.json").await;
    assert_eq!(code, 404, "no job yet: {body}");

    let store = clients.store().unwrap();
    let job = JobId::parse("build-1234").unwrap();
    seed_job_with_lines(&store, &job, "user_2abc", 3).await;

    let (code, body) = invoke(&router, "history.get-job.json").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["job_id"], "build-1234");
    assert_eq!(body["status"], "queued");

    let (code, page) = invoke(&router, "history.get-logs.json").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["source"], "redis");
    let texts: Vec<&str> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["line 0", "line 1", "line 2"]);
    assert_eq!(page["has_more"], false);
}
