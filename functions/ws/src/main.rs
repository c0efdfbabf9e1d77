//! The ws Lambda: configuration, one Redis connection, one HTTP client for the JWKS,
//! then every API Gateway WebSocket event through [`logstream_ws::handle`].

use lambda_http::aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_http::{Error, LambdaEvent, lambda_runtime, service_fn};
use logstream_shared::config::{Config, exit_on_error};
use logstream_shared::jwt::HttpClient;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logstream_shared::telemetry::init();
    let config = exit_on_error("logstream-ws", Config::from_env());
    let state = exit_on_error(
        "logstream-ws",
        logstream_ws::WsState::from_config(&config, HttpClient::lazy()),
    );
    let state = &*state;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            Ok::<_, Error>(logstream_ws::handle(state, event.payload).await)
        },
    ))
    .await
}
