//! The domain model: entries and the job status machine (the ids are in [`crate::ids`]).
//!
//! Entries are stored in Redis as their JSON *without* the `id` (the stream id is the
//! id), and spliced back together on the way out ([`StoredEntry::to_json`]) so a read
//! never decodes and re-encodes an entry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::EntryId;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineStream {
    Stdout,
    Stderr,
    System,
}

impl LineStream {
    /// Its name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::System => "system",
        }
    }
}

impl FromStr for LineStream {
    type Err = ();

    fn from_str(raw: &str) -> Result<Self, ()> {
        match raw {
            "stdout" => Ok(Self::Stdout),
            "stderr" => Ok(Self::Stderr),
            "system" => Ok(Self::System),
            _ => Err(()),
        }
    }
}

/// A stage's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Started,
    Succeeded,
    Failed,
    Skipped,
}

/// A job's state: `queued → running → ready | failed`, and `queued → failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Ready,
    Failed,
}

/// What a status change amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A real change: append a `status` entry.
    Change,
    /// Already there (`running` twice, or the same terminal status again): a 200 no-op.
    Same,
    /// Not allowed: 409.
    Forbidden,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    /// `ready` and `failed` end a job: no more lines, no more changes.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }

    /// The state machine of the SPEC, in one place (the Redis script mirrors it).
    pub fn transition(self, to: JobStatus) -> Transition {
        use JobStatus::*;
        match (self, to) {
            (a, b) if a == b => Transition::Same,
            (Queued, Running) | (Queued, Failed) | (Running, Ready) | (Running, Failed) => {
                Transition::Change
            }
            _ => Transition::Forbidden,
        }
    }
}

impl FromStr for JobStatus {
    type Err = ();

    fn from_str(raw: &str) -> Result<Self, ()> {
        match raw {
            "queued" => Ok(Self::Queued),
            "running" => Ok(Self::Running),
            "ready" => Ok(Self::Ready),
            "failed" => Ok(Self::Failed),
            _ => Err(()),
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an entry says, tagged by `kind` exactly as the SPEC's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryBody {
    Line {
        stream: LineStream,
        text: String,
        /// `text` with the line's colour and style changes (SGR escapes) where they
        /// were; absent when it had none. See `sanitize::Coloured`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ansi: Option<String>,
    },
    Stage {
        name: String,
        status: StageStatus,
    },
    Status {
        status: JobStatus,
        /// With a terminal status: the exit code the pipeline reported, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
        /// With a terminal status: how long the job ran, from `running` (or its
        /// creation) to this entry. Stored last: the status script appends it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
}

/// How a job ended: what `GET /jobs/{id}` and the `done` event (SSE and WebSocket)
/// say of it. `exit_code` is `null` when the pipeline did not report one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    pub status: JobStatus,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<u64>,
}

impl Ending {
    /// How a job in `status` ended, with what it recorded; `None` while it has not.
    pub fn of_job(
        status: JobStatus,
        exit_code: Option<i64>,
        duration_ms: Option<u64>,
    ) -> Option<Self> {
        status.is_terminal().then_some(Self {
            status,
            exit_code,
            duration_ms,
        })
    }

    /// An ending known only by its status.
    pub fn of(status: JobStatus) -> Self {
        Self {
            status,
            exit_code: None,
            duration_ms: None,
        }
    }
}

/// An entry before Redis gave it an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    pub ts: u64,
    #[serde(flatten)]
    pub body: EntryBody,
}

impl NewEntry {
    /// The stored form: the entry's JSON without its id.
    pub fn to_stored_json(&self) -> String {
        if let EntryBody::Line { stream, text, ansi } = &self.body {
            return self.line_json(*stream, text, ansi.as_deref());
        }
        self.serialized()
    }

    fn serialized(&self) -> String {
        // Serializing plain enums and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The stored JSON of a line, the entry ingest makes by the hundred per batch,
    /// written field by field: the derived serializer (`flatten`, an internally tagged
    /// enum) goes through a map and cost about three times as much. The same bytes, as
    /// a test checks.
    fn line_json(&self, stream: LineStream, text: &str, ansi: Option<&str>) -> String {
        let mut out = String::with_capacity(text.len() + ansi.map_or(0, str::len) + 96);
        out.push_str("{\"ts\":");
        out.push_str(itoa::Buffer::new().format(self.ts));
        out.push_str(",\"kind\":\"line\",\"stream\":\"");
        out.push_str(stream.as_str());
        out.push_str("\",\"text\":");
        push_json_str(&mut out, text);
        if let Some(ansi) = ansi {
            out.push_str(",\"ansi\":");
            push_json_str(&mut out, ansi);
        }
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string, quoted and escaped exactly as `serde_json` writes it
/// (`\"`, `\\`, the short escapes of `\b \t \n \f \r`, `\u00xx` for the other
/// control characters, everything else as it is). Ingest writes every line's text
/// through it: serde_json's writer looks the bytes up one at a time and cost about a
/// third of a line's stored JSON; this one tests 16 bytes at once (the compiler makes
/// one vector compare of them) and copies the runs that need no escape whole.
fn push_json_str(out: &mut String, s: &str) {
    const CHUNK: usize = 16;
    fn plain(b: u8) -> bool {
        b >= 0x20 && b != b'"' && b != b'\\'
    }
    let bytes = s.as_bytes();
    out.reserve(s.len() + 2);
    out.push('"');
    // Every byte before `at` is written; `run` starts the bytes not yet written that
    // need no escape.
    let mut run = 0;
    let mut at = 0;
    while at < bytes.len() {
        if let Some(chunk) = bytes.get(at..at + CHUNK)
            && chunk.iter().fold(true, |all, &b| all & plain(b))
        {
            at += CHUNK;
            continue;
        }
        let b = bytes[at];
        if plain(b) {
            at += 1;
            continue;
        }
        // An escaped byte is ASCII, so `run..at` and what follows are whole characters.
        out.push_str(&s[run..at]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        at += 1;
        run = at;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// A decoded entry, as a client of the API sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    /// The entry's number in its job: 1, 2, 3 … with no gap (absent only in entries
    /// stored before numbering existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    pub ts: u64,
    #[serde(flatten)]
    pub body: EntryBody,
}

/// The stored JSON of entry number `n` of its job: `{"n":N,` spliced before the fields
/// of `json` (a [`NewEntry::to_stored_json`]). The append script numbers entries the
/// same way inside Redis; this is how a writer knows what it stored without reading it
/// back.
pub fn numbered_json(json: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let parts = numbered_json_parts(json, n, &mut digits);
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| out.push_str(part));
    out
}

/// [`numbered_json`] in the pieces that, written one after the other, make it: for a
/// writer that packs entries straight into a Redis command, without a string each.
/// `digits` holds the number's text.
pub fn numbered_json_parts<'a>(
    json: &'a str,
    n: u64,
    digits: &'a mut itoa::Buffer,
) -> [&'a str; 4] {
    let fields = json.strip_prefix('{').unwrap_or(json);
    let comma = if fields.starts_with('}') { "" } else { "," };
    ["{\"n\":", digits.format(n), comma, fields]
}

/// An entry as read from Redis: its id and its stored JSON (without id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub id: EntryId,
    pub json: String,
}

impl StoredEntry {
    /// The entry's number in its job (`n`), read from the front of its stored JSON,
    /// where the append script puts it; `None` for an entry stored without one.
    pub fn n(&self) -> Option<u64> {
        let rest = self.json.strip_prefix("{\"n\":")?;
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        rest[..end].parse().ok()
    }

    /// The API's JSON for this entry: `{"id":"…",` spliced before the stored fields.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.json.len() + 40);
        self.write_json(&mut out);
        out
    }

    /// Appends [`to_json`](Self::to_json) to `out`, without an allocation of its own:
    /// how a page or a batch of frames is written in one buffer.
    ///
    /// The stored JSON is this code's own output, so it is spliced as it is rather
    /// than parsed again; only its shape is checked, and a value that is not an object
    /// (not written by this code) becomes `null` rather than breaking the document.
    pub fn write_json(&self, out: &mut String) {
        let Some(fields) = self
            .json
            .strip_prefix('{')
            .filter(|rest| rest.ends_with('}'))
        else {
            tracing::warn!(id = %self.id, "stored entry is not a JSON object");
            out.push_str("null");
            return;
        };
        out.push_str("{\"id\":\"");
        self.id.push_to(out);
        out.push('"');
        if !fields.starts_with('}') {
            out.push(',');
        }
        out.push_str(fields);
    }

    /// The inverse of [`to_json`](Self::to_json): splits an entry's API JSON (as the
    /// archive holds it, one per line) back into its id and stored JSON. `None` when
    /// the line does not start with the `{"id":"…"` that `to_json` writes.
    pub fn from_json_line(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("{\"id\":\"")?;
        let (id, rest) = rest.split_once('"')?;
        let id = id.parse().ok()?;
        let json = match rest.strip_prefix(',') {
            Some(fields) => {
                let mut json = String::with_capacity(fields.len() + 1);
                json.push('{');
                json.push_str(fields);
                json
            }
            None if rest == "}" => "{}".to_owned(),
            None => return None,
        };
        Some(Self { id, json })
    }

    /// Decodes the entry (for clients and the archiver).
    pub fn decode(&self) -> Result<Entry, serde_json::Error> {
        serde_json::from_str(&self.to_json())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine_follows_the_spec() {
        use JobStatus::*;
        assert_eq!(Queued.transition(Running), Transition::Change);
        assert_eq!(Queued.transition(Failed), Transition::Change);
        assert_eq!(Running.transition(Ready), Transition::Change);
        assert_eq!(Running.transition(Failed), Transition::Change);
        assert_eq!(Ready.transition(Ready), Transition::Same);
        assert_eq!(Queued.transition(Ready), Transition::Forbidden);
        assert_eq!(Ready.transition(Failed), Transition::Forbidden);
        assert_eq!(Failed.transition(Running), Transition::Forbidden);
        assert_eq!(Running.transition(Queued), Transition::Forbidden);
    }

    #[test]
    fn stored_entry_splices_its_id_into_the_spec_json() {
        let new = NewEntry {
            ts: 1732406400000,
            body: EntryBody::Line {
                stream: LineStream::Stdout,
                text: "added 120 packages".into(),
                ansi: None,
            },
        };
        let stored = StoredEntry {
            id: "1732406400000-0".parse().unwrap(),
            json: new.to_stored_json(),
        };
        assert_eq!(
            stored.to_json(),
            r#"{"id":"1732406400000-0","ts":1732406400000,"kind":"line","stream":"stdout","text":"added 120 packages"}"#
        );
        let entry = stored.decode().unwrap();
        assert_eq!(entry.body, new.body);
        assert_eq!(entry.id, stored.id);
    }

    #[test]
    fn an_archived_line_splits_back_into_the_stored_entry() {
        let stored = StoredEntry {
            id: "1732406400000-3".parse().unwrap(),
            json: r#"{"ts":1,"kind":"line","stream":"stdout","text":"a \"quoted\" } line"}"#.into(),
        };
        assert_eq!(StoredEntry::from_json_line(&stored.to_json()), Some(stored));
        let empty = StoredEntry {
            id: "1-0".parse().unwrap(),
            json: "{}".into(),
        };
        assert_eq!(StoredEntry::from_json_line(&empty.to_json()), Some(empty));
        for bad in [
            "",
            "{}",
            r#"{"ts":1}"#,
            r#"{"id":"x-1","ts":1}"#,
            r#"{"id":"1-0"x"#,
        ] {
            assert_eq!(StoredEntry::from_json_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn entries_written_into_one_buffer_match_their_own_json_and_corrupt_ones_become_null() {
        let a = StoredEntry {
            id: "5-0".parse().unwrap(),
            json: r#"{"ts":1,"kind":"line","stream":"stdout","text":"a"}"#.into(),
        };
        let corrupt = StoredEntry {
            id: "5-1".parse().unwrap(),
            json: "not json".into(),
        };
        let mut out = String::from("[");
        a.write_json(&mut out);
        out.push(',');
        corrupt.write_json(&mut out);
        out.push(']');
        assert_eq!(out, format!("[{},null]", a.to_json()));
        let parsed: Vec<Option<Entry>> = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed[0].as_ref().map(|e| e.id), Some(a.id));
        assert!(parsed[1].is_none());
    }

    #[test]
    fn a_line_written_field_by_field_is_what_the_derived_serializer_writes() {
        let entries = [
            NewEntry {
                ts: 1,
                body: EntryBody::Line {
                    stream: LineStream::Stderr,
                    text: "a \"quoted\" line ✓".into(),
                    ansi: Some("\u{1b}[31ma\u{1b}[0m".into()),
                },
            },
            NewEntry {
                ts: 1_733_240_000_000,
                body: EntryBody::Line {
                    stream: LineStream::Stdout,
                    text: "tab\there, back\\slash, nul\u{0} and \u{7f}".into(),
                    ansi: None,
                },
            },
            NewEntry {
                ts: 0,
                body: EntryBody::Line {
                    stream: LineStream::System,
                    text: String::new(),
                    ansi: None,
                },
            },
            NewEntry {
                ts: u64::from(u32::MAX),
                body: EntryBody::Stage {
                    name: "build".into(),
                    status: StageStatus::Started,
                },
            },
        ];
        for entry in &entries {
            let derived = serde_json::to_string(entry).unwrap();
            assert_eq!(entry.to_stored_json(), derived);
            for n in [1, 42, 1 << 40, u64::MAX] {
                let numbered: serde_json::Value =
                    serde_json::from_str(&numbered_json(&entry.to_stored_json(), n)).unwrap();
                let mut want: serde_json::Value = serde_json::from_str(&derived).unwrap();
                want["n"] = n.into();
                assert_eq!(numbered, want);
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        // Every ASCII byte alone, in the middle of a run longer than one 16-byte chunk
        // and at a chunk's edges; then non-ASCII text around escapes.
        let mut texts: Vec<String> = Vec::new();
        for b in 0u8..0x80 {
            let c = char::from(b);
            texts.push(c.to_string());
            texts.push(format!("{}{c}{}", "a".repeat(15), "b".repeat(20)));
            texts.push(format!("{}{c}", "é".repeat(8)));
        }
        texts.push(String::new());
        texts.push("✓ \u{1b}[32mdone\u{1b}[0m \"q\" \\ tab\t\u{7f}\u{80}\u{2028}".repeat(3));
        for text in &texts {
            let mut out = String::new();
            push_json_str(&mut out, text);
            assert_eq!(out, serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn a_numbered_entry_carries_its_n_first_and_reads_it_back() {
        let json = numbered_json(r#"{"ts":1,"kind":"line","stream":"stdout","text":"x"}"#, 42);
        assert_eq!(
            json,
            r#"{"n":42,"ts":1,"kind":"line","stream":"stdout","text":"x"}"#
        );
        let stored = StoredEntry {
            id: "5-0".parse().unwrap(),
            json,
        };
        assert_eq!(stored.n(), Some(42));
        assert_eq!(
            stored.to_json(),
            r#"{"id":"5-0","n":42,"ts":1,"kind":"line","stream":"stdout","text":"x"}"#
        );
        assert_eq!(numbered_json("{}", 7), r#"{"n":7}"#);
        let unnumbered = StoredEntry {
            id: "5-1".parse().unwrap(),
            json: r#"{"ts":1,"kind":"status","status":"ready"}"#.into(),
        };
        assert_eq!(unnumbered.n(), None);
    }

    #[test]
    fn stage_and_status_entries_have_the_spec_shape() {
        let stage = NewEntry {
            ts: 1,
            body: EntryBody::Stage {
                name: "install".into(),
                status: StageStatus::Started,
            },
        };
        assert_eq!(
            stage.to_stored_json(),
            r#"{"ts":1,"kind":"stage","name":"install","status":"started"}"#
        );
        let status = NewEntry {
            ts: 2,
            body: EntryBody::Status {
                status: JobStatus::Running,
                exit_code: None,
                duration_ms: None,
            },
        };
        assert_eq!(
            status.to_stored_json(),
            r#"{"ts":2,"kind":"status","status":"running"}"#
        );
        let ended = NewEntry {
            ts: 3,
            body: EntryBody::Status {
                status: JobStatus::Failed,
                exit_code: Some(-2),
                duration_ms: Some(1500),
            },
        };
        let json = ended.to_stored_json();
        assert_eq!(
            json,
            r#"{"ts":3,"kind":"status","status":"failed","exit_code":-2,"duration_ms":1500}"#
        );
        assert_eq!(serde_json::from_str::<NewEntry>(&json).unwrap(), ended);
    }
}
