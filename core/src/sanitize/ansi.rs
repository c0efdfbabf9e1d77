//! Stripping escape sequences and control characters: a hand-written state machine
//! over CSI, OSC, DCS/SOS/PM/APC strings (7-bit `ESC`-introduced or 8-bit C1),
//! charset designations and two-byte escapes, and every other C0 control but tab and
//! carriage return, DEL and C1 control dropped alone. Whatever cannot be parsed is
//! dropped together with its introducer, so no ESC, C0 (but tab) or C1 character ever
//! reaches storage; `\r` is left for the progress-bar step, which removes it.
//!
//! Clean lines must cost next to nothing, so [`find_control`] tests 16 bytes at a
//! time with a branch-free test the compiler vectorizes, and only looks closer at a
//! chunk that has a control byte or the lead byte of a C1 character (`C2`, shared
//! with `©`, `°`, `±` …).

// Every position the functions below return is either the end of the line,
// just after an ASCII byte or a whole C1 character they consumed, or the
// position of a byte they did not consume that follows a complete character;
// so slicing there never splits a UTF-8 character.

use std::borrow::Cow;

use memchr::{memchr2, memchr3};

const ESC: u8 = 0x1B;
const BEL: u8 = 0x07;
const DEL: u8 = 0x7F;
/// UTF-8 lead byte of U+0080–U+00BF: the C1 controls are `C2 80`–`C2 9F`.
const C1_LEAD: u8 = 0xC2;
/// Second bytes of the 8-bit introducers and terminator.
const C1_DCS: u8 = 0x90;
const C1_SOS: u8 = 0x98;
const C1_CSI: u8 = 0x9B;
const C1_ST: u8 = 0x9C;
const C1_OSC: u8 = 0x9D;
const C1_PM: u8 = 0x9E;
const C1_APC: u8 = 0x9F;

const CHUNK: usize = 16;

pub(super) fn strip_controls(raw: &str) -> Cow<'_, str> {
    let bytes = raw.as_bytes();
    let Some(mut at) = find_control(bytes, 0) else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    let mut kept_from = 0;
    loop {
        out.push_str(&raw[kept_from..at]);
        kept_from = skip_control(bytes, at);
        match find_control(bytes, kept_from) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.push_str(&raw[kept_from..]);
    Cow::Owned(out)
}

/// A colour or style change (SGR, `CSI … m`) kept from a line: its place in the
/// stripped text and its parameters (digits, `;` and `:` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sgr {
    /// Byte offset in the stripped text it applies before.
    pub at: usize,
    /// Where its parameters (between `CSI` and `m`: `1;31`, `38;5;208`,
    /// `38:2::1:2:3`, ``) are in the raw line.
    pub params: std::ops::Range<usize>,
}

/// [`strip_controls`], but keeping what a colour or style change said: every SGR
/// sequence (7-bit `ESC [` or 8-bit CSI, parameters of digits, `;` and `:`, final
/// `m`) is removed from the text like any other and returned beside it. A line
/// without a control byte costs what it costs [`strip_controls`]: nothing is
/// allocated.
pub(super) fn strip_controls_keeping_sgr(raw: &str) -> (Cow<'_, str>, Vec<Sgr>) {
    let bytes = raw.as_bytes();
    let Some(mut at) = find_control(bytes, 0) else {
        return (Cow::Borrowed(raw), Vec::new());
    };
    let mut out = String::with_capacity(raw.len());
    let mut sgrs = Vec::new();
    let mut kept_from = 0;
    loop {
        out.push_str(&raw[kept_from..at]);
        kept_from = match sgr_at(bytes, at) {
            Some((params, end)) => {
                sgrs.push(Sgr {
                    at: out.len(),
                    params,
                });
                end
            }
            None => skip_control(bytes, at),
        };
        match find_control(bytes, kept_from) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.push_str(&raw[kept_from..]);
    (Cow::Owned(out), sgrs)
}

/// The parameters and end of the SGR sequence at `at`, if that is one.
fn sgr_at(bytes: &[u8], at: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let from = match (bytes[at], bytes.get(at + 1)) {
        (ESC, Some(b'[')) | (C1_LEAD, Some(&C1_CSI)) => at + 2,
        _ => return None,
    };
    let params_end = from
        + bytes[from..]
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b';' | b':'))?;
    (bytes[params_end] == b'm').then_some((from..params_end, params_end + 1))
}

/// May start something to remove: tested on every byte of a chunk without
/// branching.
fn suspect(byte: u8) -> bool {
    (byte < 0x20) & (byte != b'\t') & (byte != b'\r') | (byte == DEL) | (byte == C1_LEAD)
}

/// Position of the next control character or escape sequence at or after `from`:
/// a C0 control but tab and `\r`, DEL, ESC, or a C1 control.
pub(super) fn find_control(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        while let Some(chunk) = bytes.get(at..at + CHUNK) {
            if chunk.iter().fold(false, |any, &byte| any | suspect(byte)) {
                break;
            }
            at += CHUNK;
        }
        let end = bytes.len().min(at + CHUNK);
        for i in at..end {
            let byte = bytes[i];
            if suspect(byte) && (byte != C1_LEAD || matches!(bytes.get(i + 1), Some(0x80..=0x9F))) {
                return Some(i);
            }
        }
        if end == bytes.len() {
            return None;
        }
        at = end;
    }
}

/// End of the control character or sequence starting at `at`. Always past `at`,
/// so stripping makes progress.
fn skip_control(bytes: &[u8], at: usize) -> usize {
    match bytes[at] {
        ESC => skip_escape(bytes, at),
        C1_LEAD => match bytes.get(at + 1) {
            Some(&C1_CSI) => skip_csi(bytes, at + 2),
            Some(&C1_OSC) => skip_control_string(bytes, at + 2, true),
            Some(&(C1_DCS | C1_SOS | C1_PM | C1_APC)) => skip_control_string(bytes, at + 2, false),
            // Any other C1 control, the string terminator alone included.
            _ => at + 2,
        },
        // Any other C0 control, or DEL.
        _ => at + 1,
    }
}

/// End of the sequence starting at the ESC at `at`.
fn skip_escape(bytes: &[u8], at: usize) -> usize {
    let Some(&kind) = bytes.get(at + 1) else {
        return bytes.len();
    };
    match kind {
        b'[' => skip_csi(bytes, at + 2),
        b']' => skip_control_string(bytes, at + 2, true),
        b'P' | b'X' | b'^' | b'_' => skip_control_string(bytes, at + 2, false),
        // Charset designation and the like: intermediates, then a final byte.
        0x20..=0x2F => {
            let end = skip_while(bytes, at + 2, 0x20..=0x2F);
            match bytes.get(end) {
                Some(0x30..=0x7E) => end + 1,
                _ => end,
            }
        }
        // Two-byte escapes such as `ESC 7`, `ESC =`, `ESC M`, `ESC c`.
        0x30..=0x7E => at + 2,
        // Not a sequence: drop the ESC alone and keep what follows it.
        _ => at + 1,
    }
}

/// Parameters, intermediates and a final byte. A byte that fits none ends a
/// malformed sequence and is kept, like a truncated one is removed.
fn skip_csi(bytes: &[u8], from: usize) -> usize {
    let params_end = skip_while(bytes, from, 0x30..=0x3F);
    let end = skip_while(bytes, params_end, 0x20..=0x2F);
    match bytes.get(end) {
        Some(0x40..=0x7E) => end + 1,
        _ => end,
    }
}

/// OSC, DCS, SOS, PM and APC bodies run to a string terminator (`ESC \` or the
/// 8-bit ST), or BEL for OSC, or the end of the line. Any other ESC aborts the
/// string, as it does in a terminal, and starts a new sequence.
fn skip_control_string(bytes: &[u8], from: usize, bel_ends: bool) -> usize {
    let mut from = from;
    loop {
        let rest = bytes.get(from..).unwrap_or_default();
        let found = if bel_ends {
            memchr3(ESC, BEL, C1_LEAD, rest)
        } else {
            memchr2(ESC, C1_LEAD, rest)
        };
        let Some(offset) = found else {
            return bytes.len();
        };
        let at = from + offset;
        match bytes[at] {
            BEL => return at + 1,
            ESC if bytes.get(at + 1) == Some(&b'\\') => return at + 2,
            ESC => return at,
            _ if bytes.get(at + 1) == Some(&C1_ST) => return at + 2,
            // `C2` of some other character: part of the string.
            _ => from = at + 1,
        }
    }
}

fn skip_while(bytes: &[u8], from: usize, range: std::ops::RangeInclusive<u8>) -> usize {
    let rest = bytes.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .position(|byte| !range.contains(byte))
        .unwrap_or(rest.len())
}
