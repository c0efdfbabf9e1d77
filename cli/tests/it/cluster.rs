//! `logstream dev` on a real Redis Cluster of its own (three masters, three replicas on
//! loopback): jobs on every master through ingest, history, SSE and the archive, and a
//! master killed under a writer and a viewer.

use std::time::{Duration, Instant};

use crate::support::*;
use logstream_testkit::redis_cluster::RedisCluster;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn stream_path(job: &str, query: &str) -> String {
    format!(
        "/jobs/{job}/logs/stream?access_token={}&{query}",
        viewer_token("alice", 600)
    )
}

/// One job id per master: ids whose hash tag lands on each of them, with the master's port.
fn job_per_master(cluster: &RedisCluster, name: &str) -> Vec<(String, u16)> {
    let masters = cluster.masters().unwrap();
    let mut found: Vec<(String, u16)> = Vec::new();
    for n in 0.. {
        let id = job_id(&format!("{name}{n}"));
        let slot = cluster.slot(&format!("job:{{{id}}}:logs")).unwrap();
        let master = cluster.master_of_slot(slot).unwrap().unwrap();
        if !found.iter().any(|(_, m)| *m == master) {
            found.push((id, master));
        }
        if found.len() == masters.len() {
            return found;
        }
    }
    unreachable!()
}

async fn create_named(env: &Env, id: &str) {
    let res = env
        .http
        .post(env.url("/jobs"))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"job_id": id, "owner": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

async fn cluster_env(pairs: &[(&str, &str)]) -> (Env, RedisCluster) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url();
    let mut all = vec![("REDIS_URL", url.as_str())];
    all.extend_from_slice(pairs);
    (env_with(&all).await, cluster)
}

#[tokio::test]
async fn jobs_on_every_master_work_through_ingest_history_sse_and_archive() {
    let (env, cluster) = cluster_env(&[]).await;
    let jobs = job_per_master(&cluster, "spread");
    assert_eq!(jobs.len(), 3);
    for (job, _) in &jobs {
        create_named(&env, job).await;
        let mut viewer = SseClient::open(&env, &stream_path(job, "from=start"), &[]).await;
        assert_eq!(viewer.status, StatusCode::OK);
        assert_eq!(env.set_status(job, "running").await.0, StatusCode::OK);
        env.post_lines(job, "line", 300).await;
        assert_eq!(env.set_status(job, "ready").await.0, StatusCode::OK);

        let mut live = Vec::new();
        loop {
            let frame = viewer.next_entry().await.expect("stream ended before done");
            match frame.event.as_deref() {
                Some("log") => live.push(frame.json()["text"].as_str().unwrap().to_owned()),
                Some("done") => break,
                _ => {}
            }
        }
        let expected: Vec<String> = (0..300).map(|i| format!("line {i}")).collect();
        assert_eq!(live, expected, "{job}: live, in order, once");

        let (code, page) = env
            .get_as("alice", &format!("/jobs/{job}/logs?limit=500"))
            .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(texts(&page["lines"]), expected, "{job}: history");
    }
    // The in-process archiver sweeps the one queue for jobs of every slot.
    let started = Instant::now();
    for (job, _) in &jobs {
        loop {
            let (_, meta) = env.get_as("alice", &format!("/jobs/{job}")).await;
            if meta["archived"] == true {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{job} never archived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let file = env
            .archive_dir
            .join("build-logs")
            .join(job)
            .join("build.jsonl");
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(
            text.lines().count(),
            302,
            "300 lines and two status entries"
        );
    }
}

/// Posts batch `seq` until it is acknowledged, retrying on 503s and dropped requests
/// as a pipeline client does; returns how many attempts it took.
async fn post_until_acknowledged(env: &Env, job: &str, seq: u64, lines: &[Value]) -> u32 {
    let mut attempts = 0;
    let started = Instant::now();
    loop {
        attempts += 1;
        let res = env
            .http
            .post(env.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(INGEST_KEY)
            .json(&json!({ "lines": lines, "seq": seq }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match res {
            Ok(res) if res.status() == StatusCode::OK => return attempts,
            Ok(res) => {
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                assert_eq!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "batch {seq}: {body}"
                );
            }
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "batch {seq} never went through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Follows `job` over SSE from the start, reconnecting with `Last-Event-ID` whenever a
/// stream ends without `done` or cannot be opened; returns every line text seen (in the
/// order seen) and how many connections it took.
async fn follow(env: &Env, job: &str) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut last_id: Option<String> = None;
    let mut connections = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(120), "never done");
        connections += 1;
        let mut client = match &last_id {
            None => SseClient::open(env, &stream_path(job, "from=start"), &[]).await,
            Some(id) => SseClient::open(env, &stream_path(job, ""), &[("last-event-id", id)]).await,
        };
        if client.status != StatusCode::OK {
            assert_eq!(client.status, StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        while let Some(frame) = client.next(Duration::from_secs(15)).await {
            match frame.event.as_deref() {
                Some("log") => {
                    seen.push(frame.json()["text"].as_str().unwrap().to_owned());
                    last_id = frame.id.clone();
                }
                Some("status") => last_id = frame.id.clone(),
                Some("done") => return (seen, connections),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn a_killed_master_fails_over_and_no_acknowledged_line_is_lost_or_doubled() {
    // The service's warnings and errors (a 500's cause) show in the test output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let (env, mut cluster) = cluster_env(&[("LOGSTREAM_HEARTBEAT_SECS", "1")]).await;
    let (job, master) = job_per_master(&cluster, "failover").remove(0);
    let slot = cluster.slot(&format!("job:{{{job}}}:logs")).unwrap();
    create_named(&env, &job).await;
    assert_eq!(env.set_status(&job, "running").await.0, StatusCode::OK);

    const BATCHES: u64 = 60;
    const PER_BATCH: u64 = 50;
    let env = std::sync::Arc::new(env);
    let viewer = {
        let (env, job) = (env.clone(), job.clone());
        tokio::spawn(async move { follow(&env, &job).await })
    };
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    let writer = {
        let (env, job) = (env.clone(), job.clone());
        tokio::spawn(async move {
            let mut retried = 0;
            for seq in 1..=BATCHES {
                let lines: Vec<Value> = (0..PER_BATCH)
                    .map(|i| json!({"text": format!("{}", (seq - 1) * PER_BATCH + i)}))
                    .collect();
                retried += post_until_acknowledged(&env, &job, seq, &lines).await - 1;
                let _ = acked_tx.send(seq);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            retried
        })
    };

    // A third of the way in, the job's master dies.
    acked_rx.wait_for(|n| *n >= BATCHES / 3).await.unwrap();
    let killed_at = Instant::now();
    let new_master = tokio::task::spawn_blocking(move || {
        cluster.kill(master).unwrap();
        let new = cluster.wait_for_failover(slot, master, Duration::from_secs(30));
        (cluster, new)
    });
    let (cluster, new_master) = new_master.await.unwrap();
    let new_master = new_master.unwrap();
    let failover = killed_at.elapsed();
    assert_ne!(new_master, master);
    // The promoted replica has the job (the replica had it all along).
    let mut promoted = redis::Client::open(format!("redis://127.0.0.1:{new_master}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let meta: Option<String> = redis::cmd("HGET")
        .arg(format!("job:{{{job}}}:meta"))
        .arg("owner")
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert_eq!(
        meta.as_deref(),
        Some("alice"),
        "the new master {new_master} has the job"
    );

    let retried = writer.await.unwrap();
    loop {
        let (code, _) = env.set_status(&job, "ready").await;
        if code == StatusCode::OK {
            break;
        }
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: Vec<String> = (0..BATCHES * PER_BATCH).map(|i| i.to_string()).collect();

    // Every acknowledged line is stored exactly once, in order.
    let mut stored = Vec::new();
    let mut cursor = "0-0".to_owned();
    loop {
        let (code, page) = env
            .get_as(
                "alice",
                &format!("/jobs/{job}/logs?limit=500&after={cursor}"),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        stored.extend(texts(&page["lines"]));
        match page["lines"].as_array().unwrap().last() {
            Some(last) if page["has_more"] == true => {
                cursor = last["id"].as_str().unwrap().to_owned();
            }
            _ => break,
        }
    }
    assert_eq!(stored.len(), expected.len(), "no line lost, none doubled");
    assert_eq!(stored, expected);

    // The viewer saw each line exactly once, in order, across the failover.
    let (seen, connections) = viewer.await.unwrap();
    assert_eq!(seen, expected, "the viewer saw every line once, in order");
    eprintln!(
        "failover: master {master} -> {new_master} in {failover:?}; \
         {retried} batch retries; viewer used {connections} connection(s)"
    );
    drop(cluster);
}
