//! `LogStore` against a real, private Redis Cluster (three masters, three replicas):
//! scripts on nodes that never saw them, jobs on every master, keys outside a job's
//! slot, and blocking reads across a resharding.

use std::collections::BTreeSet;
use std::time::Duration;

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, now_ms};
use logstream_shared::store::{
    AppendOutcome, Appended, Cursor, Followed, LogStore, Retention, StatusOutcome,
};
use logstream_testkit::fixtures::{seed_job, stdout_line};
use logstream_testkit::redis_cluster::{RedisCluster, shared};

const RETENTION: Retention = Retention {
    ttl_secs: 600,
    maxlen: 50_000,
    ..Retention::defaults(false)
};

async fn create(store: &LogStore, id: &JobId) {
    seed_job(store, id, "alice").await;
}

/// One job id per master of `cluster`: ids whose hash tags land on each of them.
fn job_per_master(cluster: &RedisCluster, name: &str) -> Vec<(JobId, u16)> {
    let masters = cluster.masters().unwrap();
    let mut found: Vec<(JobId, u16)> = Vec::new();
    for n in 0.. {
        let id = JobId::parse(&format!("{name}-{}-{}-{n}", std::process::id(), now_ms())).unwrap();
        let slot = cluster.slot(&format!("job:{{{id}}}:logs")).unwrap();
        let master = cluster.master_of_slot(slot).unwrap().unwrap();
        if !found.iter().any(|(_, m)| *m == master) {
            found.push((id, master));
        }
        if found.len() == masters.len() {
            break;
        }
    }
    found
}

fn node(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[tokio::test]
async fn scripts_run_on_nodes_that_never_saw_them_and_jobs_work_on_every_master() {
    let cluster = shared().unwrap();
    let store = LogStore::open(&cluster.url(), RETENTION).unwrap();
    assert!(store.is_cluster());
    // No node has any script cached: every first call meets NOSCRIPT.
    for port in cluster.live_ports() {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut node(port))
            .unwrap();
    }
    let jobs = job_per_master(cluster, "every-master");
    assert_eq!(jobs.len(), 3, "one job on each of the three masters");
    for (id, _) in &jobs {
        create(&store, id).await;
        let lines: Vec<String> = (0..10).map(|i| stdout_line(&format!("{id} {i}"))).collect();
        let AppendOutcome::Appended(Appended {
            ids: Some((first, last)),
            ..
        }) = store.append(id, "g", Some(1), &lines).await.unwrap()
        else {
            panic!("not appended");
        };
        assert!(first < last);
        assert_eq!(
            store.append(id, "g", Some(1), &lines).await.unwrap(),
            AppendOutcome::Duplicate
        );
        let (meta, page, _) = store.page(id, Cursor::Latest, 100).await.unwrap().unwrap();
        assert_eq!(meta.owner, "alice");
        assert_eq!(page.entries.len(), 10);
        let (_, head) = store.job_head(id).await.unwrap().unwrap();
        assert_eq!(head, Some(last));
        assert!(matches!(
            store
                .set_status(id, JobStatus::Running, now_ms(), None)
                .await
                .unwrap(),
            StatusOutcome::Changed { .. }
        ));
        assert!(matches!(
            store
                .set_status(id, JobStatus::Ready, now_ms(), None)
                .await
                .unwrap(),
            StatusOutcome::Changed { .. }
        ));
        assert!(store.is_queued_for_archive(id.as_str()).await.unwrap());
        assert!(store.mark_archived(id).await.unwrap());
        store.unqueue_archive(id.as_str()).await.unwrap();
    }
    // Each master now has the scripts it ran cached (by the EVAL fallback).
    for (_, master) in &jobs {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut node(*master))
            .unwrap();
        let cached: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(cached >= 4, "{master}: {cached} scripts cached");
    }
}

#[tokio::test]
async fn a_retried_terminal_status_queues_the_job_again_unless_archived() {
    let cluster = shared().unwrap();
    let store = LogStore::open(&cluster.url(), RETENTION).unwrap();
    let (id, _) = job_per_master(cluster, "requeue").remove(0);
    create(&store, &id).await;
    store
        .set_status(&id, JobStatus::Running, now_ms(), None)
        .await
        .unwrap();
    store
        .set_status(&id, JobStatus::Failed, now_ms(), None)
        .await
        .unwrap();
    let finished = store
        .job_meta(&id)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();
    // The queueing step was lost (say the request failed between the two steps).
    store.unqueue_archive(id.as_str()).await.unwrap();
    assert_eq!(
        store
            .set_status(&id, JobStatus::Failed, now_ms() + 5_000, None)
            .await
            .unwrap(),
        StatusOutcome::Same
    );
    let queued = store.archive_queue(10_000).await.unwrap();
    let score = queued
        .iter()
        .find(|(m, _)| m == id.as_str())
        .map(|(_, s)| *s);
    assert_eq!(score, Some(finished), "queued again, at its finish time");
    // Once archived, a late retry does not queue it again.
    store.mark_archived(&id).await.unwrap();
    store.unqueue_archive(id.as_str()).await.unwrap();
    store
        .set_status(&id, JobStatus::Failed, now_ms(), None)
        .await
        .unwrap();
    assert!(!store.is_queued_for_archive(id.as_str()).await.unwrap());
}

#[tokio::test]
async fn websocket_connection_keys_outside_the_job_slot_work() {
    let cluster = shared().unwrap();
    let store = LogStore::open(&cluster.url(), RETENTION).unwrap();
    let (id, _) = job_per_master(cluster, "ws").remove(0);
    create(&store, &id).await;
    // Connection ids whose own keys spread over several slots.
    let conns: Vec<String> = (0..8).map(|i| format!("conn{i}=")).collect();
    let slots: BTreeSet<u16> = conns
        .iter()
        .map(|c| cluster.slot(&format!("logstream:ws-conn:{c}")).unwrap())
        .collect();
    assert!(slots.len() > 1);
    for c in &conns {
        assert_eq!(
            store.add_connection(&id, c, None, None).await.unwrap(),
            Followed::Yes
        );
    }
    let mut following = store.connections(&id).await.unwrap();
    following.sort();
    assert_eq!(following, conns);
    // All registered just now: inside the grace, nothing is dropped; with none, all are.
    assert_eq!(
        store
            .drop_gone_connections(&id, &conns[..4], Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .drop_gone_connections(&id, &conns[..4], Duration::ZERO)
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store.remove_connection(&conns[4]).await.unwrap(),
        Some(id.clone())
    );
    assert_eq!(store.connections(&id).await.unwrap().len(), 3);
}

#[tokio::test]
async fn reads_writes_and_a_blocking_reader_follow_a_resharded_slot() {
    // A cluster of its own: its slots are moved around.
    let cluster = RedisCluster::start().unwrap();
    let store = LogStore::open(&cluster.url(), RETENTION).unwrap();
    let jobs = job_per_master(&cluster, "reshard");
    let (id, from) = jobs[0].clone();
    let to = jobs[1].1;
    create(&store, &id).await;
    store
        .append(&id, "g", None, &[stdout_line("before")])
        .await
        .unwrap();
    let mut reader = store
        .blocking_reader(Duration::from_millis(500))
        .await
        .unwrap();
    let zero = EntryId { ms: 0, seq: 0 };
    assert_eq!(reader.read(&id, zero, 10).await.unwrap().len(), 1);
    let slot = cluster.slot(&format!("job:{{{id}}}:logs")).unwrap();
    // History pages route themselves (`resp.rs`): this one learns the slot's owner
    // (unless the seed it asked owns the slot already).
    let (_, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 1);

    // Mid-migration: the keys are on the new node and the old one answers ASK for
    // them; a script over the job's keys (one of which does not exist) is refused with
    // TRYAGAIN until the move is done, and the client keeps retrying meanwhile.
    cluster.move_slot(slot, to, false).unwrap();
    assert_eq!(store.job_meta(&id).await.unwrap().unwrap().owner, "alice");
    // The owner it learnt answers ASK: the page is read on the new node after ASKING.
    let (meta, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!((meta.owner.as_str(), page.entries.len()), ("alice", 1));
    let writer = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.append(&id, "g", None, &[stdout_line("during")]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.move_slot(slot, to, true).unwrap();
    assert!(matches!(
        writer.await.unwrap().unwrap(),
        AppendOutcome::Appended(_)
    ));
    let (_, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 2);

    // Done: the slot belongs to the new node, the old one answers MOVED.
    assert_eq!(cluster.master_of_slot(slot).unwrap(), Some(to));
    assert_ne!(from, to);
    let waiting = tokio::spawn(async move {
        let after = reader.read(&id, zero, 10).await.unwrap();
        (reader, after)
    });
    let (id, _) = jobs[0].clone();
    store
        .append(&id, "g", None, &[stdout_line("moved")])
        .await
        .unwrap();
    let (_, entries) = waiting.await.unwrap();
    assert_eq!(entries.len(), 3, "the reader found the job on its new node");
    let (_, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 3);
}

#[tokio::test]
async fn a_page_read_waits_while_a_jobs_keys_are_split_between_two_nodes() {
    // A cluster of its own: a slot is moved.
    let cluster = RedisCluster::start().unwrap();
    let store = LogStore::open(&cluster.url(), RETENTION).unwrap();
    let jobs = job_per_master(&cluster, "split");
    let (id, _) = jobs[0].clone();
    let to = jobs[1].1;
    create(&store, &id).await;
    store
        .append(&id, "g", None, &[stdout_line("one"), stdout_line("two")])
        .await
        .unwrap();
    let (logs, meta, idx) = (
        format!("job:{{{id}}}:logs"),
        format!("job:{{{id}}}:meta"),
        format!("job:{{{id}}}:idx"),
    );
    let slot = cluster.slot(&logs).unwrap();
    let from = cluster.start_slot_move(slot, to).unwrap();

    // The log has moved and the meta hash not yet (MIGRATE moves a slot's keys a batch
    // at a time): the old node answers HMGET and ASKs for the ranges, the new one has
    // no meta hash. Neither alone can answer; the read waits for the migration.
    cluster.migrate_keys(from, to, &[logs]).unwrap();
    let reader = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.page(&id, Cursor::Latest, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reader.is_finished(), "no answer while the job is split");
    // The rest of the job's keys (the meta hash and the entry-number index) follow.
    cluster.migrate_keys(from, to, &[meta, idx]).unwrap();
    let (meta, page, _) = reader.await.unwrap().unwrap().expect("the job exists");
    assert_eq!((meta.owner.as_str(), page.entries.len()), ("alice", 2));
    cluster.finish_slot_move(slot, from, to).unwrap();
    let (_, page, _) = store.page(&id, Cursor::Latest, 10).await.unwrap().unwrap();
    assert_eq!(page.entries.len(), 2);
}

/// What `WAIT 1` (block until the replica has the write) would add to every batch:
/// a 100-line append script on a master alone, then followed by `WAIT 1 1000` in the
/// same pipeline, with 1 and 8 concurrent writers on one multiplexed connection (as
/// the store shares one). Run with
/// `cargo test -p logstream-shared --release --test it -- cluster_store:: --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement"]
async fn measure_what_wait_for_the_replica_costs() {
    let cluster = shared().unwrap();
    let (id, master) = job_per_master(cluster, "wait-cost").remove(0);
    let key = format!("job:{{{id}}}:logs");
    let conn = redis::Client::open(format!("redis://127.0.0.1:{master}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    const CODE: &str = "for i = 1, #ARGV do \
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', 50000, '*', 'e', ARGV[i]) end return 1";
    let lines: Vec<String> = (0..100)
        .map(|i| {
            stdout_line(&format!(
                "{i:>4} added 120 packages, and audited 121 packages in 3s"
            ))
        })
        .collect();
    for (wait, writers) in [(false, 1), (true, 1), (false, 8), (true, 8)] {
        const BATCHES: usize = 2000;
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (mut conn, key, lines) = (conn.clone(), key.clone(), lines.clone());
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    for _ in 0..BATCHES / writers {
                        let t = std::time::Instant::now();
                        let mut pipe = redis::pipe();
                        pipe.cmd("EVAL")
                            .arg(CODE)
                            .arg(1)
                            .arg(&key)
                            .arg(&lines)
                            .ignore();
                        if wait {
                            pipe.cmd("WAIT").arg(1).arg(1000);
                            let (acked,): (i64,) = pipe.query_async(&mut conn).await.unwrap();
                            assert_eq!(acked, 1);
                        } else {
                            pipe.query_async::<()>(&mut conn).await.unwrap();
                        }
                        took.push(t.elapsed());
                    }
                    took
                })
            })
            .collect();
        let mut took = Vec::new();
        for t in tasks {
            took.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        took.sort();
        let pct = |p: f64| took[((took.len() - 1) as f64 * p) as usize];
        eprintln!(
            "WAIT {}: {writers} writer(s): {:.0} batches/s ({:.0} lines/s), p50 {:?}, p99 {:?}",
            if wait { "on " } else { "off" },
            took.len() as f64 / elapsed.as_secs_f64(),
            took.len() as f64 * 100.0 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
        );
    }
}

#[tokio::test]
async fn a_store_opened_while_the_cluster_is_down_answers_unavailable_then_recovers() {
    // A cluster of its own: every node of it is stopped.
    let mut cluster = RedisCluster::start().unwrap();
    let store = LogStore::open(&cluster.url(), RETENTION).unwrap();
    let ports = cluster.live_ports();
    for &port in &ports {
        cluster.kill(port).unwrap();
    }
    let id = JobId::parse("down").unwrap();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let err = store.job_meta(&id).await.unwrap_err();
        assert!(
            matches!(err, logstream_shared::store::StoreError::Unavailable(_)),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "fast, not a hang"
        );
    }
    // The nodes come back with their cluster configuration (and no data).
    for &port in &ports {
        cluster.restart(port).unwrap();
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster
            .wait_healthy(Duration::from_secs(30))
            .map(|()| cluster)
    })
    .await
    .unwrap()
    .unwrap();
    // The failed first connect was not remembered: this request connects.
    let id = job_per_master(&cluster, "back").remove(0).0;
    create(&store, &id).await;
    assert_eq!(store.job_meta(&id).await.unwrap().unwrap().owner, "alice");
}
