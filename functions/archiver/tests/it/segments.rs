//! Segments of running jobs: written once even by racing archivers, Redis trimmed only
//! below what they hold, nothing lost when the archive cannot be written, and the log
//! read whole across both tiers, or from the archive alone once Redis forgets the job.

use serde_json::Value;

use crate::support::*;
use logstream_archiver::{Archiver, Outcome, Settings};
use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, StoredEntry, now_ms};
use logstream_shared::archive::{Archive, LOG_FILE, SEGMENTS_DIR, segment_file};
use logstream_shared::log::{JobLog, LogError, Source};
use logstream_shared::store::{Cursor, LogStore, Retention};
use logstream_testkit::redis_server::RedisServer;

/// Segments of 100 entries, a tail of 200, and no age rule (visits write full segments
/// only) unless a test says otherwise.
pub const SEGMENTED: Retention = Retention {
    ttl_secs: 600,
    maxlen: 200,
    segment_lines: 100,
    segment_secs: 3_600,
    ..Retention::defaults(true)
};

fn archiver(store: &LogStore, archive: &Archive) -> Archiver {
    Archiver::new(store.clone(), Some(archive.clone()), Settings::default())
}

/// Every entry of the job, walking history back from the newest with `before`, as a
/// reader would; asserts the pages join without a gap or a duplicate.
pub async fn walk_back(log: &JobLog, job: &JobId) -> Vec<StoredEntry> {
    let mut all: Vec<StoredEntry> = Vec::new();
    let mut cursor = Cursor::Latest;
    loop {
        let (_, _, page) = log.page(job, cursor, 500).await.unwrap().unwrap();
        let mut entries = page.entries;
        entries.append(&mut all);
        all = entries;
        if !page.has_more {
            break;
        }
        cursor = Cursor::Before(all[0].id);
    }
    all
}

/// Asserts `entries` are numbered 1, 2, 3 … in id order.
pub fn assert_dense(entries: &[StoredEntry]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.n(), Some(i as u64 + 1), "entry {i}: {}", e.json);
    }
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
}

fn line_texts(entries: &[StoredEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.json).unwrap())
        .filter(|v| v["kind"] == "line")
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn racing_archivers_write_each_segment_once_and_redis_keeps_only_the_tail() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let j = job("segments");
    write_job(&store, &j, "alice", 1_000, 40, false).await;
    let before = redis_lines(&store, &j).await;
    assert_eq!(before.len(), 1_001, "running status and 1 000 lines");

    let (a, b) = (archiver(&store, &archive), archiver(&store, &archive));
    let (x, y) = tokio::join!(a.archive_job(&j), b.archive_job(&j));
    let mut outcomes = [x.unwrap(), y.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Outcome::Busy, Outcome::Flushed(10)]);

    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert!(!manifest.complete);
    assert_eq!(manifest.status, JobStatus::Running);
    assert_eq!(
        manifest.entries, 1_000,
        "ten full segments; one entry waits"
    );
    let firsts: Vec<u64> = manifest.parts.iter().map(|p| p.first_n).collect();
    assert_eq!(firsts, (0..10).map(|k| k * 100 + 1).collect::<Vec<_>>());
    assert_eq!(manifest.parts[3].file, segment_file(301));
    let archived = archive.range(&manifest, 1, 1_001).await.unwrap();
    assert_eq!(
        archived
            .iter()
            .map(StoredEntry::to_json)
            .collect::<Vec<_>>(),
        before[..1_000],
        "the segments hold exactly what Redis held, once"
    );

    // Redis keeps the tail (cut at an idx block, and never the last archived entry)
    // within LOGSTREAM_MAXLEN plus one segment.
    let len = stream_len(&redis.url(), &j).await;
    assert!((1..=200 + 100).contains(&len), "stream length {len}");
    let oldest = store
        .entries_after(&j, EntryId { ms: 0, seq: 0 }, 1)
        .await
        .unwrap();
    let oldest_n = oldest[0].n().unwrap();
    assert_eq!((oldest_n - 1) % 256, 0, "cut at a block: {oldest_n}");

    // Read across tiers: history back to entry 1, pages at any number, the replay.
    let log = JobLog::new(store.clone(), Some(archive.clone()));
    let all = walk_back(&log, &j).await;
    assert_dense(&all);
    assert_eq!(
        all.iter().map(StoredEntry::to_json).collect::<Vec<_>>(),
        before
    );
    for at in [1, 99, 100, 101, 700, 790, 1_000, 1_001] {
        let (_, source, page) = log.page(&j, Cursor::At(at), 50).await.unwrap().unwrap();
        assert_eq!(source, Source::Redis);
        let want: Vec<u64> = (at..(at + 50).min(1_002)).collect();
        let got: Vec<u64> = page.entries.iter().map(|e| e.n().unwrap()).collect();
        assert_eq!(got, want, "at={at}");
        assert_eq!(page.has_more, at + 50 <= 1_001, "at={at}");
    }
    let mut replayed = Vec::new();
    let mut after = EntryId { ms: 0, seq: 0 };
    loop {
        let page = log.entries_after(&j, after, 333).await.unwrap().unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        replayed.extend(page);
    }
    assert_eq!(replayed, all, "the replay from the start crosses the tiers");

    // Nothing more is due (one entry, young); then the job ends and is merged.
    assert_eq!(a.archive_job(&j).await.unwrap(), Outcome::Flushed(0));
    store
        .set_status(&j, JobStatus::Ready, now_ms(), None)
        .await
        .unwrap();
    assert!(matches!(
        a.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert!(manifest.complete);
    assert_eq!(manifest.parts.len(), 1);
    assert_eq!(manifest.parts[0].file, LOG_FILE);
    let text =
        std::fs::read_to_string(dir.0.join("build-logs").join(j.as_str()).join(LOG_FILE)).unwrap();
    let mut expected = before;
    expected.extend(redis_lines(&store, &j).await.last().cloned());
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        expected,
        "every entry, once, in order"
    );
    let segments = dir.0.join("build-logs").join(j.as_str()).join(SEGMENTS_DIR);
    assert_eq!(
        std::fs::read_dir(&segments).map(|d| d.count()).unwrap_or(0),
        0,
        "merged segments are removed"
    );
    assert_dense(&walk_back(&log, &j).await);
}

#[tokio::test]
async fn an_archive_that_cannot_be_written_trims_nothing_and_loses_nothing() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    // A file where the archive's folder should be: every write fails.
    let blocker = dir.0.join("build-logs");
    std::fs::write(&blocker, "not a folder").unwrap();
    let archive = Archive::dir(&dir.0);
    let archiver = archiver(&store, &archive);
    let j = job("blocked");
    write_job(&store, &j, "alice", 300, 40, false).await;
    assert!(archiver.archive_job(&j).await.is_err());
    assert_eq!(stream_len(&redis.url(), &j).await, 301, "nothing trimmed");
    // Lines keep being accepted meanwhile.
    write_job_lines(&store, &j, 300).await;
    assert!(archiver.archive_job(&j).await.is_err());
    assert_eq!(stream_len(&redis.url(), &j).await, 601);

    // The store comes back: the next visit catches up, and every entry is there once.
    std::fs::remove_file(&blocker).unwrap();
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(6));
    let log = JobLog::new(store.clone(), Some(archive.clone()));
    let all = walk_back(&log, &j).await;
    assert_eq!(all.len(), 601);
    assert_dense(&all);
    assert!(stream_len(&redis.url(), &j).await < 601);
}

#[tokio::test]
async fn a_visit_after_redis_forgot_how_far_the_archive_reaches_continues_without_repeating() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = archiver(&store, &archive);
    let j = job("forgot");
    write_job(&store, &j, "alice", 250, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(2));
    // As if Redis had restarted from a snapshot taken after the segments were written
    // but before it recorded them: the manifest is ahead of what Redis knows.
    let _: () = redis::cmd("HDEL")
        .arg(format!("job:{{{j}}}:meta"))
        .arg(&["arch_n", "arch_id", "arch_b"][..])
        .query_async(&mut raw(&redis.url()).await)
        .await
        .unwrap();
    write_job_lines(&store, &j, 100).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(1));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    let firsts: Vec<u64> = manifest.parts.iter().map(|p| p.first_n).collect();
    assert_eq!(
        firsts,
        [1, 101, 201],
        "the third segment starts where the second ended"
    );
    let all = walk_back(&JobLog::new(store, Some(archive)), &j).await;
    assert_eq!(all.len(), 351);
    assert_dense(&all);
}

#[tokio::test]
async fn a_running_job_whose_keys_vanish_is_served_and_merged_from_its_segments() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = archiver(&store, &archive);
    let j = job("vanish");
    write_job(&store, &j, "alice", 500, 40, false).await;
    let before = redis_lines(&store, &j).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(5));
    expire_now(&redis.url(), &j).await;

    let log = JobLog::new(store.clone(), Some(archive.clone()));
    let (info, source) = log.info(&j).await.unwrap().unwrap();
    assert_eq!(source, Source::Archive);
    assert_eq!(
        (info.owner.as_str(), info.status),
        ("alice", JobStatus::Running)
    );
    assert_eq!(info.entries, 500);
    let all = walk_back(&log, &j).await;
    assert_eq!(
        all.iter().map(StoredEntry::to_json).collect::<Vec<_>>(),
        before[..500]
    );
    let (_, _, page) = log.page(&j, Cursor::At(250), 10).await.unwrap().unwrap();
    assert_eq!(page.entries[0].n(), Some(250));
    assert_eq!(line_texts(&page.entries)[0], text(248, 40));

    // The sweep finds the job gone from Redis and makes its segments its log.
    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert!(manifest.complete && manifest.parts[0].file == LOG_FILE);
    assert_eq!(walk_back(&log, &j).await, all);
}

#[tokio::test]
async fn on_s3_segments_are_merged_into_one_log_and_removed() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let s3 = bucket_archive(&logstream_testkit::s3_server::shared().unwrap().url()).await;
    let archive = Archive::S3(s3.clone());
    let archiver = archiver(&store, &archive);
    let j = job("s3-segments");
    write_job(&store, &j, "alice", 350, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(3));
    let listed = |prefix: String| {
        let s3 = s3.clone();
        async move {
            s3.client()
                .await
                .list_objects_v2()
                .bucket(s3.bucket())
                .prefix(prefix)
                .send()
                .await
                .unwrap()
                .contents()
                .len()
        }
    };
    let segments = format!("build-logs/{j}/{SEGMENTS_DIR}/");
    assert_eq!(listed(segments.clone()).await, 3);
    let owner = head(&s3, &format!("build-logs/{j}/{}", segment_file(101)))
        .await
        .unwrap()
        .2;
    assert_eq!(
        owner.as_deref(),
        Some("alice"),
        "segments carry the owner too"
    );

    store
        .set_status(&j, JobStatus::Failed, now_ms(), None)
        .await
        .unwrap();
    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    assert_eq!(listed(segments).await, 0, "merged segments are removed");
    let log = object_text(&s3, &format!("build-logs/{j}/{LOG_FILE}")).await;
    let numbers: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, (1..=352).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_lost_manifest_is_made_again_from_the_segments_and_the_job_goes_on() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = archiver(&store, &archive);
    let log = JobLog::new(store.clone(), Some(archive.clone()));
    let j = job("lost-manifest");
    write_job(&store, &j, "alice", 800, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(8));
    let written = archive.manifest(&j).await.unwrap().unwrap();
    let manifest_path = dir
        .0
        .join("build-logs")
        .join(j.as_str())
        .join("manifest.json");

    std::fs::remove_file(&manifest_path).unwrap();
    // Redis no longer holds the head and no manifest lists it: an error, not a log
    // that starts at Redis's oldest entry.
    for cursor in [Cursor::At(1), Cursor::After(EntryId { ms: 0, seq: 0 })] {
        let err = log.page(&j, cursor, 10).await.unwrap_err();
        assert!(
            matches!(err, LogError::Unlisted { from, .. } if from > 1),
            "{err:?}"
        );
    }
    write_job_lines(&store, &j, 150).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(1));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(
        manifest.parts[..8],
        written.parts[..],
        "the same eight parts"
    );
    assert_eq!(manifest.parts[8].first_n, 801);
    let all = walk_back(&log, &j).await;
    assert_eq!(all.len(), 951);
    assert_dense(&all);

    // Damaged: half of it, as a store without atomic writes could leave it.
    let raw = std::fs::read(&manifest_path).unwrap();
    std::fs::write(&manifest_path, &raw[..raw.len() / 2]).unwrap();
    assert!(archive.manifest(&j).await.is_err());
    assert!(matches!(
        log.page(&j, Cursor::At(1), 10).await,
        Err(LogError::Unlisted { .. })
    ));
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(0));
    assert_eq!(archive.manifest(&j).await.unwrap().unwrap(), manifest);
    assert_eq!(walk_back(&log, &j).await, all);
}

#[tokio::test]
async fn a_damaged_segment_under_a_lost_manifest_stops_the_archiver_before_a_hole() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = archiver(&store, &archive);
    let j = job("torn-segment");
    write_job(&store, &j, "alice", 800, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(8));
    let job_dir = dir.0.join("build-logs").join(j.as_str());
    std::fs::remove_file(job_dir.join("manifest.json")).unwrap();
    // Segment 3 (entries 201–300) is torn in its last line.
    let third = job_dir.join(segment_file(201));
    let text = std::fs::read_to_string(&third).unwrap();
    std::fs::write(&third, &text[..text.len() - 10]).unwrap();
    let len = stream_len(&redis.url(), &j).await;

    // Two segments can be listed again; entries 201 on are not in Redis any more.
    let err = archiver.archive_job(&j).await.unwrap_err();
    assert!(
        err.to_string().contains("entries 201 to"),
        "a hole is refused: {err}"
    );
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(manifest.entries, 200, "the manifest lists what is whole");
    assert_eq!(stream_len(&redis.url(), &j).await, len, "nothing trimmed");
    // A sweep retries it later, not at once: other jobs are not held up behind it.
    store.schedule_archive(&j, 0).await.unwrap();
    let report = archiver.sweep(None).await.unwrap();
    assert_eq!(report.failed, [j.to_string()]);
    let due = store.due_for_archive(now_ms(), 10).await.unwrap();
    assert!(
        due.iter().all(|(member, _)| member != j.as_str()),
        "{due:?}"
    );
}

#[tokio::test]
async fn on_s3_a_lost_manifest_is_made_again_from_the_listed_segments() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let s3 = bucket_archive(&logstream_testkit::s3_server::shared().unwrap().url()).await;
    let archive = Archive::S3(s3.clone());
    let archiver = archiver(&store, &archive);
    let j = job("s3-lost-manifest");
    write_job(&store, &j, "alice", 650, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(6));
    let written = archive.manifest(&j).await.unwrap().unwrap();
    s3.client()
        .await
        .delete_object()
        .bucket(s3.bucket())
        .key(format!("build-logs/{j}/manifest.json"))
        .send()
        .await
        .unwrap();
    assert!(archive.manifest(&j).await.unwrap().is_none());
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(0));
    assert_eq!(archive.manifest(&j).await.unwrap().unwrap(), written);
    let all = walk_back(&JobLog::new(store, Some(archive)), &j).await;
    assert_eq!(all.len(), 651);
    assert_dense(&all);
}

#[tokio::test]
async fn a_forward_reader_keeps_its_place_while_the_archiver_trims_under_it() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = archiver(&store, &archive);
    let log = JobLog::new(store.clone(), Some(archive.clone()));
    let j = job("reader");
    write_job(&store, &j, "alice", 300, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(3));

    let mut reader = log.reader(&j, EntryId { ms: 0, seq: 0 });
    let mut all = reader.next(150).await.unwrap();
    assert_eq!(all.len(), 150, "from the archive");
    // Redis moves on under the reader: 1 000 more entries, archived and trimmed, so
    // what comes next for the reader is no longer in Redis.
    write_job_lines(&store, &j, 1_000).await;
    assert_eq!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Flushed(10)
    );
    loop {
        let entries = reader.next(400).await.unwrap();
        if entries.is_empty() {
            break;
        }
        all.extend(entries);
    }
    assert_eq!(all.len(), 1_301);
    assert_dense(&all);
    assert_eq!(all, walk_back(&log, &j).await);
}

#[tokio::test]
async fn a_search_reads_at_most_its_budget_and_says_where_to_go_on() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let log = JobLog::new(store.clone(), Some(archive.clone()));
    let j = job("search-budget");
    write_job(&store, &j, "alice", 30_000, 40, false).await;
    assert_eq!(
        archiver(&store, &archive).archive_job(&j).await.unwrap(),
        Outcome::Flushed(300)
    );
    let query = logstream_core::search::Query::new("[000007]").unwrap();
    // The one match is near the start: a search from the end with a budget of 10 000
    // entries stops empty-handed and says where it stopped.
    let (_, _, found) = log
        .search(&j, &query, Cursor::Latest, 10, 10_000)
        .await
        .unwrap()
        .unwrap();
    assert!(found.entries.is_empty());
    let next = found.next.expect("more to search");
    let (_, _, page) = log
        .page(&j, Cursor::At(30_001 - 10_000 + 1), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, page.entries[0].id, "the oldest entry read");
    let (_, _, found) = log
        .search(&j, &query, Cursor::Before(next), 10, 1_000_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line_texts(&found.entries), [text(7, 40)]);
    assert_eq!(found.next, None);
}

/// Copies folder `from` into `to`, recursively.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_reader_whose_archive_lists_less_than_redis_let_go_of_errs_instead_of_skipping() {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let (written, stale) = (TempDir::new(), TempDir::new());
    let archive = Archive::dir(&written.0);
    let archiver = archiver(&store, &archive);
    let j = job("stale-manifest");
    write_job(&store, &j, "alice", 150, 40, false).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(1));
    // A copy of the archive as it was then: its manifest lists entries 1-100 only.
    copy_tree(&written.0, &stale.0);
    append_lines(&store, &j, 150, 400, 40).await;
    assert_eq!(archiver.archive_job(&j).await.unwrap(), Outcome::Flushed(4));
    let log = JobLog::new(store.clone(), Some(archive));
    let all = walk_back(&log, &j).await;
    assert_eq!(all.len(), 551);
    assert_dense(&all);

    // Read over the stale copy, a page after entry 100 (or 50) would jump to Redis's
    // oldest entry, far past 101; it is an error instead.
    let behind = JobLog::new(store, Some(Archive::dir(&stale.0)));
    for after in [&all[49], &all[99]] {
        let read = behind.page(&j, Cursor::After(after.id), 100).await;
        assert!(
            matches!(read, Err(LogError::Unlisted { .. })),
            "after entry {:?}: {:?}",
            after.n(),
            read.map(
                |found| found.map(|(_, _, page)| page.entries.first().and_then(StoredEntry::n))
            )
        );
    }
}

#[tokio::test]
async fn a_lingering_sweep_writes_a_segment_that_fills_after_it_began_and_stops_once_the_queue_is_empty()
 {
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), SEGMENTED).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let j = job("linger");
    write_job(&store, &j, "alice", 50, 40, false).await;
    let lingering = Archiver::new(
        store.clone(),
        Some(archive.clone()),
        Settings {
            linger: std::time::Duration::from_secs(60),
            poll: std::time::Duration::from_millis(50),
            ..Settings::default()
        },
    );
    let sweeping = tokio::spawn(async move { lingering.sweep_lingering(None).await });

    // Its first sweep finds half a segment: nothing to write.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(archive.manifest(&j).await.unwrap(), None);

    // The segment fills while it lingers, and ingest makes the job due at once.
    append_lines(&store, &j, 50, 100, 40).await;
    store.schedule_archive(&j, 0).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let parts = archive
            .manifest(&j)
            .await
            .unwrap()
            .map_or(0, |m| m.parts.len());
        if parts > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the segment was not written while the sweep lingered"
        );
        assert!(
            !sweeping.is_finished(),
            "it stopped lingering with a job queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The job ends: archived whole by the same invocation, which then has nothing queued
    // and returns long before its minute.
    store
        .set_status(&j, JobStatus::Ready, now_ms(), None)
        .await
        .unwrap();
    let report = tokio::time::timeout(std::time::Duration::from_secs(10), sweeping)
        .await
        .expect("it stops once the queue is empty")
        .unwrap()
        .unwrap();
    assert_eq!(report.archived, [j.to_string()]);
    assert_eq!(
        report.not_finished,
        [j.to_string()],
        "listed once over its sweeps"
    );
    assert_eq!(report.segments, 1);
    assert!(archive.manifest(&j).await.unwrap().unwrap().complete);
    assert_eq!(store.archive_queue_len().await.unwrap(), 0);
}
