//! Viewer authentication: checks the JWT that a browser sends before it may read build logs
//! (plain HTTP, SSE or WebSocket) and turns it into a [`Viewer`].
//!
//! A token can be trusted in two ways:
//! - **RS256 with a JWKS**, for production with Clerk-style session tokens. The public keys come
//!   from a URL (`LOGSTREAM_JWKS_URL`) or from the JWKS document given inline
//!   (`LOGSTREAM_JWKS_JSON`). The inline form lets a Lambda inside a VPC run with no NAT gateway
//!   and no outbound calls at all.
//! - **HS256 with a shared secret** (`LOGSTREAM_JWT_SECRET`), for local use.
//!
//! Decisions that a reader might question:
//! - **Algorithm.** The header's `alg` picks the key, but only RS256 (needs a JWKS) and HS256
//!   (needs the secret) are accepted, and each is tied to its own key. So an RS256 public key
//!   can never be used as an HMAC secret, or the other way round: that is the classic algorithm
//!   confusion attack. `none` and everything else get [`JwtError::UnsupportedAlgorithm`].
//! - **Leeway is 10 s, not jsonwebtoken's default of 60 s.** Clerk session tokens live about
//!   60 s, so a 60 s leeway would double their lifetime. 10 s still covers normal clock skew.
//!   `nbf` is checked when it is present (jsonwebtoken skips it by default), with the same leeway.
//! - **Audience: `aud` or `azp`.** Clerk session tokens carry `azp` (the frontend origin that
//!   asked for the token) and usually no `aud`. So when an audience is configured, a token passes
//!   if its `aud` (a string or an array) contains it, *or* if its `azp` equals it. When no
//!   audience is configured, `aud` is ignored. (jsonwebtoken's default would reject every token
//!   that has an `aud` in that case.)
//! - **`iss` must be a string equal to the configured issuer.** An array does not count.
//! - **The JWKS URL is not fetched at start.** This keeps cold starts fast. The first token
//!   fetches the keys, which are then cached in memory.
//! - **A refetch happens only for an unknown `kid`.** It happens at most once per refetch
//!   interval (10 s by default) and only one fetch runs at a time. So tokens with made-up `kid`s
//!   cost the JWKS host at most one request per interval, and viewers who arrive together at a
//!   cold start share one fetch. After key rotation, a token signed with the new key can be
//!   rejected for up to one interval; the client simply retries.
//! - **A failed fetch keeps the keys we already have.** Only when there are no keys at all is the
//!   result [`JwtError::KeysUnavailable`]. That is our outage rather than the viewer's fault, so
//!   the caller answers 503, not 401. Failed attempts are rate-limited too, so a JWKS outage
//!   does not make every request wait on a 3 s timeout.
//! - **Cached keys do not expire on their own.** A key removed from the JWKS stays trusted until
//!   the process restarts, or until a refetch (triggered by an unknown `kid`) replaces the set.
//!   Lambda instances are short-lived, so a timed refresh would add little.
//! - **Error messages are fixed, short strings.** They never contain the token, so it is safe to
//!   show them to a client. The fetch failure detail in `KeysUnavailable` is logged and kept in
//!   the variant, but it is left out of the message.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

pub use super::jwks::HttpClient;
use super::jwks::{KeyOrigin, KeyStore, parse_jwks};

/// Allowed clock skew for `exp` and `nbf`, in seconds (see the module docs for why it is 10).
const LEEWAY_SECS: u64 = 10;
/// Default minimum time between two JWKS fetches.
const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clerk tokens are about 1 KiB. Anything much larger is not a token we issued, so it is
/// rejected before any base64 or JSON work is done on it.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where RS256 public keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS URL (`LOGSTREAM_JWKS_URL`). It is fetched when the first token arrives and again
    /// when a token names a `kid` we do not know.
    Url(String),
    /// The text of the JWKS JSON document (`LOGSTREAM_JWKS_JSON`). It is parsed once at start and
    /// never refetched.
    Inline(String),
}

/// Viewer-token settings. The caller reads them once at start.
#[derive(Clone, Default)]
pub struct JwtSettings {
    /// Shared secret for HS256 tokens (`LOGSTREAM_JWT_SECRET`), for local use.
    pub hs256_secret: Option<String>,
    /// Source of the public keys for RS256 tokens.
    pub jwks: Option<JwksSource>,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` (a string or an array) must contain it, or `azp` must equal it. Clerk
    /// session tokens carry `azp`, not `aud`.
    pub audience: Option<String>,
    /// The claim holding the viewer's organisation (`LOGSTREAM_JWT_ORG_CLAIM`): a name,
    /// or a dotted path into nested objects (`o.id`, Clerk's v2 session tokens).
    /// `None` means [`DEFAULT_ORG_CLAIM`].
    pub org_claim: Option<String>,
    /// The secret share links are signed with (`LOGSTREAM_SHARE_SECRET`); without it
    /// there are no share links.
    pub share_secret: Option<String>,
}

/// The claim read for the viewer's organisation without `LOGSTREAM_JWT_ORG_CLAIM`.
pub const DEFAULT_ORG_CLAIM: &str = "org_id";

impl fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSettings")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks", &self.jwks.as_ref().map(JwksSummary))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("org_claim", &self.org_claim)
            .field(
                "share_secret",
                &self.share_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Debug form of a [`JwksSource`] that prints the size of an inline document, not its text.
struct JwksSummary<'a>(&'a JwksSource);

impl fmt::Debug for JwksSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            JwksSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
            JwksSource::Inline(doc) => write!(f, "Inline({} bytes)", doc.len()),
        }
    }
}

/// The authenticated viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The token's `sub`: the user id.
    pub user: String,
    /// When the token expires (its `exp`), in milliseconds since the epoch: open
    /// streams end then, and the client comes back with a fresh token.
    pub expires_at_ms: Option<u64>,
    /// The viewer's organisation (the org claim, when it is a non-empty string): it
    /// reads the jobs of that org as their owners do.
    pub org: Option<String>,
    /// A share link's grant: the one job this viewer reads, and the job's share
    /// generation it was verified under (see `super::share`).
    pub share: Option<super::share::Grant>,
}

/// Why [`ViewerAuth::new`] refused the settings. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    /// Neither a secret nor a JWKS was given.
    #[error(
        "no way to verify viewer tokens: set LOGSTREAM_JWKS_URL or LOGSTREAM_JWKS_JSON (RS256), \
         or LOGSTREAM_JWT_SECRET (HS256)"
    )]
    NothingConfigured,
    /// The HS256 secret is the empty string.
    #[error("LOGSTREAM_JWT_SECRET is empty")]
    EmptySecret,
    /// The JWKS URL is not an http(s) URL.
    #[error("LOGSTREAM_JWKS_URL is not a valid http(s) URL: {0}")]
    BadJwksUrl(String),
    /// The inline JWKS is not a JSON object with a `keys` array.
    #[error("LOGSTREAM_JWKS_JSON is not a JWKS document: {0}")]
    BadInlineJwks(String),
    /// The share secret is too short to sign with.
    #[error("LOGSTREAM_SHARE_SECRET must be at least 32 bytes")]
    ShortShareSecret,
    /// The org claim's path has an empty part.
    #[error("LOGSTREAM_JWT_ORG_CLAIM {0:?} is not a claim name or a dotted path of names")]
    BadOrgClaim(String),
    /// The inline JWKS parsed, but none of its keys can verify RS256 signatures.
    #[error(
        "LOGSTREAM_JWKS_JSON has no usable RSA signing key (needs kty \"RSA\", use \"sig\" or absent)"
    )]
    NoUsableInlineKey,
}

/// Why a viewer token was rejected. The messages are short, fixed strings that are safe to show
/// to a client. They never echo the token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT: wrong shape, bad base64 or JSON, too long, no `exp`, or empty.
    #[error("malformed token")]
    Malformed,
    /// `exp` is more than the leeway in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is more than the leeway in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// The signature does not match the key.
    #[error("invalid token signature")]
    BadSignature,
    /// No key in the JWKS matches the token's `kid`, even after a refetch.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// `iss` is missing or is not the configured issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// Neither `aud` nor `azp` matches the configured audience.
    #[error("token audience not accepted")]
    WrongAudience,
    /// `sub` is missing, empty or not a string.
    #[error("token has no subject")]
    MissingSubject,
    /// `alg` is not a configured algorithm: RS256 needs a JWKS and HS256 needs the secret.
    #[error("token algorithm not accepted")]
    UnsupportedAlgorithm,
    /// The JWKS could not be fetched, and no keys are cached: the caller answers 503, not 401.
    /// The field holds the reason, for logs. It is not part of the message.
    #[error("signing keys unavailable")]
    KeysUnavailable(String),
}

/// Verifies viewer JWTs. Clone is cheap (there is an `Arc` inside). Build it once per process.
#[derive(Clone)]
pub struct ViewerAuth {
    inner: Arc<Inner>,
    /// Lives outside the `Arc` so that [`ViewerAuth::with_refetch_interval`] never has to
    /// mutate shared state.
    refetch_every: Duration,
}

struct Inner {
    hs256: Option<Arc<DecodingKey>>,
    rs256: Option<KeyStore>,
    issuer: Option<String>,
    audience: Option<String>,
    /// The org claim's path, one name per level.
    org_path: Vec<String>,
    /// Share links' signer, when a share secret is set.
    share: Option<super::share::ShareSigner>,
    hs256_rules: Validation,
    rs256_rules: Validation,
}

impl ViewerAuth {
    /// Checks the settings and prepares the keys.
    ///
    /// This fails (with [`JwtSetupError`]) when neither an HS256 secret nor a JWKS is given, when
    /// the secret is empty or the JWKS URL is not http(s), or when an inline JWKS does not parse
    /// or has no usable RSA key. It does **not** fetch a JWKS URL: cold starts must stay fast,
    /// so the first token fetches it. `http` is used for those fetches; each fetch sets its own
    /// timeout of about 3 s.
    pub fn new(settings: JwtSettings, http: impl Into<HttpClient>) -> Result<Self, JwtSetupError> {
        let http = http.into();
        let JwtSettings {
            hs256_secret,
            jwks,
            issuer,
            audience,
            org_claim,
            share_secret,
        } = settings;
        let share = match share_secret {
            Some(secret) if secret.len() < 32 => return Err(JwtSetupError::ShortShareSecret),
            Some(secret) => Some(super::share::ShareSigner::new(&secret)),
            None => None,
        };
        let org_claim = org_claim.unwrap_or_else(|| DEFAULT_ORG_CLAIM.to_owned());
        let org_path: Vec<String> = org_claim.split('.').map(str::to_owned).collect();
        if org_path.iter().any(|part| part.trim().is_empty()) {
            return Err(JwtSetupError::BadOrgClaim(org_claim));
        }

        let hs256 = match hs256_secret {
            None => None,
            Some(secret) if secret.is_empty() => return Err(JwtSetupError::EmptySecret),
            Some(secret) => {
                if secret.len() < 32 {
                    tracing::warn!(
                        "LOGSTREAM_JWT_SECRET is shorter than 32 bytes: acceptable for local use only"
                    );
                }
                Some(Arc::new(DecodingKey::from_secret(secret.as_bytes())))
            }
        };

        let rs256 = match jwks {
            None => None,
            Some(JwksSource::Url(url)) => Some(KeyStore::remote(parse_jwks_url(&url)?, http)),
            Some(JwksSource::Inline(doc)) => {
                let keys = parse_jwks(doc.as_bytes())
                    .map_err(|err| JwtSetupError::BadInlineJwks(err.to_string()))?;
                if keys.is_empty() {
                    return Err(JwtSetupError::NoUsableInlineKey);
                }
                Some(KeyStore::inline(keys))
            }
        };

        if hs256.is_none() && rs256.is_none() {
            return Err(JwtSetupError::NothingConfigured);
        }

        Ok(Self {
            inner: Arc::new(Inner {
                hs256,
                rs256,
                issuer,
                audience,
                org_path,
                share,
                hs256_rules: validation_rules(Algorithm::HS256),
                rs256_rules: validation_rules(Algorithm::RS256),
            }),
            refetch_every: DEFAULT_REFETCH_INTERVAL,
        })
    }

    /// Share links' signer; `None` when `LOGSTREAM_SHARE_SECRET` is not set.
    pub fn share_signer(&self) -> Option<&super::share::ShareSigner> {
        self.inner.share.as_ref()
    }

    /// Sets the minimum time between two JWKS refetches that unknown `kid`s trigger (10 s by
    /// default). Tests set it low.
    pub fn with_refetch_interval(mut self, every: Duration) -> Self {
        self.refetch_every = every;
        self
    }

    /// Verifies a viewer token and returns the viewer named by its `sub`.
    ///
    /// Whitespace around the token is ignored. An RS256 token may fetch the JWKS (see the module
    /// docs). That is the only case in which this call waits on the network.
    pub async fn verify(&self, token: &str) -> Result<Viewer, JwtError> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let header = read_header(token)?;
        let inner = &*self.inner;

        // Each algorithm has exactly one kind of key. This match is what prevents algorithm
        // confusion; jsonwebtoken's own algorithm check below is a second line of defence.
        let (key, rules) = match header.alg.as_str() {
            "RS256" => {
                let store = inner.rs256.as_ref().ok_or(JwtError::UnsupportedAlgorithm)?;
                let key = store
                    .key_for(header.kid.as_deref(), self.refetch_every)
                    .await?;
                (key, &inner.rs256_rules)
            }
            "HS256" => {
                let key = inner.hs256.as_ref().ok_or(JwtError::UnsupportedAlgorithm)?;
                (Arc::clone(key), &inner.hs256_rules)
            }
            _ => return Err(JwtError::UnsupportedAlgorithm),
        };

        // This checks the signature, then `exp` and `nbf`. The remaining claims are checked
        // below, only after the signature has been shown to be good.
        let data = jsonwebtoken::decode::<Claims>(token, &key, rules).map_err(map_decode_error)?;
        inner.check_claims(data.claims)
    }
}

impl fmt::Debug for ViewerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jwks = self.inner.rs256.as_ref().map(|store| match &store.origin {
            KeyOrigin::Inline => "inline".to_owned(),
            KeyOrigin::Url { url, .. } => url.to_string(),
        });
        f.debug_struct("ViewerAuth")
            .field("hs256", &self.inner.hs256.is_some())
            .field("jwks", &jwks)
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("refetch_every", &self.refetch_every)
            .finish()
    }
}

/// The signature and time checks that jsonwebtoken performs for one algorithm. `iss`, `aud` and
/// `sub` are checked by [`Inner::check_claims`] instead, because our rules differ from its
/// rules: `aud` or `azp`, and an exact string `iss`.
fn validation_rules(alg: Algorithm) -> Validation {
    let mut rules = Validation::new(alg);
    rules.leeway = LEEWAY_SECS;
    rules.validate_exp = true;
    rules.validate_nbf = true;
    rules.validate_aud = false;
    rules.set_required_spec_claims(&["exp"]);
    rules
}

fn parse_jwks_url(url: &str) -> Result<reqwest::Url, JwtSetupError> {
    let url = reqwest::Url::parse(url.trim())
        .map_err(|err| JwtSetupError::BadJwksUrl(err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(JwtSetupError::BadJwksUrl(
            "the scheme must be http or https".to_owned(),
        ));
    }
    Ok(url)
}

/// The header fields we need. `alg` is read as a string so that `none` and other algorithms that
/// jsonwebtoken does not know give `UnsupportedAlgorithm` rather than `Malformed`.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn read_header(token: &str) -> Result<TokenHeader, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)
}

/// The claims we check ourselves. They are loose `Value`s, so that a claim of the wrong type
/// gives the matching error (for example `MissingSubject`) rather than `Malformed`.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    azp: Option<Value>,
    /// Checked by jsonwebtoken already; kept for when open streams must end.
    #[serde(default)]
    exp: Option<Value>,
    /// Every other claim: where the org claim is looked up.
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl Inner {
    fn check_claims(&self, claims: Claims) -> Result<Viewer, JwtError> {
        if let Some(issuer) = &self.issuer
            && claims.iss.as_ref().and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(JwtError::WrongIssuer);
        }

        if let Some(audience) = &self.audience {
            let in_aud = match &claims.aud {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds
                    .iter()
                    .any(|aud| aud.as_str() == Some(audience.as_str())),
                _ => false,
            };
            let is_azp = claims.azp.as_ref().and_then(Value::as_str) == Some(audience.as_str());
            if !in_aud && !is_azp {
                return Err(JwtError::WrongAudience);
            }
        }

        let (first, deeper) = self
            .org_path
            .split_first()
            .map_or(("", &[][..]), |(first, rest)| (first.as_str(), rest));
        let org = deeper
            .iter()
            .try_fold(claims.rest.get(first), |value, part| {
                Some(value?.as_object()?.get(part.as_str()))
            })
            .flatten()
            .and_then(Value::as_str)
            .filter(|org| !org.trim().is_empty())
            .map(str::to_owned);
        match claims.sub {
            Some(Value::String(user)) if !user.trim().is_empty() => Ok(Viewer {
                user,
                org,
                share: None,
                expires_at_ms: claims
                    .exp
                    .as_ref()
                    .and_then(Value::as_f64)
                    .filter(|exp| exp.is_finite() && *exp >= 0.0)
                    .map(|exp| (exp * 1000.0) as u64),
            }),
            _ => Err(JwtError::MissingSubject),
        }
    }
}

fn map_decode_error(err: jsonwebtoken::errors::Error) -> JwtError {
    match err.kind() {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => JwtError::UnsupportedAlgorithm,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidSubject => JwtError::MissingSubject,
        ErrorKind::InvalidToken
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => JwtError::Malformed,
        // This covers key problems (a JWKS entry that aws-lc cannot use) and any kinds added
        // later. The token was not verified, so reject it.
        _ => JwtError::BadSignature,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::http::header::CONTENT_TYPE;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    use super::*;

    const RSA_A: &str = include_str!("../../tests/fixtures/jwt/rsa-a.pem");
    const RSA_B: &str = include_str!("../../tests/fixtures/jwt/rsa-b.pem");
    const JWKS_A: &str = include_str!("../../tests/fixtures/jwt/jwks-a.json");
    const JWKS_AB: &str = include_str!("../../tests/fixtures/jwt/jwks-ab.json");

    const ISSUER: &str = "https://clerk.logstream.test";
    const FRONTEND: &str = "https://app.logstream.test";
    const SECRET: &str = "local-development-secret-0123456789";

    // ---- a JWKS endpoint over real HTTP ----

    struct ServerState {
        /// The document served. An empty string makes the endpoint answer 500.
        doc: Mutex<String>,
        fetches: AtomicUsize,
    }

    struct JwksServer {
        url: String,
        state: Arc<ServerState>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(doc: &str) -> Self {
            let state = Arc::new(ServerState {
                doc: Mutex::new(doc.to_owned()),
                fetches: AtomicUsize::new(0),
            });
            let app = Router::new()
                .route("/.well-known/jwks.json", get(serve_jwks))
                .with_state(Arc::clone(&state));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/.well-known/jwks.json",
                listener.local_addr().unwrap()
            );
            let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Self { url, state, task }
        }

        fn serve(&self, doc: &str) {
            *self.state.doc.lock().unwrap() = doc.to_owned();
        }

        fn fetches(&self) -> usize {
            self.state.fetches.load(Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve_jwks(State(state): State<Arc<ServerState>>) -> Response {
        state.fetches.fetch_add(1, Ordering::SeqCst);
        let doc = state.doc.lock().unwrap().clone();
        if doc.is_empty() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        ([(CONTENT_TYPE, "application/json")], doc).into_response()
    }

    // ---- tokens and verifiers ----

    fn now() -> u64 {
        get_current_timestamp()
    }

    /// Claims shaped like a Clerk session token: `azp` but no `aud`.
    fn claims() -> Value {
        json!({
            "sub": "user_2abc",
            "iss": ISSUER,
            "azp": FRONTEND,
            "iat": now(),
            "nbf": now() - 5,
            "exp": now() + 60,
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    fn rs256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn hmac(alg: Algorithm, secret: &str, claims: &Value) -> String {
        encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// A token with a hand-written header, for algorithms that we cannot or will not sign.
    fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            signature
        )
    }

    fn http() -> reqwest::Client {
        // The tests talk to 127.0.0.1 only, whatever proxy the environment names.
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn settings(jwks: Option<JwksSource>, secret: Option<&str>) -> JwtSettings {
        JwtSettings {
            hs256_secret: secret.map(str::to_owned),
            jwks,
            issuer: Some(ISSUER.to_owned()),
            audience: None,
            org_claim: None,
            share_secret: None,
        }
    }

    fn inline_auth(doc: &str) -> ViewerAuth {
        ViewerAuth::new(
            settings(Some(JwksSource::Inline(doc.to_owned())), None),
            http(),
        )
        .unwrap()
    }

    fn url_auth(server: &JwksServer, every: Duration) -> ViewerAuth {
        ViewerAuth::new(
            settings(Some(JwksSource::Url(server.url.clone())), None),
            http(),
        )
        .unwrap()
        .with_refetch_interval(every)
    }

    fn secret_auth() -> ViewerAuth {
        ViewerAuth::new(settings(None, Some(SECRET)), http()).unwrap()
    }

    // ---- RS256 with a JWKS ----

    #[tokio::test]
    async fn a_valid_rs256_token_verifies_against_a_jwks_url() {
        let server = JwksServer::start(JWKS_A).await;
        let auth = url_auth(&server, Duration::from_secs(10));
        let token = rs256(RSA_A, Some("key-a"), &claims());
        assert_eq!(auth.verify(&token).await.unwrap().user, "user_2abc");
    }

    #[tokio::test]
    async fn the_jwks_url_is_fetched_by_the_first_token_and_then_cached() {
        let server = JwksServer::start(JWKS_A).await;
        let auth = url_auth(&server, Duration::ZERO);
        assert_eq!(server.fetches(), 0, "new() must not fetch");
        let token = rs256(RSA_A, Some("key-a"), &claims());
        auth.verify(&token).await.unwrap();
        auth.clone().verify(&token).await.unwrap();
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn a_valid_rs256_token_verifies_against_an_inline_jwks() {
        let auth = inline_auth(JWKS_AB);
        let a = rs256(RSA_A, Some("key-a"), &claims());
        let b = rs256(RSA_B, Some("key-b"), &claims());
        assert_eq!(auth.verify(&a).await.unwrap().user, "user_2abc");
        assert_eq!(auth.verify(&b).await.unwrap().user, "user_2abc");
    }

    #[tokio::test]
    async fn a_rotated_key_is_found_after_a_refetch() {
        let server = JwksServer::start(JWKS_A).await;
        let auth = url_auth(&server, Duration::ZERO);
        let a = rs256(RSA_A, Some("key-a"), &claims());
        let b = rs256(RSA_B, Some("key-b"), &claims());
        auth.verify(&a).await.unwrap();
        assert_eq!(server.fetches(), 1);

        server.serve(JWKS_AB);
        assert_eq!(auth.verify(&b).await.unwrap().user, "user_2abc");
        assert_eq!(server.fetches(), 2);
        auth.verify(&a).await.unwrap();
        auth.verify(&b).await.unwrap();
        assert_eq!(server.fetches(), 2, "known kids must not refetch");
    }

    #[tokio::test]
    async fn an_unknown_kid_is_rejected_and_refetches_are_rate_limited() {
        let every = Duration::from_millis(500);
        let server = JwksServer::start(JWKS_A).await;
        let auth = url_auth(&server, every);
        auth.verify(&rs256(RSA_A, Some("key-a"), &claims()))
            .await
            .unwrap();
        assert_eq!(server.fetches(), 1);

        let unknown = rs256(RSA_A, Some("key-zzz"), &claims());
        // This comes right after the first fetch, so it is still inside the interval.
        assert!(matches!(
            auth.verify(&unknown).await,
            Err(JwtError::UnknownKey)
        ));
        assert_eq!(server.fetches(), 1);

        tokio::time::sleep(every + Duration::from_millis(100)).await;
        for _ in 0..5 {
            assert!(matches!(
                auth.verify(&unknown).await,
                Err(JwtError::UnknownKey)
            ));
        }
        assert_eq!(server.fetches(), 2, "one refetch per interval");

        tokio::time::sleep(every + Duration::from_millis(100)).await;
        assert!(matches!(
            auth.verify(&unknown).await,
            Err(JwtError::UnknownKey)
        ));
        assert_eq!(server.fetches(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_verifications_share_one_jwks_fetch() {
        let server = JwksServer::start(JWKS_A).await;
        let auth = url_auth(&server, Duration::ZERO);
        let token = rs256(RSA_A, Some("key-a"), &claims());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let auth = auth.clone();
                let token = token.clone();
                tokio::spawn(async move { auth.verify(&token).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn a_failed_refetch_keeps_the_cached_keys() {
        let server = JwksServer::start(JWKS_A).await;
        let auth = url_auth(&server, Duration::ZERO);
        let a = rs256(RSA_A, Some("key-a"), &claims());
        auth.verify(&a).await.unwrap();

        server.serve(""); // the endpoint now answers 500
        let unknown = rs256(RSA_B, Some("key-b"), &claims());
        assert!(matches!(
            auth.verify(&unknown).await,
            Err(JwtError::UnknownKey)
        ));
        assert_eq!(server.fetches(), 2);
        assert_eq!(auth.verify(&a).await.unwrap().user, "user_2abc");
    }

    #[tokio::test]
    async fn an_unreachable_jwks_url_means_keys_unavailable() {
        // Bind a port and close it again, so that nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = ViewerAuth::new(
            settings(
                Some(JwksSource::Url(format!(
                    "http://127.0.0.1:{port}/jwks.json"
                ))),
                None,
            ),
            http(),
        )
        .unwrap();
        let token = rs256(RSA_A, Some("key-a"), &claims());
        for _ in 0..2 {
            // The second call falls inside the rate limit and fails at once, from memory.
            let err = auth.verify(&token).await.unwrap_err();
            assert!(
                matches!(&err, JwtError::KeysUnavailable(reason) if !reason.is_empty()),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "signing keys unavailable");
        }
    }

    #[tokio::test]
    async fn a_jwks_endpoint_answering_an_error_means_keys_unavailable() {
        let server = JwksServer::start("").await;
        let auth = url_auth(&server, Duration::ZERO);
        let err = auth
            .verify(&rs256(RSA_A, Some("key-a"), &claims()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, JwtError::KeysUnavailable(reason) if reason.contains("500")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_token_without_kid_uses_the_only_key_of_the_jwks() {
        let token = rs256(RSA_A, None, &claims());
        assert_eq!(
            inline_auth(JWKS_A).verify(&token).await.unwrap().user,
            "user_2abc"
        );
        assert!(matches!(
            inline_auth(JWKS_AB).verify(&token).await,
            Err(JwtError::UnknownKey)
        ));
    }

    #[tokio::test]
    async fn keys_not_meant_for_rs256_signatures_are_ignored() {
        let doc: Value = serde_json::from_str(JWKS_A).unwrap();
        let key = &doc["keys"][0];
        for (field, value) in [("use", "enc"), ("alg", "PS256"), ("kty", "EC")] {
            let changed = json!({ "keys": [with(key.clone(), field, json!(value))] });
            let result = ViewerAuth::new(
                settings(Some(JwksSource::Inline(changed.to_string())), None),
                http(),
            );
            assert!(
                matches!(result, Err(JwtSetupError::NoUsableInlineKey)),
                "{field}: {value}"
            );
        }
        // An unusable key next to a usable one is skipped and does not reject the document.
        let mixed = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" }, key] });
        let auth = inline_auth(&mixed.to_string());
        auth.verify(&rs256(RSA_A, Some("key-a"), &claims()))
            .await
            .unwrap();
    }

    // ---- claims ----

    #[tokio::test]
    async fn an_expired_token_is_rejected_beyond_the_leeway() {
        let token = rs256(
            RSA_A,
            Some("key-a"),
            &with(claims(), "exp", json!(now() - 30)),
        );
        assert!(matches!(
            inline_auth(JWKS_A).verify(&token).await,
            Err(JwtError::Expired)
        ));
    }

    #[tokio::test]
    async fn a_token_expired_within_the_leeway_is_accepted() {
        let token = rs256(
            RSA_A,
            Some("key-a"),
            &with(claims(), "exp", json!(now() - 3)),
        );
        assert_eq!(
            inline_auth(JWKS_A).verify(&token).await.unwrap().user,
            "user_2abc"
        );
    }

    #[tokio::test]
    async fn the_viewer_carries_the_tokens_expiry_in_milliseconds() {
        let exp = now() + 90;
        let token = rs256(RSA_A, Some("key-a"), &with(claims(), "exp", json!(exp)));
        let viewer = inline_auth(JWKS_A).verify(&token).await.unwrap();
        assert_eq!(viewer.expires_at_ms, Some(exp * 1000));
    }

    #[tokio::test]
    async fn a_token_without_exp_is_malformed() {
        let token = rs256(RSA_A, Some("key-a"), &without(claims(), "exp"));
        assert!(matches!(
            inline_auth(JWKS_A).verify(&token).await,
            Err(JwtError::Malformed)
        ));
    }

    #[tokio::test]
    async fn a_token_whose_nbf_is_in_the_future_is_not_yet_valid() {
        let auth = inline_auth(JWKS_A);
        let early = rs256(
            RSA_A,
            Some("key-a"),
            &with(claims(), "nbf", json!(now() + 30)),
        );
        assert!(matches!(
            auth.verify(&early).await,
            Err(JwtError::NotYetValid)
        ));
        let skewed = rs256(
            RSA_A,
            Some("key-a"),
            &with(claims(), "nbf", json!(now() + 3)),
        );
        auth.verify(&skewed).await.unwrap();
    }

    #[tokio::test]
    async fn a_token_from_another_issuer_is_rejected() {
        let auth = inline_auth(JWKS_A);
        for claims in [
            with(claims(), "iss", json!("https://evil.test")),
            with(claims(), "iss", json!([ISSUER])),
            without(claims(), "iss"),
        ] {
            let token = rs256(RSA_A, Some("key-a"), &claims);
            assert!(matches!(
                auth.verify(&token).await,
                Err(JwtError::WrongIssuer)
            ));
        }
    }

    #[tokio::test]
    async fn the_audience_must_be_in_aud_or_equal_azp() {
        let auth = ViewerAuth::new(
            JwtSettings {
                audience: Some(FRONTEND.to_owned()),
                ..settings(Some(JwksSource::Inline(JWKS_A.to_owned())), None)
            },
            http(),
        )
        .unwrap();
        let no_azp = without(claims(), "azp");
        let accepted = [
            claims(),
            with(no_azp.clone(), "aud", json!(FRONTEND)),
            with(no_azp.clone(), "aud", json!(["other", FRONTEND])),
            with(claims(), "aud", json!("other")),
        ];
        for claims in accepted {
            let token = rs256(RSA_A, Some("key-a"), &claims);
            auth.verify(&token).await.unwrap();
        }
        let rejected = [
            no_azp.clone(),
            with(no_azp.clone(), "aud", json!("other")),
            with(no_azp.clone(), "aud", json!(["other"])),
            with(claims(), "azp", json!("https://evil.test")),
        ];
        for claims in rejected {
            let token = rs256(RSA_A, Some("key-a"), &claims);
            assert!(matches!(
                auth.verify(&token).await,
                Err(JwtError::WrongAudience)
            ));
        }
    }

    #[tokio::test]
    async fn the_org_comes_from_org_id_or_the_configured_dotted_path() {
        let org_of = |auth: ViewerAuth, claims: Value| async move {
            let token = rs256(RSA_A, Some("key-a"), &claims);
            auth.verify(&token).await.unwrap().org
        };
        let default = || inline_auth(JWKS_A);
        assert_eq!(org_of(default(), claims()).await, None, "no claim, no org");
        assert_eq!(
            org_of(default(), with(claims(), "org_id", json!("org_2x"))).await,
            Some("org_2x".to_owned())
        );
        for not_an_org in [json!(""), json!(7), json!({"id": "x"}), json!(null)] {
            assert_eq!(
                org_of(default(), with(claims(), "org_id", not_an_org)).await,
                None
            );
        }
        let nested = || {
            ViewerAuth::new(
                JwtSettings {
                    org_claim: Some("o.id".to_owned()),
                    ..settings(Some(JwksSource::Inline(JWKS_A.to_owned())), None)
                },
                http(),
            )
            .unwrap()
        };
        let v2 = with(claims(), "o", json!({"id": "org_v2", "rol": "admin"}));
        assert_eq!(
            org_of(nested(), v2.clone()).await,
            Some("org_v2".to_owned())
        );
        assert_eq!(
            org_of(nested(), with(claims(), "org_id", json!("org_2x"))).await,
            None,
            "only the configured claim counts"
        );
        assert_eq!(
            org_of(nested(), with(claims(), "o", json!("flat"))).await,
            None
        );
        for bad in ["", "o.", ".id", "o..id"] {
            let err = ViewerAuth::new(
                JwtSettings {
                    org_claim: Some(bad.to_owned()),
                    ..settings(Some(JwksSource::Inline(JWKS_A.to_owned())), None)
                },
                http(),
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("LOGSTREAM_JWT_ORG_CLAIM"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_share_secret_shorter_than_32_bytes_stops_the_function_naming_the_variable() {
        let err = ViewerAuth::new(
            JwtSettings {
                share_secret: Some("short".to_owned()),
                ..settings(Some(JwksSource::Inline(JWKS_A.to_owned())), None)
            },
            http(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("LOGSTREAM_SHARE_SECRET"), "{err}");
        let auth = ViewerAuth::new(
            JwtSettings {
                share_secret: Some("s".repeat(32)),
                ..settings(Some(JwksSource::Inline(JWKS_A.to_owned())), None)
            },
            http(),
        )
        .unwrap();
        assert!(auth.share_signer().is_some());
        assert!(inline_auth(JWKS_A).share_signer().is_none());
    }

    #[tokio::test]
    async fn aud_is_ignored_when_no_audience_is_configured() {
        let token = rs256(
            RSA_A,
            Some("key-a"),
            &with(claims(), "aud", json!("anything")),
        );
        inline_auth(JWKS_A).verify(&token).await.unwrap();
    }

    #[tokio::test]
    async fn a_token_without_a_subject_is_rejected() {
        let auth = inline_auth(JWKS_A);
        for claims in [
            without(claims(), "sub"),
            with(claims(), "sub", json!("")),
            with(claims(), "sub", json!(42)),
        ] {
            let token = rs256(RSA_A, Some("key-a"), &claims);
            assert!(matches!(
                auth.verify(&token).await,
                Err(JwtError::MissingSubject)
            ));
        }
    }

    // ---- signatures and algorithms ----

    #[tokio::test]
    async fn a_tampered_token_fails_signature_verification() {
        let auth = inline_auth(JWKS_AB);
        let token = rs256(RSA_A, Some("key-a"), &claims());
        let parts: Vec<&str> = token.split('.').collect();

        // A changed payload with the original signature.
        let forged_claims =
            URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("admin")).to_string());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);

        // A changed signature that is still valid base64url.
        let mut signature = parts[2].as_bytes().to_vec();
        let middle = signature.len() / 2;
        signature[middle] = if signature[middle] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let flipped = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(signature).unwrap()
        );

        // Signed with key b, but claiming key a.
        let wrong_key = rs256(RSA_B, Some("key-a"), &claims());

        for token in [forged, flipped, wrong_key] {
            assert!(matches!(
                auth.verify(&token).await,
                Err(JwtError::BadSignature)
            ));
        }
    }

    #[tokio::test]
    async fn an_hs256_token_verifies_with_the_shared_secret() {
        let auth = secret_auth();
        let token = hmac(Algorithm::HS256, SECRET, &claims());
        assert_eq!(auth.verify(&token).await.unwrap().user, "user_2abc");

        let other = hmac(Algorithm::HS256, "some-other-secret", &claims());
        assert!(matches!(
            auth.verify(&other).await,
            Err(JwtError::BadSignature)
        ));
    }

    #[tokio::test]
    async fn an_hs256_token_is_unsupported_when_only_a_jwks_is_configured() {
        // The classic confusion attack: HMAC keyed with the public key material.
        let token = hmac(Algorithm::HS256, JWKS_A, &claims());
        assert!(matches!(
            inline_auth(JWKS_A).verify(&token).await,
            Err(JwtError::UnsupportedAlgorithm)
        ));
    }

    #[tokio::test]
    async fn an_rs256_token_is_unsupported_when_only_a_secret_is_configured() {
        let token = rs256(RSA_A, Some("key-a"), &claims());
        assert!(matches!(
            secret_auth().verify(&token).await,
            Err(JwtError::UnsupportedAlgorithm)
        ));
    }

    #[tokio::test]
    async fn alg_none_and_unconfigured_algorithms_are_rejected() {
        let auth = ViewerAuth::new(
            settings(Some(JwksSource::Inline(JWKS_A.to_owned())), Some(SECRET)),
            http(),
        )
        .unwrap();
        let tokens = [
            unsigned(&json!({ "alg": "none", "typ": "JWT" }), &claims(), ""),
            unsigned(&json!({ "alg": "None" }), &claims(), ""),
            unsigned(
                &json!({ "alg": "ES256", "kid": "key-a" }),
                &claims(),
                "c2ln",
            ),
            unsigned(
                &json!({ "alg": "rs256", "kid": "key-a" }),
                &claims(),
                "c2ln",
            ),
            hmac(Algorithm::HS384, SECRET, &claims()),
            hmac(Algorithm::HS512, SECRET, &claims()),
        ];
        for token in tokens {
            assert!(matches!(
                auth.verify(&token).await,
                Err(JwtError::UnsupportedAlgorithm)
            ));
        }
    }

    #[tokio::test]
    async fn garbage_and_empty_tokens_are_malformed() {
        let auth = ViewerAuth::new(
            settings(Some(JwksSource::Inline(JWKS_A.to_owned())), Some(SECRET)),
            http(),
        )
        .unwrap();
        let valid = hmac(Algorithm::HS256, SECRET, &claims());
        let too_long = format!("{valid}{}", "A".repeat(MAX_TOKEN_BYTES));
        let garbage: [&str; 10] = [
            "",
            "   \n",
            "garbage",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "!!!.???.###",
            &format!("{valid}.extra"),
            &format!("{}.e30.sig", URL_SAFE_NO_PAD.encode("not json")),
            &too_long,
        ];
        for token in garbage {
            assert!(
                matches!(auth.verify(token).await, Err(JwtError::Malformed)),
                "{token}"
            );
        }
    }

    #[tokio::test]
    async fn surrounding_whitespace_is_ignored() {
        let token = hmac(Algorithm::HS256, SECRET, &claims());
        assert_eq!(
            secret_auth()
                .verify(&format!("  {token}\r\n"))
                .await
                .unwrap()
                .user,
            "user_2abc"
        );
    }

    #[tokio::test]
    async fn error_messages_never_echo_the_token() {
        let auth = inline_auth(JWKS_A);
        let expired = rs256(RSA_A, Some("key-a"), &with(claims(), "exp", json!(1)));
        for token in [expired.as_str(), "secret-looking-garbage"] {
            let err = auth.verify(token).await.unwrap_err();
            assert!(!err.to_string().contains(token));
            assert!(!format!("{err:?}").contains(token));
        }
    }

    // ---- setup ----

    #[test]
    fn setup_fails_without_a_secret_or_a_jwks() {
        let err = ViewerAuth::new(JwtSettings::default(), http()).unwrap_err();
        assert!(matches!(err, JwtSetupError::NothingConfigured));
        let message = err.to_string();
        for variable in [
            "LOGSTREAM_JWT_SECRET",
            "LOGSTREAM_JWKS_URL",
            "LOGSTREAM_JWKS_JSON",
        ] {
            assert!(message.contains(variable), "{message}");
        }
    }

    #[test]
    fn setup_fails_for_an_inline_jwks_that_does_not_parse() {
        for doc in ["", "not json", "{}", r#"{"keys": {}}"#] {
            let err = ViewerAuth::new(
                settings(Some(JwksSource::Inline(doc.to_owned())), None),
                http(),
            )
            .unwrap_err();
            assert!(matches!(err, JwtSetupError::BadInlineJwks(_)), "{doc}");
            assert!(err.to_string().contains("LOGSTREAM_JWKS_JSON"));
        }
        let err = ViewerAuth::new(
            settings(Some(JwksSource::Inline(r#"{"keys": []}"#.to_owned())), None),
            http(),
        )
        .unwrap_err();
        assert!(matches!(err, JwtSetupError::NoUsableInlineKey));
        assert!(err.to_string().contains("LOGSTREAM_JWKS_JSON"));
    }

    #[test]
    fn setup_fails_for_an_empty_secret_or_a_bad_jwks_url() {
        let err = ViewerAuth::new(settings(None, Some("")), http()).unwrap_err();
        assert!(matches!(err, JwtSetupError::EmptySecret));
        assert!(err.to_string().contains("LOGSTREAM_JWT_SECRET"));

        for url in ["", "not a url", "ftp://example.test/jwks.json"] {
            let err = ViewerAuth::new(
                settings(Some(JwksSource::Url(url.to_owned())), None),
                http(),
            )
            .unwrap_err();
            assert!(matches!(err, JwtSetupError::BadJwksUrl(_)), "{url}");
            assert!(err.to_string().contains("LOGSTREAM_JWKS_URL"));
        }
    }

    #[test]
    fn debug_output_never_prints_the_secret() {
        let settings = settings(Some(JwksSource::Inline(JWKS_A.to_owned())), Some(SECRET));
        let printed = format!("{settings:?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        let auth = ViewerAuth::new(settings, http()).unwrap();
        assert!(!format!("{auth:?}").contains(SECRET));
    }

    #[test]
    fn viewer_auth_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<ViewerAuth>();
    }
}
