//! Metrics in CloudWatch Embedded Metric Format (EMF): counters and timings gathered in
//! the process and written as one JSON line at most every [`FLUSH_EVERY`] (CloudWatch
//! Logs turns such a line into metrics; nothing else to call, no agent). Never a line
//! per entry: a busy ingest instance writes one line per ten seconds whatever its load.
//!
//! Namespace `logstream`, one dimension, `Function` (the function's name from
//! `AWS_LAMBDA_FUNCTION_NAME`). Outside Lambda nothing is written unless
//! `LOGSTREAM_METRICS=1`. `LOGSTREAM_METRICS_SECS` changes the interval (whole seconds,
//! at least 1; anything else is the default).
//!
//! | metric | unit | by |
//! |---|---|---|
//! | `Batches`, `LinesIngested`, `BytesIngested`, `LinesDropped` | Count, Bytes | ingest: batches stored, their lines, their text bytes, lines past the job's size limit |
//! | `BatchLatency` | Milliseconds | ingest: a batch request, from routing to answer |
//! | `StreamsOpened`, `DeliveryLag` | Count, Milliseconds | sse: streams started; from an entry's time to its frame being written |
//! | `WsPushes`, `WsGone` | Count | ingest: messages pushed to WebSocket connections; connections found gone (410) |
//! | `RedactedLines` | Count | ingest: lines stored with something redacted (a secret shape, a registered secret, a private key) |
//! | `Viewers` | Count | sse: the most streams open at once in the process since its last line (a gauge: sum it over processes with care, read its maximum) |
//! | `JobsArchived`, `ArchiveErrors` | Count | archiver: jobs archived (segments or whole); jobs whose archiving failed |
//! | `SegmentsWritten` | Count | archiver: segments of running jobs stored |
//! | `ArchiveLag` | Milliseconds | archiver: for each segment stored, how old its oldest entry was (how long a line of a running job waited for the archive) |
//! | `RedisErrors` | Count | any function: a request answered 503 because Redis was unreachable |
//!
//! Timings are sent as EMF value/count pairs over fixed buckets (1, 2, 5, 10, 20, 50 ms
//! … 1, 2, 5, 10 min), which CloudWatch's percentiles read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// The most time between two metric lines while there is something to say.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// A count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Batches,
    LinesIngested,
    BytesIngested,
    LinesDropped,
    StreamsOpened,
    WsPushes,
    WsGone,
    JobsArchived,
    ArchiveErrors,
    RedisErrors,
    RedactedLines,
    SegmentsWritten,
}

impl Counter {
    const ALL: [Self; 12] = [
        Self::Batches,
        Self::LinesIngested,
        Self::BytesIngested,
        Self::LinesDropped,
        Self::StreamsOpened,
        Self::WsPushes,
        Self::WsGone,
        Self::JobsArchived,
        Self::ArchiveErrors,
        Self::RedisErrors,
        Self::RedactedLines,
        Self::SegmentsWritten,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Batches => "Batches",
            Self::LinesIngested => "LinesIngested",
            Self::BytesIngested => "BytesIngested",
            Self::LinesDropped => "LinesDropped",
            Self::StreamsOpened => "StreamsOpened",
            Self::WsPushes => "WsPushes",
            Self::WsGone => "WsGone",
            Self::JobsArchived => "JobsArchived",
            Self::ArchiveErrors => "ArchiveErrors",
            Self::RedisErrors => "RedisErrors",
            Self::RedactedLines => "RedactedLines",
            Self::SegmentsWritten => "SegmentsWritten",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::BytesIngested => "Bytes",
            _ => "Count",
        }
    }
}

/// A duration, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    BatchLatency,
    DeliveryLag,
    ArchiveLag,
}

impl Timing {
    const ALL: [Self; 3] = [Self::BatchLatency, Self::DeliveryLag, Self::ArchiveLag];

    fn name(self) -> &'static str {
        match self {
            Self::BatchLatency => "BatchLatency",
            Self::DeliveryLag => "DeliveryLag",
            Self::ArchiveLag => "ArchiveLag",
        }
    }
}

/// A level: how many of something are open now. A line reports the highest level
/// since the previous line, so a burst between two lines is not missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    Viewers,
}

impl Gauge {
    const ALL: [Self; 1] = [Self::Viewers];

    fn name(self) -> &'static str {
        match self {
            Self::Viewers => "Viewers",
        }
    }
}

/// Upper bounds of the timing buckets, in ms; a value goes to the first bound it does
/// not pass (and the last takes everything longer).
const BUCKETS: [u64; 18] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000,
    300_000, 600_000,
];

/// What a process gathered since its last line.
pub struct Metrics {
    counters: [AtomicU64; Counter::ALL.len()],
    timings: [[AtomicU64; BUCKETS.len()]; Timing::ALL.len()],
    /// Each gauge's level now, and its highest since the last line.
    gauges: [(AtomicU64, AtomicU64); Gauge::ALL.len()],
    /// When the last line was written; `None` before the first, which is written at the
    /// first chance (an environment that lives for a few seconds still reports).
    last: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            timings: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            gauges: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
            last: Mutex::new(None),
        }
    }
}

impl Metrics {
    pub fn count(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn time(&self, timing: Timing, ms: u64) {
        let bucket = BUCKETS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(BUCKETS.len() - 1);
        self.timings[timing as usize][bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// One more of `gauge` is open.
    pub fn rise(&self, gauge: Gauge) {
        let (level, peak) = &self.gauges[gauge as usize];
        let now = level.fetch_add(1, Ordering::Relaxed) + 1;
        peak.fetch_max(now, Ordering::Relaxed);
    }

    /// One of `gauge` closed.
    pub fn fall(&self, gauge: Gauge) {
        let (level, _) = &self.gauges[gauge as usize];
        // Never below zero, even for a fall without its rise.
        let _ = level.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The EMF document of everything gathered (taken: the next one starts from zero),
    /// or `None` when nothing was.
    pub fn take(&self, function: &str, now_ms: u64) -> Option<Value> {
        let mut metrics = Vec::new();
        let mut doc = Map::new();
        for counter in Counter::ALL {
            let n = self.counters[counter as usize].swap(0, Ordering::Relaxed);
            if n > 0 {
                metrics.push(json!({"Name": counter.name(), "Unit": counter.unit()}));
                doc.insert(counter.name().into(), json!(n));
            }
        }
        for timing in Timing::ALL {
            let (mut values, mut counts) = (Vec::new(), Vec::new());
            for (bucket, bound) in BUCKETS.iter().enumerate() {
                let n = self.timings[timing as usize][bucket].swap(0, Ordering::Relaxed);
                if n > 0 {
                    values.push(*bound);
                    counts.push(n);
                }
            }
            if !values.is_empty() {
                metrics.push(json!({"Name": timing.name(), "Unit": "Milliseconds"}));
                doc.insert(
                    timing.name().into(),
                    json!({"Values": values, "Counts": counts}),
                );
            }
        }
        for gauge in Gauge::ALL {
            let (level, peak) = &self.gauges[gauge as usize];
            // The next interval's highest starts from the level now.
            let n = peak.swap(level.load(Ordering::Relaxed), Ordering::Relaxed);
            if n > 0 {
                metrics.push(json!({"Name": gauge.name(), "Unit": "Count"}));
                doc.insert(gauge.name().into(), json!(n));
            }
        }
        if metrics.is_empty() {
            return None;
        }
        doc.insert("Function".into(), json!(function));
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{
                    "Namespace": "logstream",
                    "Dimensions": [["Function"]],
                    "Metrics": metrics,
                }],
            }),
        );
        Some(Value::Object(doc))
    }

    /// Whether a line is due (and, if so, it now counts as written).
    fn due(&self, every: Duration) -> bool {
        let Ok(mut last) = self.last.try_lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

struct Process {
    metrics: Metrics,
    /// The function's name; `None`: write nothing (outside Lambda, unasked).
    function: Option<String>,
    every: Duration,
}

static PROCESS: LazyLock<Process> = LazyLock::new(|| {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok().or_else(|| {
        (std::env::var("LOGSTREAM_METRICS").as_deref() == Ok("1")).then(|| "logstream".into())
    });
    let every = std::env::var("LOGSTREAM_METRICS_SECS")
        .ok()
        .and_then(|secs| secs.parse::<u64>().ok())
        .filter(|&secs| secs >= 1)
        .map_or(FLUSH_EVERY, Duration::from_secs);
    Process {
        metrics: Metrics::default(),
        function,
        every,
    }
});

/// Adds `n` to `counter`.
pub fn count(counter: Counter, n: u64) {
    if PROCESS.function.is_some() {
        PROCESS.metrics.count(counter, n);
    }
}

/// Counts one more of `gauge` open until the answer is dropped.
#[must_use = "the gauge falls when this is dropped"]
pub fn open(gauge: Gauge) -> Opened {
    if PROCESS.function.is_some() {
        PROCESS.metrics.rise(gauge);
    }
    Opened(gauge)
}

/// One of a [`Gauge`], open while this lives ([`open`]).
#[derive(Debug)]
pub struct Opened(Gauge);

impl Drop for Opened {
    fn drop(&mut self) {
        if PROCESS.function.is_some() {
            PROCESS.metrics.fall(self.0);
        }
    }
}

/// Records a duration of `timing`.
pub fn time(timing: Timing, elapsed: Duration) {
    if PROCESS.function.is_some() {
        PROCESS.metrics.time(
            timing,
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        );
    }
}

/// Writes the metric line if [`FLUSH_EVERY`] has passed since the last one: called after
/// each request (and now and then by long streams), it costs a lock attempt otherwise.
pub fn flush_if_due() {
    if PROCESS.metrics.due(PROCESS.every) {
        flush();
    }
}

/// Writes the metric line now, if anything was gathered: at the end of work that
/// happens seldom (an archiver run), whose counts must not wait for the next one.
pub fn flush() {
    let Some(function) = &PROCESS.function else {
        return;
    };
    if let Some(doc) = PROCESS
        .metrics
        .take(function, logstream_core::model::now_ms())
    {
        println!("{doc}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_an_emf_document_of_what_was_gathered_and_then_starts_again() {
        let m = Metrics::default();
        assert_eq!(m.take("ingest", 1), None, "nothing gathered: no line");
        m.count(Counter::LinesIngested, 100);
        m.count(Counter::LinesIngested, 50);
        m.count(Counter::BytesIngested, 4096);
        for ms in [0, 1, 3, 3, 700, 10_000_000] {
            m.time(Timing::BatchLatency, ms);
        }
        let doc = m.take("logstream-ingest", 1_700_000_000_000).unwrap();
        assert_eq!(doc["Function"], "logstream-ingest");
        assert_eq!(doc["LinesIngested"], 150);
        assert_eq!(doc["BytesIngested"], 4096);
        assert_eq!(
            doc["BatchLatency"],
            json!({"Values": [1, 5, 1000, 600_000], "Counts": [2, 2, 1, 1]})
        );
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], 1_700_000_000_000u64);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "logstream");
        assert_eq!(directive["Dimensions"], json!([["Function"]]));
        assert_eq!(
            directive["Metrics"],
            json!([
                {"Name": "LinesIngested", "Unit": "Count"},
                {"Name": "BytesIngested", "Unit": "Bytes"},
                {"Name": "BatchLatency", "Unit": "Milliseconds"},
            ])
        );
        // Every metric named in the directive is a member of the document.
        for metric in directive["Metrics"].as_array().unwrap() {
            assert!(doc.get(metric["Name"].as_str().unwrap()).is_some());
        }
        assert_eq!(
            m.take("logstream-ingest", 2),
            None,
            "taken: starts from zero"
        );
    }

    #[test]
    fn a_gauge_reports_its_highest_level_since_the_last_line() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.rise(Gauge::Viewers);
        }
        m.fall(Gauge::Viewers);
        m.fall(Gauge::Viewers);
        let doc = m.take("logstream-sse", 1).unwrap();
        assert_eq!(doc["Viewers"], 3, "the peak, not the level of 1 now");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"],
            json!([{"Name": "Viewers", "Unit": "Count"}])
        );
        let doc = m.take("logstream-sse", 2).unwrap();
        assert_eq!(doc["Viewers"], 1, "the one still open is still reported");
        m.fall(Gauge::Viewers);
        m.fall(Gauge::Viewers);
        m.rise(Gauge::Viewers);
        m.fall(Gauge::Viewers);
        assert_eq!(
            m.take("logstream-sse", 3).unwrap()["Viewers"],
            1,
            "a burst between lines"
        );
        assert_eq!(
            m.take("logstream-sse", 4),
            None,
            "none open, nothing to say"
        );
    }

    #[test]
    fn the_first_line_is_due_at_once_then_once_per_interval() {
        let m = Metrics::default();
        assert!(m.due(Duration::from_secs(3600)), "the first");
        assert!(!m.due(Duration::from_secs(3600)));
        assert!(m.due(Duration::ZERO));
    }
}
