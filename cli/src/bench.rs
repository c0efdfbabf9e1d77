//! `logstream bench`: measures the write and read paths over real HTTP.
//!
//! Without `--url` it starts `logstream dev` in this process on a private
//! `redis-server`, so one command gives comparable figures on any machine (build
//! with `--release`). It reports ingest lines/s and request latency for a batch size
//! and concurrency, history pages/s for 500-entry pages, and, when `redis-benchmark`
//! is installed, the XADD ceiling of the same Redis for comparison.
//!
//! Load and service share the machine, so on a 2-core box the figures are a floor.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::dev;
use logstream_shared::config::Config;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A running service; `None` starts one in-process.
    pub url: Option<String>,
    /// Ingest key of that service.
    pub ingest_key: Option<String>,
    /// Lines per ingest request.
    pub batch: usize,
    /// Ingest requests in all.
    pub requests: usize,
    /// Ingest requests in flight at once.
    pub concurrency: usize,
    /// History page requests in all.
    pub pages: usize,
}

/// Latency summary of one kind of request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What `bench` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub batch: usize,
    pub concurrency: usize,
    pub ingest_requests: usize,
    pub ingest_lines_per_sec: f64,
    pub ingest_latency: Latency,
    pub history_pages_per_sec: f64,
    pub history_latency: Latency,
    /// `redis-benchmark -P 1000` XADD/s against the same Redis, when available.
    pub redis_xadd_per_sec: Option<f64>,
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.batch == 0 || opts.requests == 0 || opts.concurrency == 0 || opts.pages == 0 {
        bail!("--batch, --requests, --concurrency and --pages must be above 0");
    }
    let mut local = None;
    let (url, key, redis_url) = match &opts.url {
        Some(url) => {
            let key = opts
                .ingest_key
                .clone()
                .context("--url needs --ingest-key (or LOGSTREAM_INGEST_KEY)")?;
            (url.trim_end_matches('/').to_owned(), key, None)
        }
        None => {
            let config = Config::from_lookup(|_| None)?;
            let server = dev::start(config, "127.0.0.1:0").await?;
            let out = (
                server.url(),
                server.ingest_key.clone(),
                Some(server.redis_url.clone()),
            );
            local = Some(server);
            out
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency * 2)
        .build()?;

    let job = format!("bench-{}", logstream_shared::auth::random_hex(6));
    let created: Value = http
        .post(format!("{url}/jobs"))
        .bearer_auth(&key)
        .json(&json!({"job_id": job, "owner": dev::DEV_USER}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = created["ingest_token"]
        .as_str()
        .context("no ingest token")?
        .to_owned();

    // Realistic lines: npm/vite output of ~60-100 bytes, a few with colour codes.
    let lines: Vec<Value> = (0..opts.batch)
        .map(|i| {
            let text = match i % 4 {
                0 => format!("npm http fetch GET 200 https://registry.npmjs.org/package-{i} 42ms (cache miss)"),
                1 => format!("\u{1b}[32m✓\u{1b}[39m src/components/Widget{i}.tsx transformed in 12ms"),
                2 => format!("added {i} packages, and audited {} packages in 3s", i * 2),
                _ => format!("[webpack] asset main.{i:08x}.js 1.2 MiB [emitted] [immutable] (name: main)"),
            };
            json!({"stream": if i % 10 == 0 { "stderr" } else { "stdout" }, "text": text})
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "lines": lines }))?;

    // Warm-up: connections, script cache, job cache.
    for _ in 0..3 {
        post(&http, &url, &job, &token, &body).await?;
    }

    let started = Instant::now();
    let per_worker = opts.requests.div_ceil(opts.concurrency);
    let workers = (0..opts.concurrency).map(|_| {
        let (http, url, job, token, body) = (&http, &url, &job, &token, &body);
        async move {
            let mut times = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                post(http, url, job, token, body).await?;
                times.push(t.elapsed());
            }
            anyhow::Ok(times)
        }
    });
    let mut ingest_times = Vec::new();
    for times in futures_util::future::join_all(workers).await {
        ingest_times.extend(times?);
    }
    let ingest_wall = started.elapsed();
    let sent = ingest_times.len();

    let viewer = local.as_ref().and_then(|s| s.viewer_token.clone());
    let (pages_per_sec, page_times) = match viewer {
        Some(viewer) => history(&http, &url, &job, &viewer, opts.pages).await?,
        None => (0.0, Vec::new()),
    };

    let redis_xadd_per_sec = redis_url.as_deref().and_then(redis_ceiling);
    drop(local);
    Ok(BenchReport {
        batch: opts.batch,
        concurrency: opts.concurrency,
        ingest_requests: sent,
        ingest_lines_per_sec: (sent * opts.batch) as f64 / ingest_wall.as_secs_f64(),
        ingest_latency: summarize(ingest_times),
        history_pages_per_sec: pages_per_sec,
        history_latency: summarize(page_times),
        redis_xadd_per_sec,
    })
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    job: &str,
    token: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let res = http
        .post(format!("{url}/jobs/{job}/logs"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    if !res.status().is_success() {
        bail!(
            "ingest answered {}: {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn history(
    http: &reqwest::Client,
    url: &str,
    job: &str,
    viewer: &str,
    pages: usize,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let mut times = Vec::with_capacity(pages);
    let started = Instant::now();
    let mut before: Option<String> = None;
    for _ in 0..pages {
        let page_url = match &before {
            Some(b) => format!("{url}/jobs/{job}/logs?limit=500&before={b}"),
            None => format!("{url}/jobs/{job}/logs?limit=500"),
        };
        let req = http.get(page_url).bearer_auth(viewer);
        let t = Instant::now();
        let page: Value = req.send().await?.error_for_status()?.json().await?;
        times.push(t.elapsed());
        // Walk back through the log, starting over at the newest page when it ends.
        before = page["next_before"].as_str().map(str::to_owned);
    }
    Ok((pages as f64 / started.elapsed().as_secs_f64(), times))
}

/// XADD/s of `redis-benchmark` with 1000-command pipelines, or `None` without it.
fn redis_ceiling(redis_url: &str) -> Option<f64> {
    let port = redis_url.rsplit(':').next()?.trim_end_matches('/');
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-P",
            "1000",
            "-n",
            "500000",
            "-q",
            "--csv",
        ])
        .args([
            "XADD",
            "bench:ceiling",
            "MAXLEN",
            "~",
            "50000",
            "*",
            "e",
            &"x".repeat(120),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",... ; the last line holds the figures.
    let line = text.lines().last()?;
    line.split(',').nth(1)?.trim_matches('"').parse().ok()
}

fn summarize(mut times: Vec<Duration>) -> Latency {
    if times.is_empty() {
        return Latency {
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
        };
    }
    times.sort();
    let at =
        |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    Latency {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// The report as a table.
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "ingest   {:>6} lines/batch  x{:<3} concurrent  {:>10.0} lines/s   p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests)\n",
        r.batch, r.concurrency, r.ingest_lines_per_sec, r.ingest_latency.p50_ms, r.ingest_latency.p99_ms, r.ingest_requests
    ));
    out.push_str(&format!(
        "history  500-entry pages                 {:>10.0} pages/s   p50 {:>7.2} ms  p99 {:>7.2} ms\n",
        r.history_pages_per_sec, r.history_latency.p50_ms, r.history_latency.p99_ms
    ));
    match r.redis_xadd_per_sec {
        Some(x) => out.push_str(&format!(
            "redis    XADD ceiling (redis-benchmark -P 1000) {x:>10.0} XADD/s  -> ingest at {:.0}% of it\n",
            100.0 * r.ingest_lines_per_sec / x
        )),
        None => out.push_str("redis    XADD ceiling: redis-benchmark not available\n"),
    }
    out
}
