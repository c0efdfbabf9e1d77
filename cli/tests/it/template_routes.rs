//! `template.yaml` routes every route of the HTTP API to the function that serves it:
//! each `HttpApi` event names a route its function's router has, and every route the
//! API offers has its event. (A route served by `logstream dev` but missing from the
//! template works locally and is a 404 on AWS.)

use std::collections::BTreeSet;

use axum::body::Body;
use http::{Method, Request};
use tower::ServiceExt;

use crate::support::*;
use logstream_testkit::fixtures::lambda_clients;

/// Every route of the HTTP API, by the function that serves it.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("logstream-ingest", "POST", "/jobs"),
    ("logstream-ingest", "POST", "/jobs/{id}/logs"),
    ("logstream-ingest", "POST", "/jobs/{id}/events"),
    ("logstream-ingest", "PUT", "/jobs/{id}/status"),
    ("logstream-ingest", "POST", "/jobs/{id}/secrets"),
    ("logstream-history", "GET", "/jobs/{id}"),
    ("logstream-history", "DELETE", "/jobs/{id}"),
    ("logstream-history", "GET", "/jobs/{id}/logs"),
    ("logstream-history", "POST", "/jobs/{id}/share"),
    ("logstream-history", "DELETE", "/jobs/{id}/share"),
    ("logstream-history", "GET", "/openapi.json"),
];

/// The `HttpApi` events of `template.yaml`: (the function's binary, method, path).
pub fn template_routes() -> BTreeSet<(String, String, String)> {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml"))
            .expect("template.yaml");
    let mut binary = None;
    let mut out = BTreeSet::new();
    for line in template.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("Binary: ") {
            binary = Some(name.to_owned());
        }
        let Some(props) = line
            .strip_prefix("Properties: { ApiId: !Ref HttpApi, ")
            .and_then(|p| p.strip_suffix(" }"))
        else {
            continue;
        };
        let mut method = None;
        let mut path = None;
        for part in props.split(", ") {
            match part.split_once(": ") {
                Some(("Method", m)) => method = Some(m.to_owned()),
                Some(("Path", p)) => path = Some(p.trim_matches('"').to_owned()),
                _ => {}
            }
        }
        out.insert((
            binary.clone().expect("an event before any function"),
            method.expect("Method"),
            path.expect("Path"),
        ));
    }
    out
}

#[test]
fn the_template_routes_every_route_of_the_http_api_to_its_function() {
    let want: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|(f, m, p)| ((*f).to_owned(), (*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(template_routes(), want);
}

#[tokio::test]
async fn each_function_serves_the_routes_the_template_sends_it() {
    let redis = shared_redis_url();
    let clients = lambda_clients(&[
        ("REDIS_URL", &redis),
        ("LOGSTREAM_INGEST_KEY", INGEST_KEY),
        ("LOGSTREAM_JWT_SECRET", JWT_SECRET),
    ]);
    let ingest = logstream_ingest::router(
        logstream_ingest::IngestState::build(&clients)
            .await
            .unwrap(),
        &[],
    );
    let history = logstream_history::router(
        logstream_history::HistoryState::build(&clients)
            .await
            .unwrap(),
        &[],
    );
    for (function, method, path) in template_routes() {
        let router = match function.as_str() {
            "logstream-ingest" => ingest.clone(),
            "logstream-history" => history.clone(),
            other => panic!("an HttpApi event for {other}"),
        };
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path.replace("{id}", "some-job"))
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        // Without credentials an existing route answers 401 (the document needs none);
        // a missing one 404 or 405.
        let want = if path == "/openapi.json" {
            http::StatusCode::OK
        } else {
            http::StatusCode::UNAUTHORIZED
        };
        assert_eq!(response.status(), want, "{method} {path} on {function}");
    }
}
