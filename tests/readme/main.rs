//! The README's quick start, compiled and run: if this breaks, the README is wrong.
#![cfg(all(feature = "axum", feature = "rate-limit"))]

use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use seawall::http::RejectionResponseLayer;
use seawall::{Quota, ServerStack};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn quick_start_server_stack() -> Result<(), seawall::BoxError> {
    // --- README quick start begins ---
    let stack = ServerStack::builder("api")
        .total_budget(Duration::from_secs(5)) // no request may hold the server longer
        .handler_timeout(Duration::from_secs(2))
        .deadline_from_headers(|d| d.margin(Duration::from_millis(20))) // the caller's budget
        .rate_limit(Quota::per_second(100).burst(2), |r| r)
        .bulkhead(|b| b.max_concurrent(128))
        .build()?;

    let app: Router = Router::new()
        .route("/", get(|| async { "hello" }))
        // rejections become 429 / 503 / 504 with Retry-After; the error type stays Infallible
        .layer(
            ServiceBuilder::new()
                .layer(RejectionResponseLayer::new())
                .layer(stack),
        );
    // --- README quick start ends ---

    let get = || http::Request::get("/").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(get()).await?.status(), 200);
    assert_eq!(app.clone().oneshot(get()).await?.status(), 200);
    // The burst of 2 is spent: the third call is told to come back in 10 ms, rounded up to 1 s.
    let limited = app.clone().oneshot(get()).await?;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(10)).await;
    // A caller with 15 ms left, under the 20 ms margin: refused without running the handler.
    let late = http::Request::get("/")
        .header("grpc-timeout", "15m")
        .body(Body::empty())?;
    assert_eq!(app.oneshot(late).await?.status(), 504);
    Ok(())
}
