//! Stripping ANSI escape sequences: a hand-written state machine over CSI, OSC,
//! DCS/SOS/PM/APC strings, charset designations and two-byte escapes. Whatever cannot
//! be parsed is dropped together with its ESC, so no ESC byte ever reaches storage.

// Every position the functions below return is either the end of the line,
// just after an ASCII byte they consumed, or the position of a byte they did
// not consume that follows a complete character; so slicing there never
// splits a UTF-8 character.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

use super::{BEL, C1_CSI, ESC};

pub(super) fn strip_ansi(raw: &str) -> Cow<'_, str> {
    let bytes = raw.as_bytes();
    let Some(mut at) = find_escape(bytes, 0) else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    let mut kept_from = 0;
    loop {
        out.push_str(&raw[kept_from..at]);
        kept_from = skip_sequence(bytes, at);
        match find_escape(bytes, kept_from) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.push_str(&raw[kept_from..]);
    Cow::Owned(out)
}

/// Position of the next ESC or 8-bit CSI at or after `from`.
pub(super) fn find_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let mut from = from;
    loop {
        let at = from + memchr2(ESC, C1_CSI[0], bytes.get(from..)?)?;
        if bytes[at] == ESC || bytes.get(at + 1) == Some(&C1_CSI[1]) {
            return Some(at);
        }
        from = at + 1;
    }
}

/// End of the sequence starting at `at` (an ESC or an 8-bit CSI). Always
/// past `at`, so stripping makes progress.
pub(super) fn skip_sequence(bytes: &[u8], at: usize) -> usize {
    if bytes[at] != ESC {
        return skip_csi(bytes, at + C1_CSI.len());
    }
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
pub(super) fn skip_csi(bytes: &[u8], from: usize) -> usize {
    let params_end = skip_while(bytes, from, 0x30..=0x3F);
    let end = skip_while(bytes, params_end, 0x20..=0x2F);
    match bytes.get(end) {
        Some(0x40..=0x7E) => end + 1,
        _ => end,
    }
}

/// OSC, DCS, SOS, PM and APC bodies run to `ESC \` (or BEL for OSC) or the
/// end of the line. Any other ESC aborts the string, as it does in a
/// terminal, and starts a new sequence.
pub(super) fn skip_control_string(bytes: &[u8], from: usize, bel_ends: bool) -> usize {
    let rest = bytes.get(from..).unwrap_or_default();
    let found = if bel_ends {
        memchr2(ESC, BEL, rest)
    } else {
        memchr(ESC, rest)
    };
    let Some(offset) = found else {
        return bytes.len();
    };
    let at = from + offset;
    if bytes[at] == BEL {
        at + 1
    } else if bytes.get(at + 1) == Some(&b'\\') {
        at + 2
    } else {
        at
    }
}

pub(super) fn skip_while(bytes: &[u8], from: usize, range: std::ops::RangeInclusive<u8>) -> usize {
    let rest = bytes.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .position(|byte| !range.contains(byte))
        .unwrap_or(rest.len())
}
