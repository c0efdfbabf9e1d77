//! The body of `POST /jobs/{id}/logs`, parsed and checked before anything is
//! sanitized or stored: a JSON batch (`{"lines":[…],"seq"?:n}`) or a `text/plain`
//! body of lines.
//!
//! It lives in the domain crate rather than in the ingest function so that the fuzz
//! targets and the tests that replay their corpora (see `crate::fuzzing`) exercise the
//! very parser ingest runs, without Redis, HTTP or AWS. Its errors are a
//! [`BatchError`]; the web layer turns each into the API's 400 or 413.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::LineStream;

/// Largest accepted request body, in bytes (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most lines one request may carry.
pub const MAX_LINES_PER_REQUEST: usize = 10_000;
/// Largest `seq` that survives the round trip through Lua's doubles exactly.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// Largest client `ts`: JavaScript reads integers exactly only up to 2^53 − 1.
pub const MAX_TS: u64 = (1 << 53) - 1;

/// Why a body was refused. Each is a client error: [`BatchError::too_large`] ones are
/// the API's 413, the others its 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not JSON at all.
    #[error("{0}")]
    InvalidJson(String),
    /// JSON, but not of the expected shape.
    #[error("{0}")]
    InvalidBody(String),
    /// No line in the batch.
    #[error("the batch has no lines")]
    NoLines,
    /// More than [`MAX_LINES_PER_REQUEST`] lines.
    #[error("{0} lines in one request; the limit is {MAX_LINES_PER_REQUEST}")]
    TooManyLines(usize),
    /// `seq` above [`MAX_SEQ`].
    #[error("seq must be at most {MAX_SEQ}")]
    InvalidSeq,
    /// A line's `ts` above [`MAX_TS`].
    #[error("ts must be at most {MAX_TS} (milliseconds since the epoch)")]
    InvalidTs,
}

impl BatchError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::NoLines => "no_lines",
            Self::TooManyLines(_) => "too_many_lines",
            Self::InvalidSeq => "invalid_seq",
            Self::InvalidTs => "invalid_ts",
        }
    }

    /// Whether the body was refused for its size (413) rather than its content (400).
    pub fn too_large(&self) -> bool {
        matches!(self, Self::TooManyLines(_))
    }
}

/// Parses a JSON body (invalid UTF-8 read as U+FFFD): [`BatchError::InvalidJson`] when
/// it is not JSON, [`BatchError::InvalidBody`] when it is JSON of another shape.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, BatchError> {
    match std::str::from_utf8(body) {
        Ok(text) => from_json(text),
        Err(_) => from_json(&String::from_utf8_lossy(body)),
    }
}

/// `text` as JSON, borrowing from it where `T` does. A body that is valid UTF-8 (every
/// body a well-behaved client sends) is read in place: the lossy conversion walks it a
/// byte at a time, about 0.8 k instructions per 100-byte line of a batch.
fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, BatchError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            BatchError::InvalidBody(e.to_string())
        } else {
            BatchError::InvalidJson(e.to_string())
        }
    })
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `{"lines":[{"stream"?,"text","ts"?}…],"seq"?}`.
    Json,
    /// One line per `\n`, every line on this stream.
    PlainText(LineStream),
}

/// One line before sanitizing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine<'a> {
    pub stream: LineStream,
    pub text: Cow<'a, str>,
    /// The client's timestamp (ms), when it sent one.
    pub ts: Option<u64>,
}

/// A parsed, checked batch: 1 to [`MAX_LINES_PER_REQUEST`] lines, `seq` at most
/// [`MAX_SEQ`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineBatch<'a> {
    pub lines: Vec<RawLine<'a>>,
    pub seq: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct JsonBatch<'a> {
    #[serde(borrow)]
    lines: Vec<JsonLine<'a>>,
    seq: Option<u64>,
}

/// A line of a JSON batch; its text borrowed from the body unless it held an escape.
#[derive(Debug, Deserialize)]
struct JsonLine<'a> {
    #[serde(default = "default_stream")]
    stream: LineStream,
    #[serde(borrow)]
    text: Cow<'a, str>,
    ts: Option<u64>,
}

fn default_stream() -> LineStream {
    LineStream::Stdout
}

/// Parses and checks a request body.
pub fn parse_body(body: &[u8], format: BodyFormat) -> Result<LineBatch<'_>, BatchError> {
    let batch = match format {
        BodyFormat::PlainText(stream) => LineBatch {
            lines: split_lines(body)
                .into_iter()
                .map(|text| RawLine {
                    stream,
                    text,
                    ts: None,
                })
                .collect(),
            seq: None,
        },
        BodyFormat::Json => match std::str::from_utf8(body) {
            Ok(text) => json_batch(from_json(text)?)?,
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let batch = json_batch(from_json(&text)?)?;
                LineBatch {
                    lines: batch
                        .lines
                        .into_iter()
                        .map(|l| RawLine {
                            text: Cow::Owned(l.text.into_owned()),
                            ..l
                        })
                        .collect(),
                    seq: batch.seq,
                }
            }
        },
    };
    if batch.lines.is_empty() {
        return Err(BatchError::NoLines);
    }
    if batch.lines.len() > MAX_LINES_PER_REQUEST {
        return Err(BatchError::TooManyLines(batch.lines.len()));
    }
    if batch.seq.is_some_and(|s| s > MAX_SEQ) {
        return Err(BatchError::InvalidSeq);
    }
    Ok(batch)
}

/// The lines of a JSON batch: a text holding newlines is several lines, as in a
/// `text/plain` body.
fn json_batch(batch: JsonBatch<'_>) -> Result<LineBatch<'_>, BatchError> {
    let mut lines = Vec::with_capacity(batch.lines.len());
    for l in batch.lines {
        if l.ts.is_some_and(|ts| ts > MAX_TS) {
            return Err(BatchError::InvalidTs);
        }
        let (stream, ts) = (l.stream, l.ts);
        let line = |text| RawLine { stream, text, ts };
        match l.text {
            // Only an escape puts a newline in a JSON string: the text is an owned one.
            text if text.contains('\n') => lines.extend(
                split_lines(text.as_bytes())
                    .into_iter()
                    .map(|part| line(Cow::Owned(part.into_owned()))),
            ),
            text => lines.push(line(text)),
        }
    }
    Ok(LineBatch {
        lines,
        seq: batch.seq,
    })
}

/// Splits a `text/plain` body into lines: `\n` ends a line, a `\r` just before it is
/// part of the line ending (CRLF), a final newline does not start an empty line, and
/// invalid UTF-8 becomes U+FFFD.
pub fn split_lines(body: &[u8]) -> Vec<Cow<'_, str>> {
    if body.is_empty() {
        return Vec::new();
    }
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    body.split(|&b| b == b'\n')
        .map(|line| String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_splits_on_newlines_and_crlf() {
        assert_eq!(split_lines(b"a\nb\r\nc"), ["a", "b", "c"]);
        assert_eq!(split_lines(b"a\n"), ["a"]);
        assert_eq!(split_lines(b"\n"), [""]);
        assert_eq!(split_lines(b"a\n\nb\n"), ["a", "", "b"]);
        assert!(split_lines(b"").is_empty());
    }

    #[test]
    fn plain_text_keeps_progress_carriage_returns_inside_a_line() {
        assert_eq!(split_lines(b"10%\r50%\r\n"), ["10%\r50%"]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(
            split_lines(b"ok \xff\xfe end\n"),
            ["ok \u{fffd}\u{fffd} end"]
        );
    }

    #[test]
    fn json_batches_take_defaults_and_are_checked() {
        let batch = parse_body(
            br#"{"lines":[{"text":"a"},{"stream":"stderr","text":"b","ts":5}],"seq":3}"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(batch.seq, Some(3));
        assert_eq!(batch.lines[0].stream, LineStream::Stdout);
        assert_eq!(batch.lines[1].ts, Some(5));
        let code = |body: &[u8]| parse_body(body, BodyFormat::Json).unwrap_err().code();
        assert_eq!(code(b"{"), "invalid_json");
        assert_eq!(
            code(br#"{"lines":[{"stream":"x","text":"a"}]}"#),
            "invalid_body"
        );
        assert_eq!(code(br#"{"lines":[]}"#), "no_lines");
        assert_eq!(
            code(br#"{"lines":[{"text":"a"}],"seq":9007199254740992}"#),
            "invalid_seq"
        );
        let many = format!(
            r#"{{"lines":[{}]}}"#,
            vec![r#"{"text":""}"#; MAX_LINES_PER_REQUEST + 1].join(",")
        );
        assert_eq!(code(many.as_bytes()), "too_many_lines");
        let plain = parse_body(b"", BodyFormat::PlainText(LineStream::Stderr));
        assert_eq!(plain.unwrap_err().code(), "no_lines");
    }

    #[test]
    fn a_json_text_holding_newlines_becomes_several_lines() {
        let batch = parse_body(
            br#"{"lines":[{"stream":"stderr","text":"a\nb\r\nc\n","ts":7},{"text":"d"}]}"#,
            BodyFormat::Json,
        )
        .unwrap();
        let texts: Vec<&str> = batch.lines.iter().map(|l| l.text.as_ref()).collect();
        assert_eq!(texts, ["a", "b", "c", "d"]);
        assert!(
            batch.lines[..3]
                .iter()
                .all(|l| l.stream == LineStream::Stderr && l.ts == Some(7))
        );
        let only_newline = parse_body(br#"{"lines":[{"text":"\n"}]}"#, BodyFormat::Json).unwrap();
        assert_eq!(only_newline.lines.len(), 1);
        assert_eq!(only_newline.lines[0].text, "");
    }

    #[test]
    fn a_json_body_is_read_in_place_and_invalid_utf8_in_it_becomes_replacement_characters() {
        let body = br#"{"lines":[{"text":"plain"},{"text":"esc\u0041ped"}]}"#;
        let batch = parse_body(body, BodyFormat::Json).unwrap();
        assert!(matches!(batch.lines[0].text, Cow::Borrowed("plain")));
        assert_eq!(batch.lines[1].text, "escAped");

        let mut body = br#"{"lines":[{"text":"bad "#.to_vec();
        body.extend_from_slice(b"\xff\xfe byte\"},{\"text\":\"fine\"}],\"seq\":3}");
        let batch = parse_body(&body, BodyFormat::Json).unwrap();
        let texts: Vec<&str> = batch.lines.iter().map(|l| l.text.as_ref()).collect();
        assert_eq!(texts, ["bad \u{fffd}\u{fffd} byte", "fine"]);
        assert_eq!(batch.seq, Some(3));
        assert!(matches!(
            parse_json::<serde_json::Value>(b"{\"a\":\"\xff\"}"),
            Ok(v) if v["a"] == "\u{fffd}"
        ));
    }

    #[test]
    fn newlines_count_against_the_line_limit() {
        let text = "x\n".repeat(MAX_LINES_PER_REQUEST + 1);
        let body = serde_json::to_vec(&serde_json::json!({"lines": [{"text": text}]})).unwrap();
        assert_eq!(
            parse_body(&body, BodyFormat::Json).unwrap_err(),
            BatchError::TooManyLines(MAX_LINES_PER_REQUEST + 1)
        );
    }

    #[test]
    fn a_ts_javascript_cannot_read_exactly_is_refused() {
        let ok = format!(r#"{{"lines":[{{"text":"a","ts":{MAX_TS}}}]}}"#);
        assert!(parse_body(ok.as_bytes(), BodyFormat::Json).is_ok());
        let over = format!(r#"{{"lines":[{{"text":"a","ts":{}}}]}}"#, MAX_TS + 1);
        let err = parse_body(over.as_bytes(), BodyFormat::Json).unwrap_err();
        assert_eq!(err.code(), "invalid_ts");
        assert!(!err.too_large());
    }
}
