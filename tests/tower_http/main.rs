//! The HTTP server preset among tower-http's layers, in the order the
//! README gives ("Among tower-http's layers"): the trace, CORS, the body
//! limit, a cheap authentication and compression outside it, the preset
//! innermost, and a health route in none of them, over a real axum server
//! on loopback. What is refused outside it (a missing credential, a body
//! over the limit, a CORS preflight) is answered as before while the
//! preset sheds, and is no call of its; its refusals carry CORS headers
//! and reach the trace; the health route answers.
#![cfg(all(feature = "axum", feature = "full"))]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::error::RejectionKind;
use seawall::observe::{EventKind, LayerKind, Recorder};
use seawall::stack::ServerStack;
use tower::ServiceExt;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

type Hyper = Client<HttpConnector, Full<Bytes>>;

/// The cheap refusal of an application: no credential, `401`.
async fn auth(req: Request, next: Next) -> Response {
    if req.headers().contains_key(http::header::AUTHORIZATION) {
        next.run(req).await
    } else {
        http::StatusCode::UNAUTHORIZED.into_response()
    }
}

fn request(addr: SocketAddr, method: &str, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::ORIGIN, "http://app.example")
}

fn authorized(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    request(addr, "GET", path)
        .header(http::header::AUTHORIZATION, "Bearer t")
        .header(http::header::ACCEPT_ENCODING, "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn the_preset_innermost_among_tower_http_layers() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let rec = Recorder::new();
    // One call at a time, no burst: the second call in flight is shed.
    let stack = ServerStack::http("api")
        .total_budget(Duration::from_secs(5))
        .adaptive_limit(|l| {
            l.algorithm(
                seawall::shed::Gradient2::builder()
                    .initial_limit(1)
                    .min_limit(1)
                    .max_limit(1)
                    .build()
                    .unwrap(),
            )
            .burst(Duration::ZERO)
        })
        .observer(rec.clone())
        .build()
        .unwrap();
    // Every status the trace saw, outermost.
    let traced = Arc::new(Mutex::new(Vec::new()));
    let t = traced.clone();
    let r = release.clone();
    // Told when the held call is in its handler.
    let entered = Arc::new(tokio::sync::Notify::new());
    let e = entered.clone();
    let app = Router::new()
        .route(
            "/hold",
            get(move || {
                let (r, e) = (r.clone(), e.clone());
                async move {
                    e.notify_one();
                    let _permit = r.acquire().await.unwrap();
                    "released ".repeat(100)
                }
            })
            .post(|body: Bytes| async move { body.len().to_string() }),
        )
        // Innermost first: each `layer` call wraps the ones before.
        .layer(stack)
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn(auth))
        .layer(RequestBodyLimitLayer::new(1024))
        .layer(CorsLayer::permissive())
        .layer(TraceLayer::new_for_http().on_response(
            move |res: &Response<_>, _: Duration, _: &tracing::Span| {
                t.lock().unwrap().push(res.status().as_u16());
            },
        ))
        // After the layers: in none of them.
        .route("/health", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client: Hyper = Client::builder(TokioExecutor::new()).build_http();

    // The first call holds the one place; the next is shed.
    let held = tokio::spawn(client.clone().oneshot(authorized(addr, "/hold")));
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the first call reaches its handler");
    let shed = client
        .clone()
        .oneshot(authorized(addr, "/hold"))
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    // Its refusal carries CORS's header, so a browser can read it and its
    // `Retry-After`.
    assert_eq!(shed.headers()["access-control-allow-origin"], "*");
    assert_eq!(shed.headers()["retry-after"], "1");

    // While it sheds, what the layers outside it refuse is refused as
    // before, and none of it reaches the preset.
    let no_credential = request(addr, "GET", "/hold")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        client
            .clone()
            .oneshot(no_credential)
            .await
            .unwrap()
            .status(),
        401
    );
    let oversize = request(addr, "POST", "/hold")
        .header(http::header::AUTHORIZATION, "Bearer t")
        .header(http::header::CONTENT_LENGTH, "4096")
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    let oversize = client.clone().oneshot(oversize).await.unwrap();
    assert_eq!(oversize.status(), 413);
    assert_eq!(oversize.headers()["access-control-allow-origin"], "*");
    let health = request(addr, "GET", "/health")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.clone().oneshot(health).await.unwrap().status(), 200);
    let preflight = request(addr, "OPTIONS", "/hold")
        .header(http::header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let preflight = client.clone().oneshot(preflight).await.unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    release.add_permits(1);
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status(), 200);
    // Compression, outside the preset, still compresses its answers.
    assert_eq!(held.headers()["content-encoding"], "gzip");
    let zipped = held.into_body().collect().await.unwrap().to_bytes();
    assert!(zipped.len() < 900, "{} bytes", zipped.len());

    // The preset saw the held call and the shed one, and refused the
    // second; the trace saw every answer, its refusal included.
    let refused = rec.count(|e| {
        e.layer == LayerKind::AdaptiveLimit
            && matches!(
                e.kind,
                EventKind::Rejected {
                    reason: RejectionKind::Overloaded,
                    ..
                }
            )
    });
    assert_eq!(refused, 1);
    let started = rec
        .count(|e| e.layer == LayerKind::AdaptiveLimit && matches!(e.kind, EventKind::CallStarted));
    assert_eq!(started, 1, "the held call");
    let mut traced = traced.lock().unwrap().clone();
    traced.sort_unstable();
    // The held call, the preflight (answered by CORS, inside the trace),
    // the missing credential, the body over the limit, the refusal.
    assert_eq!(traced, [200, 200, 401, 413, 503]);
}
