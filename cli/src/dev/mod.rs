//! `logstream dev`: every function's router on one port, on a real Redis.
//!
//! The routers are the very ones the Lambdas serve (`routes(state)` of each function
//! crate), merged and finished once, plus the log-viewer page at `/`. When `REDIS_URL` is unset a private
//! `redis-server` is started on a free loopback port and stopped with the service.
//! Without an ingest key or viewer-token settings, random ones are made up and
//! printed, with a viewer token for the user `dev`, so the service can be tried at once.
//!
//! Finished jobs are archived in-process by the archiver function's own code
//! ([`logstream_archiver::spawn_local_sweeper`]): the archive queue is swept every
//! [`ARCHIVE_TICK`], into `LOGSTREAM_ARCHIVE_DIR` (default [`DEFAULT_ARCHIVE_DIR`] under
//! the working folder, or the S3 bucket when `LOGSTREAM_ARCHIVE_BUCKET` is set), and
//! the history routes fall back to that archive once Redis has forgotten a job.
//!
//! The server itself is bounded (connections, header-read time, over-long heads
//! answered as JSON errors): see [`serve`].
//!
//! WebSocket clients connect at `/ws`, and the same port answers API Gateway's
//! management route (see [`local_ws`]). The ingest state gets the real
//! `PostToConnection` client with this server as its endpoint (or
//! `LOGSTREAM_WS_ENDPOINT` when set), so pushes take the deployed code path.

pub mod local_ws;
pub mod serve;
pub mod viewer;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use logstream_archiver::Archiver;
use logstream_core::ids::random_hex;
use logstream_history::HistoryState;
use logstream_ingest::IngestState;
use logstream_shared::clients::{Clients, Host};
use logstream_shared::config::{Config, Secret};
use logstream_shared::web::finish;
use logstream_sse::SseState;
use logstream_testkit::redis_server::RedisServer;
use logstream_ws::WsState;

use local_ws::LocalSockets;

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8787";

/// The user of the viewer token printed at start.
pub const DEV_USER: &str = "dev";

/// Where finished jobs are archived without `LOGSTREAM_ARCHIVE_DIR`, under the working folder.
pub const DEFAULT_ARCHIVE_DIR: &str = ".logstream/archive";

/// How often the in-process archiver sweeps the archive queue.
pub const ARCHIVE_TICK: Duration = Duration::from_millis(500);

/// A running local service. Dropping it stops the server (and its private Redis).
pub struct DevServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The pipeline-side key in force.
    pub ingest_key: String,
    /// A viewer token for [`DEV_USER`], when the HS256 secret was made up here.
    pub viewer_token: Option<String>,
    /// The Redis URL in use.
    pub redis_url: String,
    /// Where finished jobs are archived.
    pub archive: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    archiver: JoinHandle<()>,
    sse: std::sync::Arc<SseState>,
    sockets: std::sync::Arc<LocalSockets>,
    redis: Option<RedisServer>,
}

impl DevServer {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The private Redis, when this service started one.
    pub fn redis(&mut self) -> Option<&mut RedisServer> {
        self.redis.as_mut()
    }

    /// The live-log state (its hub counts the Redis feeds in use).
    pub fn sse(&self) -> &SseState {
        &self.sse
    }

    /// The WebSocket clients connected at `/ws`.
    pub fn sockets(&self) -> &LocalSockets {
        &self.sockets
    }

    /// Stops serving and waits for in-flight requests to finish; open SSE streams are
    /// ended first (without `done`, so their clients reconnect).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.archiver.abort();
        self.sse.shutdown();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM, then stops.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        eprintln!("stopping");
        self.stop().await
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.archiver.abort();
        self.sse.shutdown();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the local service on `addr` with `config` (filled in where unset), within the
/// default [`serve::Limits`].
pub async fn start(config: Config, addr: &str) -> anyhow::Result<DevServer> {
    start_with(config, addr, serve::Limits::default()).await
}

/// [`start`] within `limits` (`logstream dev --max-connections`, `--header-timeout-secs`).
pub async fn start_with(
    mut config: Config,
    addr: &str,
    limits: serve::Limits,
) -> anyhow::Result<DevServer> {
    anyhow::ensure!(
        limits.max_connections > 0 && !limits.header_read.is_zero(),
        "the connection cap and the header-read timeout must be above 0"
    );
    let redis = match &config.redis_url {
        Some(_) => None,
        None => Some(
            RedisServer::start().context("starting a private redis-server (or set REDIS_URL)")?,
        ),
    };
    if let Some(server) = &redis {
        config.redis_url = Some(server.url());
    }
    let ingest_key = match &config.ingest_key {
        Some(key) => key.expose().to_owned(),
        None => {
            let key = format!("dev-{}", random_hex(16));
            config.ingest_key = Some(Secret::new(key.clone()));
            key
        }
    };
    // Share links work out of the box too.
    if config.jwt.share_secret.is_none() {
        config.jwt.share_secret = Some(random_hex(32));
    }
    let mut viewer_token = None;
    if config.jwt.hs256_secret.is_none() && config.jwt.jwks.is_none() {
        let secret = random_hex(32);
        viewer_token = Some(dev_viewer_token(&secret)?);
        config.jwt.hs256_secret = Some(secret);
    }

    // Bound first: the push client's endpoint is this server's own address.
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    let cors_origins = config.cors_origins.clone();
    let redis_url = config.redis_url.clone().unwrap_or_default();

    // One set of clients (one Redis connection, one token verifier, one archive) for
    // every function of the process, each state built as its Lambda builds it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let host = Host::Local {
        archive_dir: DEFAULT_ARCHIVE_DIR.into(),
        ws_endpoint: format!("http://{addr}"),
    };
    let clients = Clients::new(config, host, http);
    let ingest = IngestState::build(&clients).await?;
    let history = HistoryState::build(&clients).await?;
    let sse = SseState::build(&clients).await?;
    let ws = WsState::build(&clients)?;
    let archiver = Archiver::build(&clients, logstream_archiver::Settings::default()).await?;
    let archive_at = clients
        .archive()
        .await
        .map_or_else(|| "none".to_owned(), |a| a.to_string());
    let sockets = std::sync::Arc::new(LocalSockets::default());
    let app = finish(
        logstream_ingest::routes(ingest)
            .merge(logstream_history::routes(history))
            .merge(logstream_sse::routes(sse.clone()))
            .merge(local_ws::routes(ws, sockets.clone()))
            .merge(viewer::routes()),
        &cors_origins,
    );

    let archiver =
        logstream_archiver::spawn_local_sweeper(archiver, ARCHIVE_TICK, clients.archiver_wakeup());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve::serve(listener, app, limits, rx));
    Ok(DevServer {
        addr,
        ingest_key,
        viewer_token,
        redis_url,
        archive: archive_at,
        shutdown: Some(tx),
        task: Some(task),
        archiver,
        sse,
        sockets,
        redis,
    })
}

/// An HS256 viewer token for [`DEV_USER`], valid for a day.
fn dev_viewer_token(secret: &str) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = logstream_core::model::now_ms() / 1000;
    let claims = Claims {
        sub: DEV_USER,
        exp: now + 86_400,
        iat: now,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
