//! The archiver Lambda: configuration, one Redis connection, one S3 client (when
//! `LOGSTREAM_ARCHIVE_BUCKET` is set; made on first use), and the EventBridge handler.
//! Nothing else.

// The SDK's and the runtime's futures nest deeply; computing main's layout needs more
// than the default query depth.
#![recursion_limit = "256"]

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

use logstream_archiver::{Archiver, Settings};
use logstream_shared::config::{Config, ConfigError, exit_on_error};
use logstream_shared::store::LogStore;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    logstream_shared::telemetry::init();
    let config = exit_on_error("logstream-archiver", Config::from_env());
    let store = exit_on_error(
        "logstream-archiver",
        config.require_redis_url().and_then(|url| {
            LogStore::open(url, config.retention()).map_err(|e| ConfigError::Invalid {
                var: "REDIS_URL",
                reason: e.to_string(),
            })
        }),
    );
    let archive = logstream_shared::archive::from_config(&config, None).await;
    let archiver = Archiver::new(store, archive, Settings::default());
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
