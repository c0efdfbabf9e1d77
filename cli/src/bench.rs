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
    /// SSE viewers following one job for the delivery-latency run (0 skips it).
    pub viewers: usize,
    /// Lines posted (one per request) during the delivery-latency run.
    pub deliveries: usize,
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
    /// Ingest-to-viewer delivery: from just before a line is POSTed to its SSE frame
    /// parsed by every viewer.
    pub delivery: Option<Delivery>,
}

/// Delivery latency over every (line, viewer) pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    pub viewers: usize,
    pub lines: usize,
    pub samples: usize,
    pub latency: Latency,
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

    let delivery = match (&local, opts.viewers) {
        (Some(server), n) if n > 0 => {
            let viewer = server.viewer_token.clone().context("no viewer token")?;
            Some(delivery(&url, &key, &viewer, n, opts.deliveries).await?)
        }
        _ => None,
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
        delivery,
    })
}

/// Opens `viewers` SSE streams on a fresh job, posts `lines` one-line batches one after
/// another, and times each line from just before its POST to its frame at each viewer.
async fn delivery(
    url: &str,
    key: &str,
    viewer: &str,
    viewers: usize,
    lines: usize,
) -> anyhow::Result<Delivery> {
    use futures_util::StreamExt;

    let http = reqwest::Client::new();
    let job = format!("bench-live-{}", logstream_shared::auth::random_hex(6));
    http.post(format!("{url}/jobs"))
        .bearer_auth(key)
        .json(&json!({"job_id": job, "owner": dev::DEV_USER}))
        .send()
        .await?
        .error_for_status()?;

    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(viewers);
    let mut tasks = Vec::with_capacity(viewers);
    for _ in 0..viewers {
        // One client per viewer: separate connections, as separate browsers would have.
        let client = reqwest::Client::new();
        let stream_url = format!("{url}/jobs/{job}/logs/stream?access_token={viewer}");
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let res = client.get(stream_url).send().await?.error_for_status()?;
            let mut body = res.bytes_stream();
            let mut buf = String::new();
            let mut got = Vec::with_capacity(lines);
            let mut announced = false;
            while let Some(chunk) = body.next().await {
                buf.push_str(std::str::from_utf8(&chunk?)?);
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    if !announced {
                        // The retry preamble: this viewer is connected and following.
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                    if frame.contains("event: done") {
                        return anyhow::Ok(got);
                    }
                    if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: "))
                        && frame.contains("event: log")
                    {
                        let now = epoch.elapsed();
                        let entry: Value = serde_json::from_str(data)?;
                        let sent: u64 = entry["text"].as_str().unwrap_or("0").parse()?;
                        got.push(now.saturating_sub(Duration::from_nanos(sent)));
                    }
                }
            }
            anyhow::Ok(got)
        }));
    }
    drop(ready_tx);
    for _ in 0..viewers {
        ready_rx
            .recv()
            .await
            .context("a viewer failed to connect")?;
    }

    let status = |s: &str| json!({ "status": s });
    let put = |s: serde_json::Value| {
        http.put(format!("{url}/jobs/{job}/status"))
            .bearer_auth(key)
            .json(&s)
            .send()
    };
    put(status("running")).await?.error_for_status()?;
    for _ in 0..lines {
        let sent = epoch.elapsed().as_nanos() as u64;
        http.post(format!("{url}/jobs/{job}/logs"))
            .bearer_auth(key)
            .json(&json!({"lines": [{"text": sent.to_string()}]}))
            .send()
            .await?
            .error_for_status()?;
        // Spaced out, so each line is a separate delivery rather than a batch.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    put(status("ready")).await?.error_for_status()?;

    let mut all = Vec::with_capacity(viewers * lines);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(Delivery {
        viewers,
        lines,
        samples: all.len(),
        latency: summarize(all),
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
        let body = req.send().await?.error_for_status()?.bytes().await?;
        times.push(t.elapsed());
        // Only the cursor is needed: skip the entries rather than building values for
        // them, so the client's parsing weighs less in a run sharing the machine.
        let page: PageCursor = serde_json::from_slice(&body)?;
        // Walk back through the log, starting over at the newest page when it ends.
        before = page.next_before;
    }
    Ok((pages as f64 / started.elapsed().as_secs_f64(), times))
}

#[derive(serde::Deserialize)]
struct PageCursor {
    next_before: Option<String>,
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
    if let Some(d) = &r.delivery {
        out.push_str(&format!(
            "delivery ingest->viewer, {:>4} viewers               p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} samples)\n",
            d.viewers, d.latency.p50_ms, d.latency.p99_ms, d.latency.max_ms, d.samples
        ));
    }
    match r.redis_xadd_per_sec {
        Some(x) => out.push_str(&format!(
            "redis    XADD ceiling (redis-benchmark -P 1000) {x:>10.0} XADD/s  -> ingest at {:.0}% of it\n",
            100.0 * r.ingest_lines_per_sec / x
        )),
        None => out.push_str("redis    XADD ceiling: redis-benchmark not available\n"),
    }
    out
}
