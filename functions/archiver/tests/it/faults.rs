//! Faults in the middle of a segment's visit, met for real: an S3 that answers 500
//! between a segment and its manifest, one that stops answering mid-segment, and a
//! Redis restart between a segment written and the trim it allows. The S3 faults come
//! from a proxy in front of the private S3-compatible server (the client speaks the
//! real protocol to a real server); the restart is a real `redis-server` restarted
//! from its append-only file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;

use crate::segments::{SEGMENTED, assert_dense, walk_back};
use crate::support::*;
use logstream_archiver::{Archiver, ArchiverError, Outcome, Settings};
use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::StoredEntry;
use logstream_shared::archive::s3::S3Archive;
use logstream_shared::archive::{Archive, ArchiveError, segment_file};
use logstream_shared::log::{JobLog, Source};
use logstream_shared::store::LogStore;
use logstream_testkit::fault_proxy::{Fault, FaultProxy};
use logstream_testkit::redis_server::RedisServer;

/// A fresh bucket, and an archive in it reached through a fault proxy; the bucket as
/// reached directly, to look at what is really stored.
async fn proxied(timeouts: Option<TimeoutConfig>) -> (FaultProxy, Archive, S3Archive) {
    let server = logstream_testkit::s3_server::shared().unwrap().url();
    let direct = bucket_archive(&server).await;
    let proxy = FaultProxy::start(&server).await.unwrap();
    let mut config = S3Archive::local_client(&proxy.url()).config().to_builder();
    if let Some(timeouts) = timeouts {
        config = config.timeout_config(timeouts);
    }
    let through = S3Archive::new(Client::from_conf(config.build()), direct.bucket());
    (proxy, Archive::S3(through), direct)
}

fn archiver(store: &LogStore, archive: &Archive) -> Archiver {
    Archiver::new(store.clone(), Some(archive.clone()), Settings::default())
}

fn segment_firsts(archive: &logstream_shared::archive::Manifest) -> Vec<u64> {
    archive.parts.iter().map(|p| p.first_n).collect()
}

#[tokio::test]
async fn a_500_between_a_segment_and_its_manifest_loses_and_doubles_nothing() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let (proxy, archive, direct) = proxied(None).await;
    let archiver = archiver(&store, &archive);
    let j = job("s3-500");
    write_job(&store, &j, "alice", 250, 40, false).await;

    // The job's first manifest (no part yet) goes up before its first segment; the
    // one that lists the segment meets the 500.
    proxy.add_after("PUT", "manifest.json", 1, Fault::Status(500));
    let err = archiver.archive_job(&j).await.unwrap_err();
    assert!(
        matches!(
            err,
            ArchiverError::Archive {
                source: ArchiveError::Unavailable { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let first = format!("build-logs/{j}/{}", segment_file(1));
    let written = head(&direct, &first).await.expect("the segment went up");
    let listed = archive
        .manifest(&j)
        .await
        .unwrap()
        .expect("the first manifest");
    assert_eq!((listed.owner.as_str(), listed.parts.len()), ("alice", 0));
    assert_eq!(stream_len(&redis.url(), &j).await, 251, "nothing trimmed");

    // The next visit writes segment 1 again (the same bytes under the same name: the
    // manifest never listed it) and then 101.
    proxy.clear();
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(2));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(segment_firsts(&manifest), [1, 101]);
    assert_eq!(
        head(&direct, &first).await.unwrap().0,
        written.0,
        "the segment is the one written before the 500, byte for byte"
    );
    let all = walk_back(&JobLog::new(store, Some(archive)), &j).await;
    assert_eq!(all.len(), 251);
    assert_dense(&all);
}

#[tokio::test]
async fn an_s3_that_stops_answering_mid_segment_times_out_and_the_next_visit_catches_up() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let short = TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(500))
        .operation_timeout(Duration::from_secs(2))
        .build();
    let (proxy, archive, _direct) = proxied(Some(short)).await;
    let archiver = archiver(&store, &archive);
    let j = job("s3-hang");
    write_job(&store, &j, "alice", 350, 40, false).await;

    // The third segment's upload is never answered.
    proxy.add("PUT", &segment_file(201), Fault::Hang);
    let started = Instant::now();
    let err = archiver.archive_job(&j).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the visit ends at the S3 timeout, not the Lambda's"
    );
    assert!(
        matches!(
            err,
            ArchiverError::Archive {
                source: ArchiveError::Unavailable { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!proxy.faulted().is_empty());
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(segment_firsts(&manifest), [1, 101], "two whole segments");
    let len = stream_len(&redis.url(), &j).await;
    assert!(len >= 151, "entries 201 on stay in Redis: {len}");

    proxy.clear();
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(1));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(segment_firsts(&manifest), [1, 101, 201]);
    let all = walk_back(&JobLog::new(store, Some(archive)), &j).await;
    assert_eq!(all.len(), 351);
    assert_dense(&all);
}

#[tokio::test]
async fn a_redis_restart_between_a_segment_and_its_trim_loses_and_repeats_nothing() {
    let mut redis = RedisServer::start_persistent().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let (proxy, archive, _direct) = proxied(None).await;
    let lease = Duration::from_secs(1);
    let archiver = Archiver::new(
        store.clone(),
        Some(archive.clone()),
        Settings {
            lease,
            ..Settings::default()
        },
    );
    let j = job("restart-trim");
    write_job(&store, &j, "alice", 600, 40, false).await;

    // The manifest that lists the first segment (after the job's first one, which
    // lists nothing) reaches S3; its answer is held while Redis goes down.
    let release = Arc::new(tokio::sync::Notify::new());
    proxy.add_after("PUT", "manifest.json", 1, Fault::Hold(release.clone()));
    let visit = {
        let (archiver, j) = (archiver.clone(), j.clone());
        tokio::spawn(async move { archiver.archive_job(&j).await })
    };
    proxy.wait_for_fault().await;
    let started = Instant::now();
    while archive
        .manifest(&j)
        .await
        .unwrap()
        .is_none_or(|m| m.parts.is_empty())
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.stop();
    release.notify_one();
    assert!(
        matches!(visit.await.unwrap(), Err(ArchiverError::Store(_))),
        "the trim could not be recorded"
    );

    // Back from its append-only file: every entry, and no record of the segment.
    redis.restart().unwrap();
    proxy.clear();
    assert_eq!(stream_len(&redis.url(), &j).await, 601);
    let meta = store.job_meta(&j).await.unwrap().unwrap();
    assert_eq!(meta.archived_upto, None);
    assert_eq!(
        segment_firsts(&archive.manifest(&j).await.unwrap().unwrap()),
        [1]
    );

    // The cut-off visit could not release its lease: it expires by itself.
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Busy);
    tokio::time::sleep(lease).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(5));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(segment_firsts(&manifest), [1, 101, 201, 301, 401, 501]);
    let len = stream_len(&redis.url(), &j).await;
    assert!(len < 601, "trimmed once recorded: {len}");
    let all = walk_back(&JobLog::new(store, Some(archive)), &j).await;
    assert_eq!(all.len(), 601);
    assert_dense(&all);
}

/// The keys of every object of `job` in the bucket, looked at directly.
async fn objects(direct: &S3Archive, job: &logstream_core::ids::JobId) -> Vec<String> {
    let listed = direct
        .client()
        .await
        .list_objects_v2()
        .bucket(direct.bucket())
        .prefix(format!("build-logs/{job}/"))
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_deletion_while_a_visit_writes_leaves_nothing_in_the_archive() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let (proxy, archive, direct) = proxied(None).await;
    let archiver = archiver(&store, &archive);
    let j = job("delete-race");
    write_job(&store, &j, "alice", 250, 40, false).await;

    // The first segment reaches S3; its answer is held while the job is deleted, as
    // `DELETE /jobs/{id}` does: Redis first, then the archive's objects.
    let release = Arc::new(tokio::sync::Notify::new());
    proxy.add("PUT", &segment_file(1), Fault::Hold(release.clone()));
    let visit = {
        let (archiver, j) = (archiver.clone(), j.clone());
        tokio::spawn(async move { archiver.archive_job(&j).await })
    };
    proxy.wait_for_fault().await;
    let started = Instant::now();
    let segment = format!("build-logs/{j}/{}", segment_file(1));
    while !objects(&direct, &j).await.contains(&segment) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the segment never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.delete_job(&j, "alice", None).await.unwrap();
    assert!(Archive::S3(direct.clone()).purge(&j).await.unwrap());
    assert_eq!(objects(&direct, &j).await, Vec::<String>::new());

    // The visit goes on writing after the deletion's purge (the next segment, the
    // manifest), then finds the tombstone and removes what it wrote.
    let before_release = proxy.seen().len();
    release.notify_one();
    assert_eq!(visit.await.unwrap().unwrap(), Outcome::Deleted);
    let after: Vec<String> = proxy.seen()[before_release..].to_vec();
    assert!(
        after
            .iter()
            .any(|r| r.starts_with("PUT ") && r.ends_with("manifest.json")),
        "the visit wrote its manifest after the purge: {after:?}"
    );
    assert_eq!(objects(&direct, &j).await, Vec::<String>::new());
    assert!(!store.is_queued_for_archive(j.as_str()).await.unwrap());
}

#[tokio::test]
async fn a_deletion_whose_purge_failed_is_finished_by_the_next_visit() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let (proxy, archive, direct) = proxied(None).await;
    let archiver = archiver(&store, &archive);
    let j = job("delete-retry");
    write_job(&store, &j, "alice", 250, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(2));

    // The deletion reached Redis; the archive refused to delete.
    store.delete_job(&j, "alice", None).await.unwrap();
    // DeleteObjects is `POST /{bucket}?delete`.
    proxy.add("POST", "", Fault::Status(500));
    assert!(archive.purge(&j).await.is_err());
    proxy.clear();
    assert_eq!(
        objects(&direct, &j).await.len(),
        3,
        "two segments, a manifest"
    );
    assert!(
        store.is_queued_for_archive(j.as_str()).await.unwrap(),
        "the deletion queued the job for the archiver"
    );

    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Deleted);
    assert_eq!(objects(&direct, &j).await, Vec::<String>::new());
    assert!(!store.is_queued_for_archive(j.as_str()).await.unwrap());
}

/// A Redis, a store on it, an archive reached through a fault proxy, an archiver and a
/// reader over both tiers.
async fn through_proxy() -> (RedisServer, LogStore, FaultProxy, Archive, Archiver, JobLog) {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let (proxy, archive, _direct) = proxied(None).await;
    let archiver = archiver(&store, &archive);
    let log = JobLog::new(store.clone(), Some(archive.clone()));
    (redis, store, proxy, archive, archiver, log)
}

/// The job of a Redis that forgot it: served from the archive as alice's, its entries
/// dense and the same walked back with `before` and forward with a reader.
async fn read_from_the_archive(log: &JobLog, j: &JobId) -> Vec<StoredEntry> {
    let (info, source) = log.info(j).await.unwrap().expect("served from the archive");
    assert_eq!((info.owner.as_str(), source), ("alice", Source::Archive));
    let back = walk_back(log, j).await;
    assert_dense(&back);
    let mut reader = log.reader(j, EntryId { ms: 0, seq: 0 });
    let mut forward = Vec::new();
    loop {
        let entries = reader.next(64).await.unwrap();
        if entries.is_empty() {
            break;
        }
        forward.extend(entries);
    }
    assert_eq!(forward, back);
    back
}

#[tokio::test]
async fn a_segment_whose_listing_failed_is_still_read_once_redis_forgets_the_job() {
    let (redis, store, proxy, archive, archiver, log) = through_proxy().await;
    let j = job("unlisted");
    write_job(&store, &j, "alice", 150, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(1));

    // The next segment goes up; the manifest that would list it meets a 500, and then
    // Redis loses the job (evicted, its TTL, a failover) before any retry.
    write_job_lines(&store, &j, 50).await;
    proxy.add("PUT", "manifest.json", Fault::Status(500));
    archiver.archive_job(&j).await.unwrap_err();
    assert_eq!(
        segment_firsts(&archive.manifest(&j).await.unwrap().unwrap()),
        [1]
    );
    expire_now(&redis.url(), &j).await;

    // Both segments are read; only entry 201, never archived, is gone with Redis.
    let back = read_from_the_archive(&log, &j).await;
    assert_eq!(back.len(), 200);

    // The archiver's next visit makes them the job's log for good.
    proxy.clear();
    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert!(manifest.complete);
    assert_eq!(manifest.entries, 200);
    assert_eq!(walk_back(&log, &j).await, back);
}

#[tokio::test]
async fn a_first_segment_whose_listing_failed_keeps_the_job_and_its_owner_once_redis_forgets_it() {
    let (redis, store, proxy, _archive, archiver, log) = through_proxy().await;
    let j = job("unlisted-first");
    write_job(&store, &j, "alice", 120, 40, false).await;

    // The job's first manifest (no part) goes up, then its first segment; the manifest
    // that would list it meets a 500.
    proxy.add_after("PUT", "manifest.json", 1, Fault::Status(500));
    archiver.archive_job(&j).await.unwrap_err();
    expire_now(&redis.url(), &j).await;

    let all = read_from_the_archive(&log, &j).await;
    assert_eq!(
        all.len(),
        100,
        "the first segment; the 21 entries after it were in Redis alone"
    );
}
