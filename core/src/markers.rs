//! Build markers: lines a build writes into its own output to shape its log.
//!
//! | marker | from | becomes |
//! |---|---|---|
//! | `::group::NAME` | GitHub Actions | a `started` stage entry NAME; an open group is closed first (groups do not nest) |
//! | `::endgroup::` | GitHub Actions | a `succeeded` stage entry for the open group; nothing when none is open |
//! | `section_start:TS:NAME[OPTIONS]\r\e[0KHEADER` | GitLab CI | a `started` stage entry HEADER (NAME without a header) |
//! | `section_end:TS:NAME\r\e[0K` | GitLab CI | a `succeeded` stage entry for the section of that NAME |
//! | `::add-mask::VALUE` | GitHub Actions | VALUE is a secret of the job from the next line on |
//!
//! GitLab's markers are recognised with or without their `\e[0K` (erase line) prefixes
//! (or a carriage return, as older runners wrote), and a `section_end` followed on its
//! line by the next `section_start` is read as both,
//! GitHub's with leading spaces and in any letter case, as their runners do. A
//! workflow command's data is unescaped as GitHub's runner does (`%25`, `%0D`, `%0A`);
//! its properties (`::group title=x::`) are ignored. Any other `::command::` (a
//! `::warning::`, say) is an ordinary line.
//!
//! A marker is read from the line as the build wrote it, before sanitizing, so that a
//! mask is registered as written; names are sanitized like any text before they are
//! stored ([`crate::entries`] does both). Which groups and sections are open is job
//! state that outlives a batch: [`Open`], stored with the job.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::model::StageStatus;

/// What a marker line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker<'a> {
    /// `::group::NAME`: NAME as written (unescaped, not sanitized).
    Group(Cow<'a, str>),
    /// `::endgroup::`.
    EndGroup,
    /// `section_start`: the section's NAME, and its HEADER as written (may be empty).
    SectionStart { name: &'a str, header: &'a str },
    /// `section_end`: the section's NAME, and whatever followed the marker on its line
    /// (usually nothing).
    SectionEnd { name: &'a str, rest: &'a str },
    /// `::add-mask::VALUE`: VALUE unescaped, surrounding whitespace removed.
    AddMask(Cow<'a, str>),
}

/// The marker `line` is, if it is one.
pub fn parse(line: &str) -> Option<Marker<'_>> {
    // Almost every line is ruled out by its first byte.
    if !matches!(
        line.as_bytes().first()?,
        b':' | b' ' | b'\t' | b'\r' | 0x1b | b's'
    ) {
        return None;
    }
    // Older GitLab runners start a marker with a carriage return.
    let trimmed = line.trim_start_matches([' ', '\t', '\r']);
    match trimmed.strip_prefix("::") {
        Some(command) => workflow_command(command),
        None => gitlab_section(without_erase(trimmed)),
    }
}

/// `rest` of a `::command props::data` line.
fn workflow_command(rest: &str) -> Option<Marker<'_>> {
    let end = rest.find("::")?;
    let (head, data) = (&rest[..end], &rest[end + 2..]);
    let command = head.split(' ').next().unwrap_or(head);
    if command.eq_ignore_ascii_case("group") {
        Some(Marker::Group(unescape(data.trim_end_matches(['\r', '\n']))))
    } else if command.eq_ignore_ascii_case("endgroup") {
        Some(Marker::EndGroup)
    } else if command.eq_ignore_ascii_case("add-mask") {
        Some(Marker::AddMask(trim_cow(unescape(data))))
    } else {
        None
    }
}

/// GitHub's escaping of a workflow command's data undone: `%25` is `%`, `%0D` a
/// carriage return, `%0A` a newline, read left to right once.
fn unescape(data: &str) -> Cow<'_, str> {
    if !data.contains('%') {
        return Cow::Borrowed(data);
    }
    let mut out = String::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3);
        let decoded = match code {
            Some(c) if c.eq_ignore_ascii_case("25") => Some('%'),
            Some(c) if c.eq_ignore_ascii_case("0D") => Some('\r'),
            Some(c) if c.eq_ignore_ascii_case("0A") => Some('\n'),
            _ => None,
        };
        match decoded {
            Some(ch) => {
                out.push(ch);
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn trim_cow(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(v) => Cow::Borrowed(v.trim()),
        Cow::Owned(v) if v.trim().len() == v.len() => Cow::Owned(v),
        Cow::Owned(v) => Cow::Owned(v.trim().to_owned()),
    }
}

/// `text` without the erase-line escapes (`ESC [ K`, `ESC [ 0 K`) it starts with.
fn without_erase(mut text: &str) -> &str {
    loop {
        match text
            .strip_prefix("\x1b[0K")
            .or_else(|| text.strip_prefix("\x1b[K"))
        {
            Some(rest) => text = rest,
            None => return text,
        }
    }
}

/// GitLab's `section_start:TS:NAME[OPTIONS]` and `section_end:TS:NAME`, NAME in
/// `[A-Za-z0-9_.-]+` as GitLab's runner requires, then the end of the line, a
/// carriage return, an escape or a space.
fn gitlab_section(text: &str) -> Option<Marker<'_>> {
    let (start, rest) = match text.strip_prefix("section_start:") {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix("section_end:")?),
    };
    let (ts, rest) = rest.split_once(':')?;
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name_len = rest
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        .count();
    if name_len == 0 {
        return None;
    }
    let (name, mut tail) = rest.split_at(name_len);
    if start && tail.starts_with('[') {
        tail = &tail[tail.find(']')? + 1..];
    }
    if !(tail.is_empty() || tail.starts_with(['\r', '\x1b', ' '])) {
        return None;
    }
    let tail = without_erase(tail.trim_start_matches('\r'));
    Some(if start {
        Marker::SectionStart { name, header: tail }
    } else {
        Marker::SectionEnd { name, rest: tail }
    })
}

/// Most GitLab sections open at once; opening one more forgets the outermost (its end
/// then closes a stage by the section's name).
pub const MAX_OPEN_SECTIONS: usize = 32;

/// The groups and sections a job's markers left open: job state, stored with the job
/// between batches ([`Open::to_stored`]). Names are stored sanitized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The open `::group::`'s name.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// Open GitLab sections, innermost last: each its NAME and its stage's name.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    sections: Vec<(String, String)>,
}

/// A stage entry a marker makes: its name and status.
pub type StageChange = (String, StageStatus);

impl Open {
    /// The stored form: compact JSON, `{}` when nothing is open.
    #[must_use]
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Reads [`to_stored`](Self::to_stored)'s form; anything else (a job from before
    /// markers, a damaged value) is nothing open.
    #[must_use]
    pub fn from_stored(stored: &str) -> Self {
        serde_json::from_str(stored).unwrap_or_default()
    }

    /// `::group::` named `name`: closes the open group, opens this one.
    pub fn group(&mut self, name: String, out: &mut Vec<StageChange>) {
        self.end_group(out);
        out.push((name.clone(), StageStatus::Started));
        self.group = Some(name);
    }

    /// `::endgroup::`: closes the open group, if any.
    pub fn end_group(&mut self, out: &mut Vec<StageChange>) {
        if let Some(open) = self.group.take() {
            out.push((open, StageStatus::Succeeded));
        }
    }

    /// `section_start` of section `name`, whose stage is `stage`.
    pub fn start_section(&mut self, name: String, stage: String, out: &mut Vec<StageChange>) {
        if self.sections.len() >= MAX_OPEN_SECTIONS {
            self.sections.remove(0);
        }
        out.push((stage.clone(), StageStatus::Started));
        self.sections.push((name, stage));
    }

    /// `section_end` of section `name`: closes the innermost open section of that name,
    /// or, when none is open, a stage of that name. Open names are compared as `now`
    /// makes them (sanitized with the secrets known now, which may be more than when
    /// they opened).
    pub fn end_section(
        &mut self,
        name: &str,
        now: impl Fn(&str) -> String,
        out: &mut Vec<StageChange>,
    ) {
        let stage = match self
            .sections
            .iter()
            .rposition(|(open, _)| now(open) == name)
        {
            Some(at) => self.sections.remove(at).1,
            None => name.to_owned(),
        };
        out.push((stage, StageStatus::Succeeded));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> Option<Marker<'_>> {
        Some(Marker::Group(Cow::Borrowed(name)))
    }

    #[test]
    fn github_groups_are_read_with_leading_space_in_any_case() {
        assert_eq!(parse("::group::Install deps"), group("Install deps"));
        assert_eq!(parse("  ::GROUP::Build\r"), group("Build"));
        assert_eq!(parse("::group title=x::Test"), group("Test"));
        assert_eq!(parse("::endgroup::"), Some(Marker::EndGroup));
        assert_eq!(parse("\t::EndGroup::\r"), Some(Marker::EndGroup));
    }

    #[test]
    fn other_commands_and_look_alikes_are_lines() {
        for line in [
            "::warning::disk almost full",
            "::group:",
            ": :group::x",
            "x ::group::x",
            "echo ::group::x",
            "",
            "::",
            "section_start",
            "section_start::name",
            "section_start:12a:name",
            "section_start:12:",
            "section_start:12:na$me",
            "section_end:12:name:extra",
            "sections",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_mask_is_unescaped_and_trimmed() {
        assert_eq!(
            parse("::add-mask:: hunter2-secret \r"),
            Some(Marker::AddMask(Cow::Borrowed("hunter2-secret")))
        );
        assert_eq!(
            parse("::add-mask::50%25 of%0Aline%0d%zz%"),
            Some(Marker::AddMask(Cow::Owned("50% of\nline\r%zz%".into())))
        );
        // Escapes are undone once: `%250A` is the text `%0A`.
        assert_eq!(
            parse("::add-mask::a%250Ab"),
            Some(Marker::AddMask(Cow::Owned("a%0Ab".into())))
        );
    }

    #[test]
    fn gitlab_sections_with_and_without_erase_prefixes() {
        let start = |name, header| Some(Marker::SectionStart { name, header });
        assert_eq!(
            parse("\x1b[0Ksection_start:1560896352:build_step\r\x1b[0K\x1b[36;1mBuilding\x1b[0m"),
            start("build_step", "\x1b[36;1mBuilding\x1b[0m")
        );
        assert_eq!(
            parse("section_start:1560896352:build_step[collapsed=true]\r\x1b[0KBuild"),
            start("build_step", "Build")
        );
        assert_eq!(parse("section_start:1:deps.v2-x"), start("deps.v2-x", ""));
        assert_eq!(
            parse("\x1b[0Ksection_end:1560896353:build_step\r\x1b[0K"),
            Some(Marker::SectionEnd {
                name: "build_step",
                rest: ""
            })
        );
        assert_eq!(
            parse("\x1b[Ksection_end:2:build_step"),
            Some(Marker::SectionEnd {
                name: "build_step",
                rest: ""
            })
        );
    }

    fn names(out: &[StageChange]) -> Vec<(&str, StageStatus)> {
        out.iter().map(|(n, s)| (n.as_str(), *s)).collect()
    }

    #[test]
    fn a_group_closes_the_open_one_and_endgroup_without_one_does_nothing() {
        use StageStatus::{Started, Succeeded};
        let mut open = Open::default();
        let mut out = Vec::new();
        open.end_group(&mut out);
        open.group("a".into(), &mut out);
        open.group("b".into(), &mut out);
        open.end_group(&mut out);
        open.end_group(&mut out);
        assert_eq!(
            names(&out),
            [
                ("a", Started),
                ("a", Succeeded),
                ("b", Started),
                ("b", Succeeded)
            ]
        );
        assert_eq!(open, Open::default());
    }

    #[test]
    fn sections_nest_and_close_by_name() {
        use StageStatus::{Started, Succeeded};
        let mut open = Open::default();
        let mut out = Vec::new();
        open.start_section("outer".into(), "Outer stage".into(), &mut out);
        open.start_section("inner".into(), "inner".into(), &mut out);
        let same = |name: &str| name.to_owned();
        open.end_section("outer", same, &mut out);
        open.end_section("never_opened", same, &mut out);
        open.end_section("inner", same, &mut out);
        assert_eq!(
            names(&out),
            [
                ("Outer stage", Started),
                ("inner", Started),
                ("Outer stage", Succeeded),
                ("never_opened", Succeeded),
                ("inner", Succeeded),
            ]
        );
    }

    #[test]
    fn open_state_round_trips_and_is_bounded() {
        let mut open = Open::default();
        assert_eq!(open.to_stored(), "{}");
        let mut out = Vec::new();
        open.group("g \"quoted\"".into(), &mut out);
        for i in 0..MAX_OPEN_SECTIONS + 5 {
            open.start_section(format!("s{i}"), format!("S{i}"), &mut out);
        }
        assert_eq!(open.sections.len(), MAX_OPEN_SECTIONS);
        assert_eq!(open.sections[0].0, "s5");
        assert_eq!(Open::from_stored(&open.to_stored()), open);
        assert_eq!(Open::from_stored("not json"), Open::default());
        assert_eq!(Open::from_stored("{}"), Open::default());
    }
}
