//! Following a job live over Server-Sent Events, across dropped connections.
//!
//! [`Follow`] connects to `GET /jobs/{id}/logs/stream`, parses frames with
//! [`SseParser`] and yields entries. When the connection drops, ends without `done`
//! (a Lambda handing off before its deadline, a server restarting) or stays silent
//! past three heartbeats, it reconnects with `Last-Event-ID` set to the last entry it
//! yielded: the service replays strictly after that id, so nothing is missed and
//! nothing is seen twice (entries at or before that id are dropped here as well, in
//! case a server does not honour the header).
//!
//! A "live only" follow cannot resume from nowhere: if nothing arrived before the first
//! drop, a plain reconnect would skip what was appended meanwhile. So a live follow
//! first asks the history for the newest entry's id and starts strictly after it,
//! which is live, with a known position from the start.
//!
//! Reconnecting: at once after a connection that delivered entries or a heartbeat,
//! otherwise with backoff up to the `retry:` the service sent (2 s), giving up when
//! connecting has failed for longer than the client's
//! [`RetryPolicy`](super::RetryPolicy) budget. A 400, 401 or 404 is final.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, StatusCode};

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{Entry, JobStatus};

use super::{Client, ClientError, PageCursor, api_error, decode_entry};

/// The service's reconnect delay until it sends its own `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(2);

/// Where a follow starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowStart {
    /// Only entries appended from now on.
    Live,
    /// Every entry, from the first.
    Beginning,
    /// The entries strictly after this id.
    After(EntryId),
}

/// What a follow yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// An entry (a line, a stage event or a status change).
    Entry(Entry),
    /// The job has ended with this status; nothing follows.
    Done(JobStatus),
    /// The job was deleted (`DELETE /jobs/{id}`); nothing follows.
    Deleted,
}

/// One Server-Sent Events frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseFrame {
    /// The `id:` field.
    pub id: Option<String>,
    /// The `event:` name; `message` when there was none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `retry:` field, in ms.
    pub retry: Option<u64>,
}

/// An incremental Server-Sent Events parser (the WHATWG rules: `\n`, `\r\n` or `\r`
/// end a line, `:` starts a comment, one space after the field's colon is dropped, a
/// blank line ends a frame). Chunks may split lines and frames anywhere.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    frame: SseFrame,
    has_field: bool,
}

impl SseParser {
    /// Feeds `chunk`; returns the frames it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        let mut frames = Vec::new();
        let mut rest = chunk;
        if self.after_cr && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        self.after_cr = false;
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            self.buf.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.buf);
            self.line(&line, &mut frames);
            let cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
        }
        self.buf.extend_from_slice(rest);
        frames
    }

    fn line(&mut self, line: &[u8], frames: &mut Vec<SseFrame>) {
        if line.is_empty() {
            if self.has_field {
                let mut frame = std::mem::take(&mut self.frame);
                if frame.event.is_empty() {
                    frame.event = "message".into();
                }
                frames.push(frame);
                self.has_field = false;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        self.has_field = true;
        match field {
            "id" => self.frame.id = Some(value.to_owned()),
            "event" => self.frame.event = value.to_owned(),
            "data" => {
                if !self.frame.data.is_empty() {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
            }
            "retry" => self.frame.retry = value.parse().ok(),
            _ => {}
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A live follow of one job. Call [`Follow::next`] until it returns `Ok(None)`.
pub struct Follow {
    client: Client,
    job: JobId,
    start: FollowStart,
    /// The last entry yielded: where a reconnect resumes.
    last: Option<EntryId>,
    body: Option<(ByteStream, SseParser)>,
    queue: VecDeque<FollowEvent>,
    retry: Duration,
    /// Connections in a row that delivered no entry.
    failures: u32,
    failing_since: Option<Instant>,
    done: bool,
    connections: u32,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("job", &self.job)
            .field("last", &self.last)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Follows `job` live (needs a viewer JWT). Nothing is sent until the first
    /// [`Follow::next`].
    pub fn follow(&self, job: &JobId, start: FollowStart) -> Follow {
        Follow {
            client: self.clone(),
            job: job.clone(),
            start,
            last: None,
            body: None,
            queue: VecDeque::new(),
            retry: DEFAULT_RETRY,
            failures: 0,
            failing_since: None,
            done: false,
            connections: 0,
        }
    }
}

impl Follow {
    /// The next entry, `Done` once the job has ended, then `None`.
    pub async fn next(&mut self) -> Result<Option<FollowEvent>, ClientError> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(Some(event));
            }
            if self.done {
                return Ok(None);
            }
            let Some((body, parser)) = self.body.as_mut() else {
                self.connect().await?;
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    let frames = parser.push(&chunk);
                    self.take(frames);
                }
                Some(Err(e)) => {
                    tracing::debug!(job_id = %self.job, error = %e, "stream broke");
                    self.body = None;
                }
                None => {
                    tracing::debug!(job_id = %self.job, "stream ended without done");
                    self.body = None;
                }
            }
        }
    }

    /// Whether [`Follow::next`] has events ready without waiting on the network.
    pub fn has_buffered(&self) -> bool {
        !self.queue.is_empty()
    }

    /// How many connections this follow has opened so far.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// The id of the last entry yielded.
    pub fn last_id(&self) -> Option<EntryId> {
        self.last
    }

    fn take(&mut self, frames: Vec<SseFrame>) {
        for frame in frames {
            if let Some(ms) = frame.retry {
                self.retry = Duration::from_millis(ms);
            }
            match frame.event.as_str() {
                "log" | "stage" | "status" => match decode_entry(&frame.data) {
                    Ok(entry) => {
                        if self.last.is_some_and(|last| entry.id <= last) {
                            continue;
                        }
                        self.last = Some(entry.id);
                        self.failures = 0;
                        self.failing_since = None;
                        self.queue.push_back(FollowEvent::Entry(entry));
                    }
                    Err(e) => tracing::warn!(job_id = %self.job, "skipping an entry: {e}"),
                },
                "done" => {
                    let status = serde_json::from_str::<serde_json::Value>(&frame.data)
                        .ok()
                        .and_then(|v| v["status"].as_str().and_then(|s| s.parse().ok()))
                        .unwrap_or(JobStatus::Failed);
                    self.queue.push_back(FollowEvent::Done(status));
                    self.done = true;
                    self.body = None;
                    return;
                }
                "deleted" => {
                    self.queue.push_back(FollowEvent::Deleted);
                    self.done = true;
                    self.body = None;
                    return;
                }
                // The connection has lived a heartbeat interval: it works.
                "heartbeat" => self.failures = 0,
                // The retry preamble, anything newer than this client.
                _ => {}
            }
        }
    }

    /// Opens the stream, waiting and retrying as the module doc says.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let policy = self.client.retry_policy();
        let mut last_error = None;
        loop {
            if self.failures > 0 {
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                let delay = policy.delay(self.failures).min(self.retry);
                if since.elapsed() + delay > policy.give_up_after {
                    return Err(ClientError::GaveUp {
                        attempts: self.failures,
                        elapsed: since.elapsed(),
                        last: Box::new(last_error.unwrap_or(ClientError::StreamClosing)),
                    });
                }
                tokio::time::sleep(delay).await;
            }
            // Counted as a failure until an entry or a heartbeat arrives (see `take`).
            self.failures += 1;
            match self.open().await {
                Ok(body) => {
                    self.failing_since = None;
                    self.connections += 1;
                    self.body = Some((body, SseParser::default()));
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(job_id = %self.job, "live stream: {e}; reconnecting");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open(&mut self) -> Result<ByteStream, ClientError> {
        if self.last.is_none() && self.start == FollowStart::Live {
            // Resolve "live" to a position once (see the module doc).
            let page = self.client.page(&self.job, PageCursor::Latest, 1).await?;
            self.start = match page.entries()?.last() {
                Some(newest) => FollowStart::After(newest.id),
                None => FollowStart::Beginning,
            };
        }
        let resume = match (self.last, self.start) {
            (Some(id), _) | (None, FollowStart::After(id)) => Some(id),
            _ => None,
        };
        let mut path = format!("/jobs/{}/logs/stream", self.job);
        if resume.is_none() && self.start == FollowStart::Beginning {
            path.push_str("?from=start");
        }
        let mut req = self
            .client
            .stream_request(Method::GET, &path)
            .header("accept", "text/event-stream");
        if let Some(id) = resume {
            req = req.header("last-event-id", id.to_string());
        }
        let res = req.send().await.map_err(ClientError::Transport)?;
        let status = res.status();
        if status != StatusCode::OK {
            let body = res.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(Box::pin(res.bytes_stream()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut parser = SseParser::default();
        chunks.iter().flat_map(|c| parser.push(c)).collect()
    }

    #[test]
    fn frames_are_parsed_whatever_the_chunking() {
        let raw = b"retry: 2000\n\nid: 1-0\nevent: log\ndata: {\"a\":1}\n\nevent: heartbeat\ndata: {}\n\n";
        let whole = frames(&[raw]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].retry, Some(2000));
        assert_eq!(whole[1].id.as_deref(), Some("1-0"));
        assert_eq!(whole[1].event, "log");
        assert_eq!(whole[1].data, "{\"a\":1}");
        assert_eq!(whole[2].event, "heartbeat");
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(frames(&bytes), whole, "one byte at a time");
        let (a, b) = raw.split_at(30);
        assert_eq!(frames(&[a, b]), whole);
    }

    #[test]
    fn crlf_and_cr_line_ends_and_comments_are_understood() {
        let got = frames(&[b": comment\r\nevent: done\r", b"\ndata: x\rdata: y\r\r\n"]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, "done");
        assert_eq!(got[0].data, "x\ny");
        // The \r\n split across chunks did not count as two line ends (no empty frame).
    }

    #[test]
    fn a_frame_without_event_is_a_message_and_a_partial_frame_waits() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"data:no space").is_empty());
        let got = parser.push(b"\n\n");
        assert_eq!(got[0].event, "message");
        assert_eq!(got[0].data, "no space");
    }
}
