//! The ingest Lambda: configuration, the clients made once (one Redis connection, the
//! WebSocket push client when `LOGSTREAM_WS_ENDPOINT` is set), the router. Nothing else.
//! Served one invocation at a time, or as many at once as `AWS_LAMBDA_MAX_CONCURRENCY`
//! says (Lambda Managed Instances): the state is shared and safe for it.

use logstream_shared::clients::Clients;
use logstream_shared::config::{Config, exit_on_error};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logstream_shared::telemetry::init();
    let clients = Clients::lambda(exit_on_error("logstream-ingest", Config::from_env()));
    let state = exit_on_error(
        "logstream-ingest",
        logstream_ingest::IngestState::build(&clients).await,
    );
    lambda_http::run_concurrent(logstream_shared::web::lambda::buffered(
        logstream_ingest::router(state, &clients.config().cors_origins),
    ))
    .await
}
