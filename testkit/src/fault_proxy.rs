//! An HTTP proxy in front of a real server (the private S3-compatible one) that fails
//! the requests a test picks: an error status, no answer at all, or an answer held
//! back until the test lets it go. Everything else passes through unchanged, so the
//! client under test speaks the real wire protocol to a real server and meets the
//! faults AWS can produce (a 500, a request that times out) at the moment the test
//! chooses: between a segment's upload and its manifest, say.
//!
//! Requests are matched by method and a substring of the path (`"manifest.json"`,
//! `"/segments/"`). A rule holds until [`FaultProxy::clear`], so the SDK's own retries
//! meet the same fault.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::sync::Notify;

/// What a matching request meets.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status, with an S3-style error body, without reaching the server.
    Status(u16),
    /// Never answered: the client's timeout is what ends it.
    Hang,
    /// Passed to the server, whose answer is held until the [`Notify`] is notified.
    Hold(Arc<Notify>),
}

#[derive(Debug, Clone)]
struct Rule {
    method: String,
    path: String,
    fault: Fault,
    /// Matching requests still let through before the fault applies.
    passes: usize,
}

#[derive(Debug, Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    /// `METHOD /path` of every request, in arrival order.
    seen: Mutex<Vec<String>>,
    /// Requests that met a fault, by `METHOD /path`.
    faulted: Mutex<Vec<String>>,
    /// Told when a request meets a fault.
    hit: Notify,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://host:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let proxy = Proxy {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            shared: shared.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(proxy);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The proxy's base URL: what the client under test is pointed at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, `method` requests whose path contains `path` meet `fault`.
    pub fn add(&self, method: &str, path: &str, fault: Fault) {
        self.add_after(method, path, 0, fault);
    }

    /// Like [`add`](Self::add), but the first `passes` matching requests go through:
    /// the second manifest update of a visit fails, say, and not the first.
    pub fn add_after(&self, method: &str, path: &str, passes: usize, fault: Fault) {
        self.shared.rules.lock().unwrap().push(Rule {
            method: method.to_owned(),
            path: path.to_owned(),
            fault,
            passes,
        });
    }

    /// Every request passes again.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// `METHOD /path` of every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// `METHOD /path` of every request that met a fault so far.
    pub fn faulted(&self) -> Vec<String> {
        self.shared.faulted.lock().unwrap().clone()
    }

    /// Waits until some request has met a fault (at once if one has already).
    pub async fn wait_for_fault(&self) {
        loop {
            let hit = self.shared.hit.notified();
            if !self.faulted().is_empty() {
                return;
            }
            hit.await;
        }
    }
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let what = format!("{method} {path}");
    proxy.shared.seen.lock().unwrap().push(what.clone());
    let fault = proxy
        .shared
        .rules
        .lock()
        .unwrap()
        .iter_mut()
        .find(|r| r.method == method && path.contains(&r.path))
        .and_then(|r| {
            if r.passes > 0 {
                r.passes -= 1;
                return None;
            }
            Some(r.fault.clone())
        });
    if fault.is_some() {
        proxy.shared.faulted.lock().unwrap().push(what);
        proxy.shared.hit.notify_waiters();
    }
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Response::builder()
                .status(status)
                .header("content-type", "application/xml")
                .body(Body::from(format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError\
                     </Code><Message>injected {code}</Message></Error>"
                )))
                .unwrap();
        }
        Some(Fault::Hang) => std::future::pending::<()>().await,
        Some(Fault::Hold(_)) | None => {}
    }
    let answer = pass(&proxy, request).await;
    if let Some(Fault::Hold(release)) = fault {
        release.notified().await;
    }
    answer
}

/// Sends `request` to the upstream server and returns its answer as it came.
async fn pass(proxy: &Proxy, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let url = format!(
        "{}{}",
        proxy.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            headers.append(name, value.clone());
        }
    }
    let sent = proxy
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(res) = sent else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap();
    };
    let mut out = Response::builder().status(res.status());
    for (name, value) in res.headers() {
        if !matches!(name.as_str(), "transfer-encoding" | "connection") {
            out = out.header(name, value);
        }
    }
    let bytes = res.bytes().await.unwrap_or_default();
    out.body(Body::from(bytes)).unwrap()
}
