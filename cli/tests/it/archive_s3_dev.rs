//! The S3 archive configured as on AWS: the real `logstream` binary with
//! `LOGSTREAM_ARCHIVE_BUCKET` and the AWS SDK's own environment (`AWS_ENDPOINT_URL`,
//! region, credentials) pointing at a private S3-compatible server. The S3 client is
//! made on first use from that environment (`S3Archive::from_env`), the path both
//! Lambdas take; the other archive tests hand the archive a ready client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logstream_shared::archive::s3::S3Archive;
use logstream_testkit::redis_server::RedisServer;
use logstream_testkit::s3_server::S3Server;
use serde_json::{Value, json};

const KEY: &str = "s3-test-ingest-key-0123456789";
const BUCKET: &str = "logstream-dev-test";

#[tokio::test]
async fn a_finished_job_goes_to_the_bucket_and_history_reads_it_back_after_the_ttl() {
    let s3 = S3Server::start().unwrap();
    S3Archive::local_client(&s3.url())
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let redis = RedisServer::start().unwrap();

    let mut dev = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["dev", "--addr", "127.0.0.1:0"])
        .env("REDIS_URL", redis.url())
        .env("LOGSTREAM_INGEST_KEY", KEY)
        .env("LOGSTREAM_JWT_SECRET", crate::support::JWT_SECRET)
        .env("LOGSTREAM_TTL_SECS", "2")
        .env("LOGSTREAM_ARCHIVE_BUCKET", BUCKET)
        .env("AWS_ENDPOINT_URL", s3.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(dev.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");

    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{url}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let created = post("/jobs", json!({"job_id": "s3-1", "owner": "alice"}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let lines: Vec<Value> = (0..300)
        .map(|i| json!({"text": format!("line {i}")}))
        .collect();
    let posted = post("/jobs/s3-1/logs", json!({ "lines": lines }))
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    for status in ["running", "ready"] {
        let res = http
            .put(format!("{url}/jobs/s3-1/status"))
            .bearer_auth(KEY)
            .json(&json!({ "status": status }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{status}");
    }

    // The in-process archiver uploads it; once Redis has forgotten the job (TTL 2 s),
    // history reads the bucket.
    let viewer = crate::support::viewer_token("alice", 300);
    let started = Instant::now();
    let page = loop {
        let res = http
            .get(format!("{url}/jobs/s3-1/logs?limit=500"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        if status == 200 && body["source"] == "archive" {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never served from the archive: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let texts = crate::support::texts(&page["lines"]);
    let expected: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(page["status"], "ready");

    let _ = dev.kill();
    drop(stdout);
    let _ = dev.wait();
}
