//! API Gateway's WebSocket management API (`PostToConnection`, `DeleteConnection`):
//! the client ingest pushes entries with, made once per process by
//! [`crate::clients::Clients::ws_management`], and what deleting a job, or revoking
//! its share links, does to the connections that follow it.
//!
//! Each call is tried once: a retried push only makes the request wait longer (see the
//! ingest function's `push` module), and a deletion's notice is best effort, bounded.

use std::time::Duration;

pub use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::retry::RetryConfig;
use aws_sdk_apigatewaymanagement::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures_util::StreamExt;

/// The message a connection gets when its job is deleted, just before it is closed.
pub const DELETED_MESSAGE: &str = r#"{"type":"deleted"}"#;

/// Connections told and closed at once.
const CONCURRENCY: usize = 32;

fn once() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(1)
}

/// The client a Lambda uses: region and credentials from the environment (the
/// function's role), `endpoint` = the WebSocket API stage's management endpoint.
pub async fn client_from_environment(endpoint: &str) -> Client {
    let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let config = aws_sdk_apigatewaymanagement::config::Builder::from(&shared)
        .endpoint_url(endpoint)
        .retry_config(once())
        .build();
    Client::from_conf(config)
}

/// A client for a local management endpoint (`logstream dev`'s), which checks no
/// signature: fixed placeholder credentials and region.
pub fn local_client(endpoint: &str) -> Client {
    let config = aws_sdk_apigatewaymanagement::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("local"))
        .credentials_provider(Credentials::new("local", "local", None, None, "logstream"))
        .endpoint_url(endpoint)
        .retry_config(once())
        .build();
    Client::from_conf(config)
}

/// Tells each of `connections` that its job was deleted ([`DELETED_MESSAGE`]), then
/// closes it; all within `bound`. Best effort: a connection already gone is skipped, a
/// failure is logged, and a connection the bound cut short gets nothing more from the
/// job either way (its keys are gone), and ends at API Gateway's idle limit.
pub async fn close_deleted(client: &Client, connections: &[String], bound: Duration) {
    close_all(client, connections, Some(DELETED_MESSAGE), bound).await;
}

/// Closes each of `connections`, made with share links that were just revoked, within
/// `bound`, best effort as [`close_deleted`]: a client that connects again with its
/// link is refused (401). One the bound cut short is out of the job's hash already and
/// gets nothing more.
pub async fn close_revoked(client: &Client, connections: &[String], bound: Duration) {
    close_all(client, connections, None, bound).await;
}

async fn close_all(
    client: &Client,
    connections: &[String],
    message: Option<&'static str>,
    bound: Duration,
) {
    // A loop, not a closure: a closure returning a future that borrows its argument
    // is not general enough for an axum handler's `Send` bound.
    let mut each = Vec::with_capacity(connections.len());
    for connection in connections {
        each.push(tell_and_close(client, connection, message));
    }
    let all = futures_util::stream::iter(each)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>();
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "closing websocket connections cut short at the bound"
        );
    }
}

async fn tell_and_close(client: &Client, connection: &str, message: Option<&'static str>) {
    // A connection that is gone answers 410 here; closing it then is harmless.
    if let Some(message) = message {
        let told = client
            .post_to_connection()
            .connection_id(connection)
            .data(Blob::new(message))
            .send()
            .await;
        if let Err(e) = told {
            tracing::debug!(connection, error = %e, "PostToConnection before closing failed");
        }
    }
    if let Err(e) = client
        .delete_connection()
        .connection_id(connection)
        .send()
        .await
    {
        tracing::debug!(connection, error = %e, "DeleteConnection failed");
    }
}
