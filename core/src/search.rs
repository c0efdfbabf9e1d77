//! Search in a log (`GET /jobs/{id}/logs?q=`): `line` entries whose `text` contains
//! the query, literally and ignoring case.
//!
//! An ASCII query (most: a test name, `error`, a path) is matched with an ASCII
//! case-insensitive automaton straight over the text, without lowering a copy of every
//! line; a query with other characters lowers both sides with Unicode's full case
//! mapping.

use aho_corasick::AhoCorasick;

use crate::model::StoredEntry;

/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;

/// Why a query cannot be searched for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("q must not be empty")]
    Empty,
    #[error("q is longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
}

/// A compiled search.
#[derive(Debug, Clone)]
pub struct Query {
    how: How,
}

#[derive(Debug, Clone)]
enum How {
    Ascii(AhoCorasick),
    Unicode(String),
}

impl Query {
    /// The search for `q`: 1 to [`MAX_QUERY_BYTES`] bytes.
    pub fn new(q: &str) -> Result<Self, QueryError> {
        if q.is_empty() {
            return Err(QueryError::Empty);
        }
        if q.len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong);
        }
        let how = if q.is_ascii() {
            match AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build([q])
            {
                Ok(automaton) => How::Ascii(automaton),
                Err(_) => How::Unicode(q.to_lowercase()),
            }
        } else {
            How::Unicode(q.to_lowercase())
        };
        Ok(Self { how })
    }

    /// Whether `text` contains the query, ignoring case.
    pub fn matches_text(&self, text: &str) -> bool {
        match &self.how {
            How::Ascii(automaton) => automaton.is_match(text),
            How::Unicode(lower) => text.to_lowercase().contains(lower.as_str()),
        }
    }

    /// Whether `entry` is a `line` whose text contains the query.
    pub fn matches(&self, entry: &StoredEntry) -> bool {
        crate::raw::line_text(&entry.json).is_some_and(|(text, _)| self.matches_text(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EntryId;

    fn line(text: &str) -> StoredEntry {
        StoredEntry {
            id: EntryId { ms: 1, seq: 0 },
            json: serde_json::json!({"n": 1, "ts": 1, "kind": "line", "stream": "stdout", "text": text})
                .to_string(),
        }
    }

    #[test]
    fn queries_are_one_to_256_bytes() {
        assert_eq!(Query::new("").unwrap_err(), QueryError::Empty);
        assert!(Query::new(&"a".repeat(256)).is_ok());
        assert_eq!(
            Query::new(&"a".repeat(257)).unwrap_err(),
            QueryError::TooLong
        );
    }

    #[test]
    fn matching_is_literal_and_ignores_case() {
        let q = Query::new("Error:").unwrap();
        assert!(q.matches(&line("npm ERR! error: ENOENT")));
        assert!(q.matches(&line("ERROR: x")));
        assert!(!q.matches(&line("errors x")));
        let dots = Query::new("a.b*").unwrap();
        assert!(dots.matches(&line("see A.B* here")));
        assert!(!dots.matches(&line("see axbb here")));
    }

    #[test]
    fn escaped_text_is_searched_as_the_reader_sees_it() {
        let q = Query::new("say \"hi\"\\").unwrap();
        assert!(q.matches(&line("they say \"HI\"\\ now")));
        assert!(Query::new("\t").unwrap().matches(&line("a\tb")));
    }

    #[test]
    fn non_ascii_queries_fold_unicode_case() {
        let q = Query::new("ÉCHEC").unwrap();
        assert!(q.matches(&line("test échec: 3")));
        assert!(
            Query::new("straße")
                .unwrap()
                .matches(&line("STRASSE Straße"))
        );
        assert!(!q.matches(&line("echec")));
    }

    #[test]
    fn only_lines_match() {
        let q = Query::new("build").unwrap();
        let stage = StoredEntry {
            id: EntryId { ms: 1, seq: 0 },
            json: r#"{"n":1,"ts":1,"kind":"stage","name":"build","status":"started"}"#.into(),
        };
        assert!(!q.matches(&stage));
        assert!(!q.matches(&StoredEntry {
            id: EntryId { ms: 1, seq: 0 },
            json: "not json".into(),
        }));
    }
}
