//! Fault injection: seeded error counts, exact injected latency, outage
//! windows. All on paused tokio time.
#![cfg(feature = "chaos")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::chaos::{ChaosLayer, Fault, InjectedFault, Latency};
use seawall::error::{CircuitOpen, RejectionKind, rejection_of};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

type Echo = tower::util::ServiceFn<fn(u32) -> std::future::Ready<Result<u32, BoxError>>>;

fn echo() -> Echo {
    tower::service_fn(|n| std::future::ready(Ok(n)))
}

/// Calls `svc` `n` times in order; returns the numbers of the failed calls.
async fn failed_calls<S>(svc: &mut S, n: u32) -> Vec<u32>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    let mut failed = Vec::new();
    for i in 0..n {
        match svc.ready().await.unwrap().call(i).await {
            Ok(v) => assert_eq!(v, i),
            Err(_) => failed.push(i),
        }
    }
    failed
}

fn errors(seed: u64, rate: f64) -> ChaosLayer {
    ChaosLayer::builder()
        .seed(seed)
        .error_rate(rate)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn error_count_is_exact_for_a_seed_and_reproducible() {
    let mut svc = errors(42, 0.3).layer(echo());
    let failed = failed_calls(&mut svc, 1000).await;
    assert_eq!(failed.len(), 326);
    assert_eq!(&failed[..8], &[3, 4, 7, 11, 18, 19, 26, 27]);

    // Same seed, same calls: the same calls fail.
    let mut again = errors(42, 0.3).layer(echo());
    assert_eq!(failed_calls(&mut again, 1000).await, failed);

    // Another seed: another pattern, about the same rate.
    let mut other = errors(43, 0.3).layer(echo());
    let other_failed = failed_calls(&mut other, 1000).await;
    assert_ne!(other_failed, failed);
    assert_eq!(other_failed.len(), 302);
}

#[tokio::test(start_paused = true)]
async fn rates_zero_and_one_are_exact() {
    let mut never = errors(1, 0.0).layer(echo());
    assert!(failed_calls(&mut never, 500).await.is_empty());
    let mut always = errors(1, 1.0).layer(echo());
    assert_eq!(failed_calls(&mut always, 500).await.len(), 500);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_call_sequence() {
    let layer = errors(42, 0.3);
    let mut a = layer.layer(echo());
    let mut b = a.clone();
    let mut failed = Vec::new();
    for i in 0..1000u32 {
        let svc = if i % 2 == 0 { &mut a } else { &mut b };
        if svc.ready().await.unwrap().call(i).await.is_err() {
            failed.push(i);
        }
    }
    let mut single = errors(42, 0.3).layer(echo());
    assert_eq!(failed, failed_calls(&mut single, 1000).await);
    assert_eq!(layer.calls(), 1000);
    assert_eq!(layer.seed(), 42);
}

#[tokio::test(start_paused = true)]
async fn injected_faults_do_not_call_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = tower::service_fn(move |n: u32| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, BoxError>(n))
    });
    let mut svc = errors(42, 0.3).layer(inner);
    let mut failed = 0;
    for i in 0..1000 {
        if svc.ready().await.unwrap().call(i).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 326);
    assert_eq!(calls.load(Ordering::SeqCst), 674);
}

/// A call planned to fail reserves nothing below: over a limit of one
/// shared by two clones, a clone whose call was faulted and which then sits
/// idle does not keep the other waiting; an outage fails fast while the
/// inner service is busy.
#[tokio::test(start_paused = true)]
async fn a_faulted_call_reserves_nothing_below() {
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(echo());
    let mut a = errors(1, 1.0).layer(limited.clone());
    let mut b = limited;
    let err = a.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.downcast_ref::<InjectedFault>().is_some());
    // `a` is idle now; `b`, beside it on the same limit, gets its call.
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        b.ready().await?.call(2).await
    })
    .await
    .expect("b waited for a permit a faulted call kept");
    assert_eq!(answer.unwrap(), 2);

    // An outage while the single permit is held elsewhere: fails at once.
    let plain = tower::limit::ConcurrencyLimitLayer::new(1).layer(echo());
    let mut holder = plain.clone();
    let mut down = ChaosLayer::builder()
        .outage(Duration::ZERO, Duration::from_secs(60))
        .build()
        .unwrap()
        .layer(plain);
    holder.ready().await.unwrap(); // holds the one permit
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        down.ready().await?.call(7).await
    })
    .await
    .expect("an outage waited for the inner service");
    let err = answer.unwrap_err();
    assert_eq!(
        err.downcast_ref::<InjectedFault>()
            .map(InjectedFault::fault),
        Some(Fault::Outage)
    );
}

#[tokio::test(start_paused = true)]
async fn default_error_is_an_injected_fault_not_a_rejection() {
    let mut svc = ChaosLayer::builder()
        .name("db-chaos")
        .error_rate(1.0)
        .build()
        .unwrap()
        .layer(echo());
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.to_string(), "injected error (db-chaos)");
    let fault = err.downcast_ref::<InjectedFault>().unwrap();
    assert_eq!(fault.fault(), Fault::Error);
    assert_eq!(fault.name(), "db-chaos");
    assert!(rejection_of(&err).is_none());
}

#[tokio::test(start_paused = true)]
async fn custom_errors_can_be_seawall_rejections() {
    let mut svc = ChaosLayer::builder()
        .seed(3)
        .error_rate(1.0)
        .error(|fault| {
            assert_eq!(fault, Fault::Error);
            CircuitOpen::new("db", Some(Duration::from_millis(1400))).into()
        })
        .build()
        .unwrap()
        .layer(echo());
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let r = rejection_of(&err).unwrap();
    assert_eq!(r.kind(), RejectionKind::CircuitOpen);
    assert_eq!(r.retry_after(), Some(Duration::from_millis(1400)));
}

#[tokio::test(start_paused = true)]
async fn fixed_latency_is_exact() {
    let mut svc = ChaosLayer::builder()
        .seed(9)
        .latency(Latency::Fixed(Duration::from_millis(250)))
        .build()
        .unwrap()
        .layer(echo());
    for i in 0..10 {
        let start = Instant::now();
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }
}

#[tokio::test(start_paused = true)]
async fn latency_comes_before_injected_failures_too() {
    let mut svc = ChaosLayer::builder()
        .seed(9)
        .error_rate(1.0)
        .latency(Latency::Fixed(Duration::from_millis(100)))
        .build()
        .unwrap()
        .layer(echo());
    let start = Instant::now();
    assert!(svc.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// Per-call delays of 200 calls, in order.
async fn delays(layer: ChaosLayer) -> Vec<Duration> {
    let mut svc = layer.layer(echo());
    let mut out = Vec::new();
    for i in 0..200 {
        let start = Instant::now();
        svc.ready().await.unwrap().call(i).await.unwrap();
        out.push(start.elapsed());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn uniform_latency_is_in_range_and_reproducible() {
    let layer = || {
        ChaosLayer::builder()
            .seed(5)
            .latency(Latency::Uniform {
                min: Duration::from_millis(10),
                max: Duration::from_millis(50),
            })
            .build()
            .unwrap()
    };
    let first = delays(layer()).await;
    assert!(
        first
            .iter()
            .all(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_millis(50))
    );
    // Paused time: the sleeps are exact to the millisecond tick.
    assert_eq!(first, delays(layer()).await);
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert!(distinct.len() > 30, "{} distinct delays", distinct.len());
}

#[tokio::test(start_paused = true)]
async fn latency_rate_delays_an_exact_share_of_calls() {
    let layer = ChaosLayer::builder()
        .seed(11)
        .latency(Latency::Fixed(Duration::from_millis(40)))
        .latency_rate(0.25)
        .build()
        .unwrap();
    let d = delays(layer).await;
    let delayed = d
        .iter()
        .filter(|d| **d == Duration::from_millis(40))
        .count();
    let instant = d.iter().filter(|d| d.is_zero()).count();
    assert_eq!(delayed + instant, 200);
    assert_eq!(delayed, 53);
}

#[tokio::test(start_paused = true)]
async fn exponential_latency_is_capped() {
    let layer = ChaosLayer::builder()
        .seed(2)
        .latency(Latency::Exponential {
            mean: Duration::from_millis(20),
            max: Duration::from_millis(60),
        })
        .build()
        .unwrap();
    let d = delays(layer).await;
    assert!(d.iter().all(|d| *d <= Duration::from_millis(60)));
    assert!(
        d.iter().any(|d| *d == Duration::from_millis(60)),
        "the cap is reached"
    );
    let mean = d.iter().sum::<Duration>() / 200;
    assert!(
        mean > Duration::from_millis(12) && mean < Duration::from_millis(24),
        "{mean:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn outage_window_boundaries_are_exact() {
    let mut svc = ChaosLayer::builder()
        .seed(1)
        .outage(Duration::from_secs(10), Duration::from_secs(20))
        .outage(Duration::from_secs(30), Duration::from_secs(31))
        .build()
        .unwrap()
        .layer(echo());
    let start = Instant::now();
    // (time since build, fails?)
    let plan = [
        (Duration::ZERO, false),
        (Duration::from_millis(9_999), false),
        (Duration::from_secs(10), true),
        (Duration::from_millis(15_000), true),
        (Duration::from_millis(19_999), true),
        (Duration::from_secs(20), false),
        (Duration::from_millis(29_999), false),
        (Duration::from_secs(30), true),
        (Duration::from_millis(30_999), true),
        (Duration::from_secs(31), false),
    ];
    for (i, (at, fails)) in plan.into_iter().enumerate() {
        tokio::time::advance((start + at) - Instant::now()).await;
        assert_eq!(Instant::now() - start, at);
        let result = svc.ready().await.unwrap().call(i as u32).await;
        match result {
            Ok(v) => assert!(!fails, "call at {at:?} should fail, got {v}"),
            Err(err) => {
                assert!(fails, "call at {at:?} should succeed, got {err}");
                let fault = err.downcast_ref::<InjectedFault>().unwrap();
                assert_eq!(fault.fault(), Fault::Outage);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn periodic_outage_repeats_exactly() {
    // Down 2 s every 10 s, starting 5 s after build.
    let mut svc = ChaosLayer::builder()
        .seed(1)
        .periodic_outage(
            Duration::from_secs(5),
            Duration::from_secs(2),
            Duration::from_secs(10),
        )
        .build()
        .unwrap()
        .layer(echo());
    // One call every 500 ms for 60 s: 121 calls.
    let mut failed_at = Vec::new();
    for i in 0..=120u32 {
        if svc.ready().await.unwrap().call(i).await.is_err() {
            failed_at.push(i * 500);
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    // Calls at 5.0, 5.5, 6.0, 6.5 s of every 10 s from 5 s on: 4 per period, 6 periods.
    assert_eq!(failed_at.len(), 24);
    assert_eq!(
        &failed_at[..8],
        &[5000, 5500, 6000, 6500, 15000, 15500, 16000, 16500]
    );
    assert_eq!(failed_at.last(), Some(&56500));
}

#[test]
fn builder_refuses_nonsense() {
    let msg = |r: Result<ChaosLayer, seawall::ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(ChaosLayer::builder().error_rate(1.5).build()),
        "invalid chaos configuration: error_rate must be in 0..=1, got 1.5"
    );
    assert_eq!(
        msg(ChaosLayer::builder().error_rate(-0.1).build()),
        "invalid chaos configuration: error_rate must be in 0..=1, got -0.1"
    );
    assert_eq!(
        msg(ChaosLayer::builder().error_rate(f64::NAN).build()),
        "invalid chaos configuration: error_rate must be in 0..=1, got NaN"
    );
    assert_eq!(
        msg(ChaosLayer::builder().latency_rate(2.0).build()),
        "invalid chaos configuration: latency_rate must be in 0..=1, got 2"
    );
    assert!(
        msg(ChaosLayer::builder()
            .latency(Latency::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_millis(1),
            })
            .build())
        .contains("min <= max")
    );
    assert!(
        msg(ChaosLayer::builder()
            .latency(Latency::Exponential {
                mean: Duration::from_millis(5),
                max: Duration::from_millis(1),
            })
            .build())
        .contains("max >= mean")
    );
    assert_eq!(
        msg(ChaosLayer::builder()
            .outage(Duration::from_secs(5), Duration::from_secs(5))
            .build()),
        "invalid chaos configuration: an outage window must end after it starts, got 5s..5s"
    );
    assert_eq!(
        msg(ChaosLayer::builder()
            .periodic_outage(
                Duration::ZERO,
                Duration::from_secs(10),
                Duration::from_secs(10)
            )
            .build()),
        "invalid chaos configuration: a periodic outage must be shorter than its period, got length 10s every 10s"
    );
    let mut many = ChaosLayer::builder();
    for i in 0..1025u64 {
        many = many.outage(Duration::from_secs(i), Duration::from_secs(i + 1));
    }
    assert!(msg(many.build()).contains("at most 1024"));
    assert_eq!(
        msg(ChaosLayer::builder()
            .error_rate(1.0)
            .latency_rate(0.5)
            .build()),
        "invalid chaos configuration: latency_rate 0.5 needs a latency to inject: set one with latency()"
    );
    assert!(
        ChaosLayer::builder()
            .error_rate(1.0)
            .latency(Latency::Fixed(Duration::from_millis(1)))
            .latency_rate(0.0)
            .build()
            .is_ok()
    );
}

/// Chaos under the HTTP rejection layer: injected `Overloaded` rejections
/// become 503s with `Retry-After`, the same calls as the plain error test.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn injected_rejections_become_http_answers() {
    use seawall::error::Overloaded;
    use seawall::http::RejectionResponseLayer;

    let chaos = ChaosLayer::builder()
        .seed(42)
        .error_rate(0.3)
        .error(|_| Overloaded::new("shed", Some(Duration::from_millis(250))).into())
        .build()
        .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(RejectionResponseLayer::new())
        .layer(chaos)
        .service_fn(|_req: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(String::from("ok")))
        });
    let (mut ok, mut unavailable) = (0, 0);
    for _ in 0..1000 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(res.headers()["retry-after"], "1");
                assert_eq!(res.body(), "overloaded");
                unavailable += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, unavailable), (674, 326));
}
