//! The sse function behind lambda_http's streaming adapter, as a function URL with
//! `InvokeMode: RESPONSE_STREAM` runs it: the `events/` sample in, the metadata
//! prelude (status, headers) and the streamed body out.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lambda_http::tower::{Service, ServiceExt};
use lambda_http::{Context, LambdaEvent, StreamAdapter};
use logstream_core::ids::JobId;
use logstream_core::model::{JobStatus, now_ms};
use logstream_shared::clients::Clients;
use logstream_testkit::fixtures::{lambda_clients, seed_job_with_lines};
use logstream_testkit::lambda::{EXAMPLE_JWT_SECRET, lambda_request};

fn clients(redis_url: &str, handoff_secs: &str) -> Clients {
    lambda_clients(&[
        ("REDIS_URL", redis_url),
        ("LOGSTREAM_JWT_SECRET", EXAMPLE_JWT_SECRET),
        ("LOGSTREAM_SSE_HANDOFF_SECS", handoff_secs),
    ])
}

fn context(deadline_in: Duration) -> Context {
    let mut ctx = Context::default();
    ctx.deadline = now_ms() + deadline_in.as_millis() as u64;
    ctx
}

/// Reads the whole streamed body (it must end by itself).
async fn read_all<S>(mut stream: S) -> String
where
    S: futures_util::Stream + Unpin,
    S::Item: std::fmt::Debug,
    S::Item: Into<Result<bytes::Bytes, lambda_http::Error>>,
{
    let mut out = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream stalled")
    {
        let chunk: Result<bytes::Bytes, lambda_http::Error> = chunk.into();
        out.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    out
}

#[tokio::test]
async fn the_function_url_sample_streams_the_replay_and_done() {
    let redis = logstream_testkit::redis_server::RedisServer::start().unwrap();
    let clients = clients(&redis.url(), "5");
    let state = logstream_sse::SseState::build(&clients).await.unwrap();
    let store = clients.store().unwrap();
    let job = JobId::parse("build-1234").unwrap();
    seed_job_with_lines(&store, &job, "user_2abc", 3).await;
    store
        .set_status(&job, JobStatus::Failed, now_ms(), None)
        .await
        .unwrap();

    let mut adapter =
        StreamAdapter::from(logstream_sse::router(state, &clients.config().cors_origins));
    let response = adapter
        .ready()
        .await
        .unwrap()
        .call(LambdaEvent::new(
            lambda_request("sse.function-url.json"),
            context(Duration::from_secs(900)),
        ))
        .await
        .unwrap();
    let prelude = &response.metadata_prelude;
    assert_eq!(prelude.status_code, 200);
    assert_eq!(prelude.headers["content-type"], "text/event-stream");
    assert_eq!(prelude.headers["cache-control"], "no-cache");
    assert_eq!(prelude.headers["x-accel-buffering"], "no");

    let body = read_all(response.stream.map(|r| r.map_err(Into::into))).await;
    assert!(body.starts_with("retry: 2000\n\n"), "{body}");
    for i in 0..3 {
        assert!(body.contains(&format!("\"text\":\"line {i}\"")), "{body}");
    }
    assert!(body.contains("event: status\n"), "{body}");
    // The job never ran: its duration counts from its creation.
    let done = body
        .rsplit_once("event: done\ndata: ")
        .map(|(_, data)| data)
        .expect("a done frame");
    assert!(
        done.starts_with("{\"status\":\"failed\",\"exit_code\":null,\"duration_ms\":")
            && done.ends_with("}\n\n"),
        "{body}"
    );
}

#[tokio::test]
async fn the_stream_hands_off_before_the_lambda_deadline_without_done() {
    let redis = logstream_testkit::redis_server::RedisServer::start().unwrap();
    let clients = clients(&redis.url(), "1");
    let state = logstream_sse::SseState::build(&clients).await.unwrap();
    let store = clients.store().unwrap();
    let job = JobId::parse("build-1234").unwrap();
    seed_job_with_lines(&store, &job, "user_2abc", 2).await;

    let mut adapter =
        StreamAdapter::from(logstream_sse::router(state, &clients.config().cors_origins));
    let started = Instant::now();
    // Deadline in 3 s, margin 1 s: the stream must end by itself after about 2 s.
    let response = adapter
        .ready()
        .await
        .unwrap()
        .call(LambdaEvent::new(
            lambda_request("sse.function-url.json"),
            context(Duration::from_secs(3)),
        ))
        .await
        .unwrap();
    let body = read_all(response.stream.map(|r| r.map_err(Into::into))).await;
    let took = started.elapsed();
    assert!(body.contains("\"text\":\"line 1\""), "{body}");
    assert!(
        !body.contains("event: done"),
        "a hand-off is not the end of the job: {body}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "not before the margin: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "before the deadline itself: {took:?}"
    );
}
