//! The client library's uploader used directly, as other Rust code would: bounded
//! memory against a stalled service, many senders, and a job whose `seq` is ahead.

use std::time::Duration;

use crate::support::*;
use logstream_client::Client;
use logstream_client::upload::{LogLine, Upload, UploadOptions};
use logstream_core::ids::JobId;
use logstream_core::model::LineStream;
use serde_json::json;

use crate::cli_support::{all_entries, texts_of};

fn lines(prefix: &str, from: usize, n: usize) -> Vec<LogLine> {
    (from..from + n)
        .map(|i| LogLine::new(LineStream::Stdout, format!("{prefix} {i}")))
        .collect()
}

#[tokio::test]
async fn a_stalled_service_makes_senders_wait_after_a_bounded_number_of_lines() {
    // A "service" that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = Client::new(&url, Some("key".into())).unwrap();
    let (sender, _upload) = Upload::start(
        client,
        JobId::parse("stalled").unwrap(),
        UploadOptions::default(),
    );

    let mut taken = 0;
    loop {
        let send = sender.send(lines("line", taken, 1000));
        match tokio::time::timeout(Duration::from_secs(1), send).await {
            Ok(result) => {
                result.unwrap();
                taken += 1000;
                assert!(taken <= 1_000_000, "the sender never had to wait");
            }
            Err(_) => break,
        }
    }
    eprintln!("{taken} lines taken before the sender had to wait");
    // The queue (8 chunks), one chunk being split into batches, the batch being
    // built, one sealed batch waiting, one batch in flight: 10 000 lines each at most.
    assert!(taken <= 8_000 + 1_000 + 3 * 10_000, "{taken} lines held");
    assert!(taken > 0);
}

#[tokio::test]
async fn many_senders_share_one_upload_and_each_keeps_its_order() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let client = Client::new(&env.server.url(), Some(INGEST_KEY.into())).unwrap();
    let (sender, upload) = Upload::start(
        client,
        JobId::parse(&job).unwrap(),
        UploadOptions::default(),
    );
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let sender = sender.clone();
            tokio::spawn(async move {
                for chunk in 0..100 {
                    sender
                        .send(lines(&format!("task{t}"), chunk * 100, 100))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    drop(sender);
    for task in tasks {
        task.await.unwrap();
    }
    let report = upload.finish().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(report.lines, 40_000);

    let texts = texts_of(
        &all_entries(&env.http, &env.server.url(), &job, "alice").await,
        "stdout",
    );
    assert_eq!(texts.len(), 40_000);
    for t in 0..4 {
        let prefix = format!("task{t} ");
        let mine: Vec<&String> = texts.iter().filter(|s| s.starts_with(&prefix)).collect();
        let expected: Vec<String> = (0..10_000).map(|i| format!("task{t} {i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "task {t}");
    }
}

#[tokio::test]
async fn a_job_whose_seq_is_ahead_gets_every_line_anyway() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    // Another writer whose clock runs an hour ahead already posted a batch.
    let ahead = (logstream_core::model::now_ms() + 3_600_000) * 1000;
    let res = env
        .post_json(
            &job,
            &json!({"lines": [{"text": "from the future"}], "seq": ahead}),
        )
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::OK);

    let client = Client::new(&env.server.url(), Some(INGEST_KEY.into())).unwrap();
    let (sender, upload) = Upload::start(
        client,
        JobId::parse(&job).unwrap(),
        UploadOptions::default(),
    );
    sender.send(lines("now", 0, 3)).await.unwrap();
    drop(sender);
    let report = upload.finish().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let texts = texts_of(
        &all_entries(&env.http, &env.server.url(), &job, "alice").await,
        "stdout",
    );
    assert_eq!(texts, ["from the future", "now 0", "now 1", "now 2"]);
}
