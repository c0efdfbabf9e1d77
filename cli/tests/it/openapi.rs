//! The API's OpenAPI 3.1 document, `docs/openapi.json`: every function serves it, it
//! names every route the service has and no other, it is valid OpenAPI 3.1
//! (openapi-spec-validator), and the running service conforms to it (schemathesis
//! sends generated requests to `logstream dev`: no 5xx; every status code, content
//! type, header and body as documented; schema-invalid input refused; a route that
//! needs a token refuses none). Both tools come from PyPI, pinned, into `.tools/apitest`
//! (`scripts/ensure-deps --test`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::*;
use crate::template_routes::ROUTES;
use logstream_testkit::fixtures::lambda_clients;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn document() -> Value {
    let raw = std::fs::read(repo_file("docs/openapi.json")).expect("docs/openapi.json");
    serde_json::from_slice(&raw).expect("docs/openapi.json is JSON")
}

/// A tool of `.tools/apitest`; a clear failure when it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = repo_file(".tools/apitest/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/ensure-deps --test",
        path.display()
    );
    path
}

/// Every (method, path) the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[tokio::test]
async fn every_function_serves_the_document_and_it_names_every_route() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");

    // The HTTP API's routes (as the template sends them), and the streaming
    // function's two (its function URL takes every path).
    let mut routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(_, m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    routes.insert(("GET".into(), "/jobs/{id}/logs/stream".into()));
    routes.insert(("GET".into(), "/jobs/{id}/logs/raw".into()));
    assert_eq!(documented(&doc), routes);

    let env = env().await;
    let served: Value = env
        .http
        .get(env.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served, doc,
        "logstream dev serves the repository's document"
    );

    let clients = lambda_clients(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_INGEST_KEY", INGEST_KEY),
        ("LOGSTREAM_JWT_SECRET", JWT_SECRET),
    ]);
    let routers = [
        logstream_ingest::router(
            logstream_ingest::IngestState::build(&clients)
                .await
                .unwrap(),
            &[],
        ),
        logstream_history::router(
            logstream_history::HistoryState::build(&clients)
                .await
                .unwrap(),
            &[],
        ),
        logstream_sse::router(logstream_sse::SseState::build(&clients).await.unwrap(), &[]),
    ];
    for router in routers {
        let response = router
            .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), doc);
    }
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let out = std::process::Command::new(tool("openapi-spec-validator"))
        .arg(repo_file("docs/openapi.json"))
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs schemathesis against `env`'s document with `token` (every `{id}` being `job`
/// when there is one); panics with its report unless it found nothing.
async fn schemathesis(env: &Env, token: &str, job: Option<&str>, exclude: &[&str]) {
    let dir = std::env::temp_dir().join(job_id("schemathesis"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let config = match job {
        Some(job) => format!("[parameters]\n\"path.id\" = \"{job}\"\n"),
        None => String::new(),
    };
    std::fs::write(dir.join("schemathesis.toml"), config).unwrap();
    let mut cmd = tokio::process::Command::new(tool("st"));
    cmd.current_dir(&dir)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(env.url("/openapi.json"))
        // Everything but "schema-valid input is accepted": JSON Schema counts 5.0 as an
        // integer, which the API refuses, and rules across fields (one cursor at a
        // time) are not in a schema.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args([
            "--max-examples",
            "10",
            "--seed",
            "20261203",
            "--workers",
            "1",
        ])
        .args(["--request-timeout", "10", "--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .kill_on_drop(true);
    for operation in exclude {
        cmd.args(["--exclude-operation-id", operation]);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("schemathesis ends within 5 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_service_conforms_to_its_document() {
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        (
            "LOGSTREAM_SHARE_SECRET",
            "a-share-secret-of-at-least-32-bytes!",
        ),
    ])
    .await;
    // A reader's run over an ended job with a log (its stream ends at once), kept
    // whole: deleting it is the pipeline run's.
    let (read, _) = env.create_job("alice").await;
    env.set_status(&read, "running").await;
    env.post_lines(&read, "hello", 3).await;
    env.post_json(
        &read,
        &json!({"lines": [{"stream": "stderr", "text": "warning: x"}]}),
    )
    .await;
    assert_eq!(env.set_status(&read, "ready").await.0, 200);
    schemathesis(
        &env,
        &viewer_token("alice", 600),
        Some(&read),
        &["deleteJob"],
    )
    .await;

    // The pipeline's run: jobs it creates itself (its stateful phase follows the
    // `job_id` of `POST /jobs` into the other routes), batches, stages, status moves,
    // secrets, deletion.
    schemathesis(&env, INGEST_KEY, None, &[]).await;
}

#[test]
fn the_reference_in_docs_api_md_covers_the_routes_of_the_document() {
    let text = std::fs::read_to_string(repo_file("docs/api.md")).expect("docs/api.md");
    let mut named = BTreeSet::new();
    // Every `METHOD /path…` the reference names; API Gateway's own management routes
    // (`/@connections/…`) are not the service's.
    for piece in text.split('`').skip(1).step_by(2) {
        let Some((method, target)) = piece.split_once(' ') else {
            continue;
        };
        if !matches!(method, "GET" | "POST" | "PUT" | "DELETE") || !target.starts_with('/') {
            continue;
        }
        let path = target.split(['?', '[']).next().unwrap_or(target);
        if !path.starts_with("/@") {
            named.insert((method.to_owned(), path.to_owned()));
        }
    }
    assert_eq!(named, documented(&document()));
}
