//! The sse Lambda: configuration, the clients made once (one Redis connection, an HTTP
//! client for the JWKS made on first use), the router, served with response streaming
//! (function URL `InvokeMode: RESPONSE_STREAM`, or API Gateway REST in streaming mode),
//! one invocation at a time, or as many at once as `AWS_LAMBDA_MAX_CONCURRENCY` says
//! (Lambda Managed Instances): then the viewers of a job in this process share one
//! Redis reader, and each stream's hand-off follows its own invocation's deadline.

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
    lambda_http::run_with_streaming_response_concurrent(logstream_sse::router(
        state,
        &clients.config().cors_origins,
    ))
    .await
}
