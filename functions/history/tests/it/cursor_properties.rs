//! Property tests of the page query's parsers (`?limit&before&after`): any text is
//! answered (a page or a 400), never a panic; a cursor is accepted exactly when it is
//! an entry id, and `limit` is clamped to 1..=500. The id inputs the fuzzer kept
//! (`fuzz/corpus/ids/`) are replayed through them too.

use http::StatusCode;
use logstream_core::ids::EntryId;
use logstream_history::{DEFAULT_LIMIT, MAX_LIMIT, PageQuery};
use logstream_shared::store::Cursor;
use proptest::prelude::*;

/// Checks one query against the rules above.
/// What the SPEC says a `limit` means: a whole number above 0 (of any size; above 500
/// is 500), or a 400 (`None`). Written with big-integer-free arithmetic of its own.
fn expected_limit(raw: &str) -> Option<usize> {
    let raw = raw.trim();
    let raw = raw.strip_prefix('+').unwrap_or(raw);
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: usize = 0;
    for d in raw.bytes() {
        n = (n * 10 + usize::from(d - b'0')).min(MAX_LIMIT + 1);
    }
    (n > 0).then(|| n.min(MAX_LIMIT))
}

fn check(limit: Option<&str>, before: Option<&str>, after: Option<&str>) {
    let query = PageQuery {
        limit: limit.map(str::to_owned),
        before: before.map(str::to_owned),
        after: after.map(str::to_owned),
        ..PageQuery::default()
    };
    match (query.limit(), limit) {
        (Ok(n), None) => assert_eq!(n, DEFAULT_LIMIT),
        (Ok(n), Some(raw)) => assert_eq!(Some(n), expected_limit(raw), "{raw:?}"),
        (Err(e), Some(raw)) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(expected_limit(raw), None, "{raw:?} refused");
        }
        (Err(e), None) => panic!("no limit refused: {}", e.code),
    }
    let id = |raw: &str| raw.parse::<EntryId>().ok();
    match (query.cursor(), before, after) {
        (Ok(Cursor::Latest), None, None) => {}
        (Ok(Cursor::Before(got)), Some(raw), None) => assert_eq!(Some(got), id(raw)),
        (Ok(Cursor::After(got)), None, Some(raw)) => assert_eq!(Some(got), id(raw)),
        (Ok(cursor), ..) => panic!("{cursor:?} from before={before:?} after={after:?}"),
        (Err(e), Some(_), Some(_)) => assert_eq!(e.code, "invalid_cursor"),
        (Err(e), Some(raw), None) | (Err(e), None, Some(raw)) => {
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_cursor")
            );
            assert!(id(raw).is_none(), "refused the id {raw:?}");
        }
        (Err(e), None, None) => panic!("no cursor refused: {}", e.code),
    }
}

fn text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[0-9]{1,21}-[0-9]{1,21}",
        " ?-?[0-9]{1,20} ?",
        "[0-9+ -]{0,8}",
        ".{0,12}",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_page_query_is_a_page_or_a_400(limit in text(), before in text(), after in text()) {
        check(limit.as_deref(), before.as_deref(), after.as_deref());
    }
}

#[test]
fn the_fuzzers_id_inputs_parse_as_cursors_by_the_rules() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ids");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/ids") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&data);
        for piece in std::iter::once(text.as_ref()).chain(text.split(['&', '=', '/', ' ', '\n'])) {
            check(Some(piece), Some(piece), None);
            check(None, None, Some(piece));
            n += 1;
        }
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}

#[test]
fn a_limit_of_any_size_above_500_is_500() {
    for raw in [
        "501",
        "9223372036854775808",
        "18446744073709551616",
        &"9".repeat(400),
    ] {
        check(Some(raw), None, None);
        let query = PageQuery {
            limit: Some(raw.to_owned()),
            ..PageQuery::default()
        };
        assert_eq!(query.limit().unwrap(), MAX_LIMIT, "{raw}");
    }
}
