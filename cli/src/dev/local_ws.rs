//! API Gateway's WebSocket side, emulated for `logstream dev`.
//!
//! | route | stands in for |
//! |---|---|
//! | `GET /ws?job_id=…&access_token=…` | the WebSocket API's URL: `$connect` is [`WsState::connect`], the ws function's own admission (401/400/404 answered before the upgrade), closing is `$disconnect`, a ping gets a pong as on `$default` |
//! | `POST /@connections/{connection_id}` | the management API's `PostToConnection`: the body goes to that client as one text message; 410 Gone when it is not connected here; 429 `LimitExceededException` while more than [`CLIENT_BUFFER_BYTES`] wait for a client that does not read |
//! | `DELETE /@connections/{connection_id}` | `DeleteConnection`: the client is closed (204; 410 when it is not connected here) |
//!
//! So the ingest function's real `PostToConnection` client, with `endpoint_url` set to
//! this server, pushes to real WebSocket clients unchanged. Like the real management
//! API's stage URL, the route checks no signature: `logstream dev` listens on loopback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode, Uri};
use tokio::sync::mpsc;

use logstream_core::ids::random_hex;
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{query_param, viewer_token};
use logstream_ws::{WsState, reply_to};

/// Bytes waiting for one client that does not read before pushes to it are refused
/// (429), as API Gateway throttles: memory per client stays bounded.
pub const CLIENT_BUFFER_BYTES: usize = 1024 * 1024;

/// What goes to one client's socket.
enum Outgoing {
    Text(String),
    Close,
}

/// One connected client: its queue, the bytes waiting in it, and how many pushes it
/// was sent.
#[derive(Clone)]
struct Client {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    pushes: Arc<AtomicU64>,
}

/// The WebSocket clients connected to this process, by connection id.
#[derive(Default)]
pub struct LocalSockets {
    clients: Mutex<HashMap<String, Client>>,
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

    /// How many `PostToConnection` calls each connected client was sent (accepted or
    /// throttled), by connection id.
    pub fn pushes(&self) -> HashMap<String, u64> {
        self.clients
            .lock()
            .map(|clients| {
                clients
                    .iter()
                    .map(|(id, c)| (id.clone(), c.pushes.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn insert(&self, id: &str, client: Client) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(id.to_owned(), client);
        }
    }

    fn remove(&self, id: &str) -> Option<Client> {
        self.clients.lock().ok()?.remove(id)
    }

    fn get(&self, id: &str) -> Option<Client> {
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
        .route(
            "/@connections/{connection_id}",
            axum::routing::post(post_to_connection).delete(delete_connection),
        )
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
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Client {
        tx,
        queued: Arc::default(),
        pushes: Arc::default(),
    };
    local.sockets.insert(&connection, client.clone());
    Ok(upgrade
        .on_upgrade(move |socket| serve_client(local, connection, socket, client, rx))
        .into_response())
}

/// Forwards pushed messages to the client and answers its pings until it leaves, then
/// runs `$disconnect`.
async fn serve_client(
    local: Arc<Local>,
    connection: String,
    mut socket: WebSocket,
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    loop {
        tokio::select! {
            pushed = rx.recv() => match pushed {
                Some(Outgoing::Text(text)) => {
                    let len = text.len();
                    let sent = socket.send(Message::Text(text.into())).await;
                    client.queued.fetch_sub(len, Ordering::Relaxed);
                    if sent.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close) => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(pong) = reply_to(text.as_str()) {
                        client.queued.fetch_add(pong.len(), Ordering::Relaxed);
                        let _ = client.tx.send(Outgoing::Text(pong.to_owned()));
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
    let Some(client) = local.sockets.get(&connection) else {
        return management_error(StatusCode::GONE, "GoneException");
    };
    client.pushes.fetch_add(1, Ordering::Relaxed);
    let len = body.len();
    if client.queued.fetch_add(len, Ordering::Relaxed) + len > CLIENT_BUFFER_BYTES {
        client.queued.fetch_sub(len, Ordering::Relaxed);
        return management_error(StatusCode::TOO_MANY_REQUESTS, "LimitExceededException");
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if client.tx.send(Outgoing::Text(text)).is_err() {
        local.sockets.remove(&connection);
        return management_error(StatusCode::GONE, "GoneException");
    }
    StatusCode::OK.into_response()
}

async fn delete_connection(
    State(local): State<Arc<Local>>,
    Path(connection): Path<String>,
) -> Response {
    match local.sockets.remove(&connection) {
        Some(client) => {
            let _ = client.tx.send(Outgoing::Close);
            StatusCode::NO_CONTENT.into_response()
        }
        None => management_error(StatusCode::GONE, "GoneException"),
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
