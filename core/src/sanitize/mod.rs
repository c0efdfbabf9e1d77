//! Sanitizing of log lines printed by untrusted build commands, before they
//! are stored.
//!
//! A [`Sanitizer`] is built once per job (it holds the job's literal
//! secrets); a [`Batch`] carries the little state that spans lines, and hands it
//! over to the next batch of the job ([`Batch::carry`],
//! [`Sanitizer::batch_resuming`]). Each line goes through four steps, in this
//! order:
//!
//! 1. **Escape sequences and control characters are removed** by a hand-written
//!    state machine: CSI, OSC, DCS/SOS/PM/APC strings in their 7-bit (`ESC`) and
//!    8-bit (C1) forms, charset designations and two-byte escapes, then every
//!    other C0 control but tab (NUL, BEL, BS, VT, FF …), DEL and C1 control
//!    (U+0080–U+009F), each alone. Whatever cannot be parsed is dropped together
//!    with its introducer, so no ESC, C0 (but tab) or C1 character ever reaches
//!    storage.
//! 2. **Carriage-return progress is collapsed**: only the text after the last
//!    `\r` is kept, which is what a progress bar leaves on screen. When
//!    nothing follows the last `\r` (`"50%\r"`), the cursor went back to the
//!    start of the line but nothing overwrote it, so the terminal still shows
//!    the last text written: we keep the segment before the trailing `\r`s.
//!    (A real terminal overlays a shorter segment on a longer one; we do not
//!    emulate that, a progress line is rewritten whole.)
//! 3. **Secrets are redacted** (`***`), see below.
//! 4. **Long lines are cut** to [`MAX_LINE_BYTES`], suffix included.
//!
//! Why this order: escapes are stripped first because they can sit inside
//! a secret (`hun\e[1mter2`), whether from a colouring tool or put there to
//! dodge the redaction; the redaction must see the text a reader will see.
//! Redaction comes before the cut so that the cut can never leave half of a
//! secret that the patterns would then no longer recognise.
//!
//! # What is redacted
//!
//! Each secret becomes `***`; the name, option or scheme in front of it stays.
//! - **Token shapes**: AWS access key ids (`AKIA`, `ASIA`, `ABIA`, `ACCA` and 16
//!   capitals or digits, not inside a longer run of capitals and digits, but
//!   glued to anything else, `KEY_AKIA…`); GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`,
//!   `ghr_`, `github_pat_`), GitLab (`glpat-`, `gldt-`, `glrt-` …) and Slack
//!   (`xoxb-`, `xoxp-`, `xoxe-`, `xapp-` …) tokens, their prefixes in any case;
//!   Slack webhook URLs; Stripe keys (`sk_live_`, `rk_test_`, `whsec_` …); JWTs;
//!   PEM private-key blocks, also across lines and batches.
//! - **Secrets by name**: the value of `name=value`, `name: value` (a space
//!   after the colon unless the value is quoted) and `"name": "value"`, when the
//!   name contains `password`, `passwd`, `passphrase`, `secret`, `token`,
//!   `credential` or `api_key`, or ends with a part `key`, `pass`, `pwd` or `auth`
//!   (`DB_PASS`, `private_key`, `accessKey`); `pass=`, `pwd=`, `auth=` and `key=`
//!   alone, and `"pass": "…"`. A bare value runs to the next blank, `&`
//!   included.
//! - **Command lines**: `--password VALUE` and the like (`--token`,
//!   `--client-secret`, `--api-key` …), `-p VALUE` after a `login` subcommand
//!   (`docker login -u me -p …`), the password of `user:password` after curl's
//!   `-u`/`--user`, openssl's `pass:VALUE`.
//! - **Headers**: the credentials of `Authorization:` and `Proxy-Authorization:`
//!   whatever the scheme (`Basic`, `token`, a short `Bearer`); `Bearer` followed
//!   by 8 or more token characters anywhere.
//! - **URL credentials**: `scheme://user:password@host` becomes
//!   `scheme://***@host`, also when the password holds `@`, `/`, `?` or `#`.
//! - **The job's registered secrets**, wherever they occur: as written, ASCII
//!   upper-cased, percent-encoded (by any common encoder, hex in either case),
//!   and in base64, standard or URL-safe, padded or not, at any alignment (the
//!   characters that depend on the secret alone; for secrets of 6 bytes or
//!   more, at every alignment from 7). A multi-line secret is registered line
//!   by line.
//!
//! # What is not
//!
//! - A secret with neither a known shape nor a name in front of it: `hunter2`
//!   alone, `mysql -phunter2`, `sshpass -p hunter2`, a password in prose.
//!   Register it (`secrets` at creation, `POST …/secrets`, `::add-mask::`).
//! - Names made of a short word without a separator (`dbpass=`, `SSHPASS=`);
//!   `pass:`, `key:`, `auth:` alone with a bare value (`--- PASS: TestX`,
//!   `Key: npm-cache-…` are what test runners and caches print) and
//!   `"key": "…"`, `"auth": "…"` alone; `PWD=` (the shell's working
//!   directory); `--key FILE`.
//! - Registered secrets lower-cased, in other encodings (hex, JSON or shell
//!   escapes, base64 wrapped over several lines), or split across lines.
//! - A URL password made of digits up to its first `/` (it reads as a port).
//! - Cookies and session ids (`Cookie:`, `Set-Cookie:`), and private keys that
//!   are not PEM blocks.
//! - The part of a private key past [`MAX_PRIVATE_KEY_LINES`] lines without
//!   an `END` marker.
//!
//! Redaction errs on the side of too much: `password=x&next=1` loses `&next=1`,
//! `Authorization: Bearer` alone becomes `Authorization: ***`.
//!
//! # How
//!
//! **Prefilter.** Most lines contain nothing to change, and they must cost
//! well under a microsecond. Step 1 scans 16 bytes at a time for a control byte
//! (or the lead byte of a C1 character) and only starts working when it finds
//! one; step 2 only when `memchr` finds a `\r`. For step 3 every rule has
//! trigger substrings (`AKIA`, `ghp_`, `password`, `://`, …); they and the
//! *anchors* of the job's literal secrets (the first bytes of each form, see
//! `literals.rs`) form one Aho-Corasick automaton, searched once per line, and
//! only the rules whose trigger occurred are run. The automaton is ASCII
//! case-insensitive as a whole (Aho-Corasick has no per-pattern setting), so a
//! case-sensitive trigger is confirmed by comparing bytes before its regex
//! runs, and a literal secret by comparing bytes before it is redacted.
//! Regexes are compiled once per process.
//!
//! **Automaton kind.** The sanitizer without literal secrets, which every job
//! without any shares, is a DFA: the fastest scan, ~130 KB once per process. A
//! job's own sanitizer is a contiguous NFA, a fraction of a DFA's size: with 3
//! secrets ~27 KB (a DFA would take ~240 KB; the DFA over the whole secrets
//! before took ~140 KB); with 100 secrets of 4 096 bytes ~0.65 MiB, 400 KiB of
//! which are the secrets, where one automaton over the whole secrets took
//! ~7.7 MiB, 24 MiB at its peak and ~350 ms to build (now ~5 ms). The price is
//! scan time: a clean 80-byte line costs ~0.5 µs instead of ~0.3 µs
//! (`examples/sanitize-bench.rs`).
//!
//! **Overlaps.** Every rule reports byte ranges to redact; overlapping or
//! touching ranges are merged and each merged range becomes a single `***`.
//! Literal secrets are searched with overlapping matches. So a literal secret
//! overlapping a pattern match, or two overlapping literal secrets, never
//! leave a fragment visible: where "longest first, leftmost" replacement
//! would be safe this gives the same text, and where it would expose the end
//! of an overlapping secret this redacts it too.
//!
//! **PEM state across batches.** A private key printed by `cat key.pem` spans
//! many lines, and no single one of its base64 lines is recognisable as a
//! secret, so "inside a private key" is state. A pipeline's batches split the
//! output anywhere, so the state outlives a batch: [`Batch::carry`] gives it as
//! a number that the caller keeps per job (in Redis, since the next batch may
//! land on another instance) and hands to [`Sanitizer::batch_resuming`]. It
//! counts the lines the block has run, because a `BEGIN` without an `END` (a
//! truncated output, or a script merely mentioning the marker) must not
//! silence the rest of the job's log: the block ends by itself after
//! [`MAX_PRIVATE_KEY_LINES`] lines.
//!
//! Decisions a reader might question:
//! - A `key: value` secret needs a space after the colon unless the value is
//!   quoted (`"token":"x"` is fine). Without that rule, compiler locations such
//!   as `src/token.rs:12:5` and paths such as `Token::new` would be mangled.
//!   `key=value` needs no space.
//! - A multi-line literal secret can never occur in one line, so each of its
//!   lines is registered instead, trimmed. When it has several lines, those
//!   shorter than 4 bytes are skipped, or a JSON secret would redact every
//!   `{` of the log.
//! - A line on which confirming literal secrets would cost more than a bound
//!   proportional to its length (only a long secret that repeats itself,
//!   printed over and over, gets there) is redacted whole (`literals.rs`).
//! - [`Batch::line`] also borrows when the result is a part of its input
//!   (a collapsed progress line) or the constant [`REDACTED`], so
//!   `Cow::Owned` means "changed" but `Cow::Borrowed` does not always mean
//!   "unchanged".

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
mod ansi;
mod literals;
mod redact;
mod rules;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use memchr::memrchr;

use ansi::{Sgr, strip_controls, strip_controls_keeping_sgr};
use literals::{Budget, Literals};
use redact::{
    merge_spans, pattern_spans, place_after_redaction, replace_spans, url_credential_spans,
};
use rules::{PATTERN_REGEXES, PATTERN_RULES, PEM_BEGIN, PEM_END, Rule, RuleSet, TRIGGERS};

/// Longest stored line, in bytes, suffix included.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Replacement for every redacted secret.
pub const REDACTED: &str = "***";

/// Most lines a private-key block without an `END` marker redacts, its `BEGIN`
/// line included; the next line is sanitized as any other. A 4096-bit RSA key
/// is about 50 lines of base64, an 8192-bit one about 100, an OpenPGP secret key
/// with a 4096-bit subkey about 150: this leaves a margin above all of them and
/// still bounds what a lone `BEGIN` can hide.
pub const MAX_PRIVATE_KEY_LINES: u32 = 256;

/// Text put between the kept part of a cut line and the number of bytes cut.
pub(crate) const TRUNCATED_PREFIX: &str = "\u{2026} [truncated ";
pub(crate) const TRUNCATED_SUFFIX: &str = " bytes]";

/// Lines of a multi-line literal secret shorter than this are not registered.
const MIN_SECRET_LINE_BYTES: usize = 4;

/// Sanitizes lines of one job; built once per job (holds the job's literal
/// secrets).
///
/// Its `Debug` output shows how many literal secrets it holds, never the
/// secrets themselves.
pub struct Sanitizer {
    literals: Literals,
    /// All of [`TRIGGERS`], then every anchor of `literals`, in that order, so
    /// that a pattern id tells which is which. `None` only if the automaton
    /// could not be built; then every rule is run on every line and the anchors
    /// are searched one by one.
    prefilter: Option<AhoCorasick>,
}

impl Sanitizer {
    /// Builds the sanitizer of one job.
    ///
    /// `secrets`: literal values registered by the job; each is redacted
    /// wherever it appears, in the forms the module doc lists. Empty strings
    /// are ignored.
    pub fn new(secrets: &[String]) -> Self {
        let literals = Literals::new(secrets);
        let patterns = TRIGGERS
            .iter()
            .map(|trigger| trigger.text.as_bytes())
            .chain(literals.anchors());
        // The sanitizer without literal secrets is shared by every job that has
        // none: it gets a DFA, the fastest scan (~130 KB). A job's own gets a
        // contiguous NFA, a tenth of a DFA's size or less for less than twice
        // the scan time (see the module doc).
        let kind = if literals.is_empty() {
            AhoCorasickKind::DFA
        } else {
            AhoCorasickKind::ContiguousNFA
        };
        let prefilter = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            // Standard semantics are what overlapping search needs.
            .match_kind(MatchKind::Standard)
            .kind(Some(kind))
            .build(patterns)
            .ok();
        Self {
            literals,
            prefilter,
        }
    }

    /// Starts the first batch of a job, outside any private key: the same as
    /// `batch_resuming(0)`.
    #[must_use]
    pub fn batch(&self) -> Batch<'_> {
        self.batch_resuming(0)
    }

    /// Starts a batch where the job's previous batch left off: `carry` is that
    /// batch's [`Batch::carry`] at its end (0: not inside a private key; `n > 0`:
    /// inside a private-key block that has already run `n` lines). A value above
    /// [`MAX_PRIVATE_KEY_LINES`] is taken as that bound, so a block resumed from
    /// a corrupt value still ends.
    #[must_use]
    pub fn batch_resuming(&self, carry: u32) -> Batch<'_> {
        Batch {
            sanitizer: self,
            key_lines: carry.min(MAX_PRIVATE_KEY_LINES),
            redacted: 0,
        }
    }

    /// An estimate of the heap this sanitizer holds, automaton included, so that
    /// a cache of sanitizers can be bounded by bytes.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.literals.memory_bytes()
            + self.prefilter.as_ref().map_or(0, AhoCorasick::memory_usage)
    }

    /// Records where literal secrets occur in `text` and returns the rules
    /// worth running on it; `None` when confirming literal secrets ran past the
    /// line's budget, and the line must be redacted whole.
    fn scan(&self, text: &str, spans: &mut Vec<Range<usize>>) -> Option<RuleSet> {
        let hay = text.as_bytes();
        let mut budget = Budget::for_line(hay.len());
        let matches = self
            .prefilter
            .as_ref()
            .and_then(|automaton| automaton.try_find_overlapping_iter(Input::new(hay)).ok());
        let Some(matches) = matches else {
            let complete = self
                .literals
                .scan_without_automaton(hay, &mut budget, spans);
            return complete.then_some(RuleSet::ALL);
        };
        let mut rules = RuleSet::EMPTY;
        for found in matches {
            let id = found.pattern().as_usize();
            match TRIGGERS.get(id) {
                Some(trigger) => {
                    let case_ok = !trigger.exact_case
                        || hay.get(found.range()) == Some(trigger.text.as_bytes());
                    if case_ok && trigger.worth_running(hay, found.end()) {
                        rules.insert_all(trigger.rules);
                    }
                }
                None => {
                    let anchor = id - TRIGGERS.len();
                    if !self
                        .literals
                        .confirm(anchor, hay, found.start(), &mut budget, spans)
                    {
                        return None;
                    }
                }
            }
        }
        Some(rules)
    }
}

impl fmt::Debug for Sanitizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sanitizer")
            .field("literal_secrets", &self.literals.len())
            .finish_non_exhaustive()
    }
}

/// Sanitizing state across the lines of one batch, and from one batch of a job
/// to the next ([`Batch::carry`]).
#[derive(Debug)]
pub struct Batch<'s> {
    sanitizer: &'s Sanitizer,
    /// Lines run so far by the private-key block this batch is inside (its
    /// `BEGIN` line included), 0 outside one.
    key_lines: u32,
    /// Lines of this batch with something redacted.
    redacted: u32,
}

/// What redacting a line does.
enum Redaction {
    /// The whole line becomes [`REDACTED`] (inside a private key).
    Whole,
    /// These byte ranges become [`REDACTED`] (none: the line stays as it is).
    Spans(Vec<Range<usize>>),
}

/// A line made fit to store, with its colours: what [`Batch::coloured`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coloured<'a> {
    /// The line as [`Batch::line`] makes it.
    pub text: Cow<'a, str>,
    /// `text` with the line's colour and style changes (SGR, `ESC [ … m`) where they
    /// were, and no other escape; `None` when the line had none. Removing its escapes
    /// gives `text` back exactly: what `text` redacts, this does too, also when the
    /// escapes split a secret (they move to just after its `***`).
    pub ansi: Option<String>,
}

/// Longest `ansi` kept: past it, later colour changes are dropped (the text stays).
pub const MAX_ANSI_BYTES: usize = 4 * MAX_LINE_BYTES;

/// `ansi` without its escapes (every escape sequence and control but tab removed, as
/// sanitizing does): for a [`Coloured`] line, its `text`.
pub fn without_escapes(ansi: &str) -> Cow<'_, str> {
    strip_controls(ansi)
}

impl Batch<'_> {
    /// [`line`](Self::line), keeping the line's colours beside its text
    /// ([`Coloured`]). A line without an escape costs what [`line`](Self::line) does.
    pub fn coloured<'a>(&mut self, raw: &'a str) -> Coloured<'a> {
        let (text, mut sgrs) = strip_controls_keeping_sgr(raw);
        if sgrs.is_empty() {
            let text = keep_last_carriage_return_segment(text);
            let text = self.redact(text);
            return Coloured {
                text: cut_long_line(text),
                ansi: None,
            };
        }
        // What a terminal shows of a line rewritten with `\r`: colour changes made
        // before the shown part still hold at its start; those after it are gone.
        let (start, end) = visible_segment(&text);
        sgrs.retain(|sgr| sgr.at <= end);
        for sgr in &mut sgrs {
            sgr.at = sgr.at.saturating_sub(start);
        }
        let text = keep_last_carriage_return_segment(text);
        let text = match self.redaction(&text) {
            Redaction::Whole => {
                return Coloured {
                    text: Cow::Borrowed(REDACTED),
                    ansi: None,
                };
            }
            Redaction::Spans(spans) if spans.is_empty() => text,
            Redaction::Spans(spans) => {
                let merged = merge_spans(spans);
                for sgr in &mut sgrs {
                    sgr.at = place_after_redaction(sgr.at, &merged);
                }
                Cow::Owned(replace_spans(&text, merged))
            }
        };
        if let Some(keep) = cut_point(&text) {
            sgrs.retain(|sgr| sgr.at <= keep);
        }
        let text = cut_long_line(text);
        let ansi = with_sgrs(&text, raw, &sgrs);
        Coloured { text, ansi }
    }

    /// Sanitizes one line (given without its trailing newline).
    ///
    /// Returns `Cow::Borrowed` when nothing changed. It may also borrow when
    /// the result is a part of `raw` (a collapsed progress line) or
    /// [`REDACTED`] (a line inside a private key), so only `Cow::Owned`
    /// reliably means "changed".
    pub fn line<'a>(&mut self, raw: &'a str) -> Cow<'a, str> {
        let text = strip_controls(raw);
        let text = keep_last_carriage_return_segment(text);
        let text = self.redact(text);
        cut_long_line(text)
    }

    /// The state after the lines sanitized so far, for the job's next batch
    /// ([`Sanitizer::batch_resuming`]): 0 outside a private key, else the lines
    /// its block has run. Store it with the job whenever it changes.
    #[must_use]
    pub fn carry(&self) -> u32 {
        self.key_lines
    }

    /// How many of the lines sanitized so far had something redacted.
    #[must_use]
    pub fn redacted(&self) -> u32 {
        self.redacted
    }

    fn redact<'a>(&mut self, text: Cow<'a, str>) -> Cow<'a, str> {
        match self.redaction(&text) {
            Redaction::Whole => Cow::Borrowed(REDACTED),
            Redaction::Spans(spans) if spans.is_empty() => text,
            Redaction::Spans(spans) => Cow::Owned(replace_spans(&text, spans)),
        }
    }

    /// What to redact of `text` (and the private-key state after it), counted.
    fn redaction(&mut self, text: &str) -> Redaction {
        let redaction = self.redaction_uncounted(text);
        if !matches!(&redaction, Redaction::Spans(spans) if spans.is_empty()) {
            self.redacted += 1;
        }
        redaction
    }

    fn redaction_uncounted(&mut self, text: &str) -> Redaction {
        let mut spans = Vec::new();
        let mut begin_search_from = 0;
        if self.key_lines > 0 {
            if let Some(end) = PEM_END.find(text) {
                self.key_lines = 0;
                spans.push(0..end.end());
                begin_search_from = end.end();
            } else if self.key_lines < MAX_PRIVATE_KEY_LINES {
                self.key_lines += 1;
                return Redaction::Whole;
            } else {
                // Longer than any key: the block ends by itself, and this line
                // is sanitized as any other.
                self.key_lines = 0;
            }
        }
        let Some(rules) = self.sanitizer.scan(text, &mut spans) else {
            // Still follow a block that starts here, or its body would leak.
            self.private_key_spans(text, begin_search_from, &mut spans);
            return Redaction::Whole;
        };
        for (rule, regex) in PATTERN_RULES.iter().zip(PATTERN_REGEXES.iter()) {
            if rules.contains(*rule) {
                pattern_spans(*rule, regex, text, &mut spans);
            }
        }
        if rules.contains(Rule::UrlCredentials) {
            url_credential_spans(text, &mut spans);
        }
        if rules.contains(Rule::PrivateKey) {
            self.private_key_spans(text, begin_search_from, &mut spans);
        }
        Redaction::Spans(spans)
    }

    /// Blocks that end on this line are redacted whole; a block that does not
    /// is redacted to the end of the line and leaves the batch inside a key.
    fn private_key_spans(&mut self, text: &str, from: usize, spans: &mut Vec<Range<usize>>) {
        let mut from = from;
        while let Some(begin) = PEM_BEGIN.find_at(text, from) {
            match PEM_END.find_at(text, begin.end()) {
                Some(end) => {
                    spans.push(begin.start()..end.end());
                    from = end.end();
                }
                None => {
                    spans.push(begin.start()..text.len());
                    self.key_lines = 1;
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Carriage returns and length

/// Keeps what a terminal shows of a line rewritten with `\r`: the text after
/// the last `\r`, or when that is empty, the text before the trailing `\r`s.
fn keep_last_carriage_return_segment(text: Cow<'_, str>) -> Cow<'_, str> {
    if memrchr(b'\r', text.as_bytes()).is_none() {
        return text;
    }
    let (start, end) = visible_segment(&text);
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[start..end]),
        Cow::Owned(mut text) => {
            text.truncate(end);
            text.drain(..start);
            Cow::Owned(text)
        }
    }
}

/// The part of `text` [`keep_last_carriage_return_segment`] keeps, as byte offsets.
fn visible_segment(text: &str) -> (usize, usize) {
    let Some(last) = memrchr(b'\r', text.as_bytes()) else {
        return (0, text.len());
    };
    let end = if last + 1 < text.len() {
        text.len()
    } else {
        text.trim_end_matches('\r').len()
    };
    let start = memrchr(b'\r', &text.as_bytes()[..end]).map_or(0, |at| at + 1);
    (start, end)
}

/// Where [`cut_long_line`] cuts `text`; `None` when it keeps it whole.
fn cut_point(text: &str) -> Option<usize> {
    if text.len() <= MAX_LINE_BYTES {
        return None;
    }
    // The suffix holds the number of bytes removed, which is at most the
    // whole length, so sizing it for the whole length is always enough.
    let longest_suffix =
        TRUNCATED_PREFIX.len() + decimal_digits(text.len()) + TRUNCATED_SUFFIX.len();
    Some(text.floor_char_boundary(MAX_LINE_BYTES - longest_suffix))
}

/// `text` with each SGR (its parameters read from `raw`) put back at its place; `None`
/// without any. Past [`MAX_ANSI_BYTES`] the remaining changes are left out.
fn with_sgrs(text: &str, raw: &str, sgrs: &[Sgr]) -> Option<String> {
    if sgrs.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + sgrs.len() * 8);
    let mut from = 0;
    for sgr in sgrs {
        let params = &raw[sgr.params.clone()];
        if text.len() + out.len() - from + params.len() + 3 > MAX_ANSI_BYTES {
            break;
        }
        out.push_str(&text[from..sgr.at]);
        out.push_str("\x1b[");
        out.push_str(params);
        out.push('m');
        from = sgr.at;
    }
    out.push_str(&text[from..]);
    Some(out)
}

fn cut_long_line(text: Cow<'_, str>) -> Cow<'_, str> {
    let Some(keep) = cut_point(&text) else {
        return text;
    };
    let removed = text.len() - keep;
    let mut out = String::with_capacity(MAX_LINE_BYTES);
    out.push_str(&text[..keep]);
    out.push_str(TRUNCATED_PREFIX);
    out.push_str(&removed.to_string());
    out.push_str(TRUNCATED_SUFFIX);
    Cow::Owned(out)
}

fn decimal_digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const GITHUB_TOKEN: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcDEF123_-x";

    fn sanitize(line: &str) -> String {
        Sanitizer::new(&[]).batch().line(line).into_owned()
    }

    /// Text and ansi of `line` sanitized with `secrets`; checks the two agree.
    fn coloured(line: &str, secrets: &[&str]) -> (String, Option<String>) {
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        let sanitizer = Sanitizer::new(&secrets);
        let out = sanitizer.batch().coloured(line);
        assert_eq!(out.text, sanitizer.batch().line(line), "{line:?}");
        if let Some(ansi) = &out.ansi {
            assert_eq!(without_escapes(ansi), out.text, "{ansi:?}");
        }
        (out.text.into_owned(), out.ansi)
    }

    #[test]
    fn a_batch_counts_the_lines_it_redacted() {
        let sanitizer = Sanitizer::new(&["hunter2-registered".to_owned()]);
        let mut batch = sanitizer.batch();
        for line in [
            "plain",
            &format!("key {AWS_KEY_ID} and {GITHUB_TOKEN}"),
            "said hunter2-registered",
            "\x1b[31mred\x1b[0m but nothing secret",
            "-----BEGIN RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA",
            "-----END RSA PRIVATE KEY-----",
            "plain again",
        ] {
            batch.coloured(line);
        }
        assert_eq!(batch.redacted(), 5, "two tokens on one line count once");
    }

    #[test]
    fn colours_are_kept_beside_the_text_and_nothing_else_is() {
        assert_eq!(coloured("plain", &[]), ("plain".into(), None));
        assert_eq!(
            coloured("\x1b[1;31merror\x1b[0m: it \x1b[38;5;208mbroke", &[]),
            (
                "error: it broke".into(),
                Some("\x1b[1;31merror\x1b[0m: it \x1b[38;5;208mbroke".into())
            )
        );
        // 24-bit colour with colons; 8-bit CSI written as 7-bit.
        assert_eq!(
            coloured("\x1b[38:2::255:0:0mred\u{9b}4mline", &[]).1,
            Some("\x1b[38:2::255:0:0mred\x1b[4mline".into())
        );
        // Every other escape goes, a link's target included; no SGR left: no ansi.
        assert_eq!(
            coloured(
                "\x1b]8;;https://x.test\x07link\x1b]8;;\x07 \x1b[2K\x1b[?25lok",
                &[]
            ),
            ("link ok".into(), None)
        );
        // Not an SGR: other final bytes, other parameter bytes.
        assert_eq!(coloured("\x1b[31;Xm\x1b[5Aa", &[]), ("ma".into(), None));
    }

    #[test]
    fn a_secret_split_by_colour_codes_is_redacted_in_both() {
        let (text, ansi) = coloured("key hun\x1b[31mte\x1b[1mr2\x1b[0m end", &["hunter2"]);
        assert_eq!(text, "key *** end");
        let ansi = ansi.unwrap();
        assert_eq!(ansi, "key ***\x1b[31m\x1b[1m\x1b[0m end");
        let (text, ansi) = coloured(
            &format!(
                "token {}\x1b[32m{}",
                &GITHUB_TOKEN[..10],
                &GITHUB_TOKEN[10..]
            ),
            &[],
        );
        assert_eq!(text, "token ***");
        assert_eq!(ansi.unwrap(), "token ***\x1b[32m");
    }

    #[test]
    fn colours_follow_progress_bars_cuts_and_private_keys() {
        // Colour set before the shown part of a `\r` line still holds at its start.
        assert_eq!(
            coloured("\x1b[32m 50%\r\x1b[1m100%\x1b[0m", &[]),
            ("100%".into(), Some("\x1b[32m\x1b[1m100%\x1b[0m".into()))
        );
        // A change past the cut is gone with the text it applied to.
        let long = format!("\x1b[31m{}\x1b[0m", "x".repeat(MAX_LINE_BYTES * 2));
        let (text, ansi) = coloured(&long, &[]);
        let ansi = ansi.unwrap();
        assert!(ansi.starts_with("\x1b[31mxxx") && !ansi.contains("\x1b[0m"));
        assert!(text.len() <= MAX_LINE_BYTES);
        // Inside a private key the line is `***`, without colour.
        let sanitizer = Sanitizer::new(&[]);
        let mut batch = sanitizer.batch();
        let _ = batch.coloured("-----BEGIN PRIVATE KEY-----");
        let inside = batch.coloured("\x1b[31mMIIEvQIBADANBgkqhkiG9w0BAQEFAASC");
        assert_eq!((inside.text.as_ref(), inside.ansi), (REDACTED, None));
    }

    #[test]
    fn ansi_stays_bounded_however_many_colour_changes_a_line_has() {
        let line = "\x1b[38;5;123mx".repeat(MAX_LINE_BYTES);
        let (text, ansi) = coloured(&line, &[]);
        assert!(text.len() <= MAX_LINE_BYTES);
        assert!(ansi.unwrap().len() <= MAX_ANSI_BYTES);
    }

    fn sanitize_with(secrets: &[&str], line: &str) -> String {
        let secrets: Vec<String> = secrets.iter().map(|secret| secret.to_string()).collect();
        Sanitizer::new(&secrets).batch().line(line).into_owned()
    }

    fn assert_borrowed_untouched(line: &str) {
        let sanitizer = Sanitizer::new(&["registered-secret".to_string()]);
        let out = sanitizer.batch().line(line);
        assert!(
            matches!(out, Cow::Borrowed(kept) if kept == line),
            "{line:?} became {out:?}"
        );
    }

    // ANSI escape sequences

    #[test]
    fn csi_colour_codes_are_removed() {
        assert_eq!(sanitize("\x1b[1;31merror\x1b[0m: failed"), "error: failed");
    }

    #[test]
    fn csi_with_private_parameters_and_intermediates_is_removed() {
        assert_eq!(sanitize("\x1b[?25lhidden cursor\x1b[?25h"), "hidden cursor");
        assert_eq!(sanitize("\x1b[2 qbar cursor"), "bar cursor");
        assert_eq!(sanitize("\x1b[2K\x1b[1Gdone"), "done");
    }

    #[test]
    fn eight_bit_csi_is_removed() {
        assert_eq!(sanitize("\u{9b}31mred\u{9b}0m ok"), "red ok");
    }

    #[test]
    fn osc_terminated_by_bel_is_removed() {
        assert_eq!(sanitize("\x1b]0;window title\x07building"), "building");
    }

    #[test]
    fn osc_terminated_by_string_terminator_is_removed() {
        assert_eq!(
            sanitize("see \x1b]8;;https://example.com/\x1b\\the docs\x1b]8;;\x1b\\ here"),
            "see the docs here"
        );
    }

    #[test]
    fn unterminated_osc_runs_to_end_of_line() {
        assert_eq!(sanitize("before\x1b]0;title without end"), "before");
    }

    #[test]
    fn escape_inside_osc_starts_a_new_sequence() {
        assert_eq!(sanitize("\x1b]0;title\x1b[31mred"), "red");
    }

    #[test]
    fn dcs_sos_pm_and_apc_strings_are_removed() {
        for introducer in ['P', 'X', '^', '_'] {
            let line = format!("a\x1b{introducer}payload\x07still payload\x1b\\b");
            assert_eq!(sanitize(&line), "ab", "introducer {introducer}");
            let unterminated = format!("a\x1b{introducer}payload to the end");
            assert_eq!(sanitize(&unterminated), "a", "introducer {introducer}");
        }
    }

    #[test]
    fn charset_designations_are_removed() {
        assert_eq!(sanitize("\x1b(Bplain\x1b)0 text\x1b#8"), "plain text");
        assert_eq!(sanitize("\x1b%Gutf8"), "utf8");
    }

    #[test]
    fn two_byte_escapes_are_removed() {
        assert_eq!(
            sanitize("\x1b7saved\x1b8 \x1b=keypad\x1b> \x1bMup \x1bcreset"),
            "saved keypad up reset"
        );
    }

    #[test]
    fn truncated_sequence_at_end_of_line_is_removed() {
        assert_eq!(sanitize("text\x1b[31"), "text");
        assert_eq!(sanitize("text\x1b["), "text");
        assert_eq!(sanitize("text\x1b(\x1b"), "text");
        assert_eq!(sanitize("text\u{9b}1;2"), "text");
    }

    #[test]
    fn bare_escape_at_end_of_line_is_removed() {
        assert_eq!(sanitize("text\x1b"), "text");
        assert_eq!(sanitize("\x1b"), "");
    }

    #[test]
    fn escape_before_a_byte_that_starts_no_sequence_is_dropped_alone() {
        assert_eq!(sanitize("a\x1b\tb"), "a\tb");
        assert_eq!(sanitize("a\x1bé"), "aé");
        assert_eq!(sanitize("a\x1b\x1b[0mb"), "ab");
    }

    #[test]
    fn malformed_csi_keeps_the_text_after_it() {
        assert_eq!(sanitize("\x1b[31é ok"), "é ok");
        assert_eq!(sanitize("\x1b[1 2mx"), "2mx");
    }

    #[test]
    fn random_escape_soup_never_panics_and_leaves_no_control_sequence() {
        const PIECES: [&str; 31] = [
            "\x1b", "[", "]", "P", "X", "^", "_", "\\", "\x07", "\r", "0", ";", "m", " ", "(", "B",
            "?", "\t", "é", "€", "😀", "\u{9b}", "\u{c2}", "a", "\u{9d}", "\u{90}", "\u{9c}",
            "\u{85}", "\0", "\x7f", "\n",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let sanitizer = Sanitizer::new(&[]);
        let mut batch = sanitizer.batch();
        for _ in 0..20_000 {
            let len = next() % 24;
            let line: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let out = batch.line(&line);
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\t'),
                "{line:?} became {out:?}"
            );
        }
    }

    // Carriage returns

    #[test]
    fn progress_bar_keeps_text_after_last_carriage_return() {
        assert_eq!(sanitize("10%\r50%\r100%"), "100%");
    }

    #[test]
    fn progress_line_without_ansi_stays_borrowed() {
        let line = "10%\r50%\r100%";
        assert!(matches!(
            Sanitizer::new(&[]).batch().line(line),
            Cow::Borrowed("100%")
        ));
    }

    #[test]
    fn trailing_carriage_return_keeps_the_last_text_written() {
        assert_eq!(sanitize("abc\r"), "abc");
        assert_eq!(sanitize("10%\r50%\r"), "50%");
        assert_eq!(sanitize("10%\r50%\r\r"), "50%");
    }

    #[test]
    fn line_of_only_carriage_returns_becomes_empty() {
        assert_eq!(sanitize("\r\r"), "");
    }

    #[test]
    fn progress_bar_clearing_the_line_with_ansi_keeps_the_last_state() {
        assert_eq!(
            sanitize("\x1b[32m10%\x1b[0m\r\x1b[K\x1b[32m50%\x1b[0m"),
            "50%"
        );
    }

    // Token shapes

    #[test]
    fn aws_access_key_ids_are_redacted() {
        assert_eq!(sanitize(&format!("key {AWS_KEY_ID} used")), "key *** used");
        assert_eq!(
            sanitize("ASIAY34FZKBOKMUTVV7A,ABIAY34FZKBOKMUTVV7A"),
            "***,***"
        );
        assert_eq!(sanitize("id=ACCAY34FZKBOKMUTVV7A"), "id=***");
    }

    #[test]
    fn aws_like_text_without_word_boundaries_is_untouched() {
        assert_borrowed_untouched("XAKIAIOSFODNN7EXAMPLE and AKIAIOSFODNN7EXAMPLEX");
    }

    #[test]
    fn github_classic_tokens_are_redacted() {
        for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
            let line = format!("push with {prefix}abcdefghijklmnopqrstuvwxyz0123456789AB done");
            assert_eq!(sanitize(&line), "push with *** done");
        }
    }

    #[test]
    fn github_fine_grained_tokens_are_redacted() {
        assert_eq!(
            sanitize("GH=github_pat_11ABCDEFG0123456789_abcdefghijkl end"),
            "GH=*** end"
        );
    }

    #[test]
    fn short_github_like_strings_are_untouched() {
        assert_borrowed_untouched("ghp_short and github_pat_tooshort");
    }

    #[test]
    fn gitlab_tokens_are_redacted() {
        for prefix in [
            "glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "gloas-", "glsoat-", "glft-", "glimt-",
            "glagent-",
        ] {
            let line = format!("clone with {prefix}abcdefghij_0123456789-x");
            assert_eq!(sanitize(&line), "clone with ***", "prefix {prefix}");
        }
    }

    #[test]
    fn slack_tokens_are_redacted() {
        for kind in ['a', 'b', 'p', 'o', 's', 'r'] {
            let line = format!("SLACK xox{kind}-1234567890-abcdef ok");
            assert_eq!(sanitize(&line), "SLACK *** ok", "kind {kind}");
        }
    }

    #[test]
    fn slack_webhook_urls_are_redacted() {
        assert_eq!(
            sanitize("posting to https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXX now"),
            "posting to *** now"
        );
    }

    #[test]
    fn stripe_keys_are_redacted() {
        for prefix in ["sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"] {
            let line = format!("stripe {prefix}abcDEF0123456 configured");
            assert_eq!(sanitize(&line), "stripe *** configured", "prefix {prefix}");
        }
    }

    #[test]
    fn jwts_are_redacted_with_or_without_signature() {
        assert_eq!(sanitize(&format!("jwt {JWT} ok")), "jwt *** ok");
        assert_eq!(
            sanitize("unsigned eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. ok"),
            "unsigned *** ok"
        );
    }

    #[test]
    fn bearer_tokens_keep_the_word() {
        assert_eq!(
            sanitize("Authorization: Bearer abc.DEF-123_~+/xyz="),
            "Authorization: Bearer ***"
        );
        assert_eq!(
            sanitize("curl -H 'authorization: bearer 0123456789'"),
            "curl -H 'authorization: bearer ***'"
        );
    }

    #[test]
    fn bearer_with_a_short_token_or_alone_is_untouched() {
        assert_borrowed_untouched("Bearer");
        assert_borrowed_untouched("Bearer abc");
    }

    // key=value secrets

    #[test]
    fn key_value_secrets_have_only_their_value_redacted() {
        assert_eq!(sanitize("password=hunter2"), "password=***");
        assert_eq!(
            sanitize(r#"{"token": "abc123", "user": "bob"}"#),
            r#"{"token": "***", "user": "bob"}"#
        );
        assert_eq!(sanitize("DB_PASSWORD: s3cret"), "DB_PASSWORD: ***");
        assert_eq!(
            sanitize("AWS_SECRET_ACCESS_KEY = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            "AWS_SECRET_ACCESS_KEY = ***"
        );
        assert_eq!(
            sanitize("export GITHUB_TOKEN='abc def'"),
            "export GITHUB_TOKEN='***'"
        );
        assert_eq!(
            sanitize(r#"{"api_key":"k1","apikey":"k2","x-api-key":"k3"}"#),
            r#"{"api_key":"***","apikey":"***","x-api-key":"***"}"#
        );
        assert_eq!(
            sanitize("GET /login?user=bob&passwd=pw1&next=home"),
            "GET /login?user=bob&passwd=***"
        );
        assert_eq!(
            sanitize(r#"spring.datasource.password="unterminated"#),
            r#"spring.datasource.password="***"#
        );
        assert_eq!(sanitize(r#"secret="a \"quoted\" word""#), r#"secret="***""#);
    }

    #[test]
    fn key_value_with_an_empty_value_is_untouched() {
        assert_borrowed_untouched("password=");
        assert_borrowed_untouched("password: ");
        assert_borrowed_untouched(r#"{"token": ""}"#);
        assert_borrowed_untouched("TOKEN=''");
    }

    #[test]
    fn colon_without_space_before_a_bare_value_is_not_a_secret() {
        assert_borrowed_untouched("--> src/token.rs:12:5");
        assert_borrowed_untouched("let t = Token::new();");
    }

    #[test]
    fn words_containing_key_names_without_a_value_are_untouched() {
        assert_borrowed_untouched("counting tokens in the prompt");
        assert_borrowed_untouched("the secretary left");
        assert_borrowed_untouched("Password required");
        assert_borrowed_untouched("Collecting tokenizers==0.15.0");
    }

    // URL credentials

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            sanitize("cloning https://user:p4ss@github.com/org/repo.git"),
            "cloning https://***@github.com/org/repo.git"
        );
        assert_eq!(
            sanitize("postgres://admin:pw@db:5432/app"),
            "postgres://***@db:5432/app"
        );
        assert_eq!(sanitize("https://token@host/x"), "https://***@host/x");
        assert_eq!(sanitize("https://user:p@ss@host"), "https://***@host");
    }

    #[test]
    fn urls_without_credentials_are_untouched() {
        assert_borrowed_untouched("GET https://registry.npmjs.org/react 200");
        assert_borrowed_untouched("listening on http://localhost:3000/");
        assert_borrowed_untouched(
            "fetch https://registry.npmjs.org/@types%2fnode and mail a@b.com",
        );
        assert_borrowed_untouched("https://example.com/?email=a@b.com");
    }

    #[test]
    fn git_ssh_shorthand_is_untouched() {
        assert_borrowed_untouched("remote: git@github.com:org/repo.git");
    }

    // PEM private keys

    #[test]
    fn pem_block_on_one_line_is_redacted() {
        assert_eq!(
            sanitize(
                r#"{"pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n", "x": 1}"#
            ),
            r#"{"pem": "***\n", "x": 1}"#
        );
        // Under a secret's name, the whole value goes.
        assert_eq!(
            sanitize(
                r#"{"private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n"}"#
            ),
            r#"{"private_key": "***"}"#
        );
    }

    #[test]
    fn pem_block_spanning_lines_of_a_batch_is_redacted() {
        let sanitizer = Sanitizer::new(&[]);
        let mut batch = sanitizer.batch();
        let lines = [
            "key: -----BEGIN RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA",
            "",
            "c2VjcmV0",
            "-----END RSA PRIVATE KEY----- written password=x",
            "next line",
        ];
        let out: Vec<String> = lines
            .iter()
            .map(|line| batch.line(line).into_owned())
            .collect();
        assert_eq!(
            out,
            [
                "key: ***",
                "***",
                "***",
                "***",
                "*** written password=***",
                "next line"
            ]
        );
    }

    #[test]
    fn pem_block_continuing_in_the_next_batch_is_redacted() {
        let sanitizer = Sanitizer::new(&[]);
        let mut first = sanitizer.batch();
        assert_eq!(first.line("cat deploy.pem"), "cat deploy.pem");
        assert_eq!(first.carry(), 0);
        assert_eq!(first.line("-----BEGIN RSA PRIVATE KEY-----"), "***");
        assert_eq!(first.line("MIIEowIBAAKCAQEA"), "***");
        assert_eq!(first.carry(), 2);
        let mut next = sanitizer.batch_resuming(first.carry());
        assert_eq!(next.line("c2VjcmV0IGJvZHk"), "***");
        assert_eq!(next.line("-----END RSA PRIVATE KEY----- done"), "*** done");
        assert_eq!(next.carry(), 0);
        assert_eq!(next.line("c2VjcmV0IGJvZHk"), "c2VjcmV0IGJvZHk");
    }

    #[test]
    fn pem_block_without_end_ends_by_itself_after_the_bound() {
        let sanitizer = Sanitizer::new(&[]);
        let mut batch = sanitizer.batch();
        assert_eq!(
            batch.line("echo -----BEGIN OPENSSH PRIVATE KEY-----"),
            "echo ***"
        );
        for _ in 1..MAX_PRIVATE_KEY_LINES {
            assert_eq!(batch.line("build output"), "***");
        }
        assert_eq!(batch.carry(), MAX_PRIVATE_KEY_LINES);
        // Across batches the count goes on: the bound is per block, not per batch.
        let mut next = sanitizer.batch_resuming(batch.carry());
        assert_eq!(next.line("build finished"), "build finished");
        assert_eq!(next.carry(), 0);
    }

    #[test]
    fn a_carry_past_the_bound_ends_the_block_at_the_next_line() {
        let sanitizer = Sanitizer::new(&[]);
        let mut batch = sanitizer.batch_resuming(u32::MAX);
        assert_eq!(batch.carry(), MAX_PRIVATE_KEY_LINES);
        assert_eq!(batch.line("build finished"), "build finished");
        let mut batch = sanitizer.batch_resuming(MAX_PRIVATE_KEY_LINES - 1);
        assert_eq!(batch.line("last body line"), "***");
        assert_eq!(batch.line("build finished"), "build finished");
    }

    #[test]
    fn a_new_batch_starts_outside_any_key() {
        let sanitizer = Sanitizer::new(&[]);
        let mut batch = sanitizer.batch();
        assert_eq!(batch.line("-----BEGIN PRIVATE KEY-----"), "***");
        assert_eq!(sanitizer.batch().carry(), 0);
        assert_eq!(sanitizer.batch().line("MIIEvQ"), "MIIEvQ");
    }

    #[test]
    fn several_pem_blocks_on_one_line_are_all_redacted() {
        assert_eq!(
            sanitize(
                "a -----BEGIN EC PRIVATE KEY-----x-----END EC PRIVATE KEY----- b -----BEGIN PGP PRIVATE KEY BLOCK-----y-----END PGP PRIVATE KEY BLOCK----- c"
            ),
            "a *** b *** c"
        );
    }

    #[test]
    fn certificates_and_public_keys_are_untouched() {
        assert_borrowed_untouched("-----BEGIN CERTIFICATE-----");
        assert_borrowed_untouched("-----BEGIN PUBLIC KEY-----");
        assert_borrowed_untouched("-----END CERTIFICATE-----");
    }

    // Literal secrets

    #[test]
    fn literal_secrets_are_redacted_everywhere() {
        assert_eq!(
            sanitize_with(&["hunter2", "s3cr3t"], "hunter2 s3cr3t xhunter2x hunter2"),
            "*** *** x***x ***"
        );
    }

    #[test]
    fn longest_literal_secret_wins() {
        assert_eq!(
            sanitize_with(&["pass", "password123"], "use password123 now"),
            "use *** now"
        );
    }

    #[test]
    fn overlapping_literal_secrets_leave_no_fragment() {
        assert_eq!(sanitize_with(&["abcd", "cdef"], "xabcdefx"), "x***x");
    }

    #[test]
    fn literal_secret_overlapping_a_pattern_is_redacted_as_one() {
        let line = format!("use tok-{GITHUB_TOKEN} now");
        assert_eq!(sanitize_with(&["tok-ghp_abc"], &line), "use *** now");
    }

    #[test]
    fn literal_secret_split_by_ansi_codes_is_redacted() {
        assert_eq!(
            sanitize_with(&["hunter2"], "pw \x1b[1mhun\x1b[0mter2"),
            "pw ***"
        );
    }

    #[test]
    fn empty_literal_secrets_are_ignored() {
        assert_eq!(sanitize_with(&["", "x1y2"], "a x1y2 b"), "a *** b");
        assert_borrowed_untouched("");
    }

    #[test]
    fn multi_line_literal_secret_is_redacted_line_by_line() {
        let secret = "{\n  \"client_secret\": \"abcdef\",\n  \"id\": 42\n}\n";
        let sanitizer = Sanitizer::new(&[secret.to_string()]);
        let mut batch = sanitizer.batch();
        assert_eq!(batch.line(r#"  "id": 42"#), "  ***");
        assert_eq!(batch.line("{ }"), "{ }");
        assert_eq!(sanitize_with(&["abc\n"], "xabc"), "x***");
    }

    #[test]
    fn debug_output_counts_secrets_without_showing_them() {
        let sanitizer = Sanitizer::new(&["hunter2".to_string(), "s3cr3t".to_string()]);
        let shown = format!("{sanitizer:?} {:?}", sanitizer.batch());
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(shown.contains("literal_secrets: 2"), "{shown}");
    }

    #[test]
    fn sanitizer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Sanitizer>();
        assert_send_sync::<Batch<'_>>();
    }

    #[test]
    fn full_scan_without_prefilter_gives_the_same_results() {
        let secrets = ["hunter2".to_string(), "aaa".to_string()];
        let fast = Sanitizer::new(&secrets);
        let slow = Sanitizer {
            literals: Literals::new(&secrets),
            prefilter: None,
        };
        let lines = [
            format!("key {AWS_KEY_ID} and {GITHUB_TOKEN} and {JWT}"),
            "glpat-abcdefghij_0123456789 xoxb-1234567890-abc sk_live_abcDEF0123456".to_string(),
            "https://hooks.slack.com/services/T0/B0/XX Bearer abcdefgh1234".to_string(),
            "password=hunter2 https://u:p@host aaaa AAAA aGVudGVyMg".to_string(),
            "pwd=x docker login -p y curl -u a:b Authorization: Basic z".to_string(),
            "postgres://u:p?w@db HUNTER2 hunter%32 aHVudGVyMg aHVudGVyMgo".to_string(),
            "-----BEGIN PRIVATE KEY----- x".to_string(),
            "y -----END PRIVATE KEY----- z".to_string(),
            "added 120 packages in 3s".to_string(),
        ];
        let mut fast_batch = fast.batch();
        let mut slow_batch = slow.batch();
        for line in &lines {
            assert_eq!(fast_batch.line(line), slow_batch.line(line), "{line}");
        }
    }

    // Secrets stored in the clear before issue #16

    #[test]
    fn short_and_compound_secret_names_have_their_values_redacted() {
        for (line, expected) in [
            ("pwd=hunter2", "pwd=***"),
            ("pass=hunter2", "pass=***"),
            ("auth=hunter2", "auth=***"),
            ("key=hunter2", "key=***"),
            ("passphrase=correct horse", "passphrase=*** horse"),
            ("DB_PASS=hunter2", "DB_PASS=***"),
            ("export MYSQL_PWD='hunter2'", "export MYSQL_PWD='***'"),
            ("credentials=hunter2", "credentials=***"),
            ("private_key=hunter2", "private_key=***"),
            ("access_key = hunter2", "access_key = ***"),
            ("aws.secret-key: hunter2", "aws.secret-key: ***"),
            (r#"{"accessKey": "hunter2"}"#, r#"{"accessKey": "***"}"#),
            ("dbPass: hunter2", "dbPass: ***"),
            ("X-Auth: hunter2", "X-Auth: ***"),
            ("mysql --pass=hunter2", "mysql --pass=***"),
            (
                r#"{"user": "me", "pass": "hunter2"}"#,
                r#"{"user": "me", "pass": "***"}"#,
            ),
        ] {
            assert_eq!(sanitize(line), expected, "{line}");
        }
    }

    #[test]
    fn a_secret_value_is_not_cut_at_an_ampersand() {
        assert_eq!(sanitize("password=hunt&er2"), "password=***");
        assert_eq!(sanitize("DB_PASS=a&b&c done"), "DB_PASS=*** done");
    }

    #[test]
    fn words_merely_containing_a_short_secret_name_are_untouched() {
        for line in [
            "monkey=3",
            "bypass=1 keyboard=us author=bob",
            "3 passed, 0 failed; passing tests: 3",
            "--- PASS: TestParse (0.00s)",
            "Cache restored from key: npm-linux-x64-abc123",
            "KeyError: 'x'",
            "PWD=/home/runner/work/app",
            "pass: 3 of 3",
            r#"{"key": "npm-cache", "auth": "oidc", "pass": 3}"#,
        ] {
            assert_borrowed_untouched(line);
        }
    }

    #[test]
    fn secrets_given_as_command_line_options_are_redacted() {
        for (line, expected) in [
            (
                "mysql -h db --password hunter2 app",
                "mysql -h db --password *** app",
            ),
            ("mysql --password=hunter2", "mysql --password=***"),
            (
                "gh auth login --with-token --token 'a b'",
                "gh auth login --with-token --token '***'",
            ),
            ("cli --api-key k3y123 run", "cli --api-key *** run"),
            (
                "docker login -u me -p hunter2 registry.io",
                "docker login -u me -p *** registry.io",
            ),
            ("podman login -p hunter2", "podman login -p ***"),
            (
                "curl -u admin:hunter2pass https://x",
                "curl -u admin:*** https://x",
            ),
            (
                "curl -sS --user admin:hunter2pass https://x",
                "curl -sS --user admin:*** https://x",
            ),
            (
                "curl -uadmin:hunter2pass https://x",
                "curl -uadmin:*** https://x",
            ),
            (
                "openssl rsa -passin pass:hunter2 -in k",
                "openssl rsa -passin pass:*** -in k",
            ),
        ] {
            assert_eq!(sanitize(line), expected, "{line}");
        }
    }

    #[test]
    fn options_that_only_look_like_secrets_are_untouched() {
        for line in [
            "mkdir -p build && tar -p -xf a.tar",
            "ssh login@host -p 2222",
            "docker run -u 1000:1000 node:20",
            "mysql --password --host db",
            "curl --key client.pem https://x",
            "docker login --password-stdin registry.io",
        ] {
            assert_borrowed_untouched(line);
        }
    }

    #[test]
    fn authorization_headers_of_any_scheme_are_redacted() {
        for (line, expected) in [
            (
                "Authorization: Basic dXNlcjpwYXNz",
                "Authorization: Basic ***",
            ),
            ("authorization: token abc", "authorization: token ***"),
            ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
            (
                "Proxy-Authorization: Basic dXNlcjpwYXNz",
                "Proxy-Authorization: Basic ***",
            ),
            ("Authorization: s3cr3t", "Authorization: ***"),
            (
                r#"curl -H "Authorization: Basic dXNlcjpwYXNz" https://x"#,
                r#"curl -H "Authorization: Basic ***" https://x"#,
            ),
            (
                r#"{"Authorization":"Basic dXNlcjpwYXNz"}"#,
                r#"{"Authorization":"Basic ***"}"#,
            ),
        ] {
            assert_eq!(sanitize(line), expected, "{line}");
        }
    }

    #[test]
    fn bare_bearer_and_password_in_prose_are_untouched() {
        assert_borrowed_untouched("the Bearer scheme is used");
        assert_borrowed_untouched("Bearer abc");
        assert_borrowed_untouched("Enter password:");
        assert_borrowed_untouched("Password: ");
        assert_borrowed_untouched("missing Authorization header");
    }

    #[test]
    fn url_credentials_holding_slash_question_mark_or_hash_are_redacted() {
        for (line, expected) in [
            (
                "postgres://user:hun?ter2@db:5432/x",
                "postgres://***@db:5432/x",
            ),
            ("redis://:hun#ter2@cache:6379", "redis://***@cache:6379"),
            ("https://u:a/b@host", "https://***@host"),
            (
                "git clone https://u:a/b?c#d@host/r.git x",
                "git clone https://***@host/r.git x",
            ),
        ] {
            assert_eq!(sanitize(line), expected, "{line}");
        }
    }

    #[test]
    fn urls_with_a_port_and_an_at_sign_further_on_are_untouched() {
        assert_borrowed_untouched("GET http://localhost:4873/@types/node 200");
        assert_borrowed_untouched("open http://localhost:3000/x?to=a@b.com");
        assert_borrowed_untouched("http://[::1]:8080/a@b");
        assert_borrowed_untouched("see https://example.com:443#x@y");
        assert_borrowed_untouched("https://@host/x");
    }

    #[test]
    fn aws_ids_glued_to_an_underscore_or_lower_case_are_redacted() {
        assert_eq!(sanitize(&format!("KEY_{AWS_KEY_ID}")), "KEY_***");
        assert_eq!(sanitize(&format!("{AWS_KEY_ID}x")), "***x");
        assert_eq!(sanitize(&format!("id:{AWS_KEY_ID};")), "id:***;");
    }

    #[test]
    fn upper_cased_gitlab_tokens_are_redacted() {
        assert_eq!(sanitize("GLPAT-ABCDEFGHIJ_0123456789-X end"), "*** end");
        assert_eq!(
            sanitize("use GHP_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
            "use ***"
        );
    }

    #[test]
    fn slack_refresh_app_and_rotated_tokens_are_redacted() {
        for token in [
            "xoxe-1-abcdef0123456789",
            "xapp-1-A0123456789-abcdef",
            "xoxe.xoxp-1-abcdef0123456789",
        ] {
            assert_eq!(
                sanitize(&format!("slack {token} ok")),
                "slack *** ok",
                "{token}"
            );
        }
    }

    #[test]
    fn literal_secrets_are_redacted_upper_cased_but_not_lower_cased() {
        assert_eq!(
            sanitize_with(&["Hunter2"], "hunter2 Hunter2 HUNTER2"),
            "hunter2 *** ***"
        );
    }

    #[test]
    fn literal_secrets_are_redacted_in_base64_at_every_alignment() {
        // `base64` of the secret alone, and after one and two more bytes: the
        // characters that depend on the secret alone are redacted.
        let secret = "hunter2-is-my-password";
        for (line, expected) in [
            // "hunter2-is-my-password"
            ("aHVudGVyMi1pcy1teS1wYXNzd29yZA==", "***A=="),
            // "=hunter2-is-my-password"
            ("PWh1bnRlcjItaXMtbXktcGFzc3dvcmQ=", "PW***Q="),
            // "u=hunter2-is-my-password"
            ("dT1odW50ZXIyLWlzLW15LXBhc3N3b3Jk", "dT1***"),
        ] {
            assert_eq!(sanitize_with(&[secret], line), expected, "{line}");
        }
    }

    #[test]
    fn literal_secrets_are_redacted_in_url_safe_unpadded_base64() {
        // "?>?>?>?>" in standard base64 is "Pz4/Pj8+Pz4/", URL-safe "Pz4_Pj8-Pz4_".
        let secret = "?>?>?>?>?";
        assert_eq!(
            sanitize_with(&[secret], "token Pz4_Pj8-Pz4_Pw end"),
            "token ***Pw end"
        );
    }

    #[test]
    fn literal_secrets_are_redacted_percent_encoded() {
        let secret = "p@ss/w0rd!";
        for line in [
            "GET /login?pw=p%40ss%2Fw0rd%21 200",
            "GET /login?pw=p%40ss%2fw0rd! 200",
            "GET /login?pw=p%40ss/w0rd%21 200",
        ] {
            assert_eq!(
                sanitize_with(&[secret], line),
                "GET /login?pw=*** 200",
                "{line}"
            );
        }
    }

    #[test]
    fn a_hundred_secrets_of_four_kilobytes_are_cheap_to_hold() {
        let secrets: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    "{i:03}{}",
                    "abcdefghijklmnopqrstuvwxyz0123456789+/".repeat(108)
                )[..4096]
                    .to_string()
            })
            .collect();
        let sanitizer = Sanitizer::new(&secrets);
        let bytes = sanitizer.memory_bytes();
        // The secrets themselves take 400 KiB; a few hundred KiB more is the
        // budget.
        assert!(bytes < 1024 * 1024, "{bytes} bytes");
        assert!(bytes > 100 * 4096, "{bytes} bytes: the secrets are counted");
        let line = format!("x {} y", secrets[42]);
        assert_eq!(sanitizer.batch().line(&line), "x *** y");
    }

    // Control characters

    #[test]
    fn c0_controls_other_than_tab_and_del_are_removed() {
        assert_eq!(
            sanitize("a\0b\x07c\x08d\x0be\x0cf\x01g\x1fh\x7fi\tj\x0ek"),
            "abcdefghi\tjk"
        );
    }

    #[test]
    fn c1_controls_are_removed() {
        assert_eq!(sanitize("\u{85}x\u{80}y\u{9c}z\u{9a}"), "xyz");
    }

    #[test]
    fn eight_bit_control_strings_are_removed_whole() {
        assert_eq!(sanitize("\u{9d}0;title\u{7}"), "");
        assert_eq!(
            sanitize("a\u{9d}8;;https://x\u{9c}link\u{9d}8;;\u{1b}\\b"),
            "alinkb"
        );
        for introducer in ['\u{90}', '\u{98}', '\u{9e}', '\u{9f}'] {
            let line = format!("a{introducer}pay\u{7}load\u{9c}b");
            assert_eq!(sanitize(&line), "ab", "introducer {introducer:?}");
            let unterminated = format!("a{introducer}payload to the end");
            assert_eq!(sanitize(&unterminated), "a", "introducer {introducer:?}");
        }
    }

    #[test]
    fn latin_text_sharing_the_c1_lead_byte_is_untouched() {
        assert_borrowed_untouched("© 2026 · 25°C ± 1 «ok» ¿qué? ÿ");
    }

    // Cutting long lines

    #[test]
    fn long_line_is_cut_with_the_exact_suffix() {
        let out = sanitize(&"a".repeat(20_000));
        let expected = format!("{}… [truncated 3643 bytes]", "a".repeat(16_357));
        assert_eq!(out, expected);
        assert!(out.len() <= MAX_LINE_BYTES);
    }

    #[test]
    fn line_of_exactly_the_maximum_length_is_kept_whole() {
        assert_borrowed_untouched(&"a".repeat(MAX_LINE_BYTES));
        let out = sanitize(&"a".repeat(MAX_LINE_BYTES + 1));
        assert!(
            out.ends_with("… [truncated 28 bytes]"),
            "{}",
            &out[16_300..]
        );
        assert!(out.len() <= MAX_LINE_BYTES);
    }

    #[test]
    fn cut_never_splits_a_multibyte_char() {
        let out = sanitize(&"€".repeat(7_000));
        let expected = format!("{}… [truncated 4644 bytes]", "€".repeat(5_452));
        assert_eq!(out, expected);
        assert!(out.len() <= MAX_LINE_BYTES);
    }

    #[test]
    fn secret_straddling_the_cut_is_still_redacted() {
        let line = format!(
            "{} {AWS_KEY_ID} hunter2 {}",
            "x".repeat(16_352),
            "y".repeat(5_000)
        );
        let out = sanitize_with(&["hunter2"], &line);
        assert!(out.len() <= MAX_LINE_BYTES);
        assert!(out.starts_with(&format!("{} ***", "x".repeat(16_352))));
        for fragment in ["AKIA", "EXAMPLE", "hun", "ter2"] {
            assert!(!out.contains(fragment), "{fragment} left in the cut line");
        }
    }

    // Lines left alone

    #[test]
    fn plain_ascii_line_is_borrowed_untouched() {
        assert_borrowed_untouched(
            "npm WARN deprecated inflight@1.0.6: This module is not supported",
        );
    }

    #[test]
    fn plain_unicode_line_is_borrowed_untouched() {
        assert_borrowed_untouched("✔ built 🚀 in 3s — 构建成功 — é (e\u{301}) © 25°C");
    }

    #[test]
    fn tabs_numbers_and_empty_lines_are_borrowed_untouched() {
        assert_borrowed_untouched("");
        assert_borrowed_untouched("\tcol1\tcol2\t");
        assert_borrowed_untouched("1234567890 3.14159 -42 0xDEADBEEF");
    }

    #[test]
    fn npm_output_is_borrowed_untouched() {
        assert_borrowed_untouched("added 120 packages in 3s");
        assert_borrowed_untouched("found 0 vulnerabilities");
        assert_borrowed_untouched("npm notice New major version of npm available! 9.8.1 -> 10.2.4");
    }

    #[test]
    fn many_plain_lines_pass_through_one_batch() {
        let sanitizer = Sanitizer::new(&["hunter2".to_string()]);
        let mut batch = sanitizer.batch();
        let line = "added 120 packages, and audited 121 packages in 3s; 14 packages are looking for funding";
        for _ in 0..100_000 {
            assert!(matches!(batch.line(line), Cow::Borrowed(_)));
        }
    }
}
