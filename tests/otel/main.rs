#![cfg(all(
    feature = "opentelemetry",
    feature = "circuit-breaker",
    feature = "rate-limit",
    feature = "shed"
))]
//! seawall's events as OpenTelemetry sees them: `OtelHook` on a meter of the
//! real SDK, read back through the SDK's in-memory exporter. A breaker that
//! opens, a rate limiter that refuses and an adaptive limit that closes a
//! window report the same events to the hook and to a `Recorder`; the
//! instruments carry OpenTelemetry names, units and descriptions,
//! `error.type` on failures and refusals, and one state at 1.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use seawall::BoxError;
use seawall::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use seawall::observe::{EventKind, Observer, OtelHook, Recorder};
use seawall::rate_limit::{Quota, RateLimitLayer};
use seawall::shed::AdaptiveLimitLayer;
use tower::{ServiceBuilder, ServiceExt};

/// One data point: its attributes and value (counters and gauges) or count
/// (histograms).
#[derive(Debug)]
struct Point {
    attrs: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
struct Instrument {
    kind: &'static str,
    unit: String,
    description: String,
    points: Vec<Point>,
    /// A histogram's bucket boundaries.
    bounds: Vec<f64>,
}

fn attrs<'a>(kv: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> BTreeMap<String, String> {
    kv.map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

fn read(exporter: &InMemoryMetricExporter) -> BTreeMap<String, Instrument> {
    let mut out = BTreeMap::new();
    let finished = exporter.get_finished_metrics().unwrap();
    let last = finished.last().expect("an export");
    for scope in last.scope_metrics() {
        for m in scope.metrics() {
            // One data point: its attributes and value (a histogram's count).
            macro_rules! points {
                ($kind:literal, $data:expr, $value:ident) => {
                    (
                        $kind,
                        $data
                            .data_points()
                            .map(|p| Point {
                                attrs: attrs(p.attributes()),
                                value: p.$value() as f64,
                            })
                            .collect(),
                    )
                };
            }
            let bounds = match m.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                    .data_points()
                    .next()
                    .map(|p| p.bounds().collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let (kind, points) = match m.data() {
                AggregatedMetrics::U64(MetricData::Sum(s)) => points!("counter", s, value),
                AggregatedMetrics::U64(MetricData::Gauge(g)) => points!("gauge", g, value),
                AggregatedMetrics::I64(MetricData::Gauge(g)) => points!("gauge", g, value),
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    points!("histogram", h, count)
                }
                other => panic!("unexpected data for {}: {other:?}", m.name()),
            };
            out.insert(
                m.name().to_owned(),
                Instrument {
                    kind,
                    unit: m.unit().to_owned(),
                    description: m.description().to_owned(),
                    points,
                    bounds,
                },
            );
        }
    }
    out
}

fn total(i: &Instrument, filter: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    i.points
        .iter()
        .filter(|p| filter(&p.attrs))
        .map(|p| p.value)
        .sum()
}

#[tokio::test(start_paused = true)]
async fn opentelemetry_sees_the_same_events_with_its_names() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let recorder = Recorder::new();
    let observer = Observer::new((OtelHook::new(&provider.meter("seawall")), recorder.clone()));

    let breaker = CircuitBreakerLayer::builder()
        .name("backend")
        .window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .observer(observer.clone())
        .build()
        .unwrap();
    let limit = RateLimitLayer::builder(Quota::per_second(30))
        .name("api")
        .observer(observer.clone())
        .build()
        .unwrap();
    let adaptive = AdaptiveLimitLayer::builder()
        .name("server")
        .window(Duration::from_millis(100))
        .min_window_samples(1)
        .observer(observer.clone())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(limit.clone())
        .layer(breaker)
        .service(tower::service_fn(|fail: bool| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if fail {
                Err::<(), BoxError>("down".into())
            } else {
                Ok(())
            }
        }));
    for i in 0..40 {
        let _ = svc.clone().oneshot(i >= 2).await;
    }
    // A server behind the adaptive limit: 30 calls of 5 ms, one at a time,
    // close its 100 ms windows.
    let server = ServiceBuilder::new()
        .layer(adaptive)
        .service(tower::service_fn(|_: ()| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<(), BoxError>(())
        }));
    for _ in 0..30 {
        server.clone().oneshot(()).await.unwrap();
    }
    limit.set_quota(Quota::per_second(60)).unwrap();
    // Built and never called: its counters are there at zero.
    let _idle = CircuitBreakerLayer::builder()
        .name("idle")
        .observer(observer.clone())
        .build()
        .unwrap();

    provider.force_flush().unwrap();
    let got = read(&exporter);
    let idle = |i: &Instrument, key: &str| -> Vec<(String, f64)> {
        let mut v: Vec<_> = i
            .points
            .iter()
            .filter(|p| p.attrs.get("seawall.name").is_some_and(|n| n == "idle"))
            .map(|p| (p.attrs.get(key).cloned().unwrap_or_default(), p.value))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(
        idle(&got["seawall.calls"], "seawall.outcome"),
        ["failure", "ignored", "overloaded", "refused", "success"]
            .map(|o| (o.to_owned(), 0.0))
            .to_vec()
    );
    assert_eq!(
        idle(&got["seawall.rejections"], "seawall.rejection.detail"),
        ["forced_open", "half_open_full", "open"]
            .map(|d| (d.to_owned(), 0.0))
            .to_vec()
    );
    let recorded = |f: &dyn Fn(&EventKind) -> bool| recorder.count(|e| f(&e.kind)) as f64;

    for (name, kind, unit) in [
        ("seawall.calls", "counter", "{call}"),
        ("seawall.call.duration", "histogram", "s"),
        ("seawall.rejections", "counter", "{request}"),
        ("seawall.state", "gauge", "{state}"),
        ("seawall.limit", "gauge", "{call}"),
        ("seawall.limit.inflight", "gauge", "{call}"),
        ("seawall.reconfigurations", "counter", "{reload}"),
    ] {
        let i = got
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {:?}", got.keys()));
        assert_eq!((i.kind, i.unit.as_str()), (kind, unit), "{name}");
        assert!(i.description.len() > 10, "{name} has a description");
    }

    // The same events: every finished call, refusal and reload the
    // recorder saw is counted once.
    let calls = &got["seawall.calls"];
    assert_eq!(
        total(calls, |_| true),
        recorded(&|k| matches!(k, EventKind::CallFinished { .. }))
    );
    assert_eq!(
        total(&got["seawall.call.duration"], |_| true),
        total(calls, |_| true)
    );
    // Durations in seconds, in buckets made for seconds (1 ms to 30 s; the
    // SDK's own, 0 to 10 000, are for milliseconds).
    let bounds = &got["seawall.call.duration"].bounds;
    assert_eq!((bounds.first(), bounds.last()), (Some(&0.001), Some(&30.0)));
    // error.type on what failed, not on what succeeded.
    assert!(
        total(calls, |a| a.get("seawall.outcome").map(String::as_str)
            == Some("failure")
            && a.get("error.type").map(String::as_str) == Some("failure"))
            > 0.0
    );
    assert!(
        calls.points.iter().all(
            |p| (p.attrs["seawall.outcome"] == "success") != p.attrs.contains_key("error.type")
        )
    );
    let rejections = &got["seawall.rejections"];
    assert_eq!(
        total(rejections, |_| true),
        recorded(&|k| matches!(k, EventKind::Rejected { .. }))
    );
    assert!(
        total(rejections, |a| a["error.type"] == "circuit_open"
            && a["seawall.name"] == "backend")
            > 0.0
    );
    assert!(
        total(rejections, |a| a["error.type"] == "rate_limited"
            && a["seawall.name"] == "api")
            > 0.0
    );
    assert_eq!(
        total(&got["seawall.reconfigurations"], |a| a["seawall.name"]
            == "api"),
        1.0
    );
    // The adaptive limit's windows: the limit and the peak in flight of the
    // last one (one call at a time here).
    assert!(recorded(&|k| matches!(k, EventKind::LimitSampled { .. })) >= 1.0);
    assert_eq!(
        total(&got["seawall.limit.inflight"], |a| a["seawall.name"]
            == "server"),
        1.0
    );
    assert!(total(&got["seawall.limit"], |a| a["seawall.name"] == "server") >= 1.0);
    // The breaker's state: one point per state, exactly one at 1 (open).
    let states: Vec<_> = got["seawall.state"]
        .points
        .iter()
        .filter(|p| p.attrs["seawall.name"] == "backend")
        .map(|p| (p.attrs["seawall.state"].clone(), p.value))
        .collect();
    assert!(states.len() >= 3, "{states:?}");
    let ones: Vec<_> = states.iter().filter(|(_, v)| *v == 1.0).collect();
    assert_eq!(ones.len(), 1, "{states:?}");
    assert_eq!(ones[0].0, "open");
}
