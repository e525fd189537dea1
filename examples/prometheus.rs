//! seawall's metrics in Prometheus: `seawall::observe::MetricsHook` feeds the
//! `metrics` facade, and `metrics-exporter-prometheus` serves them on a
//! loopback port.
//!
//! # Run
//!
//! ```text
//! cargo run --example prometheus --features metrics            # 127.0.0.1:9000/metrics
//! cargo run --example prometheus --features metrics -- 9100    # or PORT=9100
//! cargo run --example prometheus --features metrics -- 9000 --once
//! #   drive one scenario, print the seawall metrics, exit
//! curl -s 127.0.0.1:9000/metrics | grep seawall
//! ```
//!
//! It drives traffic (about 100 calls/s) through a rate limiter (50/s, burst
//! 10) and a circuit breaker in front of a backend that goes through an outage:
//! healthy for 2 s, failing 80 % of calls for 2 s, healthy again. The breaker
//! opens during the outage, probes after 1 s, and closes once the backend is
//! back; the limiter refuses the excess all along. The scenario then repeats,
//! until Ctrl-C.
//!
//! # Metric names
//!
//! One `Observer` holding one `MetricsHook`, given to every layer, reports
//! (names as Prometheus shows them, with recommended naming: dots become
//! underscores, counters end in `_total`; labels `layer` = the layer kind,
//! `name` = the instance name):
//!
//! | metric | type | extra labels | from |
//! |---|---|---|---|
//! | `seawall_calls_total` | counter | `outcome` (success, failure, overloaded, refused, ignored) | every layer that admits calls |
//! | `seawall_call_duration_seconds` (`_bucket`, `_sum`, `_count`) | histogram, seconds | `outcome` | same |
//! | `seawall_rejections_total` | counter | `reason` (rate_limited, circuit_open, …), `detail` (open, limit, …) | every layer that refuses |
//! | `seawall_state` | gauge, one state at 1 | `state` (closed, open, half_open, …) | circuit breaker |
//! | `seawall_retries_total` | counter | | retry |
//! | `seawall_retry_delay_seconds` (`_bucket`, `_sum`, `_count`) | histogram, seconds | | retry |
//! | `seawall_retry_gave_up_total` | counter | `reason` | retry |
//! | `seawall_retry_budget_exhausted_total` | counter | | retry |
//! | `seawall_limit` | gauge | | adaptive limit, bulkhead (from the start) |
//! | `seawall_input_ignored_total` | counter | `input`, `reason` | header-reading layers |
//! | `seawall_backend_errors_total` | counter | `backend`, `reason` | rate limit with Redis |
//!
//! This example's stack shows the first four. After one scenario (`--once`):
//!
//! ```text
//! seawall_calls_total{layer="circuit_breaker",name="backend",outcome="failure"} 12
//! seawall_calls_total{layer="circuit_breaker",name="backend",outcome="success"} 222
//! seawall_rejections_total{layer="circuit_breaker",name="backend",reason="circuit_open",detail="open"} 150
//! seawall_rejections_total{layer="rate_limit",name="api",reason="rate_limited",detail="limit"} 216
//! seawall_state{layer="circuit_breaker",name="backend",state="open"} 0
//! seawall_state{layer="circuit_breaker",name="backend",state="closed"} 1
//! seawall_state{layer="circuit_breaker",name="backend",state="half_open"} 0
//! seawall_call_duration_seconds_bucket{layer="circuit_breaker",name="backend",outcome="success",le="0.005"} 222
//! seawall_call_duration_seconds_sum{layer="circuit_breaker",name="backend",outcome="success"} 0.724153052
//! seawall_call_duration_seconds_count{layer="circuit_breaker",name="backend",outcome="success"} 222
//! ```
//!
//! Alert on `rate(seawall_rejections_total[5m])` by `reason`, and on
//! `seawall_state{state="open"} == 1`. A Grafana dashboard for these metrics
//! is in `examples/grafana/seawall-dashboard.json` (import it, pick the
//! Prometheus data source): breaker states, rejections by reason, calls by
//! outcome, latency, retries and the retry budget, the adaptive limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use seawall::observe::MetricsHook;
use seawall::rate_limit::{Quota, RateLimitLayer};
use seawall::{BoxError, Observer};
use tower::{ServiceBuilder, ServiceExt};

/// Installs the Prometheus recorder and its HTTP listener on `addr`.
fn install_prometheus(addr: SocketAddr) -> Result<PrometheusHandle, BoxError> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .with_recommended_naming(true)
        // Histograms with buckets (seconds) rather than summaries.
        .set_buckets(&[
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ])?
        .build()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(exporter);
    Ok(handle)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let port = args
        .next()
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let once = args.any(|a| a == "--once");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let prometheus = install_prometheus(addr)?;
    eprintln!("metrics on http://{addr}/metrics");

    // One observer for every layer.
    let observer = Observer::new(MetricsHook::new());

    // A backend that fails 80 % of calls while `outage` is set.
    let outage = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let backend = {
        let (outage, calls) = (outage.clone(), calls.clone());
        tower::service_fn(move |_req: ()| {
            let failing = outage.load(Ordering::Relaxed) == 1;
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if failing && n % 5 != 0 {
                    Err::<&str, BoxError>("backend unavailable".into())
                } else {
                    Ok("ok")
                }
            }
        })
    };

    let svc = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(Quota::per_second(50).burst(10))
                .name("api")
                .observer(observer.clone())
                .build()?,
        )
        .layer(
            CircuitBreakerLayer::builder()
                .window(SlidingWindow::count(20))
                .minimum_calls(10)
                .failure_rate_threshold(0.5)
                .open_duration(Duration::from_secs(1))
                .permitted_calls_in_half_open(3)
                .name("backend")
                .observer(observer.clone())
                .build()?,
        )
        .service(backend);

    loop {
        for (phase, failing) in [("healthy", 0), ("outage", 1), ("recovered", 0)] {
            eprintln!("backend {phase} for 2 s");
            outage.store(failing, Ordering::Relaxed);
            // About 100 calls/s for 2 s.
            for _ in 0..200 {
                let _ = svc.clone().oneshot(()).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        println!("{}\n", seawall_lines(&prometheus));
        if once {
            return Ok(());
        }
    }
}

/// The seawall lines of the Prometheus text.
fn seawall_lines(prometheus: &PrometheusHandle) -> String {
    prometheus
        .render()
        .lines()
        .filter(|l| l.starts_with("seawall_"))
        .collect::<Vec<_>>()
        .join("\n")
}
