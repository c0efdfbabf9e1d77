//! A router as the Lambda runtime serves it in concurrent mode (Lambda Managed
//! Instances: `AWS_LAMBDA_MAX_CONCURRENCY` invocations at once in one process).
//!
//! `lambda_http::run_concurrent` hands the answers between tasks, so it asks for a
//! response type that is `Sync`, which axum's streaming body is not. The buffered
//! runtime reads an answer whole before sending it anyway: [`buffered`] does that first,
//! with lambda_http's own conversion (text or base64 by content type), so what API
//! Gateway receives is what `lambda_http::run` would have sent.

use std::convert::Infallible;

use axum::Router;
use lambda_http::tower::ServiceExt;
use lambda_http::{Body, IntoResponse, Request, Response};

/// `router`, answering with whole, `Sync` responses.
pub fn buffered(
    router: Router,
) -> impl lambda_http::tower::Service<
    Request,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    lambda_http::tower::service_fn(move |request: Request| {
        let router = router.clone();
        async move {
            let answer = match router.oneshot(request).await {
                Ok(answer) => answer,
                Err(never) => match never {},
            };
            Ok(answer.into_response().await)
        }
    })
}
