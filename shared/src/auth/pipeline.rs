//! Pipeline-side credentials: the deployment's ingest key and per-job ingest tokens.
//!
//! Tokens are random 256-bit values; Redis keeps only their SHA-256, so a dump of the
//! meta hashes does not hand out write access. Both checks compare SHA-256 digests in
//! constant time, so neither the key's length nor a matching prefix leaks through
//! timing. Viewer-side JWTs live in [`super::jwt`].

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use logstream_core::ids::{hex, random_hex};

/// A fresh per-job ingest token.
pub fn new_ingest_token() -> String {
    format!("lst_{}", random_hex(32))
}

/// The SHA-256 of a token, hex: what Redis stores.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Whether `presented` is the token whose hash is `stored_hash` (constant time).
pub fn token_matches(presented: &str, stored_hash: &str) -> bool {
    token_hash_matches(&token_hash(presented), stored_hash)
}

/// Whether a presented token's hash ([`token_hash`]) is `stored_hash` (constant time).
pub fn token_hash_matches(presented_hash: &str, stored_hash: &str) -> bool {
    presented_hash.len() == stored_hash.len()
        && bool::from(presented_hash.as_bytes().ct_eq(stored_hash.as_bytes()))
}

/// The deployment's ingest key, held as its digest.
#[derive(Clone)]
pub struct IngestKey([u8; 32]);

impl IngestKey {
    pub fn new(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `presented` is the key (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for IngestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestKey(***)")
    }
}

/// The token of an `Authorization: Bearer …` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_key_matches_only_itself() {
        let key = IngestKey::new("a-very-long-ingest-key");
        assert!(key.matches("a-very-long-ingest-key"));
        assert!(!key.matches("a-very-long-ingest-ke"));
        assert!(!key.matches(""));
        assert_eq!(format!("{key:?}"), "IngestKey(***)");
    }

    #[test]
    fn job_tokens_are_random_and_checked_by_hash() {
        let a = new_ingest_token();
        let b = new_ingest_token();
        assert_ne!(a, b);
        assert!(a.starts_with("lst_") && a.len() == 68);
        let stored = token_hash(&a);
        assert!(token_matches(&a, &stored));
        assert!(!token_matches(&b, &stored));
        assert!(!token_matches(&a, ""));
    }

    #[test]
    fn bearer_reads_the_scheme_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
