//! The sample events in `events/`, fed through the very types the Lambda runtime
//! uses, so a test proves the Lambda entry shape instead of assuming it.

use axum::Router;
use lambda_http::request::LambdaRequest;
use lambda_http::tower::{Service, ServiceExt};
use lambda_http::{Adapter, Context, LambdaEvent};
use serde_json::Value;

/// The HS256 secret the sample events' viewer tokens are signed with (and what
/// `template.yaml`'s example and the cold-start bench configure).
pub const EXAMPLE_JWT_SECRET: &str = "example-jwt-secret-change-me-0123456789";

/// The text of `events/<name>`.
pub fn fixture(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The sample event `events/<name>` as the runtime decodes it.
pub fn lambda_request(name: &str) -> LambdaRequest {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("decoding {name}: {e}"))
}

/// Runs the sample HTTP event `name` through lambda_http's adapter around `router`
/// and returns what would go back to API Gateway: the status code and the JSON body.
pub async fn invoke(router: &Router, name: &str) -> (u64, Value) {
    let mut adapter = Adapter::from(router.clone());
    let event = LambdaEvent::new(lambda_request(name), Context::default());
    let response = match adapter.ready().await {
        Ok(ready) => ready.call(event).await,
        Err(e) => match e {},
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let response =
        serde_json::to_value(&response).unwrap_or_else(|e| panic!("encoding the response: {e}"));
    let body =
        serde_json::from_str(response["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
    (response["statusCode"].as_u64().unwrap_or(0), body)
}
