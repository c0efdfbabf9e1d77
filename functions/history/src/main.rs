//! The history Lambda: configuration, one Redis connection, one HTTP client for the
//! JWKS, one S3 client for the archive (when `LOGSTREAM_ARCHIVE_BUCKET` is set), the
//! router. Nothing else. The HTTP and S3 clients are made on first use, once.

use logstream_shared::config::{Config, exit_on_error};
use logstream_shared::jwt::HttpClient;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logstream_shared::telemetry::init();
    let config = exit_on_error("logstream-history", Config::from_env());
    let state = exit_on_error(
        "logstream-history",
        logstream_history::HistoryState::from_config(&config, HttpClient::lazy()).await,
    );
    lambda_http::run(logstream_history::router(state, &config.cors_origins)).await
}
