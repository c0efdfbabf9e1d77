//! [`Clients`]: what a process makes once from its [`Config`] and builds every
//! function's state from. A Lambda `main` makes one for its own function;
//! `logstream dev` makes one and builds all five states from it, so they share one
//! Redis connection, one token verifier and one archive, and no state is assembled by
//! hand in two places.
//!
//! Each piece is made on first request, so a function that never asks for one (ingest
//! has no viewers, the archiver no JWT settings) does not need its settings.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::auth::jwt::{HttpClient, ViewerAuth};
use crate::config::{Config, ConfigError};
use crate::store::LogStore;

/// Where the functions run: what differs between a Lambda and `logstream dev`.
#[derive(Debug, Clone)]
pub enum Host {
    /// A deployed function: AWS clients from the environment, archive only where
    /// configured.
    Lambda,
    /// `logstream dev`: archives default to `archive_dir`, WebSocket pushes go to this
    /// process's own management route at `ws_endpoint` (unless `LOGSTREAM_WS_ENDPOINT`
    /// says otherwise).
    Local {
        archive_dir: PathBuf,
        ws_endpoint: String,
    },
}

/// The settings and the clients made from them, once per process.
pub struct Clients {
    config: Config,
    host: Host,
    http: HttpClient,
    store: OnceLock<LogStore>,
    wake_archiver: std::sync::Arc<tokio::sync::Notify>,
    viewers: OnceLock<ViewerAuth>,
    #[cfg(feature = "s3")]
    archive: tokio::sync::OnceCell<Option<crate::archive::Archive>>,
    #[cfg(feature = "ws")]
    ws_management: tokio::sync::OnceCell<Option<crate::wsapi::Client>>,
}

impl Clients {
    /// A Lambda's clients (the JWKS HTTP client made on first use).
    pub fn lambda(config: Config) -> Self {
        Self::new(config, Host::Lambda, HttpClient::lazy())
    }

    /// Clients for `host` with the JWKS fetched over `http`.
    pub fn new(config: Config, host: Host, http: impl Into<HttpClient>) -> Self {
        Self {
            config,
            host,
            http: http.into(),
            store: OnceLock::new(),
            wake_archiver: Default::default(),
            viewers: OnceLock::new(),
            #[cfg(feature = "s3")]
            archive: tokio::sync::OnceCell::new(),
            #[cfg(feature = "ws")]
            ws_management: tokio::sync::OnceCell::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the functions run.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The Redis store (connected lazily; clones share the connection).
    pub fn store(&self) -> Result<LogStore, ConfigError> {
        if let Some(store) = self.store.get() {
            return Ok(store.clone());
        }
        let archived = self.config.names_archive() || matches!(self.host, Host::Local { .. });
        let store = self.config.open_store(archived)?;
        Ok(self.store.get_or_init(|| store).clone())
    }

    /// What ingest notifies when a job's segment is due and the archiver runs in this
    /// process (`logstream dev`); `None` on Lambda, where the archiver is another
    /// function and the archive queue alone says what is due.
    pub fn archiver_wakeup(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self.host {
            Host::Local { .. } => Some(self.wake_archiver.clone()),
            Host::Lambda => None,
        }
    }

    /// The viewer-token verifier: needs `LOGSTREAM_JWT_SECRET` or a JWKS.
    pub fn viewers(&self) -> Result<ViewerAuth, ConfigError> {
        if let Some(viewers) = self.viewers.get() {
            return Ok(viewers.clone());
        }
        let viewers = self.config.viewer_auth(self.http.clone())?;
        Ok(self.viewers.get_or_init(|| viewers).clone())
    }

    /// The archive: `LOGSTREAM_ARCHIVE_BUCKET`, else `LOGSTREAM_ARCHIVE_DIR`, else (for
    /// `logstream dev` only) its default folder; `None` when there is none.
    #[cfg(feature = "s3")]
    pub async fn archive(&self) -> Option<crate::archive::Archive> {
        self.archive
            .get_or_init(|| async {
                let default_dir = match &self.host {
                    Host::Lambda => None,
                    Host::Local { archive_dir, .. } => Some(archive_dir.as_path()),
                };
                crate::archive::from_config(&self.config, default_dir).await
            })
            .await
            .clone()
    }

    /// The WebSocket management API's client: on Lambda for `LOGSTREAM_WS_ENDPOINT`
    /// (with the function's region and credentials), `None` without it; locally
    /// `logstream dev`'s own management route, or that variable.
    #[cfg(feature = "ws")]
    pub async fn ws_management(&self) -> Option<crate::wsapi::Client> {
        self.ws_management
            .get_or_init(|| async {
                match (&self.host, &self.config.ws_endpoint) {
                    (Host::Lambda, Some(endpoint)) => {
                        Some(crate::wsapi::client_from_environment(endpoint).await)
                    }
                    (Host::Lambda, None) => None,
                    (Host::Local { ws_endpoint, .. }, endpoint) => Some(
                        crate::wsapi::local_client(endpoint.as_deref().unwrap_or(ws_endpoint)),
                    ),
                }
            })
            .await
            .clone()
    }
}
