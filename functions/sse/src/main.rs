//! The sse Lambda: configuration, the clients made once (one Redis connection, an HTTP
//! client for the JWKS made on first use), the router, served with response streaming
//! (function URL `InvokeMode: RESPONSE_STREAM`, or API Gateway REST in streaming mode).

use logstream_shared::clients::Clients;
use logstream_shared::config::{Config, exit_on_error};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logstream_shared::telemetry::init();
    let clients = Clients::lambda(exit_on_error("logstream-sse", Config::from_env()));
    let state = exit_on_error(
        "logstream-sse",
        logstream_sse::SseState::build(&clients).await,
    );
    lambda_http::run_with_streaming_response(logstream_sse::router(
        state,
        &clients.config().cors_origins,
    ))
    .await
}
