//! The ingest Lambda: configuration, one Redis connection, the WebSocket push client
//! (when `LOGSTREAM_WS_ENDPOINT` is set), the router. Nothing else.

use logstream_shared::config::{Config, exit_on_error};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logstream_shared::telemetry::init();
    let config = exit_on_error("logstream-ingest", Config::from_env());
    let state = exit_on_error(
        "logstream-ingest",
        logstream_ingest::IngestState::from_config_with_push(&config).await,
    );
    lambda_http::run(logstream_ingest::router(state, &config.cors_origins)).await
}
