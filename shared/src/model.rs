//! The domain model: job ids, entry ids, entries and the job status machine.
//!
//! Entries are stored in Redis as their JSON *without* the `id` (the stream id is the
//! id), and spliced back together on the way out ([`StoredEntry::to_json`]) so a read
//! never decodes and re-encodes an entry.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted job id.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A validated job id: 1–128 chars of `[A-Za-z0-9_-]`, safe inside a Redis key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

/// Why a job id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidJobId;

impl JobId {
    /// Validates `raw` as a job id.
    pub fn parse(raw: &str) -> Result<Self, InvalidJobId> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_JOB_ID_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidJobId)
        }
    }

    /// A fresh random id for `POST /jobs` without one.
    pub fn generate() -> Self {
        Self(format!("job-{}", crate::auth::random_hex(12)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A Redis stream id (`<ms>-<seq>`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry id must look like 1732406400000-0")]
pub struct InvalidEntryId;

impl FromStr for EntryId {
    type Err = InvalidEntryId;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = raw.split_once('-').ok_or(InvalidEntryId)?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(InvalidEntryId);
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| InvalidEntryId)?,
            seq: seq.parse().map_err(|_| InvalidEntryId)?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl Ord for EntryId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl PartialOrd for EntryId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineStream {
    Stdout,
    Stderr,
    System,
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
    Line { stream: LineStream, text: String },
    Stage { name: String, status: StageStatus },
    Status { status: JobStatus },
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
        // Serializing plain enums and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A decoded entry, as a client of the API sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    pub ts: u64,
    #[serde(flatten)]
    pub body: EntryBody,
}

/// An entry as read from Redis: its id and its stored JSON (without id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub id: EntryId,
    pub json: String,
}

impl StoredEntry {
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
        use std::fmt::Write;
        let Some(fields) = self
            .json
            .strip_prefix('{')
            .filter(|rest| rest.ends_with('}'))
        else {
            tracing::warn!(id = %self.id, "stored entry is not a JSON object");
            out.push_str("null");
            return;
        };
        // Writing to a String cannot fail.
        let _ = write!(out, "{{\"id\":\"{}\"", self.id);
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
            Some(fields) => format!("{{{fields}"),
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
    fn job_ids_accept_the_spec_alphabet_only() {
        assert!(JobId::parse("build-42_A").is_ok());
        assert!(JobId::parse(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a:b", "a{b}", "ü", "../x", &"a".repeat(129)] {
            assert_eq!(JobId::parse(bad), Err(InvalidJobId), "{bad:?}");
        }
    }

    #[test]
    fn entry_ids_parse_and_order_numerically() {
        let a: EntryId = "1732406400000-9".parse().unwrap();
        let b: EntryId = "1732406400000-10".parse().unwrap();
        let c: EntryId = "1732406400001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1732406400000-10");
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-2-3",
            " 1-2",
            "1-+2",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }

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
                status: JobStatus::Ready,
            },
        };
        assert_eq!(
            status.to_stored_json(),
            r#"{"ts":2,"kind":"status","status":"ready"}"#
        );
    }
}
