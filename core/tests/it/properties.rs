//! Property tests (proptest) for the parsers and the sanitizer: arbitrary input never
//! panics, the sanitizer never grows a line past its cap, never lets a control
//! character but tab through and never lets a registered secret through whole, ids
//! round-trip, the `text/plain` splitter gives the body back line by line, and JSON
//! batches within the limits are accepted and round-trip. The generated inputs also go
//! through the fuzz targets' checks ([`logstream_core::fuzzing`]).

use logstream_core::batch::{BodyFormat, MAX_SEQ, parse_body};
use logstream_core::fuzzing;
use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::LineStream;
use logstream_core::sanitize::{MAX_ANSI_BYTES, MAX_LINE_BYTES, Sanitizer, without_escapes};
use proptest::prelude::*;

/// Text shaped like build output: printable runs, ANSI fragments, carriage returns,
/// tabs, unicode and secret-looking prefixes.
fn log_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[ -~]{0,40}",
        Just("\u{1b}[31m".to_owned()),
        Just("\u{1b}[1;38;5;208m".to_owned()),
        Just("\u{9b}4m".to_owned()),
        Just("\u{1b}[0m".to_owned()),
        Just("\u{1b}]0;title\u{7}".to_owned()),
        Just("\u{1b}".to_owned()),
        Just("\r".to_owned()),
        Just("\t".to_owned()),
        Just("\u{9d}0;title\u{7}".to_owned()),
        Just("\u{90}".to_owned()),
        Just("\u{85}".to_owned()),
        Just("\0\u{8}\u{b}\u{c}\u{7f}".to_owned()),
        Just("©°".to_owned()),
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
        prop_assert!(
            !out.chars().any(|c| c.is_control() && c != '\t'),
            "no ESC, C0 (but tab) or C1 control survives: {:?}", out
        );
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
    fn a_coloured_line_strips_back_to_its_text_and_keeps_only_colour_codes(
        before in log_text(),
        after in log_text(),
        secret in "[A-Za-z0-9_.!-]{4,40}",
        split in any::<prop::sample::Index>(),
    ) {
        let sanitizer = Sanitizer::new(std::slice::from_ref(&secret));
        let cut = split.index(secret.len() + 1).min(secret.len());
        let line = format!("{before}{}\u{1b}[31m{}{after}", &secret[..cut], &secret[cut..]);
        let out = sanitizer.batch().coloured(&line);
        prop_assert_eq!(&out.text, &sanitizer.batch().line(&line));
        if let Some(ansi) = &out.ansi {
            prop_assert_eq!(without_escapes(ansi), out.text.clone());
            prop_assert!(ansi.len() <= MAX_ANSI_BYTES);
            // With the escapes out it is the text, which holds no secret; and what is
            // left in is SGR syntax only (below), which can spell no more of one than
            // the digits, `;`, `:` and `m` of a colour code.
            prop_assert!(!out.text.contains(secret.as_str()), "{:?} -> {:?}", line, out.text);
            // Every escape left is `ESC [` digits, `;` or `:`, then `m`.
            for piece in ansi.split('\u{1b}').skip(1) {
                let params = piece.strip_prefix('[');
                let sgr = params.and_then(|p| {
                    let end = p.find(|c: char| !matches!(c, '0'..='9' | ';' | ':'))?;
                    p[end..].starts_with('m').then_some(())
                });
                prop_assert!(sgr.is_some(), "not an SGR in {:?}", ansi);
            }
            let stray = ansi.chars().any(|c| c.is_control() && c != '\t' && c != '\u{1b}');
            prop_assert!(!stray, "a control other than ESC in {:?}", ansi);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_sanitizer(line in any::<String>(), secrets in prop::collection::vec(any::<String>(), 0..4)) {
        let sanitizer = Sanitizer::new(&secrets);
        let mut batch = sanitizer.batch();
        let _ = batch.line(&line);
        let _ = batch.line("");
        let _ = batch.coloured(&line);
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

    #[test]
    fn sanitizing_with_secrets_passes_the_fuzz_check(
        secrets in prop::collection::vec("[A-Za-z0-9_.!-]{4,20}", 0..4),
        text in log_text(),
    ) {
        // The fuzz target's input layout: `secret,secret\0lines`.
        let mut input = secrets.join(",").into_bytes();
        input.push(0);
        input.extend(text.as_bytes());
        fuzzing::sanitizer(&input);
    }
}

/// A `text/plain` body: printable runs, LF, CRLF, lone CR, invalid UTF-8, unicode.
fn plain_body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        "[ -~]{0,20}".prop_map(String::into_bytes),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(vec![0xff]),
        Just(vec![0xe2, 0x82]),
        Just("ü€😀".as_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// Text shaped like a JSON batch body, often valid, often not quite.
fn json_body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(r#"{"lines":["#.to_owned()),
        Just(r#"{"text":"#.to_owned()),
        Just(r#""stream":"stderr","#.to_owned()),
        Just(r#""stream":"nope","#.to_owned()),
        Just(r#""ts":"#.to_owned()),
        Just(r#""seq":"#.to_owned()),
        "-?[0-9]{1,22}",
        r#""[ -!#-\[\]-~]{0,10}""#,
        Just(r#""\u001b[31m\ud83d\ude00""#.to_owned()),
        Just("null".to_owned()),
        Just(",".to_owned()),
        Just("}".to_owned()),
        Just("]".to_owned()),
    ];
    prop::collection::vec(piece, 0..30).prop_map(|p| p.concat())
}

fn line_stream() -> impl Strategy<Value = LineStream> {
    prop_oneof![
        Just(LineStream::Stdout),
        Just(LineStream::Stderr),
        Just(LineStream::System)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_splitter_gives_one_line_per_newline_and_the_body_back(body in plain_body()) {
        fuzzing::splitter(&body);
    }

    #[test]
    fn arbitrary_bytes_never_break_the_splitter(body in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::splitter(&body);
    }

    #[test]
    fn json_batches_within_the_limits_are_accepted_as_sent(
        // Within the limits: no newline inside a text (that would be several lines)
        // and no `ts` JavaScript cannot read exactly.
        lines in prop::collection::vec((
            line_stream(),
            any::<String>().prop_map(|t| t.replace('\n', " ")),
            prop::option::of(0..=logstream_core::batch::MAX_TS),
        ), 1..40),
        seq in prop::option::of(0..=MAX_SEQ),
    ) {
        let json: Vec<serde_json::Value> = lines
            .iter()
            .map(|(stream, text, ts)| serde_json::json!({"stream": stream, "text": text, "ts": ts}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"lines": json, "seq": seq})).unwrap();
        let batch = parse_body(&body, BodyFormat::Json).unwrap();
        prop_assert_eq!(batch.seq, seq);
        prop_assert_eq!(batch.lines.len(), lines.len());
        for (got, (stream, text, ts)) in batch.lines.iter().zip(&lines) {
            prop_assert_eq!(got.stream, *stream);
            prop_assert_eq!(got.text.as_ref(), text.as_str());
            prop_assert_eq!(got.ts, *ts);
        }
        fuzzing::batch(&body);
    }

    #[test]
    fn malformed_json_batches_are_refused_as_client_errors(body in json_body()) {
        fuzzing::batch(body.as_bytes());
    }

    #[test]
    fn id_text_in_queries_passes_the_fuzz_check(
        parts in prop::collection::vec(prop_oneof![
            "[0-9]{1,21}-[0-9]{1,21}",
            "[A-Za-z0-9_-]{1,130}",
            "[0-9+-]{0,6}",
            ".{0,10}",
        ], 0..6),
    ) {
        fuzzing::ids(parts.join("&").as_bytes());
    }
}

/// Build output with markers in it: groups, GitLab sections (with and without their
/// erase escapes), masks of token-like values and the same values in later text.
fn marked_output() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[ -~]{0,12}",
        Just("\n".to_owned()),
        Just("\n::group::".to_owned()),
        Just("\n::endgroup::".to_owned()),
        Just("\n  ::add-mask::".to_owned()),
        Just("\n\u{1b}[0Ksection_start:1700000000:".to_owned()),
        Just("\nsection_end:1700000001:".to_owned()),
        Just("[collapsed=true]".to_owned()),
        Just("\r\u{1b}[0K".to_owned()),
        Just("\u{1b}[36;1m".to_owned()),
        Just("tok-9f8e7d6c".to_owned()),
        Just("pass%25word".to_owned()),
        Just("pass%word".to_owned()),
        Just("-----BEGIN PRIVATE KEY-----".to_owned()),
        Just("-----END PRIVATE KEY-----".to_owned()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn markers_give_the_same_entries_however_a_log_is_split_and_masks_hold(
        text in marked_output(),
    ) {
        fuzzing::markers(text.as_bytes());
    }
}
