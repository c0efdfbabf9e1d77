//! Turning what the rules found into `***`: the spans of a regex's matches, the user
//! information of URLs, merged and replaced.

use std::ops::Range;

use memchr::{memchr, memmem, memrchr};
use regex::Regex;

use super::REDACTED;
use super::rules::Rule;

/// Adds the ranges to redact of every match of `rule`'s regex: the first capture
/// group that took part in the match when there are groups (the rest of the match
/// is context kept for the reader, like `password=`), else the whole match.
pub(super) fn pattern_spans(rule: Rule, regex: &Regex, text: &str, spans: &mut Vec<Range<usize>>) {
    if regex.captures_len() == 1 {
        spans.extend(regex.find_iter(text).map(|found| found.range()));
        return;
    }
    let bytes = text.as_bytes();
    for captures in regex.captures_iter(text) {
        let Some(secret) = captures.iter().skip(1).flatten().next() else {
            continue;
        };
        // An AWS id followed by one more capital or digit is part of a longer
        // word, not an id.
        if rule == Rule::AwsKeyId
            && bytes
                .get(secret.end())
                .is_some_and(|next| next.is_ascii_uppercase() || next.is_ascii_digit())
        {
            continue;
        }
        spans.push(secret.range());
    }
}

/// Adds the user information of every URL in `text` that has one
/// (`scheme://user:password@host`), `://` and `@` excluded.
///
/// Normally it ends at the last `@` before the path (`/`, `?`, `#`), so that an
/// unencoded `@` in a password leaves nothing visible. A password may also hold an
/// unencoded `/`, `?` or `#` (`postgres://u:hun?ter2@db`); then what follows the
/// first `:` is not a port (digits up to the path), and the user information ends
/// at the next `@`. So `http://localhost:4873/@types/node` keeps its `@`, and a
/// password made of digits up to its first `/` is taken for a port.
pub(super) fn url_credential_spans(text: &str, spans: &mut Vec<Range<usize>>) {
    let bytes = text.as_bytes();
    for scheme_end in memmem::find_iter(bytes, b"://") {
        let start = scheme_end + 3;
        let rest = &bytes[start..];
        let word = rest
            .iter()
            .position(|byte| {
                byte.is_ascii_whitespace() || matches!(byte, b'"' | b'\'' | b'<' | b'>' | b'`')
            })
            .unwrap_or(rest.len());
        let authority = rest[..word]
            .iter()
            .position(|byte| matches!(byte, b'/' | b'?' | b'#'))
            .unwrap_or(word);
        if let Some(at) = memrchr(b'@', &rest[..authority]) {
            // `https://@host` has nothing to hide.
            if at > 0 {
                spans.push(start..start + at);
            }
            continue;
        }
        // An IP v6 literal has colons of its own.
        if rest.first() == Some(&b'[') {
            continue;
        }
        let Some(colon) = memchr(b':', &rest[..authority]) else {
            continue;
        };
        let port_digits = rest[colon + 1..authority]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if colon + 1 + port_digits == authority {
            continue;
        }
        if let Some(at) = memchr(b'@', &rest[authority..word]) {
            spans.push(start..start + authority + at);
        }
    }
}

/// Replaces each group of overlapping or touching `spans` by one [`REDACTED`].
pub(super) fn replace_spans(text: &str, spans: Vec<Range<usize>>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut kept_from = 0;
    for span in merge_spans(spans) {
        out.push_str(&text[kept_from..span.start]);
        out.push_str(REDACTED);
        kept_from = span.end;
    }
    out.push_str(&text[kept_from..]);
    out
}

/// `spans` sorted, overlapping or touching ones made one: what [`replace_spans`]
/// replaces, each by one [`REDACTED`].
pub(super) fn merge_spans(mut spans: Vec<Range<usize>>) -> Vec<Range<usize>> {
    spans.sort_unstable_by_key(|span| span.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// Where a place `at` of a text lies once [`replace_spans`] replaced `merged` (from
/// [`merge_spans`]): shifted by what came before it; inside a span, just after that
/// span's [`REDACTED`], so nothing placed there falls inside a secret.
pub(super) fn place_after_redaction(at: usize, merged: &[Range<usize>]) -> usize {
    let mut shift: isize = 0;
    for span in merged {
        if at <= span.start {
            break;
        }
        if at < span.end {
            return (span.start as isize + shift) as usize + REDACTED.len();
        }
        shift += REDACTED.len() as isize - span.len() as isize;
    }
    (at as isize + shift) as usize
}
