//! The history sample events through the Lambda runtime's own request/response types.

use logstream_shared::config::Config;
use logstream_shared::model::{EntryBody, JobId, LineStream, NewEntry, now_ms};
use logstream_shared::store::NewJob;
use logstream_shared::testing::invoke;

const EXAMPLE_JWT_SECRET: &str = "example-jwt-secret-change-me-0123456789";

#[tokio::test]
async fn sample_history_events_run_through_the_lambda_adapter() {
    let redis = logstream_shared::redis_server::shared().unwrap();
    let url = redis.url();
    let config = Config::from_lookup(|name| match name {
        "REDIS_URL" => Some(url.clone()),
        "LOGSTREAM_JWT_SECRET" => Some(EXAMPLE_JWT_SECRET.into()),
        _ => None,
    })
    .unwrap();
    let state = logstream_history::HistoryState::from_config(&config, reqwest::Client::new())
        .await
        .unwrap();
    let router = logstream_history::router(state, &config.cors_origins);

    let (code, body) = invoke(&router, "history.get-job.json").await;
    assert_eq!(code, 404, "no job yet: {body}");

    let store = logstream_shared::store::LogStore::open(&url, config.retention()).unwrap();
    let job = JobId::parse("build-1234").unwrap();
    let new = NewJob {
        owner: "user_2abc",
        token_hash: "",
        secrets: &[],
        generation: "g",
        created_at: now_ms(),
    };
    assert!(store.create_job(&job, &new).await.unwrap());
    let entries: Vec<String> = (0..3)
        .map(|i| {
            NewEntry {
                ts: now_ms(),
                body: EntryBody::Line {
                    stream: LineStream::Stdout,
                    text: format!("line {i}"),
                },
            }
            .to_stored_json()
        })
        .collect();
    store.append(&job, "g", None, &entries).await.unwrap();

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
