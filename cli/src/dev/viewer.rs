//! The log-viewer page `logstream dev` serves at `/`: plain HTML, CSS and JavaScript
//! compiled into the binary, no build step. The log itself is `<logstream-viewer>`
//! (`/logstream-viewer.js`, an ES module, and `/logstream-viewer.css`), the element a
//! frontend embeds: a virtual list over the job's numbered entries (only the rows on
//! screen are in the DOM; pages are fetched with `?at=N` as they scroll into view), live
//! over EventSource with frames drawn once per animation frame, colour, folding stages,
//! per-line times, search over the whole job, permalinks (`#L120`) and "first error".
//! `/?job=ID#access_token=JWT` opens a job at once; the token is read once and removed
//! from the address bar (the tab keeps it in `sessionStorage`), so a copied link never
//! carries it.
//!
//! Every file goes out with a Content-Security-Policy that allows scripts, styles and
//! requests from this origin only (no inline script, no `eval`), refuses framing
//! (`frame-ancestors 'none'`, `X-Frame-Options: DENY`) and sends no referrer: the
//! page shows untrusted log text, and a link from it must not leak the page's URL.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("viewer.html");
const SCRIPT: &str = include_str!("viewer.js");
const STYLE: &str = include_str!("viewer.css");
/// The `<logstream-viewer>` element: the module and its style sheet.
pub const ELEMENT_SCRIPT: &str = include_str!("logstream-viewer.js");
pub const ELEMENT_STYLE: &str = include_str!("logstream-viewer.css");

/// The page's policy: its own files and its own origin's API, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers every file of the page is sent with.
fn headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

/// The page's routes.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { (headers("text/html; charset=utf-8"), PAGE).into_response() }),
        )
        .route(
            "/viewer.js",
            get(|| async { (headers("text/javascript; charset=utf-8"), SCRIPT).into_response() }),
        )
        .route(
            "/viewer.css",
            get(|| async { (headers("text/css; charset=utf-8"), STYLE).into_response() }),
        )
        .route(
            "/logstream-viewer.js",
            get(|| async {
                (headers("text/javascript; charset=utf-8"), ELEMENT_SCRIPT).into_response()
            }),
        )
        .route(
            "/logstream-viewer.css",
            get(|| async { (headers("text/css; charset=utf-8"), ELEMENT_STYLE).into_response() }),
        )
}
