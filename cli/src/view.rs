//! The viewer-side commands: `logstream tail` (live) and `logstream logs` (history).
//!
//! Both authenticate with a viewer JWT (`--token` or `LOGSTREAM_TOKEN`; `logstream dev`
//! prints one) and print entries as [`crate::render`] says, or as JSON lines with
//! `logs --json` (each entry exactly as the service sent it).
//!
//! `tail` follows the live stream ([`logstream_client::follow`]: resumed with
//! `Last-Event-ID` after every drop, no gap, no duplicate) until the job ends, and
//! returns its final status: the binary exits 0 for `ready`, 1 for `failed`, 2 when it
//! could not follow. A job that has ended is printed whole; one that does not exist
//! yet is waited for, within a bound. Output is flushed whenever no further entry is
//! already waiting.
//!
//! `logs` without `--limit` walks the whole history forwards, one 500-entry page at a
//! time, printing as it goes; with `--limit N` it walks back from the newest entry
//! until it has N, then prints them oldest first. It exits like `tail`: 1 for a failed
//! job.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use logstream_core::ids::{EntryId, InvalidJobId, JobId};
use logstream_core::model::JobStatus;

use crate::render::{ColorChoice, Printer, Style};
use logstream_client::follow::{FollowEvent, FollowStart};
use logstream_client::{Client, ClientError, PageCursor, RetryPolicy};

/// The largest page the service serves.
const PAGE: usize = 500;

/// Why a viewer command failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Neither `--token` nor `LOGSTREAM_TOKEN`.
    #[error("no viewer token: pass --token or set LOGSTREAM_TOKEN (`logstream dev` prints one)")]
    NoToken,
    /// The job id is not valid.
    #[error("job id: {0}")]
    InvalidJobId(#[from] InvalidJobId),
    /// The service refused or could not be reached.
    #[error(transparent)]
    Service(#[from] ClientError),
    /// Writing to stdout failed (a closed pipe, when the reader has had enough).
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
    /// The job was deleted while it was followed.
    #[error("job {0} was deleted")]
    Deleted(JobId),
}

/// Where to read from, as whom.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// The service URL.
    pub url: String,
    /// The streaming function's URL (the live stream, the raw log), when it is not
    /// `url` (on AWS: the `SseUrl` output).
    pub stream_url: Option<String>,
    /// A viewer JWT.
    pub token: Option<String>,
    /// The job, as given (validated here).
    pub job: String,
    /// `--color`.
    pub colour: ColorChoice,
    /// Retries against the service.
    pub retry: RetryPolicy,
}

impl ViewOptions {
    fn client(&self) -> Result<(Client, JobId), ViewError> {
        let token = self
            .token
            .clone()
            .filter(|t| !t.trim().is_empty())
            .ok_or(ViewError::NoToken)?;
        let job = JobId::parse(&self.job)?;
        let mut client = Client::new(&self.url, Some(token))?.with_retry(self.retry);
        if let Some(url) = self.stream_url.as_deref().filter(|u| !u.trim().is_empty()) {
            client = client.with_stream_url(url)?;
        }
        Ok((client, job))
    }
}

/// How often `tail` asks again for a job that does not exist yet.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// `logstream tail`: follows the job until it ends; returns its final status. A job
/// that does not exist yet (or that this viewer may not read: the service answers
/// both alike) is asked for again every second for up to `wait`; one that has ended
/// already is printed from its start, like `--from-start`.
pub async fn tail(
    opts: &ViewOptions,
    from_start: bool,
    wait: Duration,
) -> Result<JobStatus, ViewError> {
    let (client, job) = opts.client()?;
    let style = Style::for_stdout(opts.colour);
    let give_up = Instant::now() + wait;
    let mut said = false;
    let info = loop {
        match client.job(&job).await {
            Ok(info) => break info,
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) && Instant::now() < give_up => {
                if !said {
                    eprintln!(
                        "logstream tail: job {job} does not exist yet; waiting up to {} s \
                         (--wait 0 does not wait)",
                        wait.as_secs()
                    );
                    said = true;
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let start = if from_start || info.status.is_terminal() {
        FollowStart::Beginning
    } else {
        FollowStart::Live
    };
    let mut follow = client.follow(&job, start);
    let mut out = io::BufWriter::new(io::stdout());
    let mut printer = Printer::new(style);
    loop {
        match follow.next().await? {
            Some(FollowEvent::Entry(entry)) => printer.write(&mut out, &entry)?,
            Some(FollowEvent::Done(status)) => {
                out.flush()?;
                return Ok(status);
            }
            Some(FollowEvent::Deleted) => {
                out.flush()?;
                return Err(ViewError::Deleted(job));
            }
            // `next` ends only after `Done`.
            None => {
                out.flush()?;
                return Ok(JobStatus::Failed);
            }
        }
        if !follow.has_buffered() {
            out.flush()?;
        }
    }
}

/// `logstream logs --raw`: the whole log as text, as `GET /jobs/{id}/logs/raw` sends it
/// (streamed: a log of any size, without holding it); returns the job's status, read
/// after the log.
pub async fn raw(opts: &ViewOptions, timestamps: bool) -> Result<JobStatus, ViewError> {
    use futures_util::StreamExt;
    let (client, job) = opts.client()?;
    let mut out = io::BufWriter::new(io::stdout());
    let mut body = std::pin::pin!(client.raw_log(&job, timestamps).await?);
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk?)?;
    }
    out.flush()?;
    Ok(client.job(&job).await?.status)
}

/// `logstream logs`: prints the history (the newest `limit` entries, or all);
/// returns the job's status as of the last page read.
pub async fn logs(
    opts: &ViewOptions,
    limit: Option<usize>,
    json: bool,
) -> Result<JobStatus, ViewError> {
    let (client, job) = opts.client()?;
    let mut printer = Printer::new(Style::for_stdout(opts.colour));
    let mut out = io::BufWriter::new(io::stdout());
    let mut print = |raw: &serde_json::value::RawValue| -> Result<(), ViewError> {
        if json {
            out.write_all(raw.get().as_bytes())?;
            out.write_all(b"\n")?;
        } else {
            let entry = logstream_client::decode_entry(raw.get())?;
            printer.write(&mut out, &entry)?;
        }
        Ok(())
    };
    let mut status = JobStatus::Queued;
    match limit {
        None => {
            let mut cursor = PageCursor::After(EntryId { ms: 0, seq: 0 });
            loop {
                let page = client.page(&job, cursor, PAGE).await?;
                status = page.status;
                for raw in &page.lines {
                    print(raw)?;
                }
                let last = match page.lines.last() {
                    Some(raw) => Some(logstream_client::decode_entry(raw.get())?.id),
                    None => None,
                };
                match last {
                    Some(id) if page.has_more => cursor = PageCursor::After(id),
                    _ => break,
                }
            }
        }
        Some(limit) => {
            let mut pages = Vec::new();
            let mut have = 0;
            let mut cursor = PageCursor::Latest;
            while have < limit {
                let page = client.page(&job, cursor, (limit - have).min(PAGE)).await?;
                status = page.status;
                have += page.lines.len();
                let next = page.next_before.filter(|_| page.has_more);
                pages.push(page);
                match next {
                    Some(id) => cursor = PageCursor::Before(id),
                    None => break,
                }
            }
            for page in pages.iter().rev() {
                for raw in &page.lines {
                    print(raw)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(status)
}
