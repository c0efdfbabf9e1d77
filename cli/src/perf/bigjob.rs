//! The big-job part of `logstream bench`: one job of a million lines (by default),
//! posted through ingest while segments are archived, then read back.
//!
//! It reports what the complete-logs design promises at that size, next to a small job
//! measured the same way:
//! - ingest lines/s for the whole job (5 000-line batches, one writer);
//! - entries left in Redis right after the last batch and once the archiver has caught
//!   up (`XLEN`), against `LOGSTREAM_MAXLEN` plus one segment, and Redis's memory;
//! - history: the newest page and the page at `n = 1` (500 entries), p50/p99, on the
//!   big job and on a 1 000-line job;
//! - the SSE replay of the whole job from the start, entries/s;
//! - the raw log of the whole job, MB/s (median of three downloads), and a search for a word no line holds (one
//!   request reads its whole budget of entries), entries read/s.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::json;

use super::bench::{Latency, summarize};

/// Downloads of the raw log, the median reported.
pub const RAW_RUNS: usize = 3;

/// What the big job showed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BigJob {
    pub lines: usize,
    pub ingest_lines_per_sec: f64,
    /// Entries in the job's stream right after the last batch was answered.
    pub redis_entries_at_end: u64,
    /// … and once every entry was archived.
    pub redis_entries_archived: u64,
    /// How long the archive took to catch up after the last batch.
    pub catch_up_secs: f64,
    /// `LOGSTREAM_MAXLEN` + `LOGSTREAM_SEGMENT_LINES` of the service measured.
    pub redis_bound: u64,
    /// Redis `used_memory` after the job was archived, and before it was posted.
    pub redis_used_mib: f64,
    pub redis_used_mib_before: f64,
    pub newest_page: Latency,
    pub first_page: Latency,
    pub small_newest_page: Latency,
    pub small_first_page: Latency,
    pub sse_replay_entries_per_sec: f64,
    /// The raw log's size, and its download rate: the median of [`RAW_RUNS`]
    /// downloads, and each one's (one download is half a second, which this VM's
    /// phases swing by 1.5x).
    pub raw_bytes: u64,
    pub raw_mb_per_sec: f64,
    pub raw_mb_per_sec_runs: Vec<f64>,
    /// A search that matches nothing: how long one request took, and the entries it
    /// read per second.
    pub search_ms: f64,
    pub search_entries_per_sec: f64,
}

/// Runs it against the service at `url` (with its Redis at `redis_url`).
pub async fn run(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    viewer: &str,
    redis_url: &str,
    lines: usize,
    redis_bound: u64,
) -> anyhow::Result<BigJob> {
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let used_before = used_memory_mib(&mut redis).await?;

    let big = job(http, url, key).await?;
    let batch = 5_000;
    let body = serde_json::to_vec(&json!({ "lines": super::bench::sample_lines(batch) }))?;
    let started = Instant::now();
    let mut posted = 0;
    while posted < lines {
        super::bench::post(http, url, &big.0, &big.1, &body).await?;
        posted += batch;
    }
    let ingest_lines_per_sec = posted as f64 / started.elapsed().as_secs_f64();
    let redis_entries_at_end = xlen(&mut redis, &big.0).await?;

    // Every entry (the running status and the lines) archived: the job's meta says so.
    let caught_up = Instant::now();
    let entries = posted as u64 + 1;
    loop {
        let archived: Option<u64> = redis::cmd("HGET")
            .arg(format!("job:{{{}}}:meta", big.0))
            .arg("arch_n")
            .query_async(&mut redis)
            .await?;
        if archived == Some(entries) {
            break;
        }
        if caught_up.elapsed() > Duration::from_secs(300) {
            bail!("the archive did not catch up within 5 minutes ({archived:?} of {entries})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up_secs = caught_up.elapsed().as_secs_f64();
    let redis_entries_archived = xlen(&mut redis, &big.0).await?;
    let redis_used_mib = used_memory_mib(&mut redis).await?;

    let small = job(http, url, key).await?;
    let body = serde_json::to_vec(&json!({ "lines": super::bench::sample_lines(1_000) }))?;
    super::bench::post(http, url, &small.0, &small.1, &body).await?;

    let newest = |job: &str| format!("{url}/jobs/{job}/logs?limit=500");
    let first = |job: &str| format!("{url}/jobs/{job}/logs?limit=500&at=1");
    let newest_page = pages(http, &newest(&big.0), viewer).await?;
    let first_page = pages(http, &first(&big.0), viewer).await?;
    let small_newest_page = pages(http, &newest(&small.0), viewer).await?;
    let small_first_page = pages(http, &first(&small.0), viewer).await?;

    let sse_replay_entries_per_sec = replay(http, url, &big.0, viewer, entries).await?;
    let mut raw_bytes = 0;
    let mut raw_mb_per_sec_runs = Vec::with_capacity(RAW_RUNS);
    for _ in 0..RAW_RUNS {
        let (bytes, rate) = raw(http, url, &big.0, viewer).await?;
        raw_bytes = bytes;
        raw_mb_per_sec_runs.push(rate);
    }
    let mut sorted = raw_mb_per_sec_runs.clone();
    sorted.sort_by(f64::total_cmp);
    let raw_mb_per_sec = sorted[sorted.len() / 2];
    let started = Instant::now();
    let found: serde_json::Value = http
        .get(format!(
            "{url}/jobs/{}/logs?q=no-line-says-this&limit=10",
            big.0
        ))
        .bearer_auth(viewer)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let search = started.elapsed();
    if found["lines"].as_array().is_none_or(|l| !l.is_empty()) {
        bail!("the search found something: {found}");
    }
    // One request reads its budget, or the whole job when that is smaller.
    let read = entries.min(logstream_history::SEARCH_BUDGET as u64);
    Ok(BigJob {
        lines: posted,
        ingest_lines_per_sec,
        redis_entries_at_end,
        redis_entries_archived,
        catch_up_secs,
        redis_bound,
        redis_used_mib,
        redis_used_mib_before: used_before,
        newest_page,
        first_page,
        small_newest_page,
        small_first_page,
        sse_replay_entries_per_sec,
        raw_bytes,
        raw_mb_per_sec,
        raw_mb_per_sec_runs,
        search_ms: search.as_secs_f64() * 1000.0,
        search_entries_per_sec: read as f64 / search.as_secs_f64(),
    })
}

/// The raw log of `job`: its size, and MB/s (10^6 bytes) from request to last byte.
async fn raw(
    http: &reqwest::Client,
    url: &str,
    job: &str,
    viewer: &str,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let res = http
        .get(format!("{url}/jobs/{job}/logs/raw"))
        .bearer_auth(viewer)
        .send()
        .await?
        .error_for_status()?;
    let mut body = res.bytes_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok((bytes, bytes as f64 / 1e6 / started.elapsed().as_secs_f64()))
}

async fn job(http: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<(String, String)> {
    let job = super::bench::create_job(http, url, key).await?;
    let res = http
        .put(format!("{url}/jobs/{}/status", job.0))
        .bearer_auth(key)
        .json(&json!({"status": "running"}))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("status answered {}", res.status());
    }
    Ok(job)
}

/// 200 requests of `page`, one at a time.
async fn pages(http: &reqwest::Client, page: &str, viewer: &str) -> anyhow::Result<Latency> {
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let body = http
            .get(page)
            .bearer_auth(viewer)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        times.push(t.elapsed());
        if body.len() < 1_000 {
            bail!("a page of {page} came back nearly empty");
        }
    }
    Ok(summarize(times))
}

/// Entries/s of the SSE replay of `job` from its start, until entry `entries`.
async fn replay(
    http: &reqwest::Client,
    url: &str,
    job: &str,
    viewer: &str,
    entries: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let res = http
        .get(format!(
            "{url}/jobs/{job}/logs/stream?from=start&access_token={viewer}"
        ))
        .send()
        .await?
        .error_for_status()?;
    let mut body = res.bytes_stream();
    let mut seen = 0u64;
    // Frames are counted by their `id:` lines. A chunk may end inside one, so the last
    // three bytes of each are looked at again with the next (too few to hold a whole
    // `\nid:`, so none is counted twice).
    let mut window: Vec<u8> = Vec::new();
    while seen < entries {
        let chunk = body
            .next()
            .await
            .context("the stream ended before the replay did")??;
        window.extend_from_slice(&chunk);
        seen += window.windows(4).filter(|w| w == b"\nid:").count() as u64;
        window.drain(..window.len().saturating_sub(3));
    }
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

async fn xlen(redis: &mut redis::aio::MultiplexedConnection, job: &str) -> anyhow::Result<u64> {
    Ok(redis::cmd("XLEN")
        .arg(format!("job:{{{job}}}:logs"))
        .query_async(redis)
        .await?)
}

async fn used_memory_mib(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await?;
    let bytes: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .context("INFO memory without used_memory")?
        .trim()
        .parse()?;
    Ok(bytes / (1024.0 * 1024.0))
}
