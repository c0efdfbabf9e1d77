//! A batch's lines made into the entries a job stores: each line sanitized (with its
//! colours when kept), and the build's markers ([`crate::markers`]) made into stage
//! entries and masks.
//!
//! It is pure: what it needs of the job (the sanitizer, its secrets, where the job's
//! last batch left the private-key carry and the open groups) comes in, and what the
//! batch changes of it goes out in [`Built`], for the store to apply in the same round
//! trip as the entries, and only if the job still is where the batch started.

use crate::batch::RawLine;
use crate::markers::{self, Marker, Open, StageChange};
use crate::model::{EntryBody, LineStream, NewEntry};
use crate::sanitize::{Batch, Sanitizer};

/// Most literal secrets one job may have: registered at creation, by
/// `POST /jobs/{id}/secrets` and by `::add-mask::`, together.
pub const MAX_SECRETS: usize = 100;
/// Shortest literal secret: shorter would redact ordinary text.
pub const MIN_SECRET_LEN: usize = 4;
/// Longest literal secret.
pub const MAX_SECRET_LEN: usize = 4096;
/// Longest stage name (and owner id).
pub const MAX_NAME_LEN: usize = 256;

/// The stage name of a group or section whose name is empty once sanitized.
pub const UNNAMED: &str = "(unnamed)";

/// How lines are stored.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Keep colours as `ansi` (`LOGSTREAM_KEEP_COLOR`).
    pub colour: bool,
    /// Read build markers (`LOGSTREAM_MARKERS`).
    pub markers: bool,
    /// The time of lines sent without one.
    pub now: u64,
}

/// What the batch starts from: the job as its last batch left it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The job's sanitizer, built from `secrets`.
    pub sanitizer: &'a Sanitizer,
    /// The job's registered literal secrets.
    pub secrets: &'a [String],
    /// The private-key carry (`Batch::carry`).
    pub carry: u32,
    /// The open groups and sections.
    pub open: &'a Open,
}

/// A batch made into entries, and what it changes of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub entries: Vec<NewEntry>,
    /// The private-key carry after the batch.
    pub carry: u32,
    /// The open groups and sections after the batch, when a group or section marker
    /// was in it (the batch then depends on where the job's were).
    pub open: Option<Open>,
    /// Secrets the batch's `::add-mask::` lines register.
    pub masks: Vec<String>,
    /// Lines stored with something redacted.
    pub redacted: u32,
}

/// Makes `lines` into entries for `job`.
pub fn build(job: Job<'_>, lines: &[RawLine<'_>], options: Options) -> Built {
    let mut entries = Vec::with_capacity(lines.len());
    let mut carry = job.carry;
    let mut open: Option<Open> = None;
    let mut masks: Vec<String> = Vec::new();
    // The job's sanitizer with this batch's masks, once it has one.
    let mut masked: Option<Sanitizer> = None;
    let mut stages: Vec<StageChange> = Vec::new();
    let mut redacted = 0;
    for line in lines {
        let ts = line.ts.unwrap_or(options.now);
        let reads_markers = options.markers && line.stream != LineStream::System;
        // The line, then (GitLab writes a section's end and the next one's start on one
        // line) whatever followed a `section_end` on it, read as a line of its own.
        let mut text: &str = &line.text;
        loop {
            let sanitizer = masked.as_ref().unwrap_or(job.sanitizer);
            let marker = if reads_markers {
                markers::parse(text)
            } else {
                None
            };
            let Some(marker) = marker else {
                let mut batch = sanitizer.batch_resuming(carry);
                entries.push(line_entry(&mut batch, line.stream, text, ts, options));
                carry = batch.carry();
                redacted += batch.redacted();
                break;
            };
            let mut rest = None;
            match marker {
                Marker::AddMask(value) => {
                    match check_mask(&value, job.secrets, &masks) {
                        Ok(false) => {}
                        Ok(true) => {
                            masks.push(value.into_owned());
                            let all: Vec<String> =
                                job.secrets.iter().chain(&masks).cloned().collect();
                            masked = Some(Sanitizer::new(&all));
                        }
                        Err(refused) => entries.push(NewEntry {
                            ts,
                            body: EntryBody::Line {
                                stream: LineStream::System,
                                text: refused.notice(),
                                ansi: None,
                            },
                        }),
                    }
                    break;
                }
                Marker::Group(name) => {
                    let name = stage_name(sanitizer, &name);
                    open.get_or_insert_with(|| job.open.clone())
                        .group(name, &mut stages);
                }
                Marker::EndGroup => open
                    .get_or_insert_with(|| job.open.clone())
                    .end_group(&mut stages),
                Marker::SectionStart { name, header } => {
                    let stage = match header.trim() {
                        "" => stage_name(sanitizer, name),
                        header => stage_name(sanitizer, header),
                    };
                    let name = stage_name(sanitizer, name);
                    open.get_or_insert_with(|| job.open.clone()).start_section(
                        name,
                        stage,
                        &mut stages,
                    );
                }
                Marker::SectionEnd { name, rest: after } => {
                    let name = stage_name(sanitizer, name);
                    open.get_or_insert_with(|| job.open.clone()).end_section(
                        &name,
                        |open| stage_name(sanitizer, open),
                        &mut stages,
                    );
                    rest = Some(after);
                }
            }
            // Names kept open since an earlier line are sanitized again: a mask may have
            // come since.
            entries.extend(stages.drain(..).map(|(name, status)| NewEntry {
                ts,
                body: EntryBody::Stage {
                    name: stage_name(sanitizer, &name),
                    status,
                },
            }));
            match rest {
                Some(after) if !after.trim().is_empty() => text = after,
                _ => break,
            }
        }
    }
    Built {
        entries,
        carry,
        open,
        masks,
        redacted,
    }
}

fn line_entry(
    batch: &mut Batch<'_>,
    stream: LineStream,
    raw: &str,
    ts: u64,
    options: Options,
) -> NewEntry {
    let (text, ansi) = if options.colour {
        let coloured = batch.coloured(raw);
        (coloured.text.into_owned(), coloured.ansi)
    } else {
        (batch.line(raw).into_owned(), None)
    };
    NewEntry {
        ts,
        body: EntryBody::Line { stream, text, ansi },
    }
}

/// A group's or section's name fit to store: sanitized on its own (a private-key
/// marker in it starts no block), trimmed, cut to [`MAX_NAME_LEN`] bytes.
fn stage_name(sanitizer: &Sanitizer, raw: &str) -> String {
    let text = sanitizer.batch().line(raw);
    let mut name = text.trim();
    if name.len() > MAX_NAME_LEN {
        let mut end = MAX_NAME_LEN;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name = &name[..end];
    }
    if name.is_empty() {
        UNNAMED.to_owned()
    } else {
        name.to_owned()
    }
}

/// Why an `::add-mask::` value was not registered, which the log says in a `system`
/// line in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRefused {
    /// Not [`MIN_SECRET_LEN`]–[`MAX_SECRET_LEN`] bytes.
    Length,
    /// The job has [`MAX_SECRETS`] secrets.
    Full,
}

impl MaskRefused {
    pub const ALL: [Self; 2] = [Self::Length, Self::Full];

    /// The `system` line that says so.
    #[must_use]
    pub fn notice(self) -> String {
        match self {
            Self::Length => format!(
                "logstream: ::add-mask:: ignored: a mask must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} bytes (shorter would redact ordinary text)"
            ),
            Self::Full => format!(
                "logstream: ::add-mask:: ignored: the job has {MAX_SECRETS} secrets, the most it may have; this value is not masked"
            ),
        }
    }
}

/// Whether `value` is a new secret to register (`Ok(false)`: the job has it), or why
/// it is not taken.
fn check_mask(value: &str, secrets: &[String], masks: &[String]) -> Result<bool, MaskRefused> {
    if value.len() < MIN_SECRET_LEN || value.len() > MAX_SECRET_LEN {
        return Err(MaskRefused::Length);
    }
    if secrets.iter().chain(masks).any(|known| known == value) {
        return Ok(false);
    }
    if secrets.len() + masks.len() >= MAX_SECRETS {
        return Err(MaskRefused::Full);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::model::StageStatus;

    const ON: Options = Options {
        colour: true,
        markers: true,
        now: 7,
    };

    fn lines(texts: &[&'static str]) -> Vec<RawLine<'static>> {
        texts
            .iter()
            .map(|text| RawLine {
                stream: LineStream::Stdout,
                text: Cow::Borrowed(*text),
                ts: None,
            })
            .collect()
    }

    fn run(secrets: &[String], open: &Open, texts: &[&'static str], options: Options) -> Built {
        let sanitizer = Sanitizer::new(secrets);
        let job = Job {
            sanitizer: &sanitizer,
            secrets,
            carry: 0,
            open,
        };
        build(job, &lines(texts), options)
    }

    /// Each entry as `line:TEXT`, `system:TEXT` or `STATUS:NAME`.
    fn shown(built: &Built) -> Vec<String> {
        built
            .entries
            .iter()
            .map(|entry| match &entry.body {
                EntryBody::Line { stream, text, .. } => match stream {
                    LineStream::System => format!("system:{text}"),
                    _ => format!("line:{text}"),
                },
                EntryBody::Stage { name, status } => {
                    format!(
                        "{}:{name}",
                        serde_json::to_value(status).unwrap().as_str().unwrap()
                    )
                }
                EntryBody::Status { .. } => "status".into(),
            })
            .collect()
    }

    #[test]
    fn groups_become_stage_entries_and_are_not_stored_as_lines() {
        let built = run(
            &[],
            &Open::default(),
            &["::group::Install", "npm ci", "::endgroup::", "done"],
            ON,
        );
        assert_eq!(
            shown(&built),
            [
                "started:Install",
                "line:npm ci",
                "succeeded:Install",
                "line:done"
            ]
        );
        assert_eq!(built.open, Some(Open::default()));
        assert!(built.entries.iter().all(|entry| entry.ts == 7));
    }

    #[test]
    fn a_batch_without_markers_leaves_the_open_groups_alone() {
        let mut open = Open::default();
        open.group("left open".into(), &mut Vec::new());
        let built = run(&[], &open, &["a", "b"], ON);
        assert_eq!(built.open, None);
        let built = run(&[], &open, &["::endgroup::"], ON);
        assert_eq!(shown(&built), ["succeeded:left open"]);
        assert_eq!(built.open, Some(Open::default()));
    }

    #[test]
    fn a_mask_redacts_the_lines_after_it_in_the_same_batch_and_is_never_stored() {
        let built = run(
            &[],
            &Open::default(),
            &[
                "token is tok-1234-abcd",
                "::add-mask::tok-1234-abcd",
                "token is tok-1234-abcd",
                "::group::deploy with tok-1234-abcd",
            ],
            ON,
        );
        assert_eq!(
            shown(&built),
            [
                "line:token is tok-1234-abcd",
                "line:token is ***",
                "started:deploy with ***"
            ]
        );
        assert_eq!(built.masks, ["tok-1234-abcd"]);
    }

    #[test]
    fn masks_out_of_bounds_or_past_the_limit_say_so_in_a_line_of_their_own() {
        let built = run(&[], &Open::default(), &["::add-mask::abc", "abc"], ON);
        assert_eq!(built.masks, Vec::<String>::new());
        assert_eq!(built.entries.len(), 2);
        assert!(
            shown(&built)[0]
                .starts_with("system:logstream: ::add-mask:: ignored: a mask must be 4-4096 bytes")
        );

        let full: Vec<String> = (0..MAX_SECRETS).map(|i| format!("secret-{i:03}")).collect();
        let built = run(
            &full,
            &Open::default(),
            &["::add-mask::secret-007", "::add-mask::one-more"],
            ON,
        );
        assert_eq!(
            built.masks,
            Vec::<String>::new(),
            "a known value is no new secret"
        );
        assert_eq!(shown(&built).len(), 1);
        assert!(shown(&built)[0].contains("the job has 100 secrets"));
    }

    #[test]
    fn gitlab_sections_take_their_header_and_a_secret_in_it_is_redacted() {
        let secrets = ["s3cr3t-value".to_owned()];
        let built = run(
            &secrets,
            &Open::default(),
            &[
                "\x1b[0Ksection_start:1700000000:deps\r\x1b[0K\x1b[36;1mInstalling s3cr3t-value\x1b[0m",
                "\x1b[0Ksection_start:1700000001:inner\r\x1b[0K",
                "work",
                "\x1b[0Ksection_end:1700000002:inner\r\x1b[0K",
                "\x1b[0Ksection_end:1700000003:deps\r\x1b[0Ktrailing text",
            ],
            ON,
        );
        assert_eq!(
            shown(&built),
            [
                "started:Installing ***",
                "started:inner",
                "line:work",
                "succeeded:inner",
                "succeeded:Installing ***",
                "line:trailing text",
            ]
        );
    }

    #[test]
    fn a_section_start_after_a_section_end_on_the_same_line_is_read() {
        let built = run(
            &[],
            &Open::default(),
            &[
                "\x1b[0Ksection_start:1:a\r\x1b[0KFirst",
                "\x1b[0Ksection_end:2:a\r\x1b[0K\x1b[0Ksection_start:2:b\r\x1b[0K\x1b[36;1mSecond\x1b[0m",
                "\rsection_end:3:b\r\x1b[0K",
            ],
            ON,
        );
        assert_eq!(
            shown(&built),
            [
                "started:First",
                "succeeded:First",
                "started:Second",
                "succeeded:Second"
            ]
        );
    }

    #[test]
    fn markers_off_or_on_system_lines_are_ordinary_lines() {
        let off = Options {
            markers: false,
            ..ON
        };
        let built = run(
            &[],
            &Open::default(),
            &["::group::x", "::add-mask::abcdef"],
            off,
        );
        assert_eq!(
            shown(&built),
            ["line:::group::x", "line:::add-mask::abcdef"]
        );
        assert!(built.masks.is_empty());
        assert_eq!(built.open, None);

        let sanitizer = Sanitizer::new(&[]);
        let system = [RawLine {
            stream: LineStream::System,
            text: Cow::Borrowed("::group::x"),
            ts: Some(1),
        }];
        let job = Job {
            sanitizer: &sanitizer,
            secrets: &[],
            carry: 0,
            open: &Open::default(),
        };
        assert_eq!(shown(&build(job, &system, ON)), ["system:::group::x"]);
    }

    #[test]
    fn names_are_cut_and_never_empty() {
        let long = format!("::group::{}", "é".repeat(200));
        let long: &'static str = Box::leak(long.into_boxed_str());
        let built = run(
            &[],
            &Open::default(),
            &[long, "::group::  \x1b[1m\x1b[0m "],
            ON,
        );
        let EntryBody::Stage { name, status } = &built.entries[0].body else {
            panic!("not a stage: {:?}", built.entries[0]);
        };
        assert_eq!((name.len(), *status), (MAX_NAME_LEN, StageStatus::Started));
        assert_eq!(shown(&built)[2], format!("started:{UNNAMED}"));
    }

    #[test]
    fn a_private_key_in_a_group_name_does_not_swallow_the_lines_after_it() {
        let built = run(
            &[],
            &Open::default(),
            &["::group::-----BEGIN RSA PRIVATE KEY-----", "visible"],
            ON,
        );
        assert_eq!(shown(&built)[1], "line:visible");
        assert_eq!(built.carry, 0);
    }
}
