//! Turning what the rules found into `***`: the spans of a regex's matches, merged
//! and replaced, and the job's literal secrets as they are registered.

use std::ops::Range;

use regex::Regex;

use super::{MIN_SECRET_LINE_BYTES, REDACTED};

/// Adds the ranges to redact of every match of `regex`: the first capture
/// group that took part in the match when there are groups (the rest of the
/// match is context kept for the reader, like `password=`), else the whole
/// match.
pub(super) fn pattern_spans(regex: &Regex, text: &str, spans: &mut Vec<Range<usize>>) {
    if regex.captures_len() == 1 {
        spans.extend(regex.find_iter(text).map(|found| found.range()));
        return;
    }
    for captures in regex.captures_iter(text) {
        if let Some(secret) = captures.iter().skip(1).flatten().next() {
            spans.push(secret.range());
        }
    }
}

/// Replaces each group of overlapping or touching `spans` by one [`REDACTED`].
pub(super) fn replace_spans(text: &str, mut spans: Vec<Range<usize>>) -> String {
    spans.sort_unstable_by_key(|span| span.start);
    let mut out = String::with_capacity(text.len());
    let mut kept_from = 0;
    let mut spans = spans.into_iter();
    let mut current = spans.next();
    while let Some(mut merged) = current.take() {
        for next in spans.by_ref() {
            if next.start > merged.end {
                current = Some(next);
                break;
            }
            merged.end = merged.end.max(next.end);
        }
        out.push_str(&text[kept_from..merged.start]);
        out.push_str(REDACTED);
        kept_from = merged.end;
    }
    out.push_str(&text[kept_from..]);
    out
}

/// Distinct, non-empty literal secrets, multi-line ones split into lines.
pub(super) fn literal_secrets(secrets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for secret in secrets {
        if !secret.contains(['\n', '\r']) {
            if !secret.is_empty() {
                out.push(secret.clone());
            }
            continue;
        }
        let lines: Vec<&str> = secret
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let shortest = if lines.len() > 1 {
            MIN_SECRET_LINE_BYTES
        } else {
            1
        };
        out.extend(
            lines
                .into_iter()
                .filter(|line| line.len() >= shortest)
                .map(str::to_owned),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}
