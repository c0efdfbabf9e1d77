//! Measures the time to archive one finished job (50 000 lines by default) with the
//! archiver's own code: from a private Redis to a private S3-compatible server (moto,
//! see `logstream_testkit::s3_server`) and to a local folder, plus the Redis read alone.
//!
//! ```sh
//! scripts/ensure-deps
//! cargo run --release -p logstream-archiver --example archive-bench -- [--lines N] [--width CHARS] [--runs R]
//! ```
//!
//! Every figure is the median of the runs; each run archives a fresh job. Redis, moto
//! and the archiver share the machine, and moto is a Python server, so the S3 figure is
//! an upper bound for the archiver's own work.

use std::time::{Duration, Instant};

use logstream_archiver::{Archived, Archiver, Outcome, Settings};
use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, now_ms};
use logstream_shared::archive::Archive;
use logstream_shared::archive::s3::S3Archive;
use logstream_shared::store::{LogStore, Retention};
use logstream_testkit::fixtures::{seed_job, stdout_line};
use logstream_testkit::redis_server::RedisServer;
use logstream_testkit::s3_server::S3Server;

struct Options {
    lines: usize,
    width: usize,
    runs: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut opts = Options {
        lines: 50_000,
        width: 80,
        runs: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?
                .parse()?)
        };
        match flag.as_str() {
            "--lines" => opts.lines = value()?,
            "--width" => opts.width = value()?,
            "--runs" => opts.runs = value()?.max(1),
            other => anyhow::bail!("unknown option {other} (--lines, --width, --runs)"),
        }
    }
    Ok(opts)
}

/// An npm/vite-like line of about `width` characters.
fn line(i: usize, width: usize) -> String {
    let mut t = format!(
        "[{i:06}] added @scope/pkg-{} {}.{}.{} in {}ms ",
        i % 977,
        i % 7,
        i % 13,
        i % 29,
        i % 311
    );
    while t.len() < width {
        t.push_str("node_modules/.vite/deps ");
    }
    t.truncate(width);
    t
}

/// A finished job with `lines` lines, written in ingest-sized batches.
async fn finished_job(store: &LogStore, n: usize, opts: &Options) -> anyhow::Result<JobId> {
    let job = JobId::parse(&format!("bench-{}-{n}", now_ms()))?;
    seed_job(store, &job, "bench").await;
    store
        .set_status(&job, JobStatus::Running, now_ms(), None)
        .await?;
    let mut i = 0;
    while i < opts.lines {
        let batch: Vec<String> = (i..(i + 1_000).min(opts.lines))
            .map(|k| stdout_line(&line(k, opts.width)))
            .collect();
        store.append(&job, "g", None, &batch).await?;
        i += batch.len();
    }
    store
        .set_status(&job, JobStatus::Ready, now_ms(), None)
        .await?;
    Ok(job)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = options()?;
    let redis = RedisServer::start()?;
    let s3_server = S3Server::start()?;
    let store = LogStore::open(
        &redis.url(),
        Retention {
            ttl_secs: 3_600,
            maxlen: (opts.lines as u64 + 10).max(50_000),
            ..Retention::defaults(true)
        },
    )?;
    let client = S3Archive::local_client(&s3_server.url());
    client.create_bucket().bucket("bench").send().await?;
    let s3 = Archive::S3(S3Archive::new(client, "bench"));
    let folder =
        std::env::temp_dir().join(format!("logstream-archive-bench-{}", std::process::id()));
    let dir = Archive::dir(&folder);

    let mut redis_read = Vec::new();
    let mut to_s3 = Vec::new();
    let mut to_dir = Vec::new();
    let mut figures = None;
    let mut n = 0;
    for _ in 0..opts.runs {
        // The Redis read alone, in the archiver's page size.
        let job = finished_job(&store, n, &opts).await?;
        n += 1;
        let started = Instant::now();
        let mut after = EntryId { ms: 0, seq: 0 };
        loop {
            let page = store
                .entries_after(&job, after, Settings::default().page_entries)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id;
        }
        redis_read.push(started.elapsed());

        for (archive, times) in [(&s3, &mut to_s3), (&dir, &mut to_dir)] {
            let job = finished_job(&store, n, &opts).await?;
            n += 1;
            let archiver = Archiver::new(store.clone(), Some(archive.clone()), Settings::default());
            let started = Instant::now();
            let outcome = archiver.archive_job(&job).await?;
            times.push(started.elapsed());
            match outcome {
                Outcome::Archived(done) if matches!(archive, Archive::S3(_)) => {
                    figures = Some(done)
                }
                Outcome::Archived(_) => {}
                other => anyhow::bail!("{job} was not archived: {other:?}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&folder);

    let Archived {
        entries,
        bytes,
        parts,
    } = figures.ok_or_else(|| anyhow::anyhow!("nothing archived"))?;
    println!(
        "archive one finished job: {} lines ({entries} entries, {:.1} MB, {parts} S3 part(s)), median of {} runs",
        opts.lines,
        bytes as f64 / 1e6,
        opts.runs
    );
    println!("| step | time | entries/s |");
    println!("|---|---|---|");
    for (name, times) in [
        ("Redis read alone (XRANGE pages of 1000)", redis_read),
        ("archive to S3 (moto, path-style)", to_s3),
        ("archive to a local folder", to_dir),
    ] {
        let t = median(times);
        println!(
            "| {name} | {:.0} ms | {:.0} |",
            ms(t),
            entries as f64 / t.as_secs_f64()
        );
    }
    Ok(())
}
