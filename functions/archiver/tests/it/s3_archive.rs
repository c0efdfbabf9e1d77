//! The archiver against a real S3-compatible server (moto, started by the test support
//! on a free port) and a real Redis: the `events/` samples through the Lambda handler,
//! the sweep, idempotence, an S3 outage, a 50 000-line job, expiry, no bucket.
//!
//! Tests that sweep get a Redis of their own: the archive queue is one key, and a sweep
//! takes every finished job it finds there.

use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Context, LambdaEvent, Service, service_fn};
use serde_json::Value;

use crate::support::*;
use logstream_archiver::{Archived, Archiver, ArchiverError, Outcome, Report, Settings};
use logstream_core::ids::JobId;
use logstream_core::model::{JobStatus, now_ms};
use logstream_shared::archive::s3::S3Archive;
use logstream_shared::archive::{Archive, LOG_FILE, MANIFEST_FILE};
use logstream_shared::store::{Cursor, LogStore};
use logstream_testkit::redis_server::{self, RedisServer};
use logstream_testkit::s3_server::{self, S3Server};

fn sample(file: &str) -> EventBridgeEvent<Value> {
    let path = format!("{}/../../events/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `event` through the handler exactly as `main` wires it.
async fn invoke(
    archiver: &Archiver,
    event: EventBridgeEvent<Value>,
) -> Result<Report, ArchiverError> {
    let mut handler = service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move { archiver.handle(event).await },
    );
    handler
        .call(LambdaEvent::new(event, Context::default()))
        .await
}

fn shared_store() -> (String, LogStore) {
    let url = redis_server::shared().unwrap().url();
    let store = LogStore::open(&url, RETENTION).unwrap();
    (url, store)
}

fn settings() -> Settings {
    Settings::default()
}

#[tokio::test]
async fn the_job_finished_sample_event_archives_that_job() {
    let (_, store) = shared_store();
    let s3 = bucket_archive(&s3_server::shared().unwrap().url()).await;
    let archiver = Archiver::new(store.clone(), Some(Archive::S3(s3.clone())), settings());
    // The sample names build-1234 of user_2abc, as the other samples do.
    let job = JobId::parse("build-1234").unwrap();
    write_job(&store, &job, "user_2abc", 3, 40, true).await;
    let expected = redis_lines(&store, &job).await;

    let report = invoke(&archiver, sample("archiver.job-finished.json"))
        .await
        .unwrap();
    assert_eq!(report.archived, ["build-1234"]);
    assert!(report.failed.is_empty() && !report.skipped);

    let log = object_text(&s3, &S3Archive::key(&job, LOG_FILE)).await;
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        expected,
        "every entry, chronological"
    );
    assert!(log.ends_with('\n'));
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "status", "the running status comes first");
    let (_, _, owner) = head(&s3, &S3Archive::key(&job, LOG_FILE)).await.unwrap();
    assert_eq!(owner.as_deref(), Some("user_2abc"), "x-amz-meta-owner");
    let manifest = Archive::S3(s3.clone())
        .manifest(&job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(manifest.owner, "user_2abc");
    assert_eq!(manifest.status, JobStatus::Ready);
    assert_eq!(manifest.entries, 5);
    assert!(manifest.complete);
    assert_eq!(manifest.parts.len(), 1, "build.jsonl alone");
    assert_eq!(manifest.parts[0].bytes, log.len() as u64);

    assert!(store.job_meta(&job).await.unwrap().unwrap().archived);
    assert!(!store.is_queued_for_archive(job.as_str()).await.unwrap());
}

#[tokio::test]
async fn the_schedule_sample_event_sweeps_the_queue_oldest_first_in_bounded_batches() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let s3 = bucket_archive(&s3_server::shared().unwrap().url()).await;
    let limited = Settings {
        sweep_limit: 2,
        ..settings()
    };
    let archiver = Archiver::new(store.clone(), Some(Archive::S3(s3.clone())), limited);
    let jobs: Vec<JobId> = (0..3).map(|i| job(&format!("sweep{i}"))).collect();
    for j in &jobs {
        write_job(&store, j, "alice", 20, 60, true).await;
    }
    let running = job("running");
    write_job(&store, &running, "alice", 5, 60, false).await;

    let first = invoke(&archiver, sample("archiver.schedule.json"))
        .await
        .unwrap();
    assert_eq!(
        first.archived,
        [jobs[0].to_string(), jobs[1].to_string()],
        "oldest first"
    );
    assert!(first.more, "the limit left a job queued");
    // The running job stays queued too: its first visit is a segment period away.
    assert_eq!(store.archive_queue_len().await.unwrap(), 2);

    let second = invoke(&archiver, sample("archiver.schedule.json"))
        .await
        .unwrap();
    assert_eq!(second.archived, [jobs[2].to_string()]);
    assert!(!second.more);
    assert_eq!(store.archive_queue_len().await.unwrap(), 1);
    assert!(store.is_queued_for_archive(running.as_str()).await.unwrap());

    for j in &jobs {
        assert_eq!(
            object_text(&s3, &S3Archive::key(j, LOG_FILE))
                .await
                .lines()
                .count(),
            22
        );
    }
    assert!(
        head(&s3, &S3Archive::key(&running, LOG_FILE))
            .await
            .is_none(),
        "a running job is left alone"
    );
    assert!(!store.job_meta(&running).await.unwrap().unwrap().archived);
}

#[tokio::test]
async fn archiving_again_rewrites_nothing_and_a_lost_mark_rewrites_the_same_bytes() {
    let (url, store) = shared_store();
    let s3 = bucket_archive(&s3_server::shared().unwrap().url()).await;
    let archiver = Archiver::new(store.clone(), Some(Archive::S3(s3.clone())), settings());
    let j = job("again");
    write_job(&store, &j, "alice", 300, 80, true).await;

    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    let log_key = S3Archive::key(&j, LOG_FILE);
    let manifest_key = S3Archive::key(&j, MANIFEST_FILE);
    let log_before = head(&s3, &log_key).await.unwrap();
    let manifest_before = head(&s3, &manifest_key).await.unwrap();
    let bytes_before = object_text(&s3, &log_key).await;

    // A second event for the same job: marked already, nothing is written.
    assert_eq!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::AlreadyArchived
    );
    assert_eq!(
        head(&s3, &log_key).await.unwrap(),
        log_before,
        "not rewritten"
    );
    assert_eq!(head(&s3, &manifest_key).await.unwrap(), manifest_before);

    // The mark was lost (a crash between S3 and Redis): the retry writes the same bytes.
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("HDEL")
        .arg(format!("job:{{{j}}}:meta"))
        .arg("archived")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("logstream:archive-queue")
        .arg(1)
        .arg(j.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    assert_eq!(object_text(&s3, &log_key).await, bytes_before);
    assert_eq!(
        head(&s3, &log_key).await.unwrap().0,
        log_before.0,
        "same ETag"
    );
    assert_eq!(head(&s3, &manifest_key).await.unwrap().0, manifest_before.0);
    assert!(!store.is_queued_for_archive(j.as_str()).await.unwrap());
}

#[tokio::test]
async fn an_s3_outage_keeps_jobs_queued_until_a_later_sweep() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let mut s3_server = S3Server::start().unwrap();
    let s3 = bucket_archive(&s3_server.url()).await;
    let retry_after = Duration::from_secs(2);
    let archiver = Archiver::new(
        store.clone(),
        Some(Archive::S3(s3.clone())),
        Settings {
            retry_after,
            ..settings()
        },
    );
    let jobs: Vec<JobId> = (0..4).map(|i| job(&format!("outage{i}"))).collect();
    for j in &jobs {
        write_job(&store, j, "alice", 10, 60, true).await;
    }

    s3_server.stop();
    let swept_at = now_ms();
    let down = archiver
        .sweep(None)
        .await
        .expect("an S3 error is not fatal");
    assert_eq!(
        down.failed.len(),
        3,
        "stops after three failures in a row: {down:?}"
    );
    assert!(down.archived.is_empty() && down.more);
    assert_eq!(store.archive_queue_len().await.unwrap(), 4);
    for j in &jobs {
        assert!(!store.job_meta(j).await.unwrap().unwrap().archived);
    }
    // The failed ones wait their retry time, counted from their failure.
    let queue = store.archive_queue(10).await.unwrap();
    let retry_ms = retry_after.as_millis() as u64;
    let mut latest = 0;
    for failed in &down.failed {
        let (_, due) = queue.iter().find(|(job, _)| job == failed).unwrap();
        assert!(*due >= swept_at + retry_ms, "{failed} due at {due}");
        latest = latest.max(*due);
    }
    tokio::time::sleep(Duration::from_millis(latest.saturating_sub(now_ms()) + 10)).await;

    // S3 is back (moto restarts empty: the bucket is made again).
    s3_server.restart().unwrap();
    create_bucket(s3.client().await, s3.bucket()).await;
    let up = archiver.sweep(None).await.unwrap();
    // The job not tried comes first, then the failed ones in the order they failed.
    let mut order: Vec<String> = jobs
        .iter()
        .map(ToString::to_string)
        .filter(|j| !down.failed.contains(j))
        .collect();
    order.extend(down.failed.iter().cloned());
    assert_eq!(up.archived, order);
    assert!(up.failed.is_empty());
    assert_eq!(store.archive_queue_len().await.unwrap(), 0);
    for j in &jobs {
        assert_eq!(
            object_text(&s3, &S3Archive::key(j, LOG_FILE))
                .await
                .lines()
                .count(),
            12
        );
    }
}

#[tokio::test]
async fn a_fifty_thousand_line_job_goes_up_in_parts_and_reads_back_whole() {
    let (_, store) = shared_store();
    let s3 = bucket_archive(&s3_server::shared().unwrap().url()).await;
    // The smallest part S3 allows, so this ~9 MB log takes two parts.
    let s3 = s3.with_part_size(5 * 1024 * 1024);
    let archive = Archive::S3(s3.clone());
    let archiver = Archiver::new(store.clone(), Some(archive.clone()), settings());
    let j = job("big");
    write_job(&store, &j, "alice", 50_000, 100, true).await;

    let Outcome::Archived(Archived {
        entries,
        bytes,
        parts,
    }) = archiver.archive_job(&j).await.unwrap()
    else {
        panic!("not archived");
    };
    assert_eq!(entries, 50_002, "50 000 lines and two status entries");
    assert!(parts >= 2, "multipart: {parts} part(s) for {bytes} bytes");
    let (etag, _, owner) = head(&s3, &S3Archive::key(&j, LOG_FILE)).await.unwrap();
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "multipart ETag {etag}"
    );
    assert_eq!(owner.as_deref(), Some("alice"));

    let log = object_text(&s3, &S3Archive::key(&j, LOG_FILE)).await;
    assert_eq!(log.len() as u64, bytes);
    let expected = redis_lines(&store, &j).await;
    assert_eq!(log.lines().collect::<Vec<_>>(), expected);

    // Pages from the archive are Redis's pages, walking back from the newest entry.
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    let mut cursor = Cursor::Latest;
    let mut pages = 0;
    loop {
        let from_archive = archive.page(&manifest, cursor, 500).await.unwrap();
        let (_, from_redis, _) = store.page(&j, cursor, 500).await.unwrap().unwrap();
        assert_eq!(from_archive, from_redis, "page {pages}");
        pages += 1;
        match from_archive.entries.first() {
            Some(first) if from_archive.has_more => cursor = Cursor::Before(first.id),
            _ => break,
        }
    }
    assert_eq!(pages, 101);
}

#[tokio::test]
async fn a_job_that_expired_before_archiving_is_reported_and_dropped_from_the_queue() {
    let (url, store) = shared_store();
    let s3 = bucket_archive(&s3_server::shared().unwrap().url()).await;
    let archiver = Archiver::new(store.clone(), Some(Archive::S3(s3.clone())), settings());
    let j = job("expired");
    write_job(&store, &j, "alice", 10, 60, true).await;
    expire_now(&url, &j).await;
    assert!(store.is_queued_for_archive(j.as_str()).await.unwrap());

    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Expired);
    assert!(
        !store.is_queued_for_archive(j.as_str()).await.unwrap(),
        "not retried forever"
    );
    assert!(head(&s3, &S3Archive::key(&j, LOG_FILE)).await.is_none());
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Unknown);

    // Archived, then expired: a replayed event finds the archive and writes nothing.
    let k = job("archived-then-expired");
    write_job(&store, &k, "alice", 10, 60, true).await;
    assert!(matches!(
        archiver.archive_job(&k).await.unwrap(),
        Outcome::Archived(_)
    ));
    expire_now(&url, &k).await;
    assert_eq!(
        archiver.archive_job(&k).await.unwrap(),
        Outcome::AlreadyArchived
    );
}

#[tokio::test]
async fn an_unfinished_job_is_not_archived() {
    let (_, store) = shared_store();
    let s3 = bucket_archive(&s3_server::shared().unwrap().url()).await;
    let archiver = Archiver::new(store.clone(), Some(Archive::S3(s3.clone())), settings());
    let j = job("unfinished");
    write_job(&store, &j, "alice", 10, 60, false).await;
    let mut event = sample("archiver.job-finished.json");
    event.detail = serde_json::json!({ "job_id": j.as_str() });
    let report = invoke(&archiver, event).await.unwrap();
    assert_eq!(report.not_finished, [j.to_string()]);
    assert!(head(&s3, &S3Archive::key(&j, LOG_FILE)).await.is_none());
}

#[tokio::test]
async fn without_an_archive_jobs_stay_queued_and_only_expired_ones_leave() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let archiver = Archiver::new(store.clone(), None, settings());
    // Finished in this order (and named so, should both land in one millisecond).
    let (old, live) = (job("a-old"), job("b-live"));
    write_job(&store, &old, "alice", 3, 40, true).await;
    write_job(&store, &live, "alice", 3, 40, true).await;
    expire_now(&redis.url(), &old).await;

    let report = invoke(&archiver, sample("archiver.schedule.json"))
        .await
        .unwrap();
    assert!(report.skipped);
    assert_eq!(report.expired, [old.to_string()]);
    assert!(report.archived.is_empty());
    assert!(store.is_queued_for_archive(live.as_str()).await.unwrap());
    assert!(!store.is_queued_for_archive(old.as_str()).await.unwrap());

    let mut event = sample("archiver.job-finished.json");
    event.detail = serde_json::json!({ "job_id": live.as_str() });
    let report = invoke(&archiver, event).await.unwrap();
    assert!(report.skipped && report.archived.is_empty());
}

#[tokio::test]
async fn events_the_archiver_does_not_know_are_errors() {
    let (_, store) = shared_store();
    let archiver = Archiver::new(store, None, settings());
    let mut other = sample("archiver.schedule.json");
    other.detail_type = "EC2 Instance State-change Notification".into();
    assert!(matches!(
        invoke(&archiver, other).await,
        Err(ArchiverError::Event(_))
    ));
    let mut bad_id = sample("archiver.job-finished.json");
    bad_id.detail = serde_json::json!({ "job_id": "../etc/passwd" });
    assert!(matches!(
        invoke(&archiver, bad_id).await,
        Err(ArchiverError::Event(_))
    ));
    let mut no_id = sample("archiver.job-finished.json");
    no_id.detail = serde_json::json!({});
    assert!(matches!(
        invoke(&archiver, no_id).await,
        Err(ArchiverError::Event(_))
    ));
}
