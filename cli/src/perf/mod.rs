//! Measuring the service: `logstream bench` (throughput and latency next to the Redis
//! ceiling, cold starts), `logstream soak` (many jobs and viewers for a set time,
//! memory and connections watched) and the local Lambda Runtime API the cold starts
//! run under.
//!
//! Both commands measure either a running service (`--url`) or one they start
//! in-process on a private Redis: [`Target`] is that choice, made once.

pub mod bench;
pub mod bigjob;
pub mod coldstart;
pub mod soak;

use anyhow::Context;
use logstream_shared::config::Config;

use crate::dev::{self, DevServer};

/// The service a measurement talks to.
pub struct Target {
    /// Its base URL, without a trailing `/`.
    pub url: String,
    /// Its ingest key.
    pub ingest_key: String,
    /// A viewer JWT for its `dev` user, when known.
    pub viewer_token: Option<String>,
    /// Its Redis, when known (the in-process service's own).
    pub redis_url: Option<String>,
    /// The in-process service, kept running while the target is alive.
    pub local: Option<DevServer>,
}

impl Target {
    /// The service at `url` (with its ingest key, which `--url` requires), or, without
    /// `url`, `logstream dev` started in-process with `config`.
    pub async fn choose(
        url: Option<&str>,
        ingest_key: Option<&str>,
        viewer_token: Option<&str>,
        redis_url: Option<&str>,
        config: impl FnOnce() -> anyhow::Result<Config>,
    ) -> anyhow::Result<Self> {
        match url {
            Some(url) => Ok(Self {
                url: url.trim_end_matches('/').to_owned(),
                ingest_key: ingest_key
                    .context("--url needs --ingest-key (or LOGSTREAM_INGEST_KEY)")?
                    .to_owned(),
                viewer_token: viewer_token.map(str::to_owned),
                redis_url: redis_url.map(str::to_owned),
                local: None,
            }),
            None => {
                let server = dev::start(config()?, "127.0.0.1:0").await?;
                Ok(Self {
                    url: server.url(),
                    ingest_key: server.ingest_key.clone(),
                    viewer_token: server.viewer_token.clone(),
                    redis_url: Some(server.redis_url.clone()),
                    local: Some(server),
                })
            }
        }
    }
}
