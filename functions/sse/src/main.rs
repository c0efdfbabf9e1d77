//! The sse Lambda: configuration, one Redis connection, one HTTP client for the JWKS,
//! the router, served with response streaming (function URL `InvokeMode:
//! RESPONSE_STREAM`, or API Gateway REST in streaming mode).

use logstream_shared::config::{Config, exit_on_error};
use logstream_shared::jwt::HttpClient;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logstream_shared::telemetry::init();
    let config = exit_on_error("logstream-sse", Config::from_env());
    let state = exit_on_error(
        "logstream-sse",
        logstream_sse::SseState::from_config(&config, HttpClient::lazy()),
    );
    lambda_http::run_with_streaming_response(logstream_sse::router(state, &config.cors_origins))
        .await
}
