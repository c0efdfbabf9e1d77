//! The raw log: a job's `line` entries as plain text, one per line, as
//! `GET /jobs/{id}/logs/raw` sends them (and `logstream logs --raw` would print them).

use std::borrow::Cow;
use std::fmt::Write;

use serde::Deserialize;

use crate::model::StoredEntry;

/// The fields of a stored entry the raw log needs; the text borrowed unless it holds
/// escapes.
#[derive(Deserialize)]
struct RawFields<'a> {
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: u64,
}

/// Appends `entry` to `out` as the raw log shows it: a `line` entry's text and `\n`,
/// after its time (`2026-12-02T17:00:00.123Z `) when `timestamps`; nothing for other
/// entries (stages, statuses) or an entry that is not this code's JSON.
pub fn push_line(out: &mut String, entry: &StoredEntry, timestamps: bool) {
    let Some((text, ts)) = line_text(&entry.json) else {
        return;
    };
    if timestamps {
        push_utc_ms(out, ts);
        out.push(' ');
    }
    out.push_str(&text);
    out.push('\n');
}

/// The text and time of a stored `line` entry's JSON; `None` for other entries or
/// JSON this code did not write.
pub fn line_text(json: &str) -> Option<(Cow<'_, str>, u64)> {
    if let Some(found) = fast_line(json) {
        return Some(found);
    }
    let fields = serde_json::from_str::<RawFields>(json).ok()?;
    let (true, Some(text)) = (fields.kind == "line", fields.text) else {
        return None;
    };
    Some((text, fields.ts))
}

/// A line entry's text and time read straight from the JSON this code stores
/// (`{"n":…,"ts":…,"kind":"line","stream":"…","text":"…"…}`: the fields in that order, as
/// `NewEntry::to_stored_json` writes them), decoding only the text string; `None`
/// for anything else, which the full parse then reads. A million-line raw log spends
/// most of its time here.
fn fast_line(json: &str) -> Option<(Cow<'_, str>, u64)> {
    let rest = json.strip_prefix("{\"n\":")?;
    let rest = &rest[rest.find(',')?..];
    let rest = rest.strip_prefix(",\"ts\":")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let ts = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(",\"kind\":\"line\",\"stream\":\"")?;
    // The stream's name (stdout, stderr, system) holds no quote or escape.
    let rest = rest[rest.find('"')?..].strip_prefix("\",\"text\":")?;
    let mut de = serde_json::Deserializer::from_str(rest);
    let text = <Cow<'_, str> as Deserialize>::deserialize(&mut de).ok()?;
    Some((text, ts))
}

/// Appends `ms` (milliseconds since the Unix epoch) as ISO-8601 UTC with
/// milliseconds: `2026-12-02T17:00:00.123Z`.
pub fn push_utc_ms(out: &mut String, ms: u64) {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    );
}

/// The proleptic Gregorian date `days` after 1970-01-01 (days counted in eras of
/// 400 years, each 146 097 days, from 0000-03-01, so leap days fall at an era's
/// year's end).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EntryId;

    fn utc(ms: u64) -> String {
        let mut s = String::new();
        push_utc_ms(&mut s, ms);
        s
    }

    #[test]
    fn times_are_iso_8601_utc_with_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(utc(1_796_230_800_123), "2026-12-02T17:00:00.123Z");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        let mut last = (1969, 12, 31);
        for days in 0..146_097 {
            let (y, m, d) = civil_from_days(days);
            let next_day = (last.0, last.1, last.2 + 1);
            let next_month = (last.0, last.1 + 1, 1);
            let next_year = (last.0 + 1, 1, 1);
            assert!(
                [next_day, next_month, next_year].contains(&(y, m, d)),
                "{days}: {last:?} then {:?}",
                (y, m, d)
            );
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            assert!(d <= len[(m - 1) as usize], "{y}-{m}-{d}");
            last = (y, m, d);
        }
    }

    #[test]
    fn stored_lines_take_the_fast_path_and_agree_with_the_full_parse() {
        use crate::model::{EntryBody, LineStream, NewEntry, numbered_json};
        let streams = [LineStream::Stdout, LineStream::Stderr, LineStream::System];
        let texts = ["plain", "say \"hi\"\\ \t", "é ünïcode ✓", ""];
        for (k, text) in texts.into_iter().enumerate() {
            let json = numbered_json(
                &NewEntry {
                    ts: 1_796_230_800_123,
                    body: EntryBody::Line {
                        stream: streams[k % streams.len()],
                        text: text.to_owned(),
                        ansi: (k % 2 == 1).then(|| format!("\u{1b}[31m{text}")),
                    },
                }
                .to_stored_json(),
                42,
            );
            let (fast, ts) = fast_line(&json).expect("the fast path reads a stored line");
            assert_eq!((fast.as_ref(), ts), (text, 1_796_230_800_123));
            let full: RawFields = serde_json::from_str(&json).unwrap();
            assert_eq!(full.text.as_deref(), Some(text));
        }
    }

    #[test]
    fn only_line_entries_are_written_with_their_text_unescaped() {
        let entry = |json: &str| StoredEntry {
            id: EntryId { ms: 1, seq: 0 },
            json: json.to_owned(),
        };
        let mut out = String::new();
        push_line(
            &mut out,
            &entry(
                r#"{"n":1,"ts":1796230800123,"kind":"line","stream":"stdout","text":"say \"hi\"\ttab"}"#,
            ),
            false,
        );
        push_line(
            &mut out,
            &entry(r#"{"n":2,"ts":1,"kind":"status","status":"running"}"#),
            false,
        );
        push_line(
            &mut out,
            &entry(r#"{"n":3,"ts":1796230800123,"kind":"line","stream":"stderr","text":"é"}"#),
            true,
        );
        assert_eq!(out, "say \"hi\"\ttab\n2026-12-02T17:00:00.123Z é\n");
    }
}
