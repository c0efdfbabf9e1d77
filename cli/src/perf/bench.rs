//! `logstream bench`: measures the write, read and live paths over real HTTP, next to
//! the limit of the Redis underneath, in one run.
//!
//! Without `--url` it starts `logstream dev` in this process on a private
//! `redis-server`, so one command gives comparable figures on any machine (build with
//! `--release`). One run reports:
//!
//! - the physical limit: `redis-benchmark` XADD with 1000-command pipelines against
//!   the same Redis (when `redis-benchmark` is installed);
//! - ingest lines/s and request p50/p99 for each batch size and concurrency, with the
//!   ratio to that limit;
//! - the same ingest runs again, each right after its baseline, with WebSocket clients
//!   and SSE readers on the job that read their first frames and then stop reading
//!   while keeping their sockets open ([`StalledRun`]): p50/p99 next to the baseline's
//!   (in-process service only: its `/ws` is on the same port);
//! - history pages/s and p50/p99 for 500-entry pages, at each concurrency;
//! - ingest-to-viewer delivery latency p50/p99/max for each number of SSE viewers of
//!   one job;
//! - cold start (exec to first answer) and peak RSS of each function binary, when the
//!   release binaries are built next to this one ([`crate::perf::coldstart`]).
//!
//! Load generator, service and Redis share the machine, so on a 2-core box every figure
//! is a floor.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Target;
use super::bigjob::{self, BigJob};
use super::coldstart::{self, ColdStart};
use crate::dev::{self, DevServer};
use logstream_core::ids::JobId;
use logstream_shared::config::Config;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A running service; `None` starts one in-process.
    pub url: Option<String>,
    /// Ingest key of that service.
    pub ingest_key: Option<String>,
    /// A viewer JWT for that service's `dev` user (history and delivery need one; the
    /// in-process service makes its own).
    pub viewer_token: Option<String>,
    /// Lines per ingest request, one ingest run each.
    pub batches: Vec<usize>,
    /// Requests in flight at once, one ingest and one history run each.
    pub concurrency: Vec<usize>,
    /// Lines posted by each ingest run.
    pub lines: usize,
    /// History page requests per history run.
    pub pages: usize,
    /// Entries per history page (the API's largest, 500, by default).
    pub page_size: usize,
    /// SSE viewer counts, one delivery run each (0s are skipped).
    pub viewers: Vec<usize>,
    /// Lines posted, one per request, during each delivery run.
    pub deliveries: usize,
    /// Stalled WebSocket clients, and as many stalled SSE readers, on each ingest run's
    /// stalled twin (0 skips those runs).
    pub stalled: usize,
    /// Baseline, reading and stalled triples per shape; the median one by the stalled
    /// p99 ratio is reported.
    pub stalled_pairs: usize,
    /// Lines of the big job ([`super::bigjob`]; 0 skips it).
    pub big_job: usize,
    /// Cold-start the function binaries too.
    pub cold_start: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            url: None,
            ingest_key: None,
            viewer_token: None,
            batches: vec![100, 1000],
            concurrency: vec![1, 8],
            lines: 200_000,
            pages: 3000,
            page_size: 500,
            viewers: vec![1, 100, 1000],
            deliveries: 200,
            stalled: 2,
            stalled_pairs: 3,
            big_job: 1_000_000,
            cold_start: true,
        }
    }
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
    /// CPUs this process may use: load, service and Redis share them.
    pub cpus: usize,
    /// `redis-benchmark -P 1000` XADD/s against the same Redis, when available.
    pub redis_xadd_per_sec: Option<f64>,
    pub ingest: Vec<IngestRun>,
    /// The ingest runs again with stalled consumers on the job, one per ingest run.
    pub stalled: Vec<StalledRun>,
    /// Why `stalled` is empty, when it is.
    pub stalled_skipped: Option<String>,
    pub history: Vec<HistoryRun>,
    pub delivery: Vec<Delivery>,
    /// One job of `big_job` lines, archived in segments while it is posted.
    pub big_job: Option<BigJob>,
    /// Why `big_job` is empty, when it is.
    pub big_job_skipped: Option<String>,
    pub cold_start: Vec<ColdStart>,
    /// Why the cold-start table is empty, when it is.
    pub cold_start_skipped: Option<String>,
}

/// One ingest run: `requests` batches of `batch` lines, `concurrency` at a time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestRun {
    pub batch: usize,
    pub concurrency: usize,
    /// Jobs the writers post to: 1 (every writer on one job), or one job per writer,
    /// as separate pipelines write.
    pub jobs: usize,
    pub requests: usize,
    pub lines_per_sec: f64,
    pub latency: Latency,
    /// The Redis XADD ceiling around this run, XADD/s: the mean of the measurements
    /// right before and right after it.
    pub redis_ceiling: Option<f64>,
    /// Those two measurements, XADD/s.
    pub redis_ceiling_before: Option<f64>,
    pub redis_ceiling_after: Option<f64>,
    /// `lines_per_sec` over that ceiling.
    pub of_redis_ceiling: Option<f64>,
    /// Redis's own time per append script call (`INFO commandstats`, `evalsha`), µs:
    /// the part of a batch that Redis, one core, spends; less noisy than lines/s on a
    /// shared machine.
    pub redis_us_per_batch: Option<f64>,
    /// Redis's time reading entries back for archiving (`xrange`, the segments the
    /// archiver wrote during the run) per batch, µs: the other part of a line's cost
    /// to Redis.
    pub archive_read_us_per_batch: Option<f64>,
    /// Redis's main-thread CPU time (`INFO cpu`) per line over the run and until the
    /// archiver has read its last segment back, µs: everything a line costs Redis.
    pub redis_cpu_us_per_line: Option<f64>,
    /// The same per XADD for the two ceiling measurements around the run.
    pub ceiling_cpu_us_per_xadd: Option<f64>,
    /// `ceiling_cpu_us_per_xadd` over `redis_cpu_us_per_line`: the share of the ceiling
    /// ingest would reach if Redis had a core of its own and were the only limit;
    /// on the bench's machine it shares the cores with the service and the load.
    pub cpu_of_ceiling: Option<f64>,
}

/// An ingest run with `websocket` WebSocket clients and `sse` SSE readers on its job
/// that read their first frames and then stop reading, sockets kept open; measured
/// right after the ingest run of the same shape, its `baseline`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StalledRun {
    pub batch: usize,
    pub concurrency: usize,
    pub requests: usize,
    pub websocket: usize,
    pub sse: usize,
    pub lines_per_sec: f64,
    pub latency: Latency,
    /// The latency of the ingest run of the same shape without them.
    pub baseline: Latency,
    /// The latency with as many consumers that read everything (between the baseline
    /// and the stalled run of the same triple): what serving consumers costs at all,
    /// so that what stalling adds can be told apart.
    pub reading: Latency,
    /// `latency.p99_ms` over `baseline.p99_ms`: the median pair's (the figures above are
    /// that pair's).
    pub p99_ratio: f64,
    /// Every pair's ratio, in the order run.
    pub p99_ratios: Vec<f64>,
    /// Stalled WebSocket clients the service still had connected at the end (it closes
    /// one that stays tripped long enough).
    pub websocket_still_connected: usize,
    /// Stalled SSE readers still holding the job's feed at the end (one that falls too
    /// far behind lets go of it).
    pub sse_still_following: usize,
}

/// One history run: pages walking back through a 50 000-line log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryRun {
    pub page_size: usize,
    pub concurrency: usize,
    pub pages: usize,
    pub pages_per_sec: f64,
    pub latency: Latency,
}

/// Delivery latency over every (line, viewer) pair of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    pub viewers: usize,
    pub lines: usize,
    pub samples: usize,
    pub latency: Latency,
}

/// Lines in the history run's log: the stream's cap, so pages never run out.
const HISTORY_LINES: usize = 50_000;

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.batches.contains(&0) || opts.concurrency.contains(&0) || opts.lines == 0 {
        bail!("--batch, --concurrency and --lines must be above 0");
    }
    // 1 000 viewers are 2 000 sockets in this process when the service runs here too.
    raise_open_files_limit();

    // The in-process service archives into a folder of this run's own.
    let archive_dir = std::env::temp_dir().join(format!(
        "logstream-bench-{}",
        logstream_core::ids::random_hex(6)
    ));
    let _remove = RemoveOnDrop(archive_dir.clone());
    let dir = archive_dir.to_string_lossy().into_owned();
    let config =
        Config::from_lookup(|name| (name == "LOGSTREAM_ARCHIVE_DIR").then(|| dir.clone()))?;
    let redis_bound = config.maxlen + config.segment_lines;
    let target = Target::choose(
        opts.url.as_deref(),
        opts.ingest_key.as_deref(),
        opts.viewer_token.as_deref(),
        None,
        || Ok(config),
    )
    .await?;
    let (url, key, viewer, redis_url) = (
        target.url.clone(),
        target.ingest_key.clone(),
        target.viewer_token.clone(),
        target.redis_url.clone(),
    );
    let most = opts.concurrency.iter().copied().max().unwrap_or(1);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(most * 2)
        .build()?;

    // The limit first, on a Redis that holds nothing else yet.
    let redis_xadd_per_sec = redis_url.as_deref().and_then(redis_ceiling);

    // Stalled consumers need the viewer token, and the `/ws` route of the in-process
    // service (a deployed one has its WebSocket API elsewhere).
    let stalled_skipped = match (&viewer, &target.local) {
        _ if opts.stalled == 0 => Some("not asked for".to_owned()),
        (None, _) => Some("no viewer token".to_owned()),
        (_, None) => Some("in-process service only".to_owned()),
        _ => None,
    };
    let mut ingest = Vec::new();
    let mut stalled = Vec::new();
    for &batch in &opts.batches {
        let body = serde_json::to_vec(&json!({ "lines": sample_lines(batch) }))?;
        for &concurrency in &opts.concurrency {
            let requests = opts.lines.div_ceil(batch).max(concurrency);
            let mut redis = match &redis_url {
                Some(redis_url) => Some(redis_stats(redis_url).await?),
                None => None,
            };
            // Every writer on one job, then (with several writers) a job each.
            let mut runs = Vec::new();
            for jobs in [1, concurrency]
                .into_iter()
                .take(if concurrency > 1 { 2 } else { 1 })
            {
                let mut posted_to = Vec::with_capacity(jobs);
                for _ in 0..jobs {
                    posted_to.push(create_job(&http, &url, &key).await?);
                }
                // The ceiling again, right before and right after the run it is
                // compared with: this VM's speed drifts by a third within minutes (the
                // ceiling moved from 428 k to 732 k/s between runs of one afternoon, and
                // by a fifth between two runs a second apart on an idle Redis), so a
                // ratio to a ceiling taken minutes earlier, or once, tells the drift as
                // much as ingest.
                if let Some(redis) = redis.as_mut() {
                    redis_quiet(redis).await?;
                }
                let (before, cpu_before) = measure_ceiling(redis_url.as_deref(), &mut redis).await;
                let mut cpu_start = None;
                if let Some(redis) = redis.as_mut() {
                    redis::cmd("CONFIG")
                        .arg("RESETSTAT")
                        .query_async::<()>(redis)
                        .await?;
                    cpu_start = redis_cpu_secs(redis).await;
                }
                let mut run =
                    ingest_run(&http, &url, &posted_to, &body, batch, requests, concurrency)
                        .await?;
                if let Some(redis) = redis.as_mut() {
                    // The archiver is still writing the run's last segment: its reads
                    // are counted, and Redis is left to itself for the ceiling.
                    redis_quiet(redis).await?;
                    if let Some(stats) = script_and_archive_usec(redis).await {
                        run.redis_us_per_batch = Some(stats.0);
                        run.archive_read_us_per_batch = Some(stats.1 / run.requests as f64);
                    }
                    let lines = (run.requests * run.batch) as f64;
                    run.redis_cpu_us_per_line = cpu_start
                        .zip(redis_cpu_secs(redis).await)
                        .map(|(start, end)| (end - start) * 1e6 / lines);
                }
                let (after, cpu_after) = measure_ceiling(redis_url.as_deref(), &mut redis).await;
                run.ceiling_cpu_us_per_xadd = cpu_before.zip(cpu_after).map(|(b, a)| (b + a) / 2.0);
                run.cpu_of_ceiling = run
                    .ceiling_cpu_us_per_xadd
                    .zip(run.redis_cpu_us_per_line)
                    .map(|(ceiling, ingest)| ceiling / ingest);
                let ceiling = before.zip(after).map(|(b, a)| (b + a) / 2.0);
                run.redis_ceiling_before = before;
                run.redis_ceiling_after = after;
                run.redis_ceiling = ceiling;
                run.of_redis_ceiling = ceiling.map(|x| run.lines_per_sec / x);
                runs.push(run);
            }
            let run = runs.remove(0);
            if let (None, Some(viewer), Some(local)) = (&stalled_skipped, &viewer, &target.local) {
                // Triples of a baseline run, a run with reading clients and a stalled run,
                // one right after the other, on new jobs each: one triple's ratio swings
                // with the machine (0.75-3.7x on this VM), the median of several much
                // less. The reading run tells what serving clients costs at all from what
                // their stalling adds.
                let on_job = |job: (String, String)| {
                    let (http, url, body) = (&http, &url, &body);
                    async move {
                        ingest_run(http, url, &[job], body, batch, requests, concurrency).await
                    }
                };
                let with_consumers = |stall: bool| {
                    let (http, url, key, body) = (&http, &url, &key, &body);
                    async move {
                        let job = create_job(http, url, key).await?;
                        let clients = Consumers::open(
                            local,
                            &job,
                            viewer,
                            opts.stalled,
                            stall,
                            (body, http, url),
                        )
                        .await?;
                        let run = on_job(job).await?;
                        let held = clients.still_held(local);
                        drop(clients);
                        // Let the service finish with the closed sockets before the
                        // next run.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        anyhow::Ok((run, held))
                    }
                };
                let mut pairs = Vec::with_capacity(opts.stalled_pairs.max(1));
                for k in 0..opts.stalled_pairs.max(1) {
                    let baseline = if k == 0 {
                        run.latency.clone()
                    } else {
                        on_job(create_job(&http, &url, &key).await?).await?.latency
                    };
                    let (reading, _) = with_consumers(false).await?;
                    let (with, held) = with_consumers(true).await?;
                    let ratio = with.latency.p99_ms / baseline.p99_ms;
                    pairs.push((ratio, baseline, reading.latency, with, held));
                }
                let p99_ratios: Vec<f64> = pairs.iter().map(|pair| pair.0).collect();
                pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (
                    p99_ratio,
                    baseline,
                    reading,
                    with,
                    (websocket_still_connected, sse_still_following),
                ) = pairs.swap_remove(pairs.len() / 2);
                stalled.push(StalledRun {
                    batch,
                    concurrency,
                    requests: with.requests,
                    websocket: opts.stalled,
                    sse: opts.stalled,
                    lines_per_sec: with.lines_per_sec,
                    p99_ratio,
                    p99_ratios,
                    latency: with.latency,
                    baseline,
                    reading,
                    websocket_still_connected,
                    sse_still_following,
                });
            }
            ingest.push(run);
            ingest.extend(runs);
        }
    }

    let mut history = Vec::new();
    if let Some(viewer) = &viewer {
        let job = create_job(&http, &url, &key).await?.0;
        let body = serde_json::to_vec(&json!({ "lines": sample_lines(1000) }))?;
        for _ in 0..HISTORY_LINES / 1000 {
            post(&http, &url, &job, &key, &body).await?;
        }
        for &concurrency in &opts.concurrency {
            history.push(
                history_run(
                    &http,
                    &url,
                    &job,
                    viewer,
                    opts.pages,
                    opts.page_size,
                    concurrency,
                )
                .await?,
            );
        }
    }

    let mut delivery = Vec::new();
    if let Some(viewer) = &viewer {
        for &n in opts.viewers.iter().filter(|&&n| n > 0) {
            delivery.push(delivery_run(&url, &key, viewer, n, opts.deliveries).await?);
        }
    }
    let (big_job, big_job_skipped) = match (&viewer, &redis_url) {
        _ if opts.big_job == 0 => (None, Some("not asked for".to_owned())),
        (Some(viewer), Some(redis_url)) => (
            Some(
                bigjob::run(
                    &http,
                    &url,
                    &key,
                    viewer,
                    redis_url,
                    opts.big_job,
                    redis_bound,
                )
                .await?,
            ),
            None,
        ),
        _ => (
            None,
            Some("needs a viewer token and the service's Redis".to_owned()),
        ),
    };
    drop(target);

    let (cold_start, cold_start_skipped) = if opts.cold_start {
        match coldstart::run().await {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        }
    } else {
        (Vec::new(), Some("not asked for".to_owned()))
    };

    Ok(BenchReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        redis_xadd_per_sec,
        ingest,
        stalled,
        stalled_skipped,
        history,
        delivery,
        big_job,
        big_job_skipped,
        cold_start,
        cold_start_skipped,
    })
}

/// Removes a folder when dropped (the in-process service's archive).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Consumers of one job, their sockets open until this is dropped: `n` WebSocket
/// clients at `/ws` and `n` SSE readers. Stalled ones read their first frames and then
/// stop reading; each has a small receive buffer, so the service's side of it fills
/// after a few batches, as a frozen browser tab's would after a while. Reading ones
/// take everything sent, as a live viewer does.
struct Consumers {
    job: JobId,
    /// Held, never read again: dropping them closes the connections.
    _stalled: Vec<tokio::net::TcpStream>,
    /// The tasks that read the others; aborted (their sockets closed) on drop.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

impl Consumers {
    /// Connects them to `job` of `local` as the `dev` user, posts `body` once (with the
    /// job's token) and lets each read what has come by then; `stall`: then no more.
    async fn open(
        local: &DevServer,
        (job, token): &(String, String),
        viewer: &str,
        n: usize,
        stall: bool,
        (body, http, url): (&[u8], &reqwest::Client, &str),
    ) -> anyhow::Result<Self> {
        let addr = local.addr;
        // The handshake of RFC 6455's example: the key is a nonce the server only echoes
        // (hashed), and these clients never check the answer's.
        let websocket = format!(
            "GET /ws?job_id={job}&access_token={viewer} HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let sse = format!(
            "GET /jobs/{job}/logs/stream?from=start&access_token={viewer} HTTP/1.1\r\n\
             Host: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        let mut sockets = Vec::with_capacity(2 * n);
        for (request, expect) in [(&websocket, "101"), (&sse, "200")] {
            for _ in 0..n {
                sockets.push(consumer_socket(addr, request, expect, stall).await?);
            }
        }
        let job = JobId::parse(job)?;
        // Every reader follows the feed before the first batch.
        let hub = local.sse().hub();
        let followed = async {
            while hub.receivers(&job) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), followed)
            .await
            .context("the SSE readers did not follow the job")?;
        post(http, url, job.as_str(), token, body).await?;
        // Their first frames, then never again.
        for socket in &mut sockets {
            let mut first = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut first))
                .await
                .context("a consumer got no first frame")??;
            if read == 0 {
                bail!("a consumer was closed before its first frame");
            }
        }
        if stall {
            return Ok(Self {
                job,
                _stalled: sockets,
                readers: Vec::new(),
            });
        }
        let readers = sockets
            .into_iter()
            .map(|mut socket| {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(socket.read(&mut buf).await, Ok(read) if read > 0) {}
                })
            })
            .collect();
        Ok(Self {
            job,
            _stalled: Vec::new(),
            readers,
        })
    }

    /// How many of the WebSocket clients `local` still has connected, and how many of
    /// the SSE readers still hold the job's feed.
    fn still_held(&self, local: &DevServer) -> (usize, usize) {
        (
            local.sockets().len(),
            local.sse().hub().receivers(&self.job),
        )
    }
}

/// A connection to `addr` (with a small receive buffer when it is to `stall`) that
/// sent `request` and read the head of its answer, whose status must be `expect`.
async fn consumer_socket(
    addr: std::net::SocketAddr,
    request: &str,
    expect: &str,
    stall: bool,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if stall {
        socket.set_recv_buffer_size(4096)?;
    }
    let mut stream = socket.connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so nothing after the head is taken here.
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .context("no answer to a consumer's request")??;
        if read == 0 || head.len() > 16 * 1024 {
            bail!("a consumer's request got no complete answer");
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head);
    let status = status.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some(expect) {
        bail!("a consumer's request was answered {status:?}, not {expect}");
    }
    Ok(stream)
}

/// Realistic lines: npm/vite output of ~60-100 bytes, a few with colour codes.
pub(super) fn sample_lines(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let text = match i % 4 {
                0 => format!("npm http fetch GET 200 https://registry.npmjs.org/package-{i} 42ms (cache miss)"),
                1 => format!("\u{1b}[32m✓\u{1b}[39m src/components/Widget{i}.tsx transformed in 12ms"),
                2 => format!("added {i} packages, and audited {} packages in 3s", i * 2),
                _ => format!("[webpack] asset main.{i:08x}.js 1.2 MiB [emitted] [immutable] (name: main)"),
            };
            json!({"stream": if i % 10 == 0 { "stderr" } else { "stdout" }, "text": text})
        })
        .collect()
}

/// Creates a job of the `dev` user; its id and ingest token.
pub(super) async fn create_job(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<(String, String)> {
    let job = format!("bench-{}", logstream_core::ids::random_hex(6));
    let created: Value = http
        .post(format!("{url}/jobs"))
        .bearer_auth(key)
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
    Ok((job, token))
}

/// `requests` batches posted by `concurrency` writers, writer i to `jobs[i % len]` (each
/// job posted to with its own token, as a pipeline would).
async fn ingest_run(
    http: &reqwest::Client,
    url: &str,
    jobs: &[(String, String)],
    body: &[u8],
    batch: usize,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<IngestRun> {
    // Warm-up: connections, script cache, job cache.
    for (job, token) in jobs {
        for _ in 0..concurrency.max(3) / jobs.len() {
            post(http, url, job, token, body).await?;
        }
    }
    let started = Instant::now();
    let per_worker = requests.div_ceil(concurrency);
    let workers = (0..concurrency).map(|i| async move {
        let (job, token) = &jobs[i % jobs.len()];
        let mut times = Vec::with_capacity(per_worker);
        for _ in 0..per_worker {
            let t = Instant::now();
            post(http, url, job, token, body).await?;
            times.push(t.elapsed());
        }
        anyhow::Ok(times)
    });
    let mut times = Vec::new();
    for worker in futures_util::future::join_all(workers).await {
        times.extend(worker?);
    }
    let wall = started.elapsed();
    let lines = batch * times.len();
    Ok(IngestRun {
        batch,
        concurrency,
        jobs: jobs.len(),
        requests: times.len(),
        lines_per_sec: lines as f64 / wall.as_secs_f64(),
        latency: summarize(times),
        redis_ceiling: None,
        redis_ceiling_before: None,
        redis_ceiling_after: None,
        of_redis_ceiling: None,
        redis_us_per_batch: None,
        archive_read_us_per_batch: None,
        redis_cpu_us_per_line: None,
        ceiling_cpu_us_per_xadd: None,
        cpu_of_ceiling: None,
    })
}

pub(super) async fn post(
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

/// `concurrency` readers each walk back through the log page by page ("load earlier"),
/// starting over at the newest page when they reach the oldest.
async fn history_run(
    http: &reqwest::Client,
    url: &str,
    job: &str,
    viewer: &str,
    pages: usize,
    page_size: usize,
    concurrency: usize,
) -> anyhow::Result<HistoryRun> {
    let per_worker = pages.div_ceil(concurrency);
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| async move {
        let mut times = Vec::with_capacity(per_worker);
        let mut before: Option<String> = None;
        for _ in 0..per_worker {
            let page_url = match &before {
                Some(b) => format!("{url}/jobs/{job}/logs?limit={page_size}&before={b}"),
                None => format!("{url}/jobs/{job}/logs?limit={page_size}"),
            };
            let req = http.get(page_url).bearer_auth(viewer);
            let t = Instant::now();
            let body = req.send().await?.error_for_status()?.bytes().await?;
            times.push(t.elapsed());
            // Only the cursor is needed: skip the entries rather than building values
            // for them, so the client's parsing weighs less in a run sharing the machine.
            let page: PageCursor = serde_json::from_slice(&body)?;
            before = page.next_before;
        }
        anyhow::Ok(times)
    });
    let mut times = Vec::new();
    for worker in futures_util::future::join_all(workers).await {
        times.extend(worker?);
    }
    let wall = started.elapsed();
    Ok(HistoryRun {
        page_size,
        concurrency,
        pages: times.len(),
        pages_per_sec: times.len() as f64 / wall.as_secs_f64(),
        latency: summarize(times),
    })
}

#[derive(serde::Deserialize)]
struct PageCursor {
    next_before: Option<String>,
}

/// Opens `viewers` SSE streams on a fresh job, posts `lines` one-line batches one after
/// another, and times each line from just before its POST to its frame at each viewer.
async fn delivery_run(
    url: &str,
    key: &str,
    viewer: &str,
    viewers: usize,
    lines: usize,
) -> anyhow::Result<Delivery> {
    use futures_util::StreamExt;

    let http = reqwest::Client::new();
    let (job, _) = create_job(&http, url, key).await?;

    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(viewers);
    // Viewers share a client, but each stream is a connection of its own (HTTP/1.1),
    // as separate browsers would have.
    let viewer_http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut tasks = Vec::with_capacity(viewers);
    for _ in 0..viewers {
        let client = viewer_http.clone();
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
        // Spaced out, so each line is a separate delivery rather than a batch; more
        // viewers take longer to serve, so the gap grows with them.
        tokio::time::sleep(Duration::from_millis(2 + viewers as u64 / 100)).await;
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

/// Raises this process's open-file limit to its hard limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, "could not raise the open-file limit");
    }
}

/// A connection to the bench's Redis for its statistics.
async fn redis_stats(redis_url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Since the last `CONFIG RESETSTAT` (`INFO commandstats`): `usec_per_call` of
/// `evalsha` (the scripts' own time in Redis, the commands they call included) and
/// all of `xrange`'s `usec` (entries read back to be archived).
async fn script_and_archive_usec(
    redis: &mut redis::aio::MultiplexedConnection,
) -> Option<(f64, f64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .ok()?;
    let field = |command: &str, name: &str| -> Option<f64> {
        let line = info.lines().find(|l| l.starts_with(command))?;
        line.split(':')
            .nth(1)?
            .split(',')
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let script = field("cmdstat_evalsha:", "usec_per_call")?;
    let archive = field("cmdstat_xrange:", "usec").unwrap_or(0.0);
    Some((script, archive))
}

/// Waits, at most 5 s, until Redis serves fewer than 20 commands in 100 ms (the
/// service's idle polling): a run leaves the archiver flushing its last segment, and
/// a ceiling measured beside that is Redis's capacity less the archiver's share.
async fn redis_quiet(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    async fn processed(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
        let info: String = redis::cmd("INFO").arg("stats").query_async(redis).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .context("INFO stats has no total_commands_processed")?
            .trim()
            .parse()
            .context("total_commands_processed is not a number")
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = processed(redis).await?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = processed(redis).await?;
        if now.saturating_sub(last) < 20 {
            break;
        }
        last = now;
    }
    Ok(())
}

/// Redis's main-thread CPU time so far (`INFO cpu`), seconds.
async fn redis_cpu_secs(redis: &mut redis::aio::MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(redis)
        .await
        .ok()?;
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("used_cpu_user_main_thread")? + field("used_cpu_sys_main_thread")?)
}

/// The XADD ceiling ([`redis_ceiling`]) and, with a statistics connection, Redis's
/// main-thread CPU time per XADD while it was measured, µs.
async fn measure_ceiling(
    redis_url: Option<&str>,
    redis: &mut Option<redis::aio::MultiplexedConnection>,
) -> (Option<f64>, Option<f64>) {
    let start = match redis.as_mut() {
        Some(redis) => redis_cpu_secs(redis).await,
        None => None,
    };
    let ceiling = redis_url.and_then(redis_ceiling);
    let end = match redis.as_mut() {
        Some(redis) => redis_cpu_secs(redis).await,
        None => None,
    };
    let per_xadd = start
        .zip(end)
        .filter(|_| ceiling.is_some())
        .map(|(start, end)| (end - start) * 1e6 / CEILING_XADDS as f64);
    (ceiling, per_xadd)
}

/// XADDs in one ceiling measurement.
const CEILING_XADDS: u64 = 500_000;

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
            &CEILING_XADDS.to_string(),
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

pub(super) fn summarize(mut times: Vec<Duration>) -> Latency {
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

/// The report as tables.
pub fn table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "logstream bench: {} CPUs shared by load, service and Redis",
        r.cpus
    );
    match r.redis_xadd_per_sec {
        Some(x) => {
            let _ = writeln!(
                out,
                "\nredis XADD ceiling at the start (redis-benchmark -P 1000): {x:.0}/s; again before and after each ingest run below"
            );
        }
        None => out.push_str("\nredis XADD ceiling: redis-benchmark not available\n"),
    }
    if !r.ingest.is_empty() {
        out.push_str(
            "\ningest    batch  concurrency  jobs     lines/s   p50 ms   p99 ms  of the ceiling before and after  requests  redis µs/batch  archive reads µs/batch  redis CPU µs/line (ceiling's), share\n",
        );
        for i in &r.ingest {
            let ratio = match (
                i.of_redis_ceiling,
                i.redis_ceiling_before,
                i.redis_ceiling_after,
            ) {
                (Some(x), Some(before), Some(after)) => format!(
                    "{:.0} % of {:.0}/{:.0} k/s",
                    x * 100.0,
                    before / 1000.0,
                    after / 1000.0
                ),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "        {:>6}  {:>11}  {:>4}  {:>10.0}  {:>7.2}  {:>7.2}  {:>31}  {:>8}  {:>14}  {:>22}  {:>35}",
                i.batch,
                i.concurrency,
                i.jobs,
                i.lines_per_sec,
                i.latency.p50_ms,
                i.latency.p99_ms,
                ratio,
                i.requests,
                i.redis_us_per_batch
                    .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}")),
                i.archive_read_us_per_batch
                    .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}")),
                match (
                    i.redis_cpu_us_per_line,
                    i.ceiling_cpu_us_per_xadd,
                    i.cpu_of_ceiling
                ) {
                    (Some(line), Some(xadd), Some(share)) =>
                        format!("{line:.2} ({xadd:.2}), {:.0} %", share * 100.0),
                    _ => "-".to_owned(),
                }
            );
        }
    }
    if let Some(first) = r.stalled.first() {
        let _ = writeln!(
            out,
            "\ningest with {} stalled WebSocket + {} stalled SSE clients, each run right after \
             a baseline of its own and a run with as many reading clients (the median of {} such \
             triples by stalled/baseline p99; every triple's ratio last)\n          \
             batch  concurrency  base p50  base p99  reading p50  reading p99   p50 ms   p99 ms  \
             p99 ratio  still held ws/sse  ratios",
            first.websocket,
            first.sse,
            first.p99_ratios.len()
        );
        for s in &r.stalled {
            let _ = writeln!(
                out,
                "        {:>7}  {:>11}  {:>8.2}  {:>8.2}  {:>11.2}  {:>11.2}  {:>7.2}  {:>7.2}  \
                 {:>8.2}x  {:>17}  {}",
                s.batch,
                s.concurrency,
                s.baseline.p50_ms,
                s.baseline.p99_ms,
                s.reading.p50_ms,
                s.reading.p99_ms,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.p99_ratio,
                format!("{}/{}", s.websocket_still_connected, s.sse_still_following),
                s.p99_ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    } else if let Some(why) = &r.stalled_skipped {
        let _ = writeln!(out, "\ningest with stalled clients: skipped ({why})");
    }
    if !r.history.is_empty() {
        out.push_str("\nhistory   entries/page  concurrency     pages/s   p50 ms   p99 ms\n");
        for h in &r.history {
            let _ = writeln!(
                out,
                "          {:>12}  {:>11}  {:>10.0}  {:>7.2}  {:>7.2}",
                h.page_size, h.concurrency, h.pages_per_sec, h.latency.p50_ms, h.latency.p99_ms
            );
        }
    }
    if !r.delivery.is_empty() {
        out.push_str("\ndelivery  ingest->viewer, viewers   p50 ms   p99 ms   max ms   samples\n");
        for d in &r.delivery {
            let _ = writeln!(
                out,
                "          {:>23}  {:>7.2}  {:>7.2}  {:>7.2}  {:>8}",
                d.viewers, d.latency.p50_ms, d.latency.p99_ms, d.latency.max_ms, d.samples
            );
        }
    }
    if let Some(b) = &r.big_job {
        let _ = writeln!(
            out,
            "\nbig job   {} lines posted at {:.0} lines/s (5 000-line batches, one writer)\n\
             \x20         redis entries: {} after the last batch, {} once archived ({:.1} s later); \
             bound MAXLEN + one segment = {}\n\
             \x20         redis used_memory {:.1} MiB (before the job: {:.1} MiB)\n\
             \x20         500-entry page      newest p50/p99 ms   at n=1 p50/p99 ms\n\
             \x20         {:>7} lines     {:>8.2} / {:>6.2}    {:>8.2} / {:>6.2}\n\
             \x20         {:>7} lines     {:>8.2} / {:>6.2}    {:>8.2} / {:>6.2}\n\
             \x20         SSE replay from the start: {:.0} entries/s\n\
             \x20         raw log: {:.1} MB at {:.0} MB/s (median of {}: {}); a search matching \
             nothing: {:.0} ms, {:.0} entries read/s",
            b.lines,
            b.ingest_lines_per_sec,
            b.redis_entries_at_end,
            b.redis_entries_archived,
            b.catch_up_secs,
            b.redis_bound,
            b.redis_used_mib,
            b.redis_used_mib_before,
            b.lines,
            b.newest_page.p50_ms,
            b.newest_page.p99_ms,
            b.first_page.p50_ms,
            b.first_page.p99_ms,
            1_000,
            b.small_newest_page.p50_ms,
            b.small_newest_page.p99_ms,
            b.small_first_page.p50_ms,
            b.small_first_page.p99_ms,
            b.sse_replay_entries_per_sec,
            b.raw_bytes as f64 / 1e6,
            b.raw_mb_per_sec,
            b.raw_mb_per_sec_runs.len(),
            b.raw_mb_per_sec_runs
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            b.search_ms,
            b.search_entries_per_sec,
        );
    } else if let Some(why) = &r.big_job_skipped {
        let _ = writeln!(out, "\nbig job: skipped ({why})");
    }
    if !r.cold_start.is_empty() {
        out.push('\n');
        out.push_str(&coldstart::table(&r.cold_start));
    } else if let Some(why) = &r.cold_start_skipped {
        let _ = writeln!(out, "\ncold start: skipped ({why})");
    }
    out
}
