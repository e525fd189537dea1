//! The HTTP client preset around a `reqwest::Client`, through the adapter
//! the README gives ("A reqwest client"), against a real axum server on
//! loopback: answers and their bodies come through, the deadline is sent,
//! a failing dependency opens the breaker as with hyper (during the 7th
//! call, after 20 attempts), and a `POST` that timed out is not sent again.
#![cfg(all(feature = "axum", feature = "full"))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use seawall::BoxError;
use seawall::error::{RejectionKind, rejection_of};
use seawall::observe::State;
use seawall::stack::{ClientStack, HttpClient};
use tower::{Layer, Service, ServiceExt};

/// `reqwest::Client` as a tower service of `http` requests and answers,
/// which the HTTP client preset takes (the README's adapter).
#[derive(Clone)]
struct Reqwest(reqwest::Client);

impl<B> Service<http::Request<B>> for Reqwest
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, reqwest::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), reqwest::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::wrap))?;
            Ok(http::Response::from(client.execute(req).await?))
        })
    }
}

/// A server whose `/ok` answers with the deadline it was sent, `/fail`
/// with `500`, and `/hang` (a `POST`) never; it counts its calls.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (h1, h2, h3) = (hits.clone(), hits.clone(), hits.clone());
    let app = Router::new()
        .route(
            "/ok",
            get(move |headers: http::HeaderMap| async move {
                h1.fetch_add(1, Ordering::SeqCst);
                headers
                    .get("x-request-timeout-ms")
                    .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
            }),
        )
        .route(
            "/fail",
            get(move || async move {
                h2.fetch_add(1, Ordering::SeqCst);
                (http::StatusCode::INTERNAL_SERVER_ERROR, "broken")
            }),
        )
        .route(
            "/hang",
            axum::routing::post(move || async move {
                h3.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn request(method: &str, addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap()
}

#[tokio::test]
async fn the_http_preset_around_reqwest() {
    let (addr, hits) = server().await;
    let stack = ClientStack::http("dep")
        .total_budget(Duration::from_millis(600))
        .build()
        .unwrap();
    let client: HttpClient<Reqwest> = stack.layer(Reqwest(reqwest::Client::new()));

    // An answer and its body come through; the deadline went with it.
    let res = client
        .clone()
        .oneshot(request("GET", addr, "/ok"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let sent: u64 = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
        .unwrap()
        .parse()
        .unwrap();
    assert!((250..=300).contains(&sent), "sent {sent} ms");

    // A POST that hangs ends at the budget and is not sent again.
    hits.store(0, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let err = client
        .clone()
        .oneshot(request("POST", addr, "/hang"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(
            rejection_of(&err).map(|r| r.kind()),
            Some(RejectionKind::AttemptTimeout | RejectionKind::DeadlineExceeded)
        ),
        "{err}"
    );
    assert!(waited < Duration::from_millis(700), "{waited:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent once");

    // A dependency answering 500 (to a stack of its own, its window
    // empty): passed on until the breaker opens, during the 7th call,
    // after 20 attempts; then refused here.
    let stack = ClientStack::http("dep")
        .total_budget(Duration::from_millis(600))
        .build()
        .unwrap();
    let breaker = stack.breaker_handle();
    let client: HttpClient<Reqwest> = stack.layer(Reqwest(reqwest::Client::new()));
    hits.store(0, Ordering::SeqCst);
    let mut answered = 0;
    for _ in 0..20 {
        if breaker.state() == State::Open {
            break;
        }
        match client.clone().oneshot(request("GET", addr, "/fail")).await {
            Ok(res) => {
                assert_eq!(res.status(), 500);
                answered += 1;
            }
            Err(e) => {
                let e: BoxError = e;
                assert_eq!(
                    rejection_of(&e).map(|r| r.kind()),
                    Some(RejectionKind::CircuitOpen)
                );
            }
        }
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(answered, 6);
    assert_eq!(hits.load(Ordering::SeqCst), 20);
    let err = client
        .clone()
        .oneshot(request("GET", addr, "/fail"))
        .await
        .unwrap_err();
    assert_eq!(
        rejection_of(&err).map(|r| r.kind()),
        Some(RejectionKind::CircuitOpen)
    );
}
