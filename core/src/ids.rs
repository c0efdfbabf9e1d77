//! Identifiers: job ids (safe inside a Redis key by construction) and entry ids (Redis
//! stream ids, ordered as Redis orders them), plus the random hex that job ids, tokens
//! and temporary file names are made of.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Longest accepted job id.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A validated job id: 1–128 chars of `[A-Za-z0-9_-]`, safe inside a Redis key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

/// Why a job id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidJobId;

impl JobId {
    /// Validates `raw` as a job id.
    pub fn parse(raw: &str) -> Result<Self, InvalidJobId> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_JOB_ID_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidJobId)
        }
    }

    /// A fresh random id for `POST /jobs` without one.
    pub fn generate() -> Self {
        Self(format!("job-{}", random_hex(12)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A Redis stream id (`<ms>-<seq>`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry id must look like 1732406400000-0")]
pub struct InvalidEntryId;

impl FromStr for EntryId {
    type Err = InvalidEntryId;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::from_ascii(raw.as_bytes())
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl EntryId {
    /// Parses an id as [`FromStr`] does, from bytes: how a reader takes the ids of a
    /// Redis reply without checking them for UTF-8 first.
    pub fn from_ascii(raw: &[u8]) -> Result<Self, InvalidEntryId> {
        // One pass over each half (every archived entry's id is parsed on a read).
        fn number(digits: &[u8]) -> Option<u64> {
            if digits.is_empty() || digits.len() > 20 {
                return None;
            }
            digits.iter().try_fold(0u64, |value, &b| {
                let digit = b.wrapping_sub(b'0');
                (digit < 10).then_some(())?;
                value.checked_mul(10)?.checked_add(u64::from(digit))
            })
        }
        let dash = raw.iter().position(|&b| b == b'-').ok_or(InvalidEntryId)?;
        match (number(&raw[..dash]), number(&raw[dash + 1..])) {
            (Some(ms), Some(seq)) => Ok(Self { ms, seq }),
            _ => Err(InvalidEntryId),
        }
    }

    /// Appends the id as [`Display`](fmt::Display) writes it, without the formatting
    /// machinery: for the paths that write one id per entry (pages, frames, archive
    /// lines), where `write!` cost more than the rest of the entry.
    pub fn push_to(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.push_str(digits.format(self.ms));
        out.push('-');
        out.push_str(digits.format(self.seq));
    }
}

impl Ord for EntryId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl PartialOrd for EntryId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_accept_the_spec_alphabet_only() {
        assert!(JobId::parse("build-42_A").is_ok());
        assert!(JobId::parse(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a:b", "a{b}", "ü", "../x", &"a".repeat(129)] {
            assert_eq!(JobId::parse(bad), Err(InvalidJobId), "{bad:?}");
        }
    }

    #[test]
    fn entry_ids_parse_and_order_numerically() {
        let a: EntryId = "1732406400000-9".parse().unwrap();
        let b: EntryId = "1732406400000-10".parse().unwrap();
        let c: EntryId = "1732406400001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1732406400000-10");
        let max: EntryId = "18446744073709551615-18446744073709551615".parse().unwrap();
        assert_eq!((max.ms, max.seq), (u64::MAX, u64::MAX));
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-2-3",
            " 1-2",
            "1-+2",
            "99999999999999999999999-0",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "0-000000000000000000001",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_id_pushed_reads_as_it_displays() {
        for (ms, seq) in [
            (0, 0),
            (9, 10),
            (1_732_406_400_000, 7),
            (u64::MAX, u64::MAX),
        ] {
            let id = EntryId { ms, seq };
            let mut out = String::from("x");
            id.push_to(&mut out);
            assert_eq!(out, format!("x{id}"));
            assert_eq!(out[1..].parse::<EntryId>(), Ok(id));
        }
    }
}
