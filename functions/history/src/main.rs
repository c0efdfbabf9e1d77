//! The history Lambda: configuration, the clients made once (one Redis connection, an
//! HTTP client for the JWKS and an S3 client for the archive, both made on first use),
//! the router. Nothing else. Served one invocation at a time, or as many at once as
//! `AWS_LAMBDA_MAX_CONCURRENCY` says (Lambda Managed Instances).

use logstream_shared::clients::Clients;
use logstream_shared::config::{Config, exit_on_error};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logstream_shared::telemetry::init();
    let clients = Clients::lambda(exit_on_error("logstream-history", Config::from_env()));
    let state = exit_on_error(
        "logstream-history",
        logstream_history::HistoryState::build(&clients).await,
    );
    lambda_http::run_concurrent(logstream_shared::web::lambda::buffered(
        logstream_history::router(state, &clients.config().cors_origins),
    ))
    .await
}
