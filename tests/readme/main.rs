//! The README's quick start, compiled and run: if this breaks, the README is wrong.
#![cfg(all(feature = "axum", feature = "rate-limit"))]

use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use seawall::ServerStack;
use tower::ServiceExt;

#[tokio::test(start_paused = true)]
async fn quick_start_server_stack() -> Result<(), seawall::BoxError> {
    // --- README quick start begins ---
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5)) // no request may hold the server longer
        .build()?; // refuses nonsense: a handler timeout above the budget, …

    let app: Router = Router::new()
        .route("/", get(|| async { "hello" }))
        // rejections become 429 / 503 / 504 with Retry-After; the error type stays Infallible
        .layer(stack);
    // --- README quick start ends ---

    let get = || http::Request::get("/").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(get()).await?.status(), 200);
    // A caller with no time left: refused without running the handler.
    let late = http::Request::get("/")
        .header("x-request-timeout-ms", "0")
        .body(Body::empty())?;
    assert_eq!(app.clone().oneshot(late).await?.status(), 504);
    // A caller asking for more than the budget gets the budget.
    let greedy = http::Request::get("/")
        .header("grpc-timeout", "1H")
        .body(Body::empty())?;
    assert_eq!(app.oneshot(greedy).await?.status(), 200);
    Ok(())
}
