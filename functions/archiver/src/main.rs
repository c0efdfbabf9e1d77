//! The archiver Lambda: configuration, the clients made once (one Redis connection, one
//! S3 client when `LOGSTREAM_ARCHIVE_BUCKET` is set, made on first use), and the
//! EventBridge handler.
//! Nothing else.

// The SDK's and the runtime's futures nest deeply; computing main's layout needs more
// than the default query depth.
#![recursion_limit = "256"]

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

use logstream_archiver::{Archiver, Settings};
use logstream_shared::clients::Clients;
use logstream_shared::config::{Config, exit_on_error};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    logstream_shared::telemetry::init();
    let clients = Clients::lambda(exit_on_error("logstream-archiver", Config::from_env()));
    let settings = Settings {
        linger: std::time::Duration::from_secs(clients.config().archiver_linger_secs),
        ..Settings::default()
    };
    let archiver = exit_on_error(
        "logstream-archiver",
        Archiver::build(&clients, settings).await,
    );
    let archiver = &archiver;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move {
            archiver
                .handle(event)
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
