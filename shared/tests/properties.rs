//! Property tests (proptest) for the parsers and the sanitizer: arbitrary input never
//! panics, the sanitizer never grows a line past its cap and never lets a registered
//! secret through whole, and ids round-trip.

use logstream_shared::model::{EntryId, JobId};
use logstream_shared::sanitize::{MAX_LINE_BYTES, Sanitizer};
use proptest::prelude::*;

/// Text shaped like build output: printable runs, ANSI fragments, carriage returns,
/// tabs, unicode and secret-looking prefixes.
fn log_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[ -~]{0,40}",
        Just("\u{1b}[31m".to_owned()),
        Just("\u{1b}]0;title\u{7}".to_owned()),
        Just("\u{1b}".to_owned()),
        Just("\r".to_owned()),
        Just("\t".to_owned()),
        Just("ü€😀".to_owned()),
        Just("password=".to_owned()),
        Just("https://user:pw@host/".to_owned()),
        Just("-----BEGIN PRIVATE KEY-----".to_owned()),
        Just("-----END PRIVATE KEY-----".to_owned()),
        Just("AKIA".to_owned()),
        Just("ghp_".to_owned()),
        Just("eyJ".to_owned()),
        Just("Bearer ".to_owned()),
    ];
    prop::collection::vec(piece, 0..30).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sanitized_lines_never_exceed_the_cap(text in log_text(), repeat in 1usize..600) {
        let line = text.repeat(repeat);
        let sanitizer = Sanitizer::new(&[]);
        let out = sanitizer.batch().line(&line);
        prop_assert!(out.len() <= MAX_LINE_BYTES, "{} bytes", out.len());
        prop_assert!(!out.contains('\u{1b}'), "no ESC survives");
    }

    #[test]
    fn a_registered_secret_never_comes_through_whole(
        before in log_text(),
        after in log_text(),
        secret in "[A-Za-z0-9_.!-]{4,40}",
        split in any::<prop::sample::Index>(),
    ) {
        let sanitizer = Sanitizer::new(std::slice::from_ref(&secret));
        // Whole, or with an ANSI code inside it (stripped before redaction).
        let cut = split.index(secret.len() + 1).min(secret.len());
        let hidden = format!("{}\u{1b}[1m{}", &secret[..cut], &secret[cut..]);
        for line in [format!("{before}{secret}{after}"), format!("{before}{hidden}{after}")] {
            let out = sanitizer.batch().line(&line);
            prop_assert!(!out.contains(secret.as_str()), "{line:?} -> {out:?}");
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_sanitizer(line in any::<String>(), secrets in prop::collection::vec(any::<String>(), 0..4)) {
        let sanitizer = Sanitizer::new(&secrets);
        let mut batch = sanitizer.batch();
        let _ = batch.line(&line);
        let _ = batch.line("");
    }

    #[test]
    fn entry_ids_round_trip_and_garbage_is_refused(ms in any::<u64>(), seq in any::<u64>(), junk in ".{0,30}") {
        let id = EntryId { ms, seq };
        prop_assert_eq!(id.to_string().parse::<EntryId>(), Ok(id));
        if junk.parse::<EntryId>().is_ok() {
            let (ms, seq) = junk.split_once('-').unwrap_or(("", ""));
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            prop_assert!(digits(ms) && digits(seq), "accepted {junk:?}");
        }
    }

    #[test]
    fn job_ids_accept_exactly_the_spec_alphabet(raw in ".{0,140}") {
        let valid = !raw.is_empty()
            && raw.len() <= 128
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        prop_assert_eq!(JobId::parse(&raw).is_ok(), valid);
    }
}
