//! The job's registered literal secrets and the forms they are also redacted in:
//! upper-cased, percent-encoded, and base64 (standard or URL-safe, padded or not).
//!
//! Nothing is stored per form. Each form is found through its *anchors*, its first
//! [`ANCHOR_BYTES`] bytes as the common encoders write them, which join the rules'
//! trigger substrings in the sanitizer's one Aho-Corasick automaton; where an anchor
//! occurs, the form is confirmed by computing it from the secret while comparing.
//! So 100 secrets of 4 096 bytes cost those 400 KiB once plus an automaton over a few
//! thousand anchor bytes, where an automaton over the whole secrets took about
//! 10 MiB and a fifth of a second to build, and would have taken several times that
//! with every encoding in it.
//!
//! Decisions a reader might question:
//! - The text form is matched leniently: each byte of the secret may appear as
//!   itself, ASCII-upper-cased, or percent-encoded (`%XX`, either hex case), and a
//!   space as `+`. One comparison thus covers the secret, its upper-cased form and
//!   whatever a percent-encoder made of it; the anchors only need each encoder's
//!   first bytes (see [`text_anchors`]). Upper-casing is ASCII only, and lower-casing
//!   is not a form: `Hunter2` hides `HUNTER2`, not `hunter2`.
//! - Base64 of a secret depends on where it starts within a 3-byte group, so, as
//!   GitHub Actions does, a secret has three base64 forms (preceded by 0, 1 or 2
//!   bytes), each made only of the characters that depend on the secret alone. One
//!   shorter than [`MIN_BASE64_CHARS`] is not registered: a handful of base64
//!   characters also turns up in unrelated hashes.
//! - Confirming is linear in the form's length. A long secret that repeats itself
//!   (`aaaa…`), printed over and over on one huge line, would make it quadratic:
//!   past a budget proportional to the line ([`Budget`]) the whole line is redacted,
//!   which is right for such a line and keeps the cost bounded.

use std::ops::Range;

use super::MIN_SECRET_LINE_BYTES;

/// Length of an anchor: long enough that a random match is negligible, short
/// enough that the automaton stays small.
pub(super) const ANCHOR_BYTES: usize = 16;

/// Shortest base64 form registered.
pub(super) const MIN_BASE64_CHARS: usize = 8;

/// Bytes of comparison allowed per byte of the line, above [`BUDGET_BASE`].
const BUDGET_PER_BYTE: usize = 32;
/// Bytes of comparison allowed for any line: enough for a dozen occurrences of the
/// longest secret a job may register.
const BUDGET_BASE: usize = 64 * 1024;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The literal secrets of one job, with the anchors of their forms.
#[derive(Default)]
pub(super) struct Literals {
    /// Distinct, non-empty secrets, one line each.
    secrets: Vec<String>,
    /// Distinct anchors, ASCII-lower-cased (the automaton ignores ASCII case).
    anchors: Vec<Box<[u8]>>,
    /// The forms anchor `i` may start are `forms[ends[i - 1]..ends[i]]`.
    ends: Vec<u32>,
    forms: Vec<Form>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Form {
    /// Index in [`Literals::secrets`].
    secret: u32,
    encoding: Encoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Encoding {
    /// As written, upper-cased or percent-encoded.
    Text,
    /// Base64 of the secret preceded by `offset` bytes (0 to 2).
    Base64 { offset: u8 },
}

impl Literals {
    pub(super) fn new(registered: &[String]) -> Self {
        let secrets = literal_secrets(registered);
        let mut anchored: Vec<(Vec<u8>, Form)> = Vec::new();
        for (index, secret) in secrets.iter().enumerate() {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            let secret = secret.as_bytes();
            let text = Form {
                secret: index,
                encoding: Encoding::Text,
            };
            anchored.extend(text_anchors(secret).into_iter().map(|a| (a, text)));
            for offset in 0..3 {
                let chars = base64_chars(secret, offset);
                if chars.len() < MIN_BASE64_CHARS {
                    continue;
                }
                let form = Form {
                    secret: index,
                    encoding: Encoding::Base64 { offset },
                };
                let sextets: Vec<usize> = chars
                    .take(ANCHOR_BYTES)
                    .map(|i| sextet(secret, offset, i))
                    .collect();
                for alphabet in [BASE64, BASE64_URL] {
                    let anchor = sextets.iter().map(|&s| alphabet[s]).collect();
                    anchored.push((anchor, form));
                }
            }
        }
        for (anchor, _) in &mut anchored {
            anchor.make_ascii_lowercase();
        }
        anchored.sort_unstable();
        anchored.dedup();

        let mut literals = Self {
            secrets,
            ..Self::default()
        };
        for (anchor, form) in anchored {
            if literals.anchors.last().is_none_or(|last| **last != *anchor) {
                literals.anchors.push(anchor.into_boxed_slice());
                literals.ends.push(0);
            }
            literals.forms.push(form);
            if let Some(end) = literals.ends.last_mut() {
                *end += 1;
            }
        }
        // Counts to running ends.
        let mut total = 0;
        for end in &mut literals.ends {
            total += *end;
            *end = total;
        }
        literals.anchors.shrink_to_fit();
        literals.ends.shrink_to_fit();
        literals.forms.shrink_to_fit();
        literals
    }

    /// How many distinct secrets (lines of secrets) are registered.
    pub(super) fn len(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The patterns the automaton must find, in the order [`Self::confirm`] numbers
    /// them.
    pub(super) fn anchors(&self) -> impl Iterator<Item = &[u8]> {
        self.anchors.iter().map(|anchor| &anchor[..])
    }

    /// Heap held, in bytes.
    pub(super) fn memory_bytes(&self) -> usize {
        let secrets: usize = self.secrets.iter().map(String::capacity).sum();
        let anchors: usize = self.anchors.iter().map(|anchor| anchor.len()).sum();
        self.secrets.capacity() * size_of::<String>()
            + secrets
            + self.anchors.capacity() * size_of::<Box<[u8]>>()
            + anchors
            + self.ends.capacity() * size_of::<u32>()
            + self.forms.capacity() * size_of::<Form>()
    }

    /// Adds the span of every form that anchor number `anchor` starts at `start` in
    /// `hay`. `false` when the line's budget ran out: the caller redacts it whole.
    pub(super) fn confirm(
        &self,
        anchor: usize,
        hay: &[u8],
        start: usize,
        budget: &mut Budget,
        spans: &mut Vec<Range<usize>>,
    ) -> bool {
        let from = match anchor.checked_sub(1) {
            Some(previous) => self.ends.get(previous).copied().unwrap_or(0),
            None => 0,
        };
        let to = self.ends.get(anchor).copied().unwrap_or(from);
        let forms = self
            .forms
            .get(from as usize..to as usize)
            .unwrap_or_default();
        let rest = hay.get(start..).unwrap_or_default();
        for form in forms {
            let Some(secret) = self.secrets.get(form.secret as usize) else {
                continue;
            };
            let secret = secret.as_bytes();
            let (cost, found) = match form.encoding {
                Encoding::Text => (secret.len(), text_match(secret, rest)),
                Encoding::Base64 { offset } => (
                    base64_chars(secret, offset).len(),
                    base64_match(secret, offset, rest),
                ),
            };
            if !budget.spend(cost) {
                return false;
            }
            if let Some(len) = found {
                spans.push(start..start + len);
            }
        }
        true
    }

    /// Slow but complete search for when the automaton could not be built.
    pub(super) fn scan_without_automaton(
        &self,
        hay: &[u8],
        budget: &mut Budget,
        spans: &mut Vec<Range<usize>>,
    ) -> bool {
        for (index, anchor) in self.anchors.iter().enumerate() {
            for start in 0..hay.len() {
                let here = hay.get(start..start + anchor.len());
                if here.is_some_and(|here| here.eq_ignore_ascii_case(anchor))
                    && !self.confirm(index, hay, start, budget, spans)
                {
                    return false;
                }
            }
        }
        true
    }
}

/// What confirming forms may still cost on one line.
pub(super) struct Budget(usize);

impl Budget {
    pub(super) fn for_line(len: usize) -> Self {
        Self(BUDGET_BASE.saturating_add(len.saturating_mul(BUDGET_PER_BYTE)))
    }

    fn spend(&mut self, cost: usize) -> bool {
        match self.0.checked_sub(cost) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

/// Length of the text form of `secret` at the start of `hay`: each byte as itself,
/// ASCII-upper-cased or `%XX`, a space also as `+`.
fn text_match(secret: &[u8], hay: &[u8]) -> Option<usize> {
    if hay.starts_with(secret) {
        return Some(secret.len());
    }
    let mut at = 0;
    for &byte in secret {
        let here = *hay.get(at)?;
        if here == byte || here == byte.to_ascii_uppercase() || (byte == b' ' && here == b'+') {
            at += 1;
        } else if here == b'%' && hay.get(at + 1..at + 3).and_then(hex_byte) == Some(byte) {
            at += 3;
        } else {
            return None;
        }
    }
    Some(at)
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |d: u8| char::from(d).to_digit(16);
    let [high, low] = pair else {
        return None;
    };
    u8::try_from(digit(*high)? * 16 + digit(*low)?).ok()
}

/// Length of the base64 form at `offset` of `secret` at the start of `hay`, in
/// either alphabet.
fn base64_match(secret: &[u8], offset: u8, hay: &[u8]) -> Option<usize> {
    let chars = base64_chars(secret, offset);
    let len = chars.len();
    let hay = hay.get(..len)?;
    let same = chars.zip(hay).all(|(i, &here)| {
        let s = sextet(secret, offset, i);
        here == BASE64[s] || here == BASE64_URL[s]
    });
    same.then_some(len)
}

/// Indexes, in the base64 encoding of `offset` bytes then `secret`, of the
/// characters that depend on the secret alone: character `i` holds bits
/// `6i..6i + 6`, which must all fall within the secret's bits.
fn base64_chars(secret: &[u8], offset: u8) -> Range<usize> {
    let first_bit = 8 * usize::from(offset);
    let end_bit = first_bit + 8 * secret.len();
    first_bit.div_ceil(6)..end_bit / 6
}

/// Base64 character number `i` (an index into the alphabet) of `offset` bytes then
/// `secret`. The bytes before the secret do not matter to the characters
/// [`base64_chars`] gives; zeros stand for them.
fn sextet(secret: &[u8], offset: u8, i: usize) -> usize {
    let byte_at = |n: usize| {
        n.checked_sub(usize::from(offset))
            .and_then(|n| secret.get(n))
            .copied()
            .unwrap_or(0)
    };
    let bit = 6 * i;
    let window = (u16::from(byte_at(bit / 8)) << 8) | u16::from(byte_at(bit / 8 + 1));
    usize::from((window >> (10 - bit % 8)) & 0x3F)
}

/// Which bytes a percent-encoder leaves as they are, besides `A-Za-z0-9-._~`.
#[derive(Clone, Copy)]
enum Encoder {
    /// RFC 3986 strictly, Python's `quote(safe="")`.
    Strict,
    /// JavaScript's `encodeURIComponent`: also `!*'()`.
    Component,
    /// Python's `quote`, most path encoders: also `/`.
    Path,
    /// HTML forms, Python's `quote_plus`: space as `+`.
    Form,
}

/// The first [`ANCHOR_BYTES`] bytes of the text form as written and as the
/// common percent-encoders write it, distinct.
fn text_anchors(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut anchors = vec![secret[..secret.len().min(ANCHOR_BYTES)].to_vec()];
    for encoder in [
        Encoder::Strict,
        Encoder::Component,
        Encoder::Path,
        Encoder::Form,
    ] {
        let mut anchor = Vec::with_capacity(ANCHOR_BYTES + 2);
        for &byte in secret {
            if anchor.len() >= ANCHOR_BYTES {
                break;
            }
            let kept = byte.is_ascii_alphanumeric()
                || matches!(byte, b'-' | b'.' | b'_' | b'~')
                || match encoder {
                    Encoder::Strict | Encoder::Form => false,
                    Encoder::Component => matches!(byte, b'!' | b'*' | b'\'' | b'(' | b')'),
                    Encoder::Path => byte == b'/',
                };
            if kept {
                anchor.push(byte);
            } else if byte == b' ' && matches!(encoder, Encoder::Form) {
                anchor.push(b'+');
            } else {
                anchor.extend_from_slice(format!("%{byte:02X}").as_bytes());
            }
        }
        anchor.truncate(ANCHOR_BYTES);
        anchors.push(anchor);
    }
    anchors.sort_unstable();
    anchors.dedup();
    anchors
}

/// Distinct, non-empty literal secrets, multi-line ones split into lines.
fn literal_secrets(secrets: &[String]) -> Vec<String> {
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
    out.shrink_to_fit();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard base64 of `bytes`, padded, written here independently of
    /// [`sextet`] to check it.
    fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for k in 0..4 {
                if k <= chunk.len() {
                    out.push(char::from(BASE64[((n >> (18 - 6 * k)) & 0x3F) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn found(secrets: &[&str], hay: &str) -> Vec<Range<usize>> {
        let registered: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let literals = Literals::new(&registered);
        let mut spans = Vec::new();
        let mut budget = Budget::for_line(hay.len());
        assert!(literals.scan_without_automaton(hay.as_bytes(), &mut budget, &mut spans));
        spans.sort_unstable_by_key(|span| (span.start, span.end));
        spans.dedup();
        spans
    }

    #[test]
    fn the_inner_base64_of_a_secret_is_found_whatever_precedes_it() {
        let secret = "correct horse battery staple";
        for prefix in ["", "x", "xy", "xyz", "user:"] {
            let encoded = encode(format!("{prefix}{secret}").as_bytes());
            // Exactly the characters that depend on the secret alone.
            let first_bit = 8 * prefix.len();
            let end_bit = first_bit + 8 * secret.len();
            let inner = first_bit.div_ceil(6)..end_bit / 6;
            assert_eq!(found(&[secret], &encoded), [inner], "{prefix:?}: {encoded}");
        }
    }

    #[test]
    fn url_safe_and_unpadded_base64_are_found() {
        let secret = "s3cr3t>>>???~~~";
        let standard = encode(secret.as_bytes());
        assert!(standard.contains(['+', '/']), "{standard}");
        let url_safe = standard
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_owned();
        assert!(!found(&[secret], &url_safe).is_empty(), "{url_safe}");
    }

    #[test]
    fn short_secrets_have_no_base64_forms() {
        let literals = Literals::new(&["abcd".to_string()]);
        assert!(
            literals
                .forms
                .iter()
                .all(|form| form.encoding == Encoding::Text)
        );
    }

    #[test]
    fn percent_encodings_of_every_common_encoder_are_found() {
        let secret = "p@ss w/rd!(x)";
        for encoded in [
            "p%40ss%20w%2Frd%21%28x%29",
            "p%40ss%20w%2frd!(x)",
            "p%40ss%20w/rd%21%28x%29",
            "p%40ss+w%2Frd%21%28x%29",
            "P%40SS%20W%2FRD%21%28X%29",
        ] {
            let hay = format!("url?q={encoded}&next=1");
            let whole = 6..6 + encoded.len();
            assert_eq!(found(&[secret], &hay), [whole], "{encoded}");
        }
    }

    #[test]
    fn the_text_form_is_upper_cased_but_not_lower_cased() {
        let whole = 0..7;
        assert_eq!(found(&["Hunter2"], "HUNTER2"), [whole]);
        assert!(found(&["Hunter2"], "hunter2").is_empty());
    }

    #[test]
    fn a_repeated_long_secret_on_a_long_line_exhausts_the_budget() {
        let secret = "a".repeat(4096);
        let literals = Literals::new(std::slice::from_ref(&secret));
        let text = literals
            .anchors()
            .position(|anchor| anchor == b"aaaaaaaaaaaaaaaa")
            .unwrap();
        let hay = "a".repeat(1 << 20);
        let mut budget = Budget::for_line(hay.len());
        let mut spans = Vec::new();
        let ran_out = (0..hay.len() - secret.len())
            .any(|start| !literals.confirm(text, hay.as_bytes(), start, &mut budget, &mut spans));
        assert!(ran_out);
    }

    #[test]
    fn anchors_are_short_and_shared() {
        let long = "x".repeat(4096);
        let literals = Literals::new(&[long.clone(), format!("{long}y")]);
        assert!(
            literals
                .anchors()
                .all(|anchor| anchor.len() <= ANCHOR_BYTES)
        );
        // Both secrets start alike: their text forms share one anchor.
        assert_eq!(
            literals
                .anchors()
                .filter(|a| *a == b"xxxxxxxxxxxxxxxx")
                .count(),
            1
        );
    }
}
