//! The HTTP server of `logstream dev`: the embedded default a small team may expose,
//! so it is bounded where `axum::serve` is not.
//!
//! - **Connection cap** ([`Limits::max_connections`]): past it the server stops
//!   accepting until a connection closes (the kernel's backlog holds the rest).
//! - **Header-read timeout** ([`Limits::header_read`]): a connection that does not finish
//!   a request head in time is closed, on its first request and while idle between
//!   requests (hyper's `header_read_timeout`), so a client that never sends cannot hold
//!   a connection forever.
//! - **Over-long heads answered as the API answers everything**: hyper refuses a request
//!   target over 64 KiB with a bare 414 before any router runs. So the head of each
//!   connection's first request is read here first: when it is too large, the request
//!   goes to the routers with a short target and a [`Oversized`] mark, and comes back as
//!   the JSON error with CORS headers (414 or 431). Later requests on a kept-alive
//!   connection are parsed by hyper alone; targets up to 64 KiB still get the JSON 414
//!   from the routers (see [`logstream_shared::web::MAX_URI_BYTES`]).
//!
//! Everything else is hyper's HTTP/1.1 server with upgrades (the local WebSocket
//! endpoint) and a graceful shutdown.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderValue, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tower::ServiceExt;

use logstream_shared::web::Oversized;

/// Largest request head read before the request is refused (431, or 414 when the
/// request line alone is that long).
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// [`Limits::max_connections`] unless set (`logstream dev --max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// [`Limits::header_read`] in seconds unless set (`logstream dev --header-timeout-secs`).
pub const DEFAULT_HEADER_READ_SECS: u64 = 30;

/// The bounds of the local server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send a request head (and stay idle between
    /// requests on a kept-alive connection).
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Enough for the bench's 1 000 SSE viewers with room to spare.
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read: Duration::from_secs(DEFAULT_HEADER_READ_SECS),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then lets open requests finish
/// (up to 10 s; streams are ended by their owners first).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: oneshot::Receiver<()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Tells every connection to finish its request in flight and close.
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some((head, stream)) = first_head(stream, limits.header_read).await else {
                return;
            };
            if let Some(refusal) = head.refusal {
                refuse(stream, &head.bytes, refusal, &app).await;
                return;
            }
            let io = TokioIo::new(Prefixed {
                head: head.bytes,
                at: 0,
                stream,
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read);
            let connection = http
                .serve_connection(io, TowerToHyperService::new(app))
                .with_upgrades();
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = &mut connection => ended,
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds a slot: all slots back means all connections closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open 10 s after shutdown");
    }
    Ok(())
}

/// The first request head of a connection, as read.
struct Head {
    bytes: Vec<u8>,
    /// Why it is refused, when it is too large.
    refusal: Option<Oversized>,
}

/// Reads until the end of the first request head, the size limit, EOF or the timeout.
/// `None` when the connection should just be closed (timeout, EOF, I/O error).
async fn first_head(mut stream: TcpStream, timeout: Duration) -> Option<(Head, TcpStream)> {
    let mut bytes = Vec::with_capacity(4096);
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = head_end(&bytes) {
                let line_end = memchr::memmem::find(&bytes, b"\r\n").unwrap_or(end);
                // "GET " and " HTTP/1.1" around the target.
                let refusal = (line_end > logstream_shared::web::MAX_URI_BYTES + 16)
                    .then_some(Oversized::Uri);
                return Some(refusal);
            }
            if bytes.len() >= MAX_HEAD_BYTES {
                let line_done = memchr::memmem::find(&bytes, b"\r\n").is_some();
                return Some(Some(if line_done {
                    Oversized::Headers
                } else {
                    Oversized::Uri
                }));
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    let refusal = tokio::time::timeout(timeout, read).await.ok()??;
    Some((Head { bytes, refusal }, stream))
}

fn head_end(bytes: &[u8]) -> Option<usize> {
    memchr::memmem::find(bytes, b"\r\n\r\n").map(|at| at + 4)
}

/// Answers a request whose head was too large: its method and headers (as far as they
/// could be read) go through `app` with `/` as the target and the [`Oversized`] mark,
/// so the answer is the API's JSON error with its CORS headers; then the connection
/// closes.
async fn refuse(mut stream: TcpStream, head: &[u8], refusal: Oversized, app: &Router) {
    let mut request = Request::builder().uri("/");
    // The request line, then as many complete header lines as were read.
    let mut lines = head.split(|&b| b == b'\n');
    if let Some(line) = lines.next()
        && let Some(method) = line.split(|&b| b == b' ').next()
        && let Ok(method) = http::Method::from_bytes(method)
    {
        request = request.method(method);
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let Ok(mut request) = request.body(Body::empty()) else {
        return;
    };
    request.extensions_mut().insert(refusal);
    let Ok(response) = app.clone().oneshot(request).await;
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return;
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// A connection whose first bytes were read already: they are read again first.
struct Prefixed {
    head: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
