//! The uploader: lines in, batches out, every line stored once and in order.
//!
//! ```text
//! LineSender ──chunks (bounded)──▶ batcher ──sealed batch (1)──▶ poster ──POST──▶ ingest
//! ```
//!
//! - **Batching.** The batcher appends each line, already encoded as JSON, to the body
//!   of the batch being built. A batch is sealed when it reaches [`UploadOptions::flush_bytes`]
//!   or [`UploadOptions::max_lines`], or [`UploadOptions::linger`] after its first line,
//!   whichever comes first; while the poster is busy, the batch keeps filling up to its
//!   size limits, so a slow server gets fewer, larger requests. A body never exceeds
//!   the service's 1 MiB limit: a line's text is cut to [`MAX_TEXT_BYTES`] (far above
//!   the 16 KiB the service keeps, so the service still does the real cut and says how
//!   much it cut), which even fully `\u00XX`-escaped fits in one body.
//! - **No doubling.** Each batch gets a `seq` when it is first posted and keeps it
//!   through every retry, so a retry after a lost answer is answered
//!   `"duplicate": true` and stores nothing twice. Seqs are microseconds since the
//!   epoch (strictly increasing), so several `logstream run`s on one job, one after
//!   the other (one per stage), never collide. If a batch's *first* attempt is answered
//!   as a duplicate, this client's seq is behind the job's (another machine's clock,
//!   another writer): nothing was stored, so the seq leaps forward and the batch is
//!   posted again.
//! - **No loss, no reordering.** One request is in flight at a time; a batch is retried
//!   (see [`super::RetryPolicy`]) until it is stored, and the next one waits.
//! - **Bounded memory.** Every queue is bounded: when the server is slow or down,
//!   [`LineSender::send`] waits, and so does whoever produces the lines (for
//!   `logstream run`, the command itself, blocked on a full pipe).
//!
//! What this cannot promise: two writers posting `seq`-numbered batches to one job at
//! the same time (the service keeps one `seq` per job), and lines of a batch that
//! failed for good (the report says so).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use logstream_core::batch::{MAX_BODY_BYTES, MAX_LINES_PER_REQUEST, MAX_SEQ};
use logstream_core::ids::JobId;
use logstream_core::model::{LineStream, now_ms};

use super::{Client, ClientError};

/// Longest text sent for one line; longer lines are cut here (the service cuts
/// anything above 16 KiB anyway, saying how much it cut).
pub const MAX_TEXT_BYTES: usize = 128 * 1024;

/// Room left at the end of a body for `],"seq":N}`.
const CLOSE_RESERVE: usize = 32;
/// The first seq leap, in microseconds (one second); it doubles on each further leap.
const FIRST_LEAP: u64 = 1_000_000;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `stdout`, `stderr` or `system`.
    pub stream: LineStream,
    /// The line, without its line ending.
    pub text: String,
    /// When it was printed, in ms since the epoch (sent as the entry's `ts`).
    pub ts: u64,
}

impl LogLine {
    /// A line printed now.
    pub fn new(stream: LineStream, text: impl Into<String>) -> Self {
        Self {
            stream,
            text: text.into(),
            ts: now_ms(),
        }
    }
}

/// How lines are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// Longest a line waits for its batch to fill.
    pub linger: Duration,
    /// A batch whose body reaches this many bytes is sent.
    pub flush_bytes: usize,
    /// A batch with this many lines is sent (at most the service's 10 000).
    pub max_lines: usize,
    /// Chunks of lines [`LineSender::send`] may queue before it waits.
    pub queue: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(100),
            flush_bytes: 512 * 1024,
            max_lines: MAX_LINES_PER_REQUEST,
            queue: 8,
        }
    }
}

/// What an upload achieved.
#[derive(Debug, Default)]
pub struct UploadReport {
    /// Lines the service stored.
    pub lines: u64,
    /// Requests that stored them.
    pub batches: u64,
    /// Why the upload stopped early, if it did: lines sent after that were not stored.
    pub error: Option<ClientError>,
}

/// The uploader has stopped (its [`UploadReport`] says why); the lines were not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the log uploader has stopped")]
pub struct UploadStopped;

/// Where lines go. Cheap to clone; the upload ends when every clone is dropped.
#[derive(Debug, Clone)]
pub struct LineSender {
    tx: mpsc::Sender<Vec<LogLine>>,
}

impl LineSender {
    /// Queues `lines` (in order), waiting while the queue is full.
    pub async fn send(&self, lines: Vec<LogLine>) -> Result<(), UploadStopped> {
        if lines.is_empty() {
            return Ok(());
        }
        self.tx.send(lines).await.map_err(|_| UploadStopped)
    }
}

/// A running upload.
#[derive(Debug)]
pub struct Upload {
    batcher: JoinHandle<()>,
    poster: JoinHandle<UploadReport>,
}

impl Upload {
    /// Starts uploading to `job` with `client` (whose token may write to the job).
    pub fn start(client: Client, job: JobId, options: UploadOptions) -> (LineSender, Upload) {
        let (line_tx, line_rx) = mpsc::channel(options.queue.max(1));
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let batcher = tokio::spawn(batch_lines(line_rx, batch_tx, options));
        let poster = tokio::spawn(post_batches(client, job, batch_rx));
        (LineSender { tx: line_tx }, Upload { batcher, poster })
    }

    /// Waits until everything sent has been stored (or the upload failed). Every
    /// [`LineSender`] must have been dropped, or this waits for ever.
    pub async fn finish(self) -> UploadReport {
        let _ = self.batcher.await;
        match self.poster.await {
            Ok(report) => report,
            Err(e) => UploadReport {
                error: Some(ClientError::UploaderStopped(e.to_string())),
                ..UploadReport::default()
            },
        }
    }
}

/// A sealed batch: the body up to its last line, and how many lines it holds.
#[derive(Debug)]
struct SealedBatch {
    head: Vec<u8>,
    lines: usize,
}

impl SealedBatch {
    /// The complete body with `seq`.
    fn body(&self, seq: u64) -> Bytes {
        let mut body = Vec::with_capacity(self.head.len() + CLOSE_RESERVE);
        body.extend_from_slice(&self.head);
        body.extend_from_slice(format!("],\"seq\":{seq}}}").as_bytes());
        Bytes::from(body)
    }
}

#[derive(Serialize)]
struct WireLine<'a> {
    stream: LineStream,
    text: &'a str,
    ts: u64,
}

/// The batch being built: its JSON body so far.
struct BatchBuilder {
    options: UploadOptions,
    body: Vec<u8>,
    lines: usize,
    opened: Option<Instant>,
    full: bool,
    scratch: Vec<u8>,
}

const OPEN: &[u8] = b"{\"lines\":[";

impl BatchBuilder {
    fn new(options: UploadOptions) -> Self {
        let mut b = Self {
            options,
            body: Vec::new(),
            lines: 0,
            opened: None,
            full: false,
            scratch: Vec::new(),
        };
        b.reset();
        b
    }

    fn reset(&mut self) {
        self.body = Vec::with_capacity(self.options.flush_bytes.min(MAX_BODY_BYTES) + 4096);
        self.body.extend_from_slice(OPEN);
        self.lines = 0;
        self.opened = None;
        self.full = false;
    }

    fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Adds `line`, or leaves it out and marks the batch full when it would not fit.
    fn push(&mut self, line: &LogLine) -> bool {
        self.scratch.clear();
        let text = &line.text[..line.text.floor_char_boundary(MAX_TEXT_BYTES)];
        let wire = WireLine {
            stream: line.stream,
            text,
            ts: line.ts,
        };
        // Cannot fail: plain fields into a Vec.
        let _ = serde_json::to_writer(&mut self.scratch, &wire);
        let need = self.scratch.len() + usize::from(self.lines > 0);
        if self.lines > 0 && self.body.len() + need + CLOSE_RESERVE > MAX_BODY_BYTES {
            self.full = true;
            return false;
        }
        if self.lines > 0 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(&self.scratch);
        self.lines += 1;
        self.opened.get_or_insert_with(Instant::now);
        if self.body.len() >= self.options.flush_bytes
            || self.lines >= self.options.max_lines.clamp(1, MAX_LINES_PER_REQUEST)
        {
            self.full = true;
        }
        true
    }

    fn deadline(&self) -> Option<Instant> {
        self.opened.map(|at| at + self.options.linger)
    }

    fn seal(&mut self) -> SealedBatch {
        let lines = self.lines;
        let head = std::mem::take(&mut self.body);
        self.reset();
        SealedBatch { head, lines }
    }
}

/// Collects lines into batches and hands them to the poster.
async fn batch_lines(
    mut rx: mpsc::Receiver<Vec<LogLine>>,
    tx: mpsc::Sender<SealedBatch>,
    options: UploadOptions,
) {
    let mut batch = BatchBuilder::new(options);
    let mut carry: VecDeque<LogLine> = VecDeque::new();
    let mut open = true;
    loop {
        while !batch.full {
            let Some(line) = carry.pop_front() else { break };
            if !batch.push(&line) {
                carry.push_front(line);
            }
        }
        if !open && carry.is_empty() && batch.is_empty() {
            return;
        }
        let due = batch.deadline();
        let ready =
            !batch.is_empty() && (batch.full || !open || due.is_some_and(|d| d <= Instant::now()));
        let wait_for_deadline = !ready && due.is_some();
        let take_lines = open && carry.is_empty() && !batch.full;
        tokio::select! {
            permit = tx.reserve(), if ready => match permit {
                Ok(permit) => permit.send(batch.seal()),
                // The poster failed for good: dropping `rx` tells the senders.
                Err(_) => return,
            },
            () = sleep_until_opt(due), if wait_for_deadline => {}
            chunk = rx.recv(), if take_lines => match chunk {
                Some(lines) => carry.extend(lines),
                None => open = false,
            },
            else => return,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Seq numbers: microseconds since the epoch, strictly increasing.
#[derive(Debug, Default)]
struct SeqClock {
    last: u64,
}

impl SeqClock {
    fn next(&mut self) -> Result<u64, ClientError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.set(now.max(self.last + 1))
    }

    /// Jumps `by` microseconds past the last seq.
    fn leap(&mut self, by: u64) -> Result<u64, ClientError> {
        self.set(self.last.saturating_add(by))
    }

    fn set(&mut self, seq: u64) -> Result<u64, ClientError> {
        if seq > MAX_SEQ {
            return Err(ClientError::SeqExhausted);
        }
        self.last = seq;
        Ok(seq)
    }
}

/// Posts sealed batches one at a time, each until it is stored.
async fn post_batches(
    client: Client,
    job: JobId,
    mut rx: mpsc::Receiver<SealedBatch>,
) -> UploadReport {
    let mut report = UploadReport::default();
    let mut seqs = SeqClock::default();
    while let Some(batch) = rx.recv().await {
        match post_batch(&client, &job, &mut seqs, &batch).await {
            Ok(()) => {
                report.lines += batch.lines as u64;
                report.batches += 1;
            }
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        }
    }
    report
}

async fn post_batch(
    client: &Client,
    job: &JobId,
    seqs: &mut SeqClock,
    batch: &SealedBatch,
) -> Result<(), ClientError> {
    let mut seq = seqs.next()?;
    let mut leap = FIRST_LEAP;
    loop {
        let body = batch.body(seq);
        let (answer, failures) = client
            .retrying("sending log lines", |failures| {
                let sent = client.post_lines_once(job, body.clone());
                async move { sent.await.map(|a| (a, failures)) }
            })
            .await?;
        if answer.duplicate && failures > 0 {
            tracing::info!(job_id = %job, seq, "a retried batch had been stored already: not stored again");
        }
        if !(answer.duplicate && failures == 0) {
            return Ok(());
        }
        // Nothing of this batch can have been stored before: the job's seq is ahead.
        tracing::warn!(job_id = %job, seq, "the job's seq is ahead of this client's; leaping forward");
        seq = seqs.leap(leap)?;
        leap = leap.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            stream: LineStream::Stdout,
            text: text.into(),
            ts: 1,
        }
    }

    fn parse(batch: &SealedBatch, seq: u64) -> serde_json::Value {
        serde_json::from_slice(&batch.body(seq)).unwrap()
    }

    #[test]
    fn a_sealed_batch_is_the_ingest_json_with_its_seq() {
        let mut b = BatchBuilder::new(UploadOptions::default());
        assert!(b.push(&line("one")));
        assert!(b.push(&LogLine {
            stream: LineStream::Stderr,
            text: "two \"quoted\"".into(),
            ts: 2
        }));
        let sealed = b.seal();
        assert_eq!(sealed.lines, 2);
        assert_eq!(
            parse(&sealed, 42),
            serde_json::json!({"lines": [
                {"stream": "stdout", "text": "one", "ts": 1},
                {"stream": "stderr", "text": "two \"quoted\"", "ts": 2}
            ], "seq": 42})
        );
        assert!(b.is_empty(), "sealing starts a new batch");
    }

    #[test]
    fn a_batch_is_full_at_the_line_limit() {
        let mut b = BatchBuilder::new(UploadOptions::default());
        for i in 0..MAX_LINES_PER_REQUEST {
            assert!(!b.full);
            assert!(b.push(&line(&i.to_string())));
        }
        assert!(b.full);
        assert_eq!(b.seal().lines, MAX_LINES_PER_REQUEST);
    }

    #[test]
    fn no_body_exceeds_the_service_limit_even_with_escaped_control_characters() {
        let options = UploadOptions {
            flush_bytes: usize::MAX,
            ..UploadOptions::default()
        };
        let mut b = BatchBuilder::new(options);
        // Every byte of this text is escaped as \u0001: six bytes in the body.
        let nasty = line(&"\u{1}".repeat(MAX_TEXT_BYTES * 2));
        let mut sealed = Vec::new();
        for _ in 0..5 {
            if !b.push(&nasty) {
                sealed.push(b.seal());
                assert!(b.push(&nasty), "an empty batch takes any line");
            }
        }
        sealed.push(b.seal());
        assert!(sealed.len() >= 2);
        for batch in &sealed {
            let body = batch.body(MAX_SEQ);
            assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
            let text = parse(batch, MAX_SEQ)["lines"][0]["text"]
                .as_str()
                .unwrap()
                .len();
            assert_eq!(
                text, MAX_TEXT_BYTES,
                "long texts are cut to the client limit"
            );
        }
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let mut b = BatchBuilder::new(UploadOptions::default());
        let text = format!("a{}", "é".repeat(MAX_TEXT_BYTES));
        b.push(&line(&text));
        let sent = parse(&b.seal(), 1)["lines"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(sent.len() <= MAX_TEXT_BYTES && sent.len() > MAX_TEXT_BYTES - 2);
        assert!(text.starts_with(&sent));
    }

    #[test]
    fn seqs_increase_strictly_and_leap_forward() {
        let mut seqs = SeqClock::default();
        let a = seqs.next().unwrap();
        let b = seqs.next().unwrap();
        assert!(b > a, "even within one microsecond");
        assert!(a > 1_700_000_000_000_000, "microseconds since the epoch");
        let c = seqs.leap(FIRST_LEAP).unwrap();
        assert_eq!(c, b + FIRST_LEAP);
        assert!(seqs.next().unwrap() > c);
        assert!(matches!(seqs.leap(MAX_SEQ), Err(ClientError::SeqExhausted)));
    }
}
