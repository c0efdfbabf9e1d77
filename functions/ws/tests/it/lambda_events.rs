//! The sample WebSocket events in `events/` through the type the Lambda runtime
//! decodes them into (`ApiGatewayWebsocketProxyRequest`), the handler, and the
//! `ApiGatewayProxyResponse` JSON that would go back to API Gateway.

use lambda_http::aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use logstream_core::ids::JobId;
use logstream_testkit::fixtures::{lambda_clients, seed_job};
use logstream_testkit::lambda::{EXAMPLE_JWT_SECRET, fixture};
use logstream_ws::WsState;
use serde_json::Value;

const CONNECTION: &str = "L0SM9cOFvHcCIhw=";

fn event(name: &str) -> ApiGatewayWebsocketProxyRequest {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("decoding {name}: {e}"))
}

async fn invoke(state: &WsState, event: ApiGatewayWebsocketProxyRequest) -> (u64, Value) {
    let response = serde_json::to_value(logstream_ws::handle(state, event).await).unwrap();
    let body = response["body"]
        .as_str()
        .map(|b| serde_json::from_str(b).unwrap())
        .unwrap_or(Value::Null);
    (response["statusCode"].as_u64().unwrap(), body)
}

#[tokio::test]
async fn sample_websocket_events_connect_ping_and_disconnect() {
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let url = redis.url();
    let clients = lambda_clients(&[
        ("REDIS_URL", &url),
        ("LOGSTREAM_JWT_SECRET", EXAMPLE_JWT_SECRET),
    ]);
    let store = clients.store().unwrap();
    let job = JobId::parse("build-1234").unwrap();
    seed_job(&store, &job, "user_2abc").await;
    let state = WsState::build(&clients).unwrap();

    let (code, body) = invoke(&state, event("ws.connect.json")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(store.connections(&job).await.unwrap(), [CONNECTION]);

    let (code, body) = invoke(&state, event("ws.default.json")).await;
    assert_eq!((code, body), (200, serde_json::json!({"type": "pong"})));

    let (code, _) = invoke(&state, event("ws.disconnect.json")).await;
    assert_eq!(code, 200);
    assert!(store.connections(&job).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_connect_event_with_a_bad_token_or_another_users_job_is_refused() {
    let redis = logstream_testkit::redis_server::shared().unwrap();
    let url = redis.url();
    let state = WsState::build(&lambda_clients(&[
        ("REDIS_URL", &url),
        (
            "LOGSTREAM_JWT_SECRET",
            "a-different-secret-so-the-sample-token-fails",
        ),
    ]))
    .unwrap();
    let (code, body) = invoke(&state, event("ws.connect.json")).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    let state = WsState::build(&lambda_clients(&[
        ("REDIS_URL", &url),
        ("LOGSTREAM_JWT_SECRET", EXAMPLE_JWT_SECRET),
    ]))
    .unwrap();
    let other: ApiGatewayWebsocketProxyRequest =
        serde_json::from_str(&fixture("ws.connect.json").replace("build-1234", "no-such-job"))
            .unwrap();
    let (code, body) = invoke(&state, other).await;
    assert_eq!(code, 404, "{body}");
}
