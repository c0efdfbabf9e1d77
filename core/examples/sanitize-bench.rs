//! What the sanitizer costs: ns per line for a clean, a secret-bearing and a coloured
//! line, with no registered secrets and with the most a job may register (100 of
//! 4 096 bytes), the text alone (`Batch::line`) and with its colours kept
//! (`Batch::coloured`), whole batches made into entries as ingest makes them
//! (`entries::build`, build markers off and on), and what building that large
//! sanitizer costs in time and memory.
//!
//! `cargo run --release -p logstream-core --example sanitize-bench`
//!
//! Memory is the process's resident-size growth while the sanitizer is built and
//! kept and its peak while it is built (from `/proc/self/statm` and `status`, so
//! Linux only; rough but allocator-independent figures), beside the sanitizer's own
//! estimate, [`Sanitizer::memory_bytes`].

use std::hint::black_box;
use std::time::{Duration, Instant};

use std::borrow::Cow;

use logstream_core::batch::RawLine;
use logstream_core::entries::{self, Job, Options};
use logstream_core::markers::Open;
use logstream_core::model::LineStream;
use logstream_core::sanitize::Sanitizer;

/// Lines per timing run; one [`Batch`](logstream_core::sanitize::Batch) per request
/// of this many lines, as ingest uses them (a request holds at most 10 000).
const LINES_PER_BATCH: usize = 10_000;
const BATCHES: usize = 50;

const SECRETS: usize = 100;
const SECRET_BYTES: usize = 4096;

fn main() {
    let clean = "added 120 packages, and audited 121 packages in 3s; 14 packages are looking for ";
    assert_eq!(clean.len(), 80);
    let secret = "export GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789 password=hunter2";
    let coloured =
        "\x1b[32m\u{2714}\x1b[0m compiled \x1b[1mlogstream-core\x1b[0m in \x1b[33m3.2s\x1b[0m";

    // First, in a fresh process: how much one build takes at its peak.
    let secrets = large_secrets();
    let peak_before = peak_resident_bytes();
    drop(black_box(Sanitizer::new(&secrets)));
    let peak = peak_resident_bytes().saturating_sub(peak_before);
    let (large, build) = build_large(&secrets);
    let plain = Sanitizer::new(&[]);
    let few = Sanitizer::new(&[
        "hunter2-but-longer".to_string(),
        "s3cr3t/with+base64=".to_string(),
        "0123456789abcdef0123456789abcdef01234567".to_string(),
    ]);

    println!("per line (ns), median of 5 runs of {BATCHES} x {LINES_PER_BATCH} lines:");
    println!(
        "{:<18} {:>12} {:>12} {:>26}",
        "line", "no secrets", "3 secrets", "100 x 4096-byte secrets"
    );
    for mode in [
        Mode::Text,
        Mode::Coloured,
        Mode::Entries { markers: false },
        Mode::Entries { markers: true },
    ] {
        match mode {
            Mode::Text => {}
            Mode::Coloured => {
                println!();
                println!("keeping colours too (Batch::coloured), per line (ns):");
            }
            Mode::Entries { markers } => {
                println!();
                println!(
                    "made into entries as ingest does (entries::build, colours kept, markers {}), per line (ns):",
                    if markers { "on" } else { "off" }
                );
            }
        }
        for (name, line) in [
            ("clean, 80 bytes", clean),
            ("with secrets", secret),
            ("coloured (SGR)", coloured),
        ] {
            println!(
                "{name:<18} {:>12.0} {:>12.0} {:>26.0}",
                ns_per_line(&plain, line, mode),
                ns_per_line(&few, line, mode),
                ns_per_line(&large, line, mode)
            );
        }
    }
    println!(
        "{:<18} {:>12} {:>12} {:>26}",
        "memory_bytes (KiB)",
        plain.memory_bytes() / 1024,
        few.memory_bytes() / 1024,
        large.memory_bytes() / 1024
    );
    println!();
    println!(
        "build, {SECRETS} x {SECRET_BYTES}-byte secrets: {:.1} ms (median of 5)",
        build.as_secs_f64() * 1e3
    );
    let before = resident_bytes();
    let kept = Sanitizer::new(&secrets);
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "resident growth while it is kept: {:.2} MiB",
        grown as f64 / 1024.0 / 1024.0
    );
    println!(
        "its own estimate (Sanitizer::memory_bytes): {:.2} MiB",
        kept.memory_bytes() as f64 / 1024.0 / 1024.0
    );
    println!(
        "peak resident growth while one is built: {:.2} MiB",
        peak as f64 / 1024.0 / 1024.0
    );
    drop(black_box(kept));
}

/// The most secrets a job may register: 100 of 4 096 random base64 characters.
fn large_secrets() -> Vec<String> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    (0..SECRETS)
        .map(|_| {
            (0..SECRET_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let alphabet =
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                    alphabet[(state % 64) as usize] as char
                })
                .collect()
        })
        .collect()
}

/// The sanitizer of a job with `secrets`, and the median time of five builds.
fn build_large(secrets: &[String]) -> (Sanitizer, Duration) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let started = Instant::now();
        let sanitizer = Sanitizer::new(black_box(secrets));
        times.push(started.elapsed());
        last = Some(sanitizer);
    }
    times.sort();
    (last.expect("five builds"), times[2])
}

/// What a timing run calls: the text alone, the text and its colours, or a whole
/// batch made into entries.
#[derive(Clone, Copy)]
enum Mode {
    Text,
    Coloured,
    Entries { markers: bool },
}

fn ns_per_line(sanitizer: &Sanitizer, line: &str, mode: Mode) -> f64 {
    let lines: Vec<RawLine<'_>> = (0..LINES_PER_BATCH)
        .map(|_| RawLine {
            stream: LineStream::Stdout,
            text: Cow::Borrowed(line),
            ts: None,
        })
        .collect();
    let open = Open::default();
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..BATCHES {
                let mut batch = sanitizer.batch();
                match mode {
                    Mode::Text => {
                        for _ in 0..LINES_PER_BATCH {
                            drop(black_box(batch.line(black_box(line))));
                        }
                    }
                    Mode::Coloured => {
                        for _ in 0..LINES_PER_BATCH {
                            drop(black_box(batch.coloured(black_box(line))));
                        }
                    }
                    Mode::Entries { markers } => {
                        let job = Job {
                            sanitizer,
                            secrets: &[],
                            carry: 0,
                            open: &open,
                        };
                        let options = Options {
                            colour: true,
                            markers,
                            now: 1,
                        };
                        drop(black_box(entries::build(job, black_box(&lines), options)));
                    }
                }
            }
            started.elapsed().as_nanos() as f64 / (BATCHES * LINES_PER_BATCH) as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The process's peak resident size so far (`VmHWM`).
fn peak_resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
