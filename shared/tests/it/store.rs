//! `LogStore` against a real, private `redis-server`.

use logstream_core::ids::JobId;
use logstream_core::model::{JobStatus, now_ms};
use logstream_shared::store::{
    AppendBatch, AppendOutcome, Appended, Cursor, Followed, LogStore, Retention, StatusOutcome,
    ToAppend,
};
use logstream_testkit::fixtures::{new_job, stdout_line};
use logstream_testkit::redis_server::{RedisServer, shared};

const RETENTION: Retention = Retention {
    ttl_secs: 600,
    maxlen: 50_000,
    ..Retention::defaults(false)
};

fn job(name: &str) -> JobId {
    JobId::parse(&format!("{name}-{}-{}", std::process::id(), now_ms())).unwrap()
}

async fn create(store: &LogStore, id: &JobId, generation: &str) {
    let mut new = new_job("alice");
    new.generation = generation;
    assert!(store.create_job(id, &new).await.unwrap());
}

/// A store whose jobs may hold 100 bytes of text, and a new job of write check `g1`.
async fn job_of_100_bytes(name: &str) -> (LogStore, JobId) {
    let redis = shared().unwrap();
    let store = LogStore::open(
        &redis.url(),
        Retention {
            max_job_bytes: 100,
            ..RETENTION
        },
    )
    .unwrap();
    let id = job(name);
    create(&store, &id, "g1").await;
    (store, id)
}

/// Appends `entries` (numbered from `first_n` when the caller numbered them) to job
/// `id` of write check `g1`, which must take them.
async fn append_g1(
    store: &LogStore,
    id: &JobId,
    entries: &[ToAppend],
    first_n: Option<u64>,
) -> Appended {
    let outcome = store
        .append_batch(
            id,
            &AppendBatch {
                check: "g1",
                seq: None,
                carry: None,
                open: None,
                masks: &[],
                first_n,
                entries,
            },
        )
        .await
        .unwrap();
    let AppendOutcome::Appended(appended) = outcome else {
        panic!("{outcome:?}");
    };
    appended
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_job_key_gets_the_ttl_and_writes_refresh_it() {
    let redis = shared().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("ttl");
    create(&store, &id, "g1").await;
    let mut conn = raw(&redis.url()).await;
    let meta = format!("job:{{{id}}}:meta");
    let logs = format!("job:{{{id}}}:logs");
    let _: () = redis::cmd("EXPIRE")
        .arg(&meta)
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    store
        .append(&id, "g1", None, &[stdout_line("a")])
        .await
        .unwrap();
    for key in [&meta, &logs] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((590..=600).contains(&ttl), "{key}: {ttl}");
    }
}

#[tokio::test]
async fn streams_are_capped_near_maxlen() {
    let redis = shared().unwrap();
    let store = LogStore::open(
        &redis.url(),
        Retention {
            ttl_secs: 600,
            maxlen: 1000,
            ..Retention::defaults(false)
        },
    )
    .unwrap();
    let id = job("cap");
    create(&store, &id, "g").await;
    let batch: Vec<String> = (0..500).map(|i| stdout_line(&i.to_string())).collect();
    for _ in 0..10 {
        store.append(&id, "g", None, &batch).await.unwrap();
    }
    let mut conn = raw(&redis.url()).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("job:{{{id}}}:logs"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1000..2000).contains(&len), "approximately capped: {len}");
}

#[tokio::test]
async fn an_outdated_generation_appends_nothing() {
    let redis = shared().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("gen");
    create(&store, &id, "new").await;
    assert_eq!(
        store
            .append(&id, "old", None, &[stdout_line("x")])
            .await
            .unwrap(),
        AppendOutcome::Stale
    );
    let (_, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert!(page.entries.is_empty());
}

#[tokio::test]
async fn a_retried_seq_after_the_job_ended_is_still_a_duplicate() {
    let redis = shared().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("seq");
    create(&store, &id, "g").await;
    assert!(matches!(
        store
            .append(&id, "g", Some(7), &[stdout_line("x")])
            .await
            .unwrap(),
        AppendOutcome::Appended(_)
    ));
    store
        .set_status(&id, JobStatus::Failed, now_ms(), None)
        .await
        .unwrap();
    assert_eq!(
        store
            .append(&id, "g", Some(7), &[stdout_line("x")])
            .await
            .unwrap(),
        AppendOutcome::Duplicate
    );
    assert_eq!(
        store
            .append(&id, "g", Some(8), &[stdout_line("y")])
            .await
            .unwrap(),
        AppendOutcome::Terminal(JobStatus::Failed)
    );
}

#[tokio::test]
async fn a_terminal_status_queues_the_job_for_archival() {
    let redis = shared().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("queue");
    create(&store, &id, "g").await;
    assert!(matches!(
        store
            .set_status(&id, JobStatus::Running, now_ms(), None)
            .await
            .unwrap(),
        StatusOutcome::Changed { .. }
    ));
    let mut conn = raw(&redis.url()).await;
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("logstream:archive-queue")
        .arg(id.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(score, None, "running is not finished");
    store
        .set_status(&id, JobStatus::Ready, now_ms(), None)
        .await
        .unwrap();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("logstream:archive-queue")
        .arg(id.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(score.is_some());
    let meta = store.job_meta(&id).await.unwrap().unwrap();
    assert_eq!(meta.status, JobStatus::Ready);
    assert!(meta.finished_at.is_some());
}

#[tokio::test]
async fn the_archive_queue_lists_oldest_first_and_marking_keeps_the_ttl() {
    // A Redis of its own: the queue is one key shared by every job.
    let redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let (a, b) = (job("qa"), job("qb"));
    for (id, finished) in [(&b, 2_000), (&a, 1_000)] {
        create(&store, id, "g").await;
        store
            .set_status(id, JobStatus::Running, 10, None)
            .await
            .unwrap();
        store
            .set_status(id, JobStatus::Ready, finished, None)
            .await
            .unwrap();
    }
    assert_eq!(
        store.archive_queue(10).await.unwrap(),
        [(a.to_string(), 1_000), (b.to_string(), 2_000)]
    );
    assert_eq!(store.archive_queue(1).await.unwrap().len(), 1);
    assert_eq!(store.archive_queue_len().await.unwrap(), 2);

    assert!(store.mark_archived(&a).await.unwrap());
    assert!(store.job_meta(&a).await.unwrap().unwrap().archived);
    let mut conn = raw(&redis.url()).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("job:{{{a}}}:meta"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600, "marking keeps the expiry: {ttl}");
    assert!(store.is_queued_for_archive(a.as_str()).await.unwrap());
    store.unqueue_archive(a.as_str()).await.unwrap();
    store.unqueue_archive(a.as_str()).await.unwrap();
    assert!(!store.is_queued_for_archive(a.as_str()).await.unwrap());
    assert_eq!(store.archive_queue_len().await.unwrap(), 1);

    let gone = job("gone");
    assert!(!store.mark_archived(&gone).await.unwrap());
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("job:{{{gone}}}:meta"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "marking an expired job does not recreate it");
}

#[tokio::test]
async fn the_store_reconnects_after_a_redis_restart() {
    let mut redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    store.ping().await.unwrap();
    redis.restart().unwrap();
    // The first command after the restart finds the old connection dead; the store
    // retries once on a fresh one instead of failing the request.
    store.ping().await.unwrap();
    let id = job("restart");
    create(&store, &id, "g").await;
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_not_a_hang() {
    let mut redis = RedisServer::start().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    redis.stop();
    let err = store.job_meta(&job("down")).await.unwrap_err();
    assert!(
        matches!(err, logstream_shared::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
}

/// History pages travel over connections of their own (`resp.rs`): they must log in
/// and pick the database exactly as the URL says, like the store's other connections.
#[tokio::test]
async fn pages_log_in_and_select_the_database_the_url_names() {
    let redis = RedisServer::start().unwrap();
    let port = redis.port();
    let mut admin = raw(&redis.url()).await;
    for acl in [
        &[
            "SETUSER",
            "reader",
            "on",
            ">reader-secret",
            "~*",
            "&*",
            "+@all",
        ][..],
        // From here on, a connection that does not log in can do nothing.
        &["SETUSER", "default", "resetpass", ">default-secret"][..],
    ] {
        let _: () = redis::cmd("ACL")
            .arg(acl)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    let open = |url: String| LogStore::open(&url, RETENTION).unwrap();
    let reader = open(format!("redis://reader:reader-secret@127.0.0.1:{port}/3"));
    let id = job("login");
    create(&reader, &id, "g").await;
    reader
        .append(&id, "g", None, &[stdout_line("one"), stdout_line("two")])
        .await
        .unwrap();
    let (_, page, _) = reader.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 2);

    let password_only = open(format!("redis://:default-secret@127.0.0.1:{port}/3"));
    let (_, page, _) = password_only
        .page(&id, Cursor::Latest, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.entries.len(), 2);

    // The job is in database 3 only: the reads above did select it.
    let db0 = open(format!("redis://reader:reader-secret@127.0.0.1:{port}"));
    assert!(db0.page(&id, Cursor::Latest, 10).await.unwrap().is_none());

    let wrong = open(format!("redis://reader:wrong@127.0.0.1:{port}/3"));
    let err = wrong.page(&id, Cursor::Latest, 10).await.unwrap_err();
    assert!(
        matches!(err, logstream_shared::store::StoreError::Redis(_)),
        "a refused login is a configuration error, not an outage: {err:?}"
    );
}

/// A page read on a pooled connection that died with its server (a restart) is tried
/// again on a new one, and a server that stays down is `Unavailable`.
#[tokio::test]
async fn page_reads_survive_a_restart_and_report_a_dead_server_as_unavailable() {
    let mut redis = RedisServer::start_persistent().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("page-restart");
    create(&store, &id, "g").await;
    store
        .append(&id, "g", None, &[stdout_line("kept")])
        .await
        .unwrap();
    assert!(store.page(&id, Cursor::Latest, 10).await.unwrap().is_some());
    redis.restart().unwrap();
    let (_, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 1);
    redis.stop();
    let err = store.page(&id, Cursor::Latest, 10).await.unwrap_err();
    assert!(
        matches!(err, logstream_shared::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn entries_the_caller_numbered_are_stored_as_sent_when_right_and_renumbered_when_not() {
    use logstream_core::ids::EntryId;
    use logstream_core::model::{EntryBody, LineStream, NewEntry, StageStatus, numbered_json};

    let (store, id) = job_of_100_bytes("numbered").await;
    let line = |text: &str| NewEntry {
        ts: 7,
        body: EntryBody::Line {
            stream: LineStream::Stdout,
            text: text.into(),
            ansi: None,
        },
    };
    let stage = NewEntry {
        ts: 8,
        body: EntryBody::Stage {
            name: "deploy".into(),
            status: StageStatus::Started,
        },
    };
    let append = |entries: Vec<NewEntry>, first_n: Option<u64>| {
        let store = store.clone();
        let id = id.clone();
        async move {
            let batch: Vec<ToAppend> = entries.iter().map(ToAppend::new).collect();
            append_g1(&store, &id, &batch, first_n).await
        }
    };
    // Right (1..3), wrong (10.. for 4..5), none (6), and right again (7, 8) with the
    // size limit's notice taking a number in the middle of the batch (line 8 is
    // dropped, the notice is 8, the stage after it 9 as guessed).
    assert_eq!(
        append(vec![line("a"), line("b"), line("c")], Some(1))
            .await
            .first_n,
        1
    );
    assert_eq!(
        append(vec![line("d"), line("e")], Some(10)).await.first_n,
        4
    );
    assert_eq!(append(vec![line("f")], None).await.first_n, 6);
    let last = append(
        vec![line("g"), line(&"h".repeat(100)), stage.clone()],
        Some(7),
    )
    .await;
    assert_eq!(
        (last.first_n, last.accepted, last.dropped, last.notice),
        (7, 2, 1, true)
    );

    let stored = store
        .entries_after(&id, EntryId { ms: 0, seq: 0 }, 100)
        .await
        .unwrap();
    let texts = ["a", "b", "c", "d", "e", "f", "g"];
    let mut want: Vec<String> = texts
        .iter()
        .zip(1..)
        .map(|(t, n)| numbered_json(&line(t).to_stored_json(), n))
        .collect();
    let got: Vec<&str> = stored.iter().map(|e| e.json.as_str()).collect();
    assert_eq!(got.len(), 9, "{got:#?}");
    assert!(
        got[7].starts_with(r#"{"n":8,"#) && got[7].contains("exceeded the limit"),
        "{}",
        got[7]
    );
    want.push(got[7].to_owned());
    want.push(numbered_json(&stage.to_stored_json(), 9));
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_batch_that_fills_the_size_limit_exactly_goes_in_whole_and_the_next_line_does_not() {
    use logstream_core::model::{EntryBody, LineStream, NewEntry};

    let (store, id) = job_of_100_bytes("exact-limit").await;
    let append = |texts: Vec<String>| {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let batch: Vec<ToAppend> = texts
                .into_iter()
                .map(|text| {
                    ToAppend::new(&NewEntry {
                        ts: 1,
                        body: EntryBody::Line {
                            stream: LineStream::Stdout,
                            text,
                            ansi: None,
                        },
                    })
                })
                .collect();
            let appended = append_g1(&store, &id, &batch, None).await;
            (appended.accepted, appended.dropped, appended.notice)
        }
    };
    // 60 + 40 bytes: the limit itself, taken whole (the script's path without a
    // per-line check); then one byte more is past it.
    assert_eq!(
        append(vec!["x".repeat(60), "y".repeat(40)]).await,
        (2, 0, false)
    );
    assert_eq!(append(vec!["z".into()]).await, (0, 1, true));
    let meta = store.job_meta(&id).await.unwrap().unwrap();
    assert_eq!((meta.bytes, meta.truncated), (100, true));
}

#[tokio::test]
async fn revoking_share_links_takes_their_websockets_out_and_a_connect_racing_it_is_refused() {
    let redis = shared().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("revoke");
    create(&store, &id, "g1").await;
    assert_eq!(store.share_generation(&id).await.unwrap(), None);
    let generation = store.issue_share(&id).await.unwrap();
    assert_eq!(store.share_generation(&id).await.unwrap(), Some(generation));
    assert_eq!(
        store
            .add_connection(&id, "link-1", Some(now_ms() + 60_000), Some(generation))
            .await
            .unwrap(),
        Followed::Yes
    );
    assert_eq!(
        store
            .add_connection(&id, "owner-1", None, None)
            .await
            .unwrap(),
        Followed::Yes
    );

    let (revoked, closed) = store.revoke_shares(&id).await.unwrap();
    assert_eq!(revoked, generation + 1);
    assert_eq!(closed, ["link-1"]);
    assert_eq!(store.connections(&id).await.unwrap(), ["owner-1"]);

    // A link checked before the revocation and registering after it stays out.
    assert_eq!(
        store
            .add_connection(&id, "link-2", None, Some(generation))
            .await
            .unwrap(),
        Followed::Revoked
    );
    // A link issued since is welcome, and the next revocation finds it.
    assert_eq!(
        store
            .add_connection(&id, "link-3", None, Some(revoked))
            .await
            .unwrap(),
        Followed::Yes
    );
    assert_eq!(store.revoke_shares(&id).await.unwrap().1, ["link-3"]);
    assert_eq!(store.connections(&id).await.unwrap(), ["owner-1"]);
}

#[tokio::test]
async fn a_lost_share_record_takes_its_links_along_instead_of_reviving_revoked_ones() {
    let redis = shared().unwrap();
    let store = LogStore::open(&redis.url(), RETENTION).unwrap();
    let id = job("lost-share");
    create(&store, &id, "g1").await;
    let first = store.issue_share(&id).await.unwrap();
    assert_eq!(
        store.issue_share(&id).await.unwrap(),
        first,
        "one generation"
    );
    let (revoked, _) = store.revoke_shares(&id).await.unwrap();
    assert_eq!(revoked, first + 1);

    // Evicted (or the cache flushed): no link verifies, the revoked ones included.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("job:{{{id}}}:share"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(store.share_generation(&id).await.unwrap(), None);
    assert_eq!(
        store
            .add_connection(&id, "link-old", None, Some(first))
            .await
            .unwrap(),
        Followed::Revoked
    );
    // A new record starts at a random generation, not at one links were issued under.
    let again = store.issue_share(&id).await.unwrap();
    assert!(again != first && again != revoked, "{again}");
    let (after_loss, _) = {
        let _: () = redis::cmd("DEL")
            .arg(format!("job:{{{id}}}:share"))
            .query_async(&mut c)
            .await
            .unwrap();
        store.revoke_shares(&id).await.unwrap()
    };
    assert!(
        after_loss != again,
        "a revocation without a record starts anew too"
    );
}
