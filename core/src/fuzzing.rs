//! One check per fuzz target: arbitrary bytes in, a panic when a property breaks.
//!
//! The `cargo fuzz` targets in `fuzz/` call these, and so do the tests that replay the
//! committed corpora (`fuzz/corpus/<target>/`) and the proptest properties on stable
//! Rust, so a CI machine without nightly still checks every input the fuzzer kept.
//! Each check runs the parser ingest, history and sse really use, and asserts what
//! must hold for any input, not just "no panic":
//!
//! | check | properties |
//! |---|---|
//! | [`sanitizer`] | no panic; no line past [`MAX_LINE_BYTES`]; no ESC, C0 (but tab) or C1 control left; a registered secret never comes through whole; a batch split anywhere, its carry handed on, gives the same lines |
//! | [`splitter`] | no panic; one line per `\n` (the last one optional), none containing `\n`; UTF-8 text comes back as sent, CRLF as LF; the `text/plain` body parser agrees |
//! | [`batch`] | no panic; accepted batches are within the limits and survive a round trip through the wire format; refusals are 400 or 413, never 500 |
//! | [`ids`] | no panic; entry ids and job ids accepted exactly by their grammar, and round-trip through `Display` |
//! | [`markers`] | no panic; a batch made into entries line by line, the job's state handed on, gives what the whole batch gives; no marker line is stored as a line; a mask's value never comes through in a later entry |
//!
//! Behind the `fuzzing` feature: nothing here belongs in a deployed function.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use crate::batch::{BodyFormat, MAX_LINES_PER_REQUEST, MAX_SEQ, RawLine, parse_body, split_lines};
use crate::entries::{self, Job, MaskRefused, Options, UNNAMED};
use crate::ids::{EntryId, JobId, MAX_JOB_ID_LEN};
use crate::markers::{self, Marker, Open};
use crate::model::{EntryBody, JobStatus, LineStream, NewEntry};
use crate::sanitize::{
    MAX_LINE_BYTES, Sanitizer, TRUNCATED_PREFIX, TRUNCATED_SUFFIX, without_escapes,
};

/// Bytes a secret is drawn from: token-like text, never `*` (the redaction mark) nor
/// anything the sanitizer itself writes around a redaction.
const SECRET_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.!-";

/// Input layout: `secret,secret,…` `\0` `lines…`. Up to four secrets (mapped onto a
/// token alphabet, 4 to 64 bytes, as a job may register them); the lines are
/// sanitized as one batch, each once as given and once with a secret spliced in at a
/// position the input chooses, so every run checks the redaction property; for one
/// input in eight the first line is also repeated past the 16 KiB cap, to check the cut.
/// Every line is sanitized a second time by a batch of its own resumed from the
/// previous line's carry, as the job's next request would be.
pub fn sanitizer(data: &[u8]) {
    let (head, text) = match memchr::memchr(0, data) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    let secrets: Vec<String> = head
        .split(|&b| b == b',')
        .map(|raw| {
            raw.iter()
                .map(|&b| SECRET_ALPHABET[usize::from(b) % SECRET_ALPHABET.len()] as char)
                .collect::<String>()
        })
        .filter(|s| (4..=64).contains(&s.len()))
        .take(4)
        .collect();
    let sanitizer = Sanitizer::new(&secrets);
    let text = String::from_utf8_lossy(text);
    let mut batch = sanitizer.batch();
    let mut carry = 0;
    for (i, line) in text.split('\n').enumerate() {
        let mut variants = vec![line.to_owned()];
        if let Some(secret) = secrets.get(i % secrets.len().max(1)) {
            let at = line.floor_char_boundary((i * 7919 + line.len() / 2) % (line.len() + 1));
            variants.push(format!("{}{secret}{}", &line[..at], &line[at..]));
        }
        // The first line, repeated past the cap: the cut, with secrets across it. For
        // one input in 8 (by length): 16 KiB per run would slow the fuzzer ten-fold.
        if i == 0 && data.len().is_multiple_of(8) {
            let last = variants.last().cloned().unwrap_or_default();
            if !last.is_empty() {
                variants.push(last.repeat(MAX_LINE_BYTES / last.len() + 2));
            }
        }
        for raw in variants {
            let out = batch.line(&raw);
            assert!(
                out.len() <= MAX_LINE_BYTES,
                "{} bytes out of {} in",
                out.len(),
                raw.len()
            );
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\t'),
                "a control character survived: {out:?}"
            );
            let mut resumed = sanitizer.batch_resuming(carry);
            assert_eq!(resumed.line(&raw), out, "resumed from carry {carry}");
            carry = resumed.carry();
            assert_eq!(carry, batch.carry(), "the carry after {raw:?}");
            // The truncation note is the sanitizer's own text ("… [truncated N bytes]"):
            // a secret such as "bytes" may appear there without having leaked.
            let body = match out.rfind(TRUNCATED_PREFIX) {
                Some(at) if out.ends_with(TRUNCATED_SUFFIX) => &out[..at],
                _ => &out[..],
            };
            for secret in &secrets {
                assert!(
                    !body.contains(secret.as_str()),
                    "secret {secret:?} came through: {raw:?} -> {out:?}"
                );
            }
        }
    }
}

/// Input: a `text/plain` request body.
pub fn splitter(data: &[u8]) {
    let lines = split_lines(data);
    let newlines = memchr::memchr_iter(b'\n', data).count();
    let expected = match data.last() {
        None => 0,
        Some(b'\n') => newlines,
        Some(_) => newlines + 1,
    };
    assert_eq!(lines.len(), expected, "one line per newline");
    assert!(
        lines.iter().all(|l| !l.contains('\n')),
        "a line holds a newline"
    );
    if let Ok(text) = std::str::from_utf8(data) {
        // Text comes back as sent, with CRLF line ends as LF (a `\r` ending the body
        // without a newline is a line end too).
        let mut sent = text.replace("\r\n", "\n");
        if !sent.ends_with('\n') && sent.ends_with('\r') {
            sent.pop();
        }
        let mut joined = lines.join("\n");
        if text.ends_with('\n') {
            joined.push('\n');
        }
        assert_eq!(joined, sent, "the lines rejoined are the body");
    }
    match parse_body(data, BodyFormat::PlainText(LineStream::Stderr)) {
        Ok(batch) => {
            assert!(!lines.is_empty() && lines.len() <= MAX_LINES_PER_REQUEST);
            assert_eq!(batch.seq, None);
            assert!(batch.lines.iter().all(|l| l.stream == LineStream::Stderr));
            assert!(batch.lines.iter().map(|l| &l.text).eq(lines.iter()));
        }
        Err(e) if lines.is_empty() => assert_eq!(e.code(), "no_lines"),
        Err(e) => {
            assert!(lines.len() > MAX_LINES_PER_REQUEST, "refused: {}", e.code());
            assert_eq!(e.code(), "too_many_lines");
        }
    }
}

/// Input: a JSON request body.
pub fn batch(data: &[u8]) {
    let batch = match parse_body(data, BodyFormat::Json) {
        Ok(batch) => batch,
        Err(e) => {
            // Every refusal is a BatchError, which the API answers 400 or 413: the
            // property left to check is that its code is one the API documents.
            assert!(
                [
                    "invalid_json",
                    "invalid_body",
                    "no_lines",
                    "too_many_lines",
                    "invalid_seq"
                ]
                .contains(&e.code()),
                "unexpected refusal: {e:?}"
            );
            return;
        }
    };
    assert!(!batch.lines.is_empty() && batch.lines.len() <= MAX_LINES_PER_REQUEST);
    assert!(batch.seq.is_none_or(|s| s <= MAX_SEQ));
    // What was accepted is what a client sending it back would get accepted again.
    let lines: Vec<serde_json::Value> = batch
        .lines
        .iter()
        .map(|l| serde_json::json!({"stream": l.stream, "text": l.text, "ts": l.ts}))
        .collect();
    let again = serde_json::to_vec(&serde_json::json!({"lines": lines, "seq": batch.seq}))
        .expect("serializable");
    let reparsed = parse_body(&again, BodyFormat::Json).expect("a round trip is accepted");
    assert_eq!(reparsed, batch, "round trip through the wire format");
    // And every line, sanitized as ingest does, stays within the cap.
    let sanitizer = Sanitizer::new(&[]);
    let mut lines = sanitizer.batch();
    for line in &batch.lines {
        assert!(lines.line(&line.text).len() <= MAX_LINE_BYTES);
    }
}

/// Input: text holding ids; checked whole and split at `&`, `=`, `/`, space and newline
/// (the separators of the query strings and paths the ids come in).
pub fn ids(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for raw in std::iter::once(text.as_ref()).chain(text.split(['&', '=', '/', ' ', '\n'])) {
        entry_id(raw);
        job_id(raw);
        if let Ok(status) = raw.parse::<JobStatus>() {
            assert_eq!(status.as_str(), raw);
        }
        if let Ok(stream) = raw.parse::<LineStream>() {
            assert_eq!(
                serde_json::to_value(stream).expect("serializable"),
                serde_json::Value::String(raw.to_owned())
            );
        }
    }
}

/// `<ms>-<seq>`, each 1 to 20 ASCII digits that fit in a u64; nothing else.
fn entry_id(raw: &str) {
    let number = |s: &str| {
        (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) && {
            // 20 digits may still be above u64::MAX.
            s.bytes()
                .try_fold(0u64, |n, d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .is_some()
        }
    };
    let valid = raw
        .split_once('-')
        .is_some_and(|(ms, seq)| number(ms) && number(seq));
    match raw.parse::<EntryId>() {
        Ok(id) => {
            assert!(valid, "accepted {raw:?}");
            assert_eq!(id.to_string().parse::<EntryId>(), Ok(id), "round trip");
            let (ms, seq) = raw.split_once('-').expect("valid");
            assert_eq!((ms.parse(), seq.parse()), (Ok(id.ms), Ok(id.seq)));
        }
        Err(_) => assert!(!valid, "refused {raw:?}"),
    }
}

/// 1 to 128 of `[A-Za-z0-9_-]`; nothing else.
fn job_id(raw: &str) {
    let valid = (1..=MAX_JOB_ID_LEN).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match JobId::parse(raw) {
        Ok(id) => {
            assert!(valid, "accepted {raw:?}");
            assert_eq!(id.as_str(), raw);
            assert_eq!(id.to_string(), raw);
        }
        Err(_) => assert!(!valid, "refused {raw:?}"),
    }
}

/// Input: lines of build output, one per `\n`; a line whose length is a multiple of 7
/// is a `system` line (markers are not read there). They are made into entries as one
/// batch, and again one line per batch with the job's state (private-key carry, open
/// groups, secrets and masks) handed from each to the next, as the job's requests
/// would be: the entries and masks must be the same. Each line's entries must not
/// contain a mask registered by an earlier line (masks that only the sanitizer's own
/// words or redaction marks could hold are not checked), and a marker line's own text
/// is never stored as a line.
pub fn markers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<RawLine<'_>> = text
        .split('\n')
        .map(|line| RawLine {
            stream: if line.len().is_multiple_of(7) {
                LineStream::System
            } else {
                LineStream::Stdout
            },
            text: Cow::Borrowed(line),
            ts: Some(1),
        })
        .collect();
    let options = Options {
        colour: true,
        markers: true,
        now: 1,
    };
    let plain = Sanitizer::new(&[]);
    let whole = entries::build(
        Job {
            sanitizer: &plain,
            secrets: &[],
            carry: 0,
            open: &Open::default(),
        },
        &lines,
        options,
    );
    let (mut secrets, mut carry, mut open) = (Vec::<String>::new(), 0, Open::default());
    let mut stepped: Vec<NewEntry> = Vec::new();
    for line in &lines {
        let sanitizer = Sanitizer::new(&secrets);
        let built = entries::build(
            Job {
                sanitizer: &sanitizer,
                secrets: &secrets,
                carry,
                open: &open,
            },
            std::slice::from_ref(line),
            options,
        );
        let marker = (line.stream != LineStream::System)
            .then(|| markers::parse(&line.text))
            .flatten();
        for entry in &built.entries {
            for secret in secrets.iter().filter(|s| checkable_mask(s)) {
                for shown in shown_texts(entry) {
                    assert!(
                        !shown.contains(secret.as_str()),
                        "mask {secret:?} came through: {line:?} -> {entry:?}"
                    );
                }
            }
            // A marker line's own text is never a line: a section's end may leave what
            // followed it on its line, a refused mask a notice, nothing else.
            if let (Some(marker), EntryBody::Line { stream, text, .. }) = (&marker, &entry.body) {
                let allowed = match marker {
                    Marker::SectionEnd { .. } => *stream == line.stream,
                    Marker::AddMask(_) => {
                        *stream == LineStream::System
                            && MaskRefused::ALL.iter().any(|r| r.notice() == *text)
                    }
                    _ => false,
                };
                assert!(
                    allowed,
                    "marker line stored as a line: {line:?} -> {entry:?}"
                );
            }
        }
        carry = built.carry;
        if let Some(after) = built.open {
            open = after;
        }
        secrets.extend(built.masks);
        stepped.extend(built.entries);
    }
    assert_eq!(whole.entries, stepped, "one batch vs one line per batch");
    assert_eq!(whole.masks, secrets);
    assert_eq!(whole.carry, carry);
}

/// Whether a leak of mask `secret` could be told from the sanitizer's own words: the
/// redaction mark, the cut note, the notices and the unnamed stage.
fn checkable_mask(secret: &str) -> bool {
    let own = [UNNAMED, TRUNCATED_PREFIX, TRUNCATED_SUFFIX];
    !secret.contains('*')
        && !own.iter().any(|own| own.contains(secret))
        && !MaskRefused::ALL.iter().any(|r| r.notice().contains(secret))
}

/// What a reader sees of `entry`: a line's text (the cut note removed) and its
/// colours' text, a stage's name.
fn shown_texts(entry: &NewEntry) -> Vec<Cow<'_, str>> {
    match &entry.body {
        EntryBody::Line { text, ansi, .. } => {
            let body = match text.rfind(TRUNCATED_PREFIX) {
                Some(at) if text.ends_with(TRUNCATED_SUFFIX) => &text[..at],
                _ => &text[..],
            };
            let mut shown = vec![Cow::Borrowed(body)];
            if let Some(ansi) = ansi {
                shown.push(without_escapes(ansi));
            }
            shown
        }
        EntryBody::Stage { name, .. } => vec![Cow::Borrowed(name.as_str())],
        EntryBody::Status { .. } => Vec::new(),
    }
}
