//! The ws Lambda: configuration, the clients made once (one Redis connection, an HTTP
//! client for the JWKS made on first use), then every API Gateway WebSocket event
//! through [`logstream_ws::handle`], one at a time, or as many at once as
//! `AWS_LAMBDA_MAX_CONCURRENCY` says (Lambda Managed Instances).

use lambda_http::aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_http::{Error, LambdaEvent, lambda_runtime, service_fn};
use logstream_shared::clients::Clients;
use logstream_shared::config::{Config, exit_on_error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    logstream_shared::telemetry::init();
    let clients = Clients::lambda(exit_on_error("logstream-ws", Config::from_env()));
    let state = exit_on_error("logstream-ws", logstream_ws::WsState::build(&clients));
    lambda_runtime::run_concurrent(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let state = state.clone();
            async move {
                let answer = logstream_ws::handle(&state, event.payload).await;
                logstream_shared::metrics::flush_if_due();
                Ok::<_, Error>(answer)
            }
        },
    ))
    .await
}
