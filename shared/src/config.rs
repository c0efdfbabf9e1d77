//! Configuration from the environment, read once when a function starts.
//!
//! Every function and `logstream dev` read the same variables (SPEC "Configuration").
//! [`Config::from_lookup`] takes the lookup as a closure so tests never touch the
//! process environment. A missing or malformed value is a [`ConfigError`] whose
//! message is one line naming the variable; mains print it and exit before serving.
//! Empty values count as unset, because SAM passes empty strings for unset parameters.

use std::path::PathBuf;

use http::HeaderValue;

use crate::auth::jwt::{JwksSource, JwtSettings};

/// Smallest accepted ingest key: anything shorter is guessable.
pub const MIN_INGEST_KEY_LEN: usize = 16;

/// A setting that stopped the start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    /// The viewer-token settings do not fit together; the message names the variables.
    #[error("{0}")]
    Viewer(String),
}

/// A secret string whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Every setting of the SPEC's table.
#[derive(Debug, Clone)]
pub struct Config {
    /// `REDIS_URL`; `None` lets `logstream dev` start its own server.
    pub redis_url: Option<String>,
    /// `LOGSTREAM_INGEST_KEY`.
    pub ingest_key: Option<Secret>,
    /// Viewer JWT settings (`LOGSTREAM_JWT_*`, `LOGSTREAM_JWKS_*`).
    pub jwt: JwtSettings,
    /// `LOGSTREAM_ARCHIVE_BUCKET`.
    pub archive_bucket: Option<String>,
    /// `LOGSTREAM_ARCHIVE_DIR`.
    pub archive_dir: Option<PathBuf>,
    /// `LOGSTREAM_TTL_SECS`.
    pub ttl_secs: u64,
    /// `LOGSTREAM_MAXLEN`.
    pub maxlen: u64,
    /// `LOGSTREAM_HEARTBEAT_SECS`.
    pub heartbeat_secs: u64,
    /// `LOGSTREAM_CORS_ORIGINS`.
    pub cors_origins: Vec<HeaderValue>,
    /// `LOGSTREAM_SSE_HANDOFF_SECS`: how long before the Lambda deadline an SSE stream
    /// ends itself (without `done`) so the browser reconnects in time.
    pub handoff_secs: u64,
    /// `LOGSTREAM_WS_ENDPOINT`: the API Gateway management endpoint the ingest function
    /// pushes WebSocket messages to (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`).
    /// Unset: no push (`logstream dev` pushes to itself).
    pub ws_endpoint: Option<String>,
    /// `LOGSTREAM_WS_PUSH_TIMEOUT_MS`: the longest an ingest request waits for its pushes.
    pub ws_push_timeout_ms: u64,
    /// `LOGSTREAM_SEGMENT_LINES`, `LOGSTREAM_SEGMENT_BYTES`, `LOGSTREAM_SEGMENT_SECS`:
    /// when a running job's entries go to the archive.
    pub segment_lines: u64,
    pub segment_bytes: u64,
    pub segment_secs: u64,
    /// `LOGSTREAM_MAX_JOB_BYTES`: stored text per job; past it lines are dropped.
    pub max_job_bytes: u64,
    /// `LOGSTREAM_KEEP_COLOR`: lines keep their colours as `ansi` beside `text`
    /// (default on; `0` or `false` turns it off).
    pub keep_color: bool,
    /// `LOGSTREAM_MARKERS`: build markers (`::group::`, GitLab sections,
    /// `::add-mask::`) are read (default on; `0` or `false` turns it off).
    pub markers: bool,
    /// `LOGSTREAM_ARCHIVER_LINGER_SECS`: how long a scheduled archiver invocation goes
    /// on sweeping (every second) while jobs are queued; 0, the default, sweeps once.
    pub archiver_linger_secs: u64,
    /// `LOGSTREAM_RUNTIME_NODELAY`: the sse function sets `TCP_NODELAY` on the Lambda
    /// runtime's own connections (`runtime_api`; default on; `0` turns it off, should a
    /// sandbox misbehave with it, and to measure the difference).
    pub runtime_nodelay: bool,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let redis_url = get("REDIS_URL")
            .map(|url| check_redis_url(&url).map(|()| url))
            .transpose()?;
        let ingest_key = get("LOGSTREAM_INGEST_KEY")
            .map(|key| {
                if key.len() < MIN_INGEST_KEY_LEN {
                    Err(invalid(
                        "LOGSTREAM_INGEST_KEY",
                        format!("must be at least {MIN_INGEST_KEY_LEN} characters"),
                    ))
                } else {
                    Ok(Secret(key))
                }
            })
            .transpose()?;

        let jwks = match (get("LOGSTREAM_JWKS_URL"), get("LOGSTREAM_JWKS_JSON")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "LOGSTREAM_JWKS_URL",
                    "set either it or LOGSTREAM_JWKS_JSON, not both".into(),
                ));
            }
            (Some(url), None) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(
                        "LOGSTREAM_JWKS_URL",
                        "must be an http(s):// URL".into(),
                    ));
                }
                Some(JwksSource::Url(url))
            }
            (None, Some(json)) => Some(JwksSource::Inline(json)),
            (None, None) => None,
        };
        let jwt = JwtSettings {
            hs256_secret: get("LOGSTREAM_JWT_SECRET"),
            jwks,
            issuer: get("LOGSTREAM_JWT_ISSUER"),
            audience: get("LOGSTREAM_JWT_AUDIENCE"),
            org_claim: get("LOGSTREAM_JWT_ORG_CLAIM"),
            share_secret: get("LOGSTREAM_SHARE_SECRET"),
        };

        let cors_origins = match get("LOGSTREAM_CORS_ORIGINS") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(check_origin)
                .collect::<Result<_, _>>()?,
        };

        let ws_endpoint = get("LOGSTREAM_WS_ENDPOINT")
            .map(|url| {
                if url.starts_with("https://") || url.starts_with("http://") {
                    Ok(url.trim_end_matches('/').to_owned())
                } else {
                    Err(invalid(
                        "LOGSTREAM_WS_ENDPOINT",
                        "must be an http(s):// URL".into(),
                    ))
                }
            })
            .transpose()?;

        Ok(Self {
            redis_url,
            ingest_key,
            jwt,
            archive_bucket: get("LOGSTREAM_ARCHIVE_BUCKET"),
            archive_dir: get("LOGSTREAM_ARCHIVE_DIR").map(PathBuf::from),
            ttl_secs: positive(get("LOGSTREAM_TTL_SECS"), "LOGSTREAM_TTL_SECS", 86_400)?,
            maxlen: positive(get("LOGSTREAM_MAXLEN"), "LOGSTREAM_MAXLEN", 50_000)?,
            heartbeat_secs: positive(
                get("LOGSTREAM_HEARTBEAT_SECS"),
                "LOGSTREAM_HEARTBEAT_SECS",
                20,
            )?,
            cors_origins,
            handoff_secs: positive(
                get("LOGSTREAM_SSE_HANDOFF_SECS"),
                "LOGSTREAM_SSE_HANDOFF_SECS",
                5,
            )?,
            ws_endpoint,
            ws_push_timeout_ms: positive(
                get("LOGSTREAM_WS_PUSH_TIMEOUT_MS"),
                "LOGSTREAM_WS_PUSH_TIMEOUT_MS",
                300,
            )?,
            segment_lines: positive(
                get("LOGSTREAM_SEGMENT_LINES"),
                "LOGSTREAM_SEGMENT_LINES",
                10_000,
            )?,
            segment_bytes: positive(
                get("LOGSTREAM_SEGMENT_BYTES"),
                "LOGSTREAM_SEGMENT_BYTES",
                4 << 20,
            )?,
            segment_secs: positive(get("LOGSTREAM_SEGMENT_SECS"), "LOGSTREAM_SEGMENT_SECS", 30)?,
            max_job_bytes: positive(
                get("LOGSTREAM_MAX_JOB_BYTES"),
                "LOGSTREAM_MAX_JOB_BYTES",
                1 << 30,
            )?,
            keep_color: switch(get("LOGSTREAM_KEEP_COLOR"), "LOGSTREAM_KEEP_COLOR", true)?,
            markers: switch(get("LOGSTREAM_MARKERS"), "LOGSTREAM_MARKERS", true)?,
            archiver_linger_secs: match get("LOGSTREAM_ARCHIVER_LINGER_SECS") {
                None => 0,
                Some(raw) => raw
                    .parse::<u64>()
                    .ok()
                    .filter(|&secs| secs <= 900)
                    .ok_or_else(|| {
                        invalid(
                            "LOGSTREAM_ARCHIVER_LINGER_SECS",
                            format!("expected whole seconds, 0 to 900, got {raw:?}"),
                        )
                    })?,
            },
            runtime_nodelay: switch(
                get("LOGSTREAM_RUNTIME_NODELAY"),
                "LOGSTREAM_RUNTIME_NODELAY",
                true,
            )?,
        })
    }

    /// Whether these settings name an archive (a bucket or a folder) by themselves;
    /// `logstream dev` has one in any case.
    pub fn names_archive(&self) -> bool {
        self.archive_bucket.is_some() || self.archive_dir.is_some()
    }

    /// `REDIS_URL`, which every Lambda function needs.
    pub fn require_redis_url(&self) -> Result<&str, ConfigError> {
        self.redis_url
            .as_deref()
            .ok_or(ConfigError::Missing("REDIS_URL"))
    }

    /// `LOGSTREAM_INGEST_KEY`, which the ingest function needs.
    pub fn require_ingest_key(&self) -> Result<&Secret, ConfigError> {
        self.ingest_key
            .as_ref()
            .ok_or(ConfigError::Missing("LOGSTREAM_INGEST_KEY"))
    }

    /// The viewer-token verifier: needs `LOGSTREAM_JWT_SECRET` or a JWKS.
    pub fn viewer_auth(
        &self,
        http: impl Into<crate::auth::jwt::HttpClient>,
    ) -> Result<crate::auth::jwt::ViewerAuth, ConfigError> {
        crate::auth::jwt::ViewerAuth::new(self.jwt.clone(), http)
            .map_err(|e| ConfigError::Viewer(e.to_string()))
    }

    /// The Redis store every function uses (lazy: Redis may be down at start);
    /// `archived` says whether the deployment has an archive (see
    /// [`retention`](Self::retention)).
    pub fn open_store(&self, archived: bool) -> Result<crate::store::LogStore, ConfigError> {
        crate::store::LogStore::open(self.require_redis_url()?, self.retention(archived)).map_err(
            |e| ConfigError::Invalid {
                var: "REDIS_URL",
                reason: e.to_string(),
            },
        )
    }

    /// The store's retention settings; `archived` when the deployment has an archive
    /// (then nothing leaves Redis before it is archived, else streams are capped).
    pub fn retention(&self, archived: bool) -> crate::store::Retention {
        crate::store::Retention {
            ttl_secs: self.ttl_secs,
            maxlen: self.maxlen,
            archived,
            max_job_bytes: self.max_job_bytes,
            segment_lines: self.segment_lines,
            segment_bytes: self.segment_bytes,
            segment_secs: self.segment_secs,
        }
    }
}

/// Prints a start-up error as one line and exits: what a main does with a bad setting.
pub fn exit_on_error<T>(what: &str, result: Result<T, ConfigError>) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("{what}: configuration error: {e}");
        std::process::exit(2)
    })
}

fn invalid(var: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { var, reason }
}

/// An on/off setting: `1`/`true`/`on` or `0`/`false`/`off` (any case).
fn switch(raw: Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match raw.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "on") => Ok(true),
        Some("0" | "false" | "off") => Ok(false),
        Some(_) => Err(invalid(
            var,
            format!("expected 1 or 0, got {:?}", raw.unwrap_or_default()),
        )),
    }
}

fn positive(raw: Option<String>, var: &'static str, default: u64) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(
                var,
                format!("expected a whole number above 0, got {raw:?}"),
            )),
        },
    }
}

/// One `redis://`/`rediss://` URL, or a comma-separated list of them (Redis Cluster).
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    crate::store::RedisTarget::parse(url)
        .map(|_| ())
        .map_err(|reason| invalid("REDIS_URL", reason))
}

fn check_origin(origin: &str) -> Result<HeaderValue, ConfigError> {
    let well_formed = origin == "*"
        || origin.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains(['/', ' '])
        });
    if !well_formed {
        return Err(invalid(
            "LOGSTREAM_CORS_ORIGINS",
            format!("{origin:?} is not an origin like https://app.example.com"),
        ));
    }
    HeaderValue::from_str(origin).map_err(|_| {
        invalid(
            "LOGSTREAM_CORS_ORIGINS",
            format!("{origin:?} is not a valid header value"),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn archiver_linger_is_whole_seconds_up_to_fifteen_minutes() {
        assert_eq!(config(&[]).unwrap().archiver_linger_secs, 0);
        let linger = |v| config(&[("LOGSTREAM_ARCHIVER_LINGER_SECS", v)]);
        assert_eq!(linger("55").unwrap().archiver_linger_secs, 55);
        for bad in ["-1", "901", "1m"] {
            let e = linger(bad).unwrap_err().to_string();
            assert!(e.contains("LOGSTREAM_ARCHIVER_LINGER_SECS"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = config(&[]).unwrap();
        assert_eq!(
            (c.ttl_secs, c.maxlen, c.heartbeat_secs),
            (86_400, 50_000, 20)
        );
        assert!(c.redis_url.is_none() && c.ingest_key.is_none() && c.cors_origins.is_empty());
        assert!(c.keep_color && c.markers);
        for (off, on) in [("0", "1"), ("false", "TRUE"), ("off", "on")] {
            assert!(!config(&[("LOGSTREAM_KEEP_COLOR", off)]).unwrap().keep_color);
            assert!(config(&[("LOGSTREAM_KEEP_COLOR", on)]).unwrap().keep_color);
            assert!(!config(&[("LOGSTREAM_MARKERS", off)]).unwrap().markers);
            assert!(config(&[("LOGSTREAM_MARKERS", on)]).unwrap().markers);
            let nodelay = |v| config(&[("LOGSTREAM_RUNTIME_NODELAY", v)]).unwrap();
            assert!(!nodelay(off).runtime_nodelay);
            assert!(nodelay(on).runtime_nodelay);
        }
        assert_eq!(
            c.require_redis_url(),
            Err(ConfigError::Missing("REDIS_URL"))
        );
        assert_eq!(
            c.require_ingest_key().unwrap_err().to_string(),
            "LOGSTREAM_INGEST_KEY is required but not set"
        );
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("REDIS_URL", "http://localhost"),
            ("REDIS_URL", "redis://a:1,rediss://b:2"),
            ("REDIS_URL", "redis://a:1,,redis://b:2"),
            ("REDIS_URL", "redis://a:1,http://b:2"),
            ("REDIS_URL", ","),
            ("LOGSTREAM_INGEST_KEY", "short"),
            ("LOGSTREAM_TTL_SECS", "0"),
            ("LOGSTREAM_MAXLEN", "lots"),
            ("LOGSTREAM_HEARTBEAT_SECS", "-5"),
            ("LOGSTREAM_JWKS_URL", "ftp://keys"),
            ("LOGSTREAM_CORS_ORIGINS", "https://ok.example,not an origin"),
            ("LOGSTREAM_CORS_ORIGINS", "https://app.example/path"),
            (
                "LOGSTREAM_WS_ENDPOINT",
                "wss://abc.execute-api.eu-west-1.amazonaws.com",
            ),
            ("LOGSTREAM_WS_PUSH_TIMEOUT_MS", "0"),
            ("LOGSTREAM_KEEP_COLOR", "maybe"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(var), "{var}={value}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn good_values_are_read() {
        let c = config(&[
            ("REDIS_URL", "rediss://cache.example:6379"),
            ("LOGSTREAM_INGEST_KEY", "0123456789abcdef"),
            ("LOGSTREAM_JWT_SECRET", "s"),
            ("LOGSTREAM_TTL_SECS", "2"),
            (
                "LOGSTREAM_CORS_ORIGINS",
                "https://app.example, http://localhost:3000",
            ),
            ("LOGSTREAM_ARCHIVE_BUCKET", ""),
        ])
        .unwrap();
        assert_eq!(
            c.require_redis_url().unwrap(),
            "rediss://cache.example:6379"
        );
        assert_eq!(c.require_ingest_key().unwrap().expose(), "0123456789abcdef");
        assert_eq!(c.ttl_secs, 2);
        assert_eq!(c.cors_origins.len(), 2);
        assert_eq!(c.archive_bucket, None, "empty counts as unset");
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "Debug hides the key"
        );
    }

    #[test]
    fn a_comma_list_of_node_urls_is_a_cluster() {
        use crate::store::RedisTarget;
        for (url, nodes) in [
            (
                "redis://a:7000,redis://b:7001",
                vec!["redis://a:7000", "redis://b:7001"],
            ),
            (
                " rediss://a:7000 , rediss://b:7001 ",
                vec!["rediss://a:7000", "rediss://b:7001"],
            ),
            (
                "rediss://clustercfg.example:6379,",
                vec!["rediss://clustercfg.example:6379"],
            ),
        ] {
            let c = config(&[("REDIS_URL", url)]).unwrap();
            assert_eq!(
                RedisTarget::parse(c.require_redis_url().unwrap()),
                Ok(RedisTarget::Cluster(
                    nodes.iter().map(|n| n.to_string()).collect()
                )),
                "{url}"
            );
        }
        assert_eq!(
            RedisTarget::parse("redis://a:6379"),
            Ok(RedisTarget::Single("redis://a:6379".into()))
        );
        let err = config(&[("REDIS_URL", "redis://a:1,rediss://b:2")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "REDIS_URL is invalid: cluster node URLs mix redis:// and rediss://; use one scheme"
        );
        let err = config(&[("REDIS_URL", "redis://a:1,b:2")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "REDIS_URL is invalid: cluster node 2 (\"b:2\"): must start with redis:// or rediss://"
        );
        let err = config(&[("REDIS_URL", "rediss://a:6379/#insecure")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "REDIS_URL is invalid: #insecure is not supported: server certificates are always checked"
        );
    }
}
