//! The RS256 keys of a JWKS: given inline or fetched from a URL on first use, cached,
//! refetched (rate-limited, one fetch at a time) only for an unknown `kid`. See the
//! module doc of [`super::jwt`] for the decisions behind it.

use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;

use super::jwt::JwtError;

/// A viewer is waiting while we fetch, so give up quickly and answer 503 instead.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A real JWKS is a few KiB. This limit stops a broken endpoint from filling our memory.
pub(super) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// JWKS writers do not agree on padding for `n` and `e`, so both forms are accepted.
const B64URL_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The HTTP client JWKS fetches use, built on first use: building a client loads the
/// TLS roots, a cost a cold start should not pay when it may never fetch a JWKS (HS256
/// tokens, an inline JWKS, or keys fetched later). Clones share one client.
#[derive(Clone, Default)]
pub struct HttpClient(Arc<OnceLock<reqwest::Client>>);

impl HttpClient {
    /// A client made with `reqwest::Client::new()` the first time it is needed.
    pub fn lazy() -> Self {
        Self::default()
    }

    pub(super) fn get(&self) -> &reqwest::Client {
        self.0.get_or_init(reqwest::Client::new)
    }
}

impl From<reqwest::Client> for HttpClient {
    fn from(client: reqwest::Client) -> Self {
        Self(Arc::new(OnceLock::from(client)))
    }
}

/// The RS256 keys and, for a URL source, the state of fetching them.
pub(super) struct KeyStore {
    pub(super) origin: KeyOrigin,
    /// Read on every verification. It is never held across an `.await`.
    cache: RwLock<KeySet>,
    /// Held for the whole of a fetch, so only one fetch runs at a time. Verifications that queue
    /// behind it see the new generation and do not fetch again.
    fetch: tokio::sync::Mutex<FetchState>,
}

pub(super) enum KeyOrigin {
    Inline,
    Url { url: reqwest::Url, http: HttpClient },
}

#[derive(Default)]
pub(super) struct KeySet {
    keys: Vec<RsaKey>,
    /// Goes up by one on each successful load. 0 means the keys were never loaded.
    generation: u64,
}

pub(super) struct RsaKey {
    kid: Option<String>,
    key: Arc<DecodingKey>,
}

#[derive(Default)]
pub(super) struct FetchState {
    /// When the last fetch started, successful or not. This is the basis of the rate limit.
    last_attempt: Option<Instant>,
    /// Why the last fetch failed, or `None` if it succeeded.
    last_error: Option<String>,
}

impl KeySet {
    pub(super) fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        let found = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            // Without a `kid`, the only safe choice is the only key.
            None => match self.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        };
        found.map(|k| Arc::clone(&k.key))
    }
}

impl KeyStore {
    pub(super) fn inline(keys: Vec<RsaKey>) -> Self {
        Self {
            origin: KeyOrigin::Inline,
            cache: RwLock::new(KeySet {
                keys,
                generation: 1,
            }),
            fetch: tokio::sync::Mutex::default(),
        }
    }

    pub(super) fn remote(url: reqwest::Url, http: HttpClient) -> Self {
        Self {
            origin: KeyOrigin::Url { url, http },
            cache: RwLock::default(),
            fetch: tokio::sync::Mutex::default(),
        }
    }

    // The cache is only ever replaced whole, so a panic in another thread cannot leave it half
    // written. That makes it safe to ignore poisoning.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, KeySet> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, KeySet> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn key_for(
        &self,
        kid: Option<&str>,
        refetch_every: Duration,
    ) -> Result<Arc<DecodingKey>, JwtError> {
        let seen = {
            let set = self.read();
            if let Some(key) = set.find(kid) {
                return Ok(key);
            }
            set.generation
        };
        let KeyOrigin::Url { url, http } = &self.origin else {
            return Err(JwtError::UnknownKey);
        };
        self.refresh(url, http, seen, refetch_every).await?;
        self.read().find(kid).ok_or(JwtError::UnknownKey)
    }

    /// Fetches the JWKS again, unless another task already did so since generation `seen`, or
    /// unless the last attempt is more recent than `every`. This fails only when no keys have
    /// ever been loaded.
    pub(super) async fn refresh(
        &self,
        url: &reqwest::Url,
        http: &HttpClient,
        seen: u64,
        every: Duration,
    ) -> Result<(), JwtError> {
        let mut state = self.fetch.lock().await;
        if self.read().generation != seen {
            // Keys were loaded while this task waited for the lock. The caller looks again.
            return Ok(());
        }
        let rate_limited = state
            .last_attempt
            .is_some_and(|last| last.elapsed() < every);
        if !rate_limited {
            state.last_attempt = Some(Instant::now());
            match fetch_jwks(http.get(), url).await {
                Ok(keys) => {
                    tracing::debug!(keys = keys.len(), "fetched the JWKS");
                    let mut set = self.write();
                    set.keys = keys;
                    set.generation += 1;
                    state.last_error = None;
                    return Ok(());
                }
                Err(reason) => {
                    tracing::warn!(%url, %reason, "JWKS fetch failed");
                    state.last_error = Some(reason);
                }
            }
        }
        if self.read().generation == 0 {
            let reason = state
                .last_error
                .clone()
                .unwrap_or_else(|| "the JWKS has not been fetched".to_owned());
            return Err(JwtError::KeysUnavailable(reason));
        }
        // Otherwise, keep the keys we have.
        Ok(())
    }
}

async fn fetch_jwks(http: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<RsaKey>, String> {
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|err| error_chain(&err))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the JWKS endpoint answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| error_chain(&err))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the JWKS document is over {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let keys =
        parse_jwks(&body).map_err(|err| format!("the JWKS document does not parse: {err}"))?;
    if keys.is_empty() {
        return Err("the JWKS has no usable RSA signing key".to_owned());
    }
    Ok(keys)
}

/// reqwest's top-level message ("error sending request") hides the cause, such as connection
/// refused or a timeout, so the whole chain goes into the log.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Deserialize)]
pub(super) struct JwksDocument {
    keys: Vec<Value>,
}

/// The JWK fields we look at. Unknown fields are ignored.
#[derive(Deserialize)]
pub(super) struct JwkFields {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Parses a JWKS document and keeps the keys that can verify RS256 tokens. An error means the
/// document itself is wrong. A key that cannot be used is skipped instead, because real JWKS
/// documents mix key types.
pub(super) fn parse_jwks(doc: &[u8]) -> Result<Vec<RsaKey>, serde_json::Error> {
    let doc: JwksDocument = serde_json::from_slice(doc)?;
    Ok(doc.keys.into_iter().filter_map(usable_rsa_key).collect())
}

pub(super) fn usable_rsa_key(raw: Value) -> Option<RsaKey> {
    let jwk: JwkFields = serde_json::from_value(raw).ok()?;
    let usable = jwk.kty == "RSA"
        && jwk.use_.as_deref().is_none_or(|u| u == "sig")
        // A key published for another algorithm (such as PS256) must not verify RS256 tokens.
        && jwk.alg.as_deref().is_none_or(|a| a == "RS256");
    if !usable {
        tracing::debug!(kid = ?jwk.kid, kty = %jwk.kty, "skipping a JWKS key that cannot verify RS256");
        return None;
    }
    let n = B64URL_ANY_PADDING.decode(jwk.n?).ok()?;
    let e = B64URL_ANY_PADDING.decode(jwk.e?).ok()?;
    // Some encoders write a sign byte of 0 before the modulus; it carries no value.
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    if n.is_empty() || e.is_empty() {
        return None;
    }
    // The key size is not checked here. aws-lc refuses to verify with keys under 2048 bits, so
    // such a key yields `BadSignature`.
    Some(RsaKey {
        kid: jwk.kid,
        key: Arc::new(DecodingKey::from_rsa_raw_components(n, e)),
    })
}

pub(super) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}
