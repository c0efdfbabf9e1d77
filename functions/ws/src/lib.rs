//! The ws function: API Gateway WebSocket routes.
//!
//! | route | does |
//! |---|---|
//! | `$connect` | `?job_id=…&access_token=…` (or `Authorization: Bearer`): the SSE rules, 401 for a bad token, 400 for a bad job id, 404 for a job that is missing or someone else's; an admitted connection joins `job:{ID}:ws` |
//! | `$disconnect` | removes the connection from its job's set |
//! | `$default` | answers `ping` (or `{"type":"ping"}`) with `{"type":"pong"}`; ignores the rest |
//!
//! Pushing is not done here: the ingest function posts each stored batch to the job's
//! connections (see `logstream_ingest::push`). Refusing at `$connect` matters because
//! API Gateway sends the integration's status to the client and closes the handshake.
//!
//! [`WsState::connect`] and [`WsState::disconnect`] are also what `logstream dev` runs for
//! its local `/ws` clients, so the admission rules are written once.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
};
use lambda_http::aws_lambda_events::encodings::Body;

use logstream_core::ids::JobId;
use logstream_shared::auth::jwt::ViewerAuth;
use logstream_shared::auth::pipeline::bearer;
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::store::{Followed, LogStore};
use logstream_shared::web::error::ApiError;
use logstream_shared::web::verify_reader;

/// Longest connection id accepted (API Gateway's are 16 characters).
pub const MAX_CONNECTION_ID_LEN: usize = 128;

/// The answer to a ping.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// A connection let in by [`WsState::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The job it follows.
    pub job: JobId,
    /// When the viewer's token expires (ms since the epoch).
    pub expires_at_ms: Option<u64>,
}

/// Everything the WebSocket routes share, built once per process.
pub struct WsState {
    store: LogStore,
    viewers: ViewerAuth,
}

impl WsState {
    pub fn new(store: LogStore, viewers: ViewerAuth) -> Arc<Self> {
        Arc::new(Self { store, viewers })
    }

    /// The ws function's state from the process's [`Clients`]; connects lazily.
    pub fn build(clients: &Clients) -> Result<Arc<Self>, ConfigError> {
        Ok(Self::new(clients.store()?, clients.viewers()?))
    }

    /// Admits `connection` to follow `job_id` as the viewer holding `token`, or refuses:
    /// 401 (no or bad token), 400 (bad job id or connection id), 404 (no such job, or
    /// someone else's: the same answer). The connection is registered with the token's
    /// expiry: pushes stop and the connection is closed once it has passed; one made
    /// with a share link is closed when the job's links are revoked.
    pub async fn connect(
        &self,
        job_id: Option<&str>,
        token: Option<&str>,
        connection: &str,
    ) -> Result<Admitted, ApiError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let job = JobId::parse(job_id.unwrap_or_default());
        let viewer = match &job {
            Ok(job) => verify_reader(&self.viewers, &self.store, job, token).await?,
            Err(_) => self.viewers.verify(token).await?,
        };
        let job = job.map_err(|e| ApiError::bad_request("invalid_job_id", e.to_string()))?;
        check_connection_id(connection)?;
        match self.store.job_meta(&job).await? {
            Some(meta) if viewer.can_read(&job, &meta) => {}
            _ => return Err(ApiError::job_not_found()),
        }
        let share = viewer.share.as_ref().map(|grant| grant.generation);
        match self
            .store
            .add_connection(&job, connection, viewer.expires_at_ms, share)
            .await?
        {
            Followed::Yes => {}
            Followed::JobGone => return Err(ApiError::job_not_found()),
            Followed::Revoked => return Err(ApiError::unauthorized("share link revoked")),
        }
        tracing::info!(job_id = %job, connection, "websocket connected");
        Ok(Admitted {
            job,
            expires_at_ms: viewer.expires_at_ms,
        })
    }

    /// Forgets `connection`. Unknown connections are not an error: `$disconnect` may
    /// come after a push already dropped the connection.
    pub async fn disconnect(&self, connection: &str) -> Result<(), ApiError> {
        check_connection_id(connection)?;
        if let Some(job) = self.store.remove_connection(connection).await? {
            tracing::info!(job_id = %job, connection, "websocket disconnected");
        }
        Ok(())
    }
}

fn check_connection_id(connection: &str) -> Result<(), ApiError> {
    let ok = !connection.is_empty()
        && connection.len() <= MAX_CONNECTION_ID_LEN
        && connection
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_connection_id",
            "malformed connection id",
        ))
    }
}

/// The answer to a client's message on `$default`: a pong for a ping, nothing else.
pub fn reply_to(message: &str) -> Option<&'static str> {
    let message = message.trim();
    let is_ping = message.eq_ignore_ascii_case("ping")
        || serde_json::from_str::<serde_json::Value>(message)
            .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("ping"));
    is_ping.then_some(PONG)
}

/// Handles one API Gateway WebSocket event. Never an invocation error: every failure is
/// an answer with the SPEC's status code and JSON error body.
#[tracing::instrument(skip_all, fields(route = event.request_context.route_key.as_deref().unwrap_or("")))]
pub async fn handle(
    state: &WsState,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let connection = event
        .request_context
        .connection_id
        .clone()
        .unwrap_or_default();
    let result = match event.request_context.route_key.as_deref() {
        Some("$connect") => {
            let token = bearer(&event.headers).map(str::to_owned).or_else(|| {
                event
                    .query_string_parameters
                    .first("access_token")
                    .map(str::to_owned)
            });
            state
                .connect(
                    event.query_string_parameters.first("job_id"),
                    token.as_deref(),
                    &connection,
                )
                .await
                .map(|_| None)
        }
        Some("$disconnect") => state.disconnect(&connection).await.map(|()| None),
        _ => Ok(reply_to(event.body.as_deref().unwrap_or_default())),
    };
    match result {
        Ok(body) => response(StatusCode::OK, body.map(str::to_owned)),
        Err(e) => {
            let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
            let mut answer = response(e.status, Some(body.to_string()));
            if e.status == StatusCode::UNAUTHORIZED {
                answer.headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            answer
        }
    }
}

fn response(status: StatusCode, body: Option<String>) -> ApiGatewayProxyResponse {
    let mut answer = ApiGatewayProxyResponse::default();
    answer.status_code = i64::from(status.as_u16());
    answer.headers = HeaderMap::new();
    answer.body = body.map(Body::Text);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_get_a_pong_and_other_messages_nothing() {
        assert_eq!(reply_to("ping"), Some(PONG));
        assert_eq!(reply_to(r#"{"type":"ping"}"#), Some(PONG));
        assert_eq!(reply_to("hello"), None);
        assert_eq!(reply_to(r#"{"type":"subscribe"}"#), None);
    }

    #[test]
    fn connection_ids_are_checked() {
        assert!(check_connection_id("L0SM9cOFvHcCIhw=").is_ok());
        assert!(check_connection_id("").is_err());
        assert!(check_connection_id("a b").is_err());
        assert!(check_connection_id(&"a".repeat(129)).is_err());
    }
}
