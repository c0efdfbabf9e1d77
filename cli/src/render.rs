//! How `logstream tail` and `logstream logs` print entries.
//!
//! stdout lines are printed as they are. stderr lines are red on a colour terminal;
//! without colour they carry a `[stderr] ` prefix so they stay distinguishable in a
//! file or a pipe (`system` lines likewise carry `[system] `). Stage events and status
//! changes are `==> ` markers; a stage's end says how long it ran when its start was
//! printed too (a [`Printer`] remembers the starts). Colour follows `--color`: `auto` means a terminal and no
//! `NO_COLOR` (<https://no-color.org>), `always` and `never` say what they mean.
//!
//! The service strips escape sequences from stored lines, but other control
//! characters (backspace, bell) can remain; on a terminal they are shown as `^X` so a
//! build cannot rewrite what the reader sees.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};

use logstream_core::model::{Entry, EntryBody, JobStatus, LineStream, StageStatus};

/// The `--color` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

/// Whether to colour, from the choice, whether stdout is a terminal and `NO_COLOR`.
pub fn use_colour(choice: ColorChoice, is_terminal: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && no_color.is_none_or(str::is_empty),
    }
}

/// How entries are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Colour stderr, stages and statuses.
    pub colour: bool,
    /// Show control characters as `^X` (on a terminal).
    pub escape_controls: bool,
}

impl Style {
    /// The style for stdout with this `--color` choice.
    pub fn for_stdout(choice: ColorChoice) -> Self {
        use std::io::IsTerminal;
        let terminal = io::stdout().is_terminal();
        let no_color = std::env::var("NO_COLOR").ok();
        Self {
            colour: use_colour(choice, terminal, no_color.as_deref()),
            escape_controls: terminal,
        }
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Prints entries one after another, remembering when each open stage started, so that
/// its end says how long it ran (`==> stage build succeeded (after 4.1s)`).
#[derive(Debug)]
pub struct Printer {
    style: Style,
    started: HashMap<String, u64>,
}

/// Most stage starts a [`Printer`] remembers (a build that never ends its stages cannot
/// grow it without bound).
const MAX_OPEN_STAGES: usize = 1024;

impl Printer {
    pub fn new(style: Style) -> Self {
        Self {
            style,
            started: HashMap::new(),
        }
    }

    /// Writes `entry` as a line of text.
    pub fn write(&mut self, out: &mut impl Write, entry: &Entry) -> io::Result<()> {
        let took = match &entry.body {
            EntryBody::Stage {
                name,
                status: StageStatus::Started,
            } => {
                if self.started.len() >= MAX_OPEN_STAGES {
                    self.started.clear();
                }
                self.started.insert(name.clone(), entry.ts);
                None
            }
            EntryBody::Stage { name, .. } => self
                .started
                .remove(name)
                .map(|at| entry.ts.saturating_sub(at)),
            _ => None,
        };
        write_entry(out, entry, self.style, took)
    }
}

/// Writes one entry as a line of text; `took`: how long the stage it ends ran.
fn write_entry(
    out: &mut impl Write,
    entry: &Entry,
    style: Style,
    took: Option<u64>,
) -> io::Result<()> {
    let paint = |colour: &str, text: &str| -> String {
        if style.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    };
    let line = match &entry.body {
        // On a colour terminal a line that kept its colours shows them (and nothing
        // else a terminal would act on), then a reset.
        EntryBody::Line {
            ansi: Some(ansi), ..
        } if style.colour => format!("{}{RESET}", only_sgr(ansi)),
        EntryBody::Line { stream, text, .. } => {
            let text = if style.escape_controls {
                escape_controls(text)
            } else {
                Cow::Borrowed(text.as_str())
            };
            match (stream, style.colour) {
                (LineStream::Stdout, _) => text.into_owned(),
                (LineStream::Stderr, true) => paint(RED, &text),
                (LineStream::Stderr, false) => format!("[stderr] {text}"),
                (LineStream::System, true) => paint(DIM, &text),
                (LineStream::System, false) => format!("[system] {text}"),
            }
        }
        EntryBody::Stage { name, status } => {
            let (colour, word) = match status {
                StageStatus::Started => (CYAN, "started"),
                StageStatus::Succeeded => (GREEN, "succeeded"),
                StageStatus::Failed => (RED, "failed"),
                StageStatus::Skipped => (DIM, "skipped"),
            };
            let name = escape_controls(name);
            let after = took.map_or(String::new(), |ms| {
                format!(" (after {})", human_duration(ms))
            });
            paint(colour, &format!("==> stage {name} {word}{after}"))
        }
        EntryBody::Status {
            status,
            exit_code,
            duration_ms,
        } => {
            let colour = match status {
                JobStatus::Ready => GREEN,
                JobStatus::Failed => RED,
                JobStatus::Queued | JobStatus::Running => YELLOW,
            };
            let mut text = format!("==> job {status}");
            let details: Vec<String> = exit_code
                .map(|code| format!("exit code {code}"))
                .into_iter()
                .chain(duration_ms.map(|ms| format!("after {}", human_duration(ms))))
                .collect();
            if !details.is_empty() {
                text.push_str(&format!(" ({})", details.join(", ")));
            }
            if style.colour {
                format!("{BOLD}{}", paint(colour, &text))
            } else {
                text
            }
        }
    };
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// Control characters other than tab as `^X`.
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\u{7f}' => out.push_str("^?"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `ansi` with its colour and style changes (`ESC [` digits, `;`, `:` `m`) kept and
/// every other control shown as text: what the service sends is not trusted to hold
/// only those.
fn only_sgr(ansi: &str) -> String {
    let mut out = String::with_capacity(ansi.len());
    let mut rest = ansi;
    while let Some(at) = rest.find(|c: char| c.is_control() && c != '\t') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let sgr_len = tail.strip_prefix("\x1b[").and_then(|params| {
            let end = params.find(|c: char| !matches!(c, '0'..='9' | ';' | ':'))?;
            (params[end..].starts_with('m')).then_some(2 + end + 1)
        });
        let taken = match sgr_len {
            Some(len) => {
                out.push_str(&tail[..len]);
                len
            }
            None => {
                let c = tail.chars().next().unwrap_or('\u{fffd}');
                out.push_str(&escape_controls(c.encode_utf8(&mut [0; 4])));
                c.len_utf8()
            }
        };
        rest = &tail[taken..];
    }
    out.push_str(rest);
    out
}

/// A duration as a person reads it: `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_colour_changes_reach_the_terminal() {
        assert_eq!(
            only_sgr("\x1b[1;31merror\x1b[0m: \x1b[38;5;208mx"),
            "\x1b[1;31merror\x1b[0m: \x1b[38;5;208mx"
        );
        assert_eq!(only_sgr("a\x1b]0;title\x07b"), "a^[]0;title^Gb");
        assert_eq!(only_sgr("\x1b[2Jcleared\x1b[31"), "^[[2Jcleared^[[31");
        assert_eq!(only_sgr("tab\tstays"), "tab\tstays");
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(245_000), "4m 05s");
        assert_eq!(human_duration(7_380_000), "2h 03m");
    }

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    fn render(json: &str, colour: bool) -> String {
        let mut out = Vec::new();
        let style = Style {
            colour,
            escape_controls: true,
        };
        Printer::new(style).write(&mut out, &entry(json)).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stages_end_says_how_long_it_ran_when_its_start_was_printed() {
        let style = Style {
            colour: false,
            escape_controls: false,
        };
        let mut printer = Printer::new(style);
        let mut out = Vec::new();
        for json in [
            r#"{"id":"1-0","ts":1000,"kind":"stage","name":"build","status":"started"}"#,
            r#"{"id":"1-1","ts":5100,"kind":"stage","name":"build","status":"succeeded"}"#,
            r#"{"id":"1-2","ts":6000,"kind":"stage","name":"test","status":"failed"}"#,
        ] {
            printer.write(&mut out, &entry(json)).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "==> stage build started\n==> stage build succeeded (after 4.1s)\n==> stage test failed\n"
        );
    }

    #[test]
    fn stderr_is_marked_with_a_prefix_without_colour_and_red_with_it() {
        let err = r#"{"id":"1-0","ts":1,"kind":"line","stream":"stderr","text":"boom"}"#;
        assert_eq!(render(err, false), "[stderr] boom\n");
        assert_eq!(render(err, true), "\x1b[31mboom\x1b[0m\n");
        let out = r#"{"id":"1-1","ts":1,"kind":"line","stream":"stdout","text":"fine"}"#;
        assert_eq!(render(out, false), "fine\n");
        assert_eq!(render(out, true), "fine\n");
    }

    #[test]
    fn stages_and_statuses_are_markers() {
        assert_eq!(
            render(
                r#"{"id":"1-0","ts":1,"kind":"stage","name":"build","status":"started"}"#,
                false
            ),
            "==> stage build started\n"
        );
        assert_eq!(
            render(
                r#"{"id":"1-0","ts":1,"kind":"status","status":"ready"}"#,
                false
            ),
            "==> job ready\n"
        );
    }

    #[test]
    fn control_characters_cannot_reach_a_terminal() {
        let bell =
            r#"{"id":"1-0","ts":1,"kind":"line","stream":"stdout","text":"a\u0007b\u0008\tc"}"#;
        assert_eq!(render(bell, true), "a^Gb^H\tc\n");
    }

    #[test]
    fn no_color_and_terminals_decide_auto() {
        assert!(use_colour(ColorChoice::Auto, true, None));
        assert!(use_colour(ColorChoice::Auto, true, Some("")));
        assert!(!use_colour(ColorChoice::Auto, true, Some("1")));
        assert!(!use_colour(ColorChoice::Auto, false, None));
        assert!(use_colour(ColorChoice::Always, false, Some("1")));
        assert!(!use_colour(ColorChoice::Never, true, None));
    }
}
