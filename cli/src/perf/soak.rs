//! `logstream soak`: many jobs and viewers for a set time, watching that memory and
//! connection counts stay flat.
//!
//! Without `--url` it starts `logstream dev` in this process on a private
//! `redis-server` (like `bench`), with a short TTL (`--ttl`) so that Redis forgets
//! finished jobs during the run and its memory can reach a steady state, and archives
//! into a temporary folder removed at the end. Then:
//!
//! - `--jobs` writer slots, each a pipeline: create a job, set it running, stream
//!   `--job-lines` numbered lines at `--rate` lines/s through the real uploader
//!   ([`logstream_client::upload`]: batches, `seq`, retries), set it `ready`, and start the
//!   next job, so the set of live jobs keeps rotating (the slots start staggered over
//!   one job's length, so some job ends every moment);
//! - `--viewers` viewers spread over the slots, each following its slot's current job
//!   from the start with the real follow client ([`logstream_client::follow`]) until
//!   `done`, checking it got every line of the job, in order, then moving on to the
//!   slot's next job.
//!
//! Every `--interval` it samples this process's resident memory and open files, the
//! service's established TCP connections, Redis's `connected_clients` and
//! `used_memory`, the live-log feeds, and the lines posted and delivered. At the end
//! it compares the last third of the samples after `--warmup` with the first third,
//! and says whether memory and connections stayed flat. In-process, the memory and the
//! open files are the service's and the load generator's together.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::watch;

use super::Target;
use crate::dev;
use logstream_client::follow::{FollowEvent, FollowStart};
use logstream_client::upload::{LogLine, Upload, UploadOptions};
use logstream_client::{Client, RetryPolicy};
use logstream_core::ids::JobId;
use logstream_core::model::{EntryBody, JobStatus, LineStream};
use logstream_shared::config::Config;

/// What to run (the `logstream soak` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// A running service to soak instead (needs --ingest-key and --token).
    #[arg(long, env = "LOGSTREAM_URL")]
    pub url: Option<String>,
    /// Ingest key of that service.
    #[arg(long, env = "LOGSTREAM_INGEST_KEY", hide_env_values = true)]
    pub ingest_key: Option<String>,
    /// A viewer JWT of that service, for the user given as --owner.
    #[arg(long, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --url: the owner of the soak's jobs (the viewer JWT's `sub`).
    #[arg(long, default_value = dev::DEV_USER)]
    pub owner: String,
    /// With --url: that service's Redis, for its client and memory figures.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Jobs written at the same time.
    #[arg(long, default_value_t = 50)]
    pub jobs: usize,
    /// SSE viewers, spread over the jobs.
    #[arg(long, default_value_t = 200)]
    pub viewers: usize,
    /// How long to run (`90`, `60s`, `5m`, `1h`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between samples.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Samples in this first part of the run are left out of the verdict.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Lines per job; then it finishes and the next job starts.
    #[arg(long, default_value_t = 1000)]
    pub job_lines: u64,
    /// Lines per second written to each job.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// Key TTL of the in-process service, in seconds (short, so Redis forgets
    /// finished jobs during the run).
    #[arg(long = "ttl", value_name = "TTL", default_value_t = 20)]
    pub ttl_secs: u64,
}

/// `90` (seconds), `90s`, `5m` or `1h`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: expected a number of seconds, or 90s, 5m, 1h"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{raw:?}: the unit must be s, m or h")),
    }
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Resident memory of this process (MB).
    pub rss_mb: Option<f64>,
    /// Open file descriptors of this process.
    pub fds: Option<u64>,
    /// Established TCP connections to the service's port.
    pub service_conns: Option<u64>,
    /// Redis `connected_clients`.
    pub redis_clients: Option<u64>,
    /// Redis `used_memory` (MB).
    pub redis_mb: Option<f64>,
    /// Live-log feeds (one blocking Redis reader per followed job), in-process only.
    pub feeds: Option<u64>,
    /// Lines handed to the uploaders since the previous sample, per second.
    pub posted_per_sec: f64,
    /// Lines received by viewers since the previous sample, per second.
    pub delivered_per_sec: f64,
    /// Jobs finished so far.
    pub jobs_done: u64,
    /// Age of the oldest entry not yet archived, over the jobs being written (the
    /// segment-age rule's promise); `None` without Redis access.
    pub oldest_unarchived_secs: Option<f64>,
}

/// How a figure moved between the start and the end of the measured part.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub figure: &'static str,
    /// Mean over the first third of the samples after warm-up.
    pub first: f64,
    /// Mean over the last third.
    pub last: f64,
    /// Whether `last` stays within the tolerance of `first`.
    pub flat: bool,
}

/// What `soak` saw.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub jobs: usize,
    pub viewers: usize,
    pub duration_secs: f64,
    pub lines_posted: u64,
    pub lines_delivered: u64,
    pub jobs_finished: u64,
    /// Jobs a viewer followed from the start to `done` with every line, in order.
    pub jobs_followed_whole: u64,
    /// Followed jobs whose lines came incomplete, doubled or out of order.
    pub jobs_followed_wrong: u64,
    /// Failures (requests given up, follows that failed).
    pub errors: u64,
    /// The oldest unarchived entry's age at its worst over every sample.
    pub max_oldest_unarchived_secs: Option<f64>,
    pub samples: Vec<Sample>,
    pub trends: Vec<Trend>,
    /// Once the load stopped (in-process only).
    pub after: Option<Settled>,
    /// Every trend flat, no wrong follow, no error, and no feed left once the load
    /// stopped.
    pub flat: bool,
}

/// What is left once every viewer has gone.
#[derive(Debug, Clone, Serialize)]
pub struct Settled {
    /// Live-log feeds still running (each holds a Redis connection): 0 expected.
    pub feeds: u64,
    /// Redis `connected_clients` (the service's shared connection, the archiver's, and
    /// this figure's own).
    pub redis_clients: Option<u64>,
}

#[derive(Default)]
struct Counters {
    /// Lines handed to the uploaders (the posting rate).
    sent: AtomicU64,
    /// Lines the service stored (counted when a job's upload ends).
    posted: AtomicU64,
    delivered: AtomicU64,
    jobs_done: AtomicU64,
    whole: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
}

/// Runs the soak.
pub async fn run(opts: SoakOptions) -> anyhow::Result<SoakReport> {
    if opts.jobs == 0 || opts.rate == 0 || opts.job_lines == 0 || opts.interval.is_zero() {
        bail!("--jobs, --rate, --job-lines and --interval must be above 0");
    }
    let archive = std::env::temp_dir().join(format!(
        "logstream-soak-archive-{}",
        logstream_core::ids::random_hex(6)
    ));
    let _archive = RemoveOnDrop(archive.clone());
    let target = Target::choose(
        opts.url.as_deref(),
        opts.ingest_key.as_deref(),
        opts.token.as_deref(),
        opts.redis_url.as_deref(),
        || {
            let settings: HashMap<&str, String> = HashMap::from([
                ("LOGSTREAM_TTL_SECS", opts.ttl_secs.to_string()),
                (
                    "LOGSTREAM_ARCHIVE_DIR",
                    archive.to_string_lossy().into_owned(),
                ),
            ]);
            Ok(Config::from_lookup(|name| settings.get(name).cloned())?)
        },
    )
    .await?;
    let token = target
        .viewer_token
        .clone()
        .context(if target.local.is_some() {
            "no viewer token"
        } else {
            "--url needs --token (or LOGSTREAM_TOKEN)"
        })?;
    let (url, key, redis_url) = (
        target.url.clone(),
        target.ingest_key.clone(),
        target.redis_url.clone(),
    );
    let local = &target.local;
    let owner = if local.is_some() {
        dev::DEV_USER.to_owned()
    } else {
        opts.owner.clone()
    };
    let service_port = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")))
        .and_then(|u| u.port_or_known_default());
    let mut redis = match &redis_url {
        Some(r) => Some(
            redis::Client::open(r.as_str())?
                .get_multiplexed_async_connection()
                .await
                .context("connecting to Redis for its figures")?,
        ),
        None => None,
    };

    // A failure is retried for a while, then counted: the soak reports, it does not stop.
    let retry = RetryPolicy {
        give_up_after: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    let writer = Client::new(&url, Some(key))?.with_retry(retry);
    let reader = Client::new(&url, Some(token))?.with_retry(retry);
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);

    let slots: Vec<watch::Receiver<Option<JobId>>> = (0..opts.jobs)
        .map(|slot| {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(write_jobs(
                slot,
                writer.clone(),
                owner.clone(),
                opts.clone(),
                tx,
                counters.clone(),
                stop.clone(),
            ));
            rx
        })
        .collect();
    let viewers: Vec<_> = (0..opts.viewers)
        .map(|n| {
            tokio::spawn(view_jobs(
                reader.clone(),
                slots[n % slots.len()].clone(),
                opts.job_lines,
                counters.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let started = Instant::now();
    let mut samples = Vec::new();
    let (mut posted, mut delivered, mut at) = (0, 0, started);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
    while started.elapsed() < opts.duration {
        tick.tick().await;
        let now = Instant::now();
        let secs = now.duration_since(at).as_secs_f64().max(1e-9);
        let p = counters.sent.load(Ordering::Relaxed);
        let d = counters.delivered.load(Ordering::Relaxed);
        let (redis_clients, redis_mb) = match redis.as_mut() {
            Some(conn) => redis_figures(conn).await,
            None => (None, None),
        };
        let oldest_unarchived_secs = match redis.as_mut() {
            Some(conn) => {
                let jobs: Vec<JobId> = slots.iter().filter_map(|s| s.borrow().clone()).collect();
                oldest_unarchived(conn, &jobs).await
            }
            None => None,
        };
        let sample = Sample {
            t: now.duration_since(started).as_secs_f64(),
            rss_mb: rss_kb().map(|kb| kb as f64 / 1024.0),
            fds: open_fds(),
            service_conns: service_port.and_then(established_to),
            redis_clients,
            redis_mb,
            feeds: local.as_ref().map(|s| s.sse().hub().feeds() as u64),
            posted_per_sec: (p - posted) as f64 / secs,
            delivered_per_sec: (d - delivered) as f64 / secs,
            jobs_done: counters.jobs_done.load(Ordering::Relaxed),
            oldest_unarchived_secs,
        };
        eprintln!("{}", row(&sample));
        samples.push(sample);
        (posted, delivered, at) = (p, d, now);
    }
    let duration = started.elapsed();

    // Writers finish their current job (set it ready); viewers then see `done`.
    stop_tx.send_replace(true);
    for viewer in viewers {
        let _ = viewer.await;
    }
    // With every viewer gone, the feeds end (within one XREAD block) and with them
    // their Redis connections: what is left is what the load leaves behind.
    let mut after = None;
    if let Some(server) = &local {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.sse().hub().feeds() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (redis_clients, _) = match redis.as_mut() {
            Some(conn) => redis_figures(conn).await,
            None => (None, None),
        };
        after = Some(Settled {
            feeds: server.sse().hub().feeds() as u64,
            redis_clients,
        });
    }
    drop(target);

    let trends = trends(&samples, opts.warmup);
    let c = &counters;
    let wrong = c.wrong.load(Ordering::Relaxed);
    let errors = c.errors.load(Ordering::Relaxed);
    Ok(SoakReport {
        jobs: opts.jobs,
        viewers: opts.viewers,
        duration_secs: duration.as_secs_f64(),
        lines_posted: c.posted.load(Ordering::Relaxed),
        lines_delivered: c.delivered.load(Ordering::Relaxed),
        jobs_finished: c.jobs_done.load(Ordering::Relaxed),
        jobs_followed_whole: c.whole.load(Ordering::Relaxed),
        jobs_followed_wrong: wrong,
        errors,
        max_oldest_unarchived_secs: samples
            .iter()
            .filter_map(|s| s.oldest_unarchived_secs)
            .reduce(f64::max),
        flat: !trends.is_empty()
            && trends.iter().all(|t| t.flat)
            && wrong == 0
            && errors == 0
            && after.as_ref().is_none_or(|a| a.feeds == 0),
        after,
        samples,
        trends,
    })
}

/// One writer slot: jobs one after another until told to stop.
async fn write_jobs(
    slot: usize,
    client: Client,
    owner: String,
    opts: SoakOptions,
    current: watch::Sender<Option<JobId>>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let batch = (opts.rate / 10).max(1);
    let pause = Duration::from_secs_f64(batch as f64 / opts.rate as f64);
    // Slots start spread over one job's length, so jobs end and start all the time
    // rather than all at once.
    let job_secs = opts.job_lines as f64 / opts.rate as f64;
    let offset = Duration::from_secs_f64(job_secs * slot as f64 / opts.jobs as f64);
    tokio::select! {
        () = tokio::time::sleep(offset) => {}
        _ = stop.changed() => return,
    }
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let job = match JobId::parse(&format!(
            "soak-{slot}-{n}-{}",
            logstream_core::ids::random_hex(4)
        )) {
            Ok(job) => job,
            Err(_) => return,
        };
        let started = async {
            client.create_job(Some(&job), &owner, &[]).await?;
            client.set_status(&job, JobStatus::Running).await
        };
        if started.await.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        current.send_replace(Some(job.clone()));
        let (lines, upload) = Upload::start(client.clone(), job.clone(), UploadOptions::default());
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(pause);
        while sent < opts.job_lines && !*stop.borrow() {
            tick.tick().await;
            let chunk: Vec<LogLine> = (sent..(sent + batch).min(opts.job_lines))
                .map(|i| {
                    LogLine::new(
                        LineStream::Stdout,
                        format!(
                            "{i} npm http fetch GET 200 https://registry.npmjs.org/pkg-{i} 12ms"
                        ),
                    )
                })
                .collect();
            sent += chunk.len() as u64;
            counters
                .sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if lines.send(chunk).await.is_err() {
                break;
            }
        }
        drop(lines);
        let report = upload.finish().await;
        counters.posted.fetch_add(report.lines, Ordering::Relaxed);
        let status = if report.error.is_none() && report.lines == sent {
            JobStatus::Ready
        } else {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            JobStatus::Failed
        };
        if client.set_status(&job, status).await.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        counters.jobs_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// One viewer: its slot's jobs, each from the start to `done`.
async fn view_jobs(
    client: Client,
    mut slot: watch::Receiver<Option<JobId>>,
    job_lines: u64,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let job = slot.borrow_and_update().clone();
        if let Some(job) = job {
            let mut follow = client.follow(&job, FollowStart::Beginning);
            let mut next = 0u64;
            let mut in_order = true;
            loop {
                match follow.next().await {
                    Ok(Some(FollowEvent::Entry(entry))) => {
                        if let EntryBody::Line { text, .. } = entry.body {
                            counters.delivered.fetch_add(1, Ordering::Relaxed);
                            let number = text.split(' ').next().and_then(|n| n.parse().ok());
                            in_order &= number == Some(next);
                            next += 1;
                        }
                    }
                    Ok(Some(FollowEvent::Done(status))) => {
                        // A job stopped early by the end of the soak is shorter.
                        let whole = next == job_lines || (*stop.borrow() && next < job_lines);
                        if in_order && whole && status == JobStatus::Ready {
                            counters.whole.fetch_add(1, Ordering::Relaxed);
                        } else if !*stop.borrow() {
                            counters.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(Some(FollowEvent::Deleted)) | Ok(None) => break,
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        if *stop.borrow() {
            return;
        }
        // The slot's next job (or the end: the sender is gone).
        if slot.changed().await.is_err() {
            return;
        }
    }
}

/// Reads one figure of a sample.
type Figure = fn(&Sample) -> Option<f64>;

/// Means of each figure over the first and the last third of the samples after
/// `warmup`. Memory may grow by 10 % (and 5 MB), connection counts by 10 % (and 3).
fn trends(samples: &[Sample], warmup: Duration) -> Vec<Trend> {
    let measured: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= warmup.as_secs_f64())
        .collect();
    let third = measured.len() / 3;
    if third == 0 {
        return Vec::new();
    }
    let figures: [(&'static str, Figure, f64); 5] = [
        ("rss_mb", |s| s.rss_mb, 5.0),
        ("redis_mb", |s| s.redis_mb, 5.0),
        ("fds", |s| s.fds.map(|n| n as f64), 3.0),
        ("service_conns", |s| s.service_conns.map(|n| n as f64), 3.0),
        ("redis_clients", |s| s.redis_clients.map(|n| n as f64), 3.0),
    ];
    let mean = |part: &[&Sample], f: Figure| -> Option<f64> {
        let values: Vec<f64> = part.iter().filter_map(|s| f(s)).collect();
        (values.len() == part.len()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    figures
        .into_iter()
        .filter_map(|(figure, f, slack)| {
            let first = mean(&measured[..third], f)?;
            let last = mean(&measured[measured.len() - third..], f)?;
            Some(Trend {
                figure,
                first,
                last,
                flat: last <= first * 1.10 + slack,
            })
        })
        .collect()
}

fn row(s: &Sample) -> String {
    let opt =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"));
    let int = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    format!(
        "{:>6.0} {:>8} {:>6} {:>6} {:>7} {:>9} {:>6} {:>9.0} {:>11.0} {:>6} {:>10}",
        s.t,
        opt(s.rss_mb, 1),
        int(s.fds),
        int(s.service_conns),
        int(s.redis_clients),
        opt(s.redis_mb, 1),
        int(s.feeds),
        s.posted_per_sec,
        s.delivered_per_sec,
        s.jobs_done,
        opt(s.oldest_unarchived_secs, 1)
    )
}

/// The header of the rows printed while the soak runs.
pub const HEADER: &str = "   t s   rss MB    fds  conns redis c  redis MB  feeds  posted/s delivered/s   jobs  unarch. s";

/// The report as text: the verdict with its figures.
pub fn table(r: &SoakReport) -> String {
    let mut out = format!(
        "{} jobs, {} viewers, {:.0} s: {} lines posted, {} delivered, {} jobs finished, \
         {} followed whole, {} wrong, {} errors\n",
        r.jobs,
        r.viewers,
        r.duration_secs,
        r.lines_posted,
        r.lines_delivered,
        r.jobs_finished,
        r.jobs_followed_whole,
        r.jobs_followed_wrong,
        r.errors
    );
    if let Some(after) = &r.after {
        out.push_str(&format!(
            "after the load: {} feeds, {} Redis clients\n",
            after.feeds,
            after
                .redis_clients
                .map_or_else(|| "-".to_owned(), |n| n.to_string())
        ));
    }
    if let Some(age) = r.max_oldest_unarchived_secs {
        out.push_str(&format!(
            "oldest unarchived entry, at its worst: {age:.1} s\n"
        ));
    }
    out.push_str("figure          first third  last third  flat\n");
    for t in &r.trends {
        out.push_str(&format!(
            "{:<15} {:>11.1} {:>11.1}  {}\n",
            t.figure,
            t.first,
            t.last,
            if t.flat { "yes" } else { "NO" }
        ));
    }
    out.push_str(if r.flat {
        "verdict: flat\n"
    } else if r.trends.is_empty() {
        "verdict: too few samples after the warm-up (run longer)\n"
    } else {
        "verdict: NOT flat (see above)\n"
    });
    out
}

/// The age in seconds of the oldest entry of `jobs` that is not archived yet: the first
/// entry after the one the job's meta says is archived (`arch_id`). 0 when every
/// entry is archived.
async fn oldest_unarchived(
    conn: &mut redis::aio::MultiplexedConnection,
    jobs: &[JobId],
) -> Option<f64> {
    let mut pipe = redis::pipe();
    for job in jobs {
        pipe.cmd("HGET")
            .arg(format!("job:{{{job}}}:meta"))
            .arg("arch_id");
    }
    let archived: Vec<Option<String>> = pipe.query_async(conn).await.ok()?;
    let mut pipe = redis::pipe();
    for (job, upto) in jobs.iter().zip(&archived) {
        let from = upto
            .as_deref()
            .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        pipe.cmd("XRANGE")
            .arg(format!("job:{{{job}}}:logs"))
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(1);
    }
    let firsts: Vec<Vec<(String, HashMap<String, String>)>> = pipe.query_async(conn).await.ok()?;
    let now = logstream_core::model::now_ms();
    let oldest = firsts
        .iter()
        .filter_map(|entries| entries.first())
        .filter_map(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
        .min();
    Some(oldest.map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0))
}

/// Redis `connected_clients` and `used_memory` (MB).
async fn redis_figures(conn: &mut redis::aio::MultiplexedConnection) -> (Option<u64>, Option<f64>) {
    let info: Option<String> = redis::cmd("INFO")
        .arg("clients")
        .arg("memory")
        .query_async(conn)
        .await
        .ok();
    let field = |name: &str| -> Option<u64> {
        info.as_deref()?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    (
        field("connected_clients"),
        field("used_memory").map(|b| b as f64 / 1_048_576.0),
    )
}

/// `VmRSS` of this process, in kB (Linux).
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Open file descriptors of this process (Linux).
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Established TCP connections whose local port is `port` (Linux): the service's
/// side of its clients' connections.
fn established_to(port: u16) -> Option<u64> {
    let mut n = 0;
    let mut any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        any = true;
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            let local_port = local
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && state == Some("01") {
                n += 1;
            }
        }
    }
    any.then_some(n)
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss: f64, conns: u64) -> Sample {
        Sample {
            t,
            rss_mb: Some(rss),
            fds: Some(conns),
            service_conns: Some(conns),
            redis_clients: None,
            redis_mb: None,
            feeds: None,
            posted_per_sec: 0.0,
            delivered_per_sec: 0.0,
            jobs_done: 0,
            oldest_unarchived_secs: None,
        }
    }

    #[test]
    fn growth_beyond_the_tolerance_is_not_flat() {
        let flat: Vec<Sample> = (0..9u32).map(|i| sample(f64::from(i), 50.0, 200)).collect();
        let steady = trends(&flat, Duration::ZERO);
        assert_eq!(steady.len(), 3, "figures without values are left out");
        assert!(steady.iter().all(|t| t.flat));
        let growing: Vec<Sample> = (0..9u32)
            .map(|i| {
                sample(
                    f64::from(i),
                    50.0 + 10.0 * f64::from(i),
                    200 + 20 * u64::from(i),
                )
            })
            .collect();
        assert!(trends(&growing, Duration::ZERO).iter().all(|t| !t.flat));
        assert!(
            trends(&flat, Duration::from_secs(100)).is_empty(),
            "all warm-up"
        );
    }
}
