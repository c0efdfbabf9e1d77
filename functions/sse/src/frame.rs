//! Server-Sent Events framing.
//!
//! Frames are written by hand rather than through a generic SSE type: the entry JSON
//! is already serialized (it comes from Redis), its kind decides the event name, and
//! several entries that arrive together are coalesced into one chunk so a burst of
//! lines costs one write, not one per line.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use logstream_core::model::{Ending, JobStatus, StoredEntry};

/// The first frame: how long the browser waits before reconnecting.
pub const RETRY: &[u8] = b"retry: 2000\n\n";

/// Sent after the heartbeat interval without any other frame.
pub const HEARTBEAT: &[u8] = b"event: heartbeat\ndata: {}\n\n";

/// The last frame of a stream whose job was deleted.
pub const DELETED: &[u8] = b"event: deleted\ndata: {}\n\n";

/// The event name of the entry that says the job was deleted
/// (`logstream_shared::store::DELETED_ENTRY`): not sent as such; the stream sends
/// [`DELETED`] and ends.
pub const DELETED_EVENT: &str = "deleted";

/// What a stream needs to know of an entry beyond its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    /// The SSE event name: `log`, `stage` or `status` ([`DELETED_EVENT`] for the
    /// deletion signal).
    pub event: &'static str,
    /// `Some` when this is the entry that ends the job.
    pub terminal: Option<Ending>,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    /// A job status for `status` entries, a stage status for `stage` entries.
    #[serde(borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
    /// A terminal status entry's exit code and the job's duration.
    exit_code: Option<i64>,
    duration_ms: Option<u64>,
}

/// Reads an entry's kind (and, for a status entry, whether it ends the job).
pub fn info(entry: &StoredEntry) -> EntryInfo {
    match serde_json::from_str::<Peek<'_>>(&entry.json) {
        Ok(peek) => match peek.kind.as_ref() {
            "line" => EntryInfo {
                event: "log",
                terminal: None,
            },
            "stage" => EntryInfo {
                event: "stage",
                terminal: None,
            },
            "deleted" => EntryInfo {
                event: DELETED_EVENT,
                terminal: None,
            },
            "status" => EntryInfo {
                event: "status",
                terminal: peek
                    .status
                    .and_then(|s| s.parse::<JobStatus>().ok())
                    .filter(|s| s.is_terminal())
                    .map(|status| Ending {
                        status,
                        exit_code: peek.exit_code,
                        duration_ms: peek.duration_ms,
                    }),
            },
            _ => EntryInfo {
                event: "log",
                terminal: None,
            },
        },
        // Not ours to judge: pass it on as a log entry rather than losing it.
        Err(_) => EntryInfo {
            event: "log",
            terminal: None,
        },
    }
}

/// Appends the frame of `entry` to `buf`.
pub fn push_entry(buf: &mut BytesMut, entry: &StoredEntry, event: &str) {
    let id = entry.id.to_string();
    let json = entry.to_json();
    buf.reserve(json.len() + id.len() + event.len() + 24);
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_slice(b"\nevent: ");
    buf.put_slice(event.as_bytes());
    buf.put_slice(b"\ndata: ");
    // JSON from serde never holds a raw newline (they are escaped), so one data line
    // carries the whole entry.
    buf.put_slice(json.as_bytes());
    buf.put_slice(b"\n\n");
}

/// The last frame of a finished job: `{"status","exit_code","duration_ms"}`.
pub fn done(ending: &Ending) -> Bytes {
    // Serializing plain values cannot fail.
    let data = serde_json::to_string(ending).unwrap_or_default();
    Bytes::from(format!("event: done\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use logstream_core::model::{EntryBody, LineStream, NewEntry};

    fn stored(id: &str, body: EntryBody) -> StoredEntry {
        StoredEntry {
            id: id.parse().unwrap(),
            json: NewEntry { ts: 5, body }.to_stored_json(),
        }
    }

    #[test]
    fn a_line_entry_is_a_log_event_with_its_id() {
        let e = stored(
            "7-1",
            EntryBody::Line {
                stream: LineStream::Stdout,
                text: "a\nb".into(),
                ansi: None,
            },
        );
        let i = info(&e);
        assert_eq!(
            i,
            EntryInfo {
                event: "log",
                terminal: None
            }
        );
        let mut buf = BytesMut::new();
        push_entry(&mut buf, &e, i.event);
        assert_eq!(
            &buf[..],
            b"id: 7-1\nevent: log\ndata: {\"id\":\"7-1\",\"ts\":5,\"kind\":\"line\",\"stream\":\"stdout\",\"text\":\"a\\nb\"}\n\n"
        );
    }

    #[test]
    fn only_a_terminal_status_entry_ends_the_stream() {
        let running = stored(
            "1-0",
            EntryBody::Status {
                status: JobStatus::Running,
                exit_code: None,
                duration_ms: None,
            },
        );
        assert_eq!(
            info(&running),
            EntryInfo {
                event: "status",
                terminal: None
            }
        );
        let ready = stored(
            "2-0",
            EntryBody::Status {
                status: JobStatus::Ready,
                exit_code: Some(3),
                duration_ms: Some(42),
            },
        );
        assert_eq!(
            info(&ready),
            EntryInfo {
                event: "status",
                terminal: Some(Ending {
                    status: JobStatus::Ready,
                    exit_code: Some(3),
                    duration_ms: Some(42)
                })
            }
        );
        let stage = stored(
            "3-0",
            EntryBody::Stage {
                name: "t".into(),
                status: logstream_core::model::StageStatus::Failed,
            },
        );
        assert_eq!(
            info(&stage),
            EntryInfo {
                event: "stage",
                terminal: None
            }
        );
    }

    #[test]
    fn the_deletion_signal_is_recognised() {
        let e = StoredEntry {
            id: "4-0".parse().unwrap(),
            json: logstream_shared::store::DELETED_ENTRY.to_owned(),
        };
        assert_eq!(info(&e).event, DELETED_EVENT);
        assert_eq!(DELETED, b"event: deleted\ndata: {}\n\n");
    }

    #[test]
    fn done_carries_the_final_status() {
        assert_eq!(
            &done(&Ending::of(JobStatus::Failed))[..],
            b"event: done\ndata: {\"status\":\"failed\",\"exit_code\":null,\"duration_ms\":null}\n\n"
        );
        let ending = Ending {
            status: JobStatus::Ready,
            exit_code: Some(0),
            duration_ms: Some(1500),
        };
        assert_eq!(
            &done(&ending)[..],
            b"event: done\ndata: {\"status\":\"ready\",\"exit_code\":0,\"duration_ms\":1500}\n\n"
        );
    }
}
