//! The local-folder archive (`logstream dev`'s) against a real Redis: the same archiver
//! code, and pages that equal Redis's own for every kind of cursor and limit.

use crate::support::*;
use logstream_archiver::{Archiver, Outcome, Settings};
use logstream_core::ids::EntryId;
use logstream_shared::archive::{Archive, BLOCK_ENTRIES, LOG_FILE, MANIFEST_FILE};
use logstream_shared::store::{Cursor, LogStore};
use logstream_testkit::redis_server;

#[tokio::test]
async fn archive_pages_equal_redis_pages_for_every_cursor_and_limit() {
    let store = LogStore::open(&redis_server::shared().unwrap().url(), RETENTION).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = Archiver::new(store.clone(), Some(archive.clone()), Settings::default());
    let j = job("pages");
    // Four index blocks and a bit: pages cross block edges in every direction.
    write_job(
        &store,
        &j,
        "alice",
        3 * BLOCK_ENTRIES as usize + 100,
        50,
        true,
    )
    .await;
    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    let job_dir = dir.0.join("build-logs").join(j.as_str());
    assert!(job_dir.join(LOG_FILE).is_file() && job_dir.join(MANIFEST_FILE).is_file());
    let leftovers = std::fs::read_dir(&job_dir).unwrap().count();
    assert_eq!(leftovers, 2, "no partial files left behind");

    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    let ids: Vec<EntryId> = redis_lines(&store, &j)
        .await
        .iter()
        .map(|l| {
            logstream_core::model::StoredEntry::from_json_line(l)
                .unwrap()
                .id
        })
        .collect();
    let n = ids.len();
    let b = BLOCK_ENTRIES as usize;
    let mut cursors = vec![
        EntryId { ms: 0, seq: 0 },
        EntryId {
            ms: u64::MAX,
            seq: u64::MAX,
        },
        EntryId {
            ms: ids[0].ms,
            seq: 0,
        },
    ];
    for i in [0, 1, b - 1, b, b + 1, 2 * b, 3 * b - 1, 3 * b, n - 2, n - 1] {
        let id = ids[i];
        cursors.push(id);
        // Ids that fall between stored ones.
        cursors.push(EntryId {
            ms: id.ms,
            seq: id.seq + 1_000_000,
        });
    }
    let mut checked = 0;
    for limit in [1, 2, b - 1, b, b + 1, 500] {
        let mut all = vec![Cursor::Latest];
        for &c in &cursors {
            all.push(Cursor::Before(c));
            all.push(Cursor::After(c));
        }
        for cursor in all {
            let from_archive = archive.page(&manifest, cursor, limit).await.unwrap();
            let (_, from_redis, _) = store.page(&j, cursor, limit).await.unwrap().unwrap();
            assert_eq!(from_archive, from_redis, "{cursor:?} limit {limit}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6 * (1 + 2 * cursors.len()));
}

#[tokio::test]
async fn a_job_with_only_a_status_entry_archives_and_pages() {
    let store = LogStore::open(&redis_server::shared().unwrap().url(), RETENTION).unwrap();
    let dir = TempDir::new();
    let archive = Archive::dir(&dir.0);
    let archiver = Archiver::new(store.clone(), Some(archive.clone()), Settings::default());
    let j = job("short");
    write_job(&store, &j, "alice", 0, 10, true).await;
    assert!(matches!(
        archiver.archive_job(&j).await.unwrap(),
        Outcome::Archived(_)
    ));
    let manifest = archive.manifest(&j).await.unwrap().unwrap();
    assert_eq!(manifest.entries, 2);
    let page = archive.page(&manifest, Cursor::Latest, 100).await.unwrap();
    let (_, redis, _) = store.page(&j, Cursor::Latest, 100).await.unwrap().unwrap();
    assert_eq!(page, redis);
}
