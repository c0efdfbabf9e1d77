//! API Gateway's WebSocket side, emulated for `logstream dev`.
//!
//! | route | stands in for |
//! |---|---|
//! | `GET /ws?job_id=…&access_token=…` | the WebSocket API's URL: `$connect` is [`WsState::connect`], the ws function's own admission (401/400/404 answered before the upgrade), closing is `$disconnect`, a ping gets a pong as on `$default` |
//! | `POST /@connections/{connection_id}` | the management API's `PostToConnection`: the body goes to that client as one text message; 410 Gone when it is not connected here |
//!
//! So the ingest function's real `PostToConnection` client, with `endpoint_url` set to
//! this server, pushes to real WebSocket clients unchanged. Like the real management
//! API's stage URL, the route checks no signature: `logstream dev` listens on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, Uri};
use tokio::sync::mpsc;

use logstream_core::ids::random_hex;
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{query_param, viewer_token};
use logstream_ws::{WsState, reply_to};

/// Messages waiting for one slow client before pushes to it are refused (429).
const CLIENT_BUFFER: usize = 1024;

/// The WebSocket clients connected to this process, by connection id.
#[derive(Default)]
pub struct LocalSockets {
    clients: Mutex<HashMap<String, mpsc::Sender<String>>>,
}

impl LocalSockets {
    /// How many clients are connected.
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, id: &str, tx: mpsc::Sender<String>) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(id.to_owned(), tx);
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(id);
        }
    }

    fn sender(&self, id: &str) -> Option<mpsc::Sender<String>> {
        self.clients.lock().ok()?.get(id).cloned()
    }
}

struct Local {
    ws: Arc<WsState>,
    sockets: Arc<LocalSockets>,
}

/// The `/ws` and `/@connections/{connection_id}` routes.
pub fn routes(ws: Arc<WsState>, sockets: Arc<LocalSockets>) -> Router {
    Router::new()
        .route("/ws", get(connect))
        .route("/@connections/{connection_id}", post(post_to_connection))
        .with_state(Arc::new(Local { ws, sockets }))
}

async fn connect(
    State(local): State<Arc<Local>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // API Gateway's connection ids are 16 base64 characters; these look alike.
    let connection = format!("{}=", random_hex(8));
    let token = viewer_token(&headers, &uri);
    let job_id = query_param(&uri, "job_id");
    let upgrade = upgrade.map_err(|_| {
        ApiError::bad_request("websocket_required", "this route takes a WebSocket upgrade")
    })?;
    local
        .ws
        .connect(job_id.as_deref(), token.as_deref(), &connection)
        .await?;
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    local.sockets.insert(&connection, tx.clone());
    Ok(upgrade
        .on_upgrade(move |socket| serve_client(local, connection, socket, tx, rx))
        .into_response())
}

/// Forwards pushed messages to the client and answers its pings until it leaves, then
/// runs `$disconnect`.
async fn serve_client(
    local: Arc<Local>,
    connection: String,
    mut socket: WebSocket,
    tx: mpsc::Sender<String>,
    mut rx: mpsc::Receiver<String>,
) {
    loop {
        tokio::select! {
            pushed = rx.recv() => match pushed {
                Some(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(pong) = reply_to(text.as_str()) {
                        let _ = tx.try_send(pong.to_owned());
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    local.sockets.remove(&connection);
    if let Err(e) = local.ws.disconnect(&connection).await {
        tracing::warn!(connection, error = %e.message, "local $disconnect failed");
    }
}

async fn post_to_connection(
    State(local): State<Arc<Local>>,
    Path(connection): Path<String>,
    body: Bytes,
) -> Response {
    let Some(tx) = local.sockets.sender(&connection) else {
        return management_error(StatusCode::GONE, "GoneException");
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    match tx.try_send(text) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(mpsc::error::TrySendError::Full(_)) => {
            management_error(StatusCode::TOO_MANY_REQUESTS, "LimitExceededException")
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            local.sockets.remove(&connection);
            management_error(StatusCode::GONE, "GoneException")
        }
    }
}

/// An error as the management API answers it: the error's name in
/// `x-amzn-ErrorType`, which is how the SDK tells a `GoneException` apart.
fn management_error(status: StatusCode, name: &'static str) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", name),
            ("content-type", "application/json"),
        ],
        format!(r#"{{"message":"{name}"}}"#),
    )
        .into_response()
}
