//! The log-viewer page `logstream dev` serves at `/`: plain HTML and JavaScript
//! compiled into the binary, no build step. It follows a job with EventSource
//! (`/jobs/{id}/logs/stream`), loads earlier lines through the history route, and
//! shows stages, stderr and the final status. `/?job=ID&access_token=JWT` opens a job
//! at once.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

const PAGE: &str = include_str!("viewer.html");

/// The page's route.
pub fn routes() -> Router {
    Router::new().route("/", get(|| async { Html(PAGE) }))
}
