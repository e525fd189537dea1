//! The shared metrics hook: the `metrics` facade adapter, the `tracing` adapter,
//! the in-memory recorder and the observer plumbing.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall::RejectionKind;
use seawall::observe::{Event, EventKind, LayerKind, Observer, Recorder, State, TracingHook};

#[cfg(feature = "metrics")]
mod metrics_facade {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use seawall::observe::MetricsHook;
    use seawall::observe::{GiveUpReason, Outcome};

    /// (name, labels sorted, value) of one metric.
    type Metric = (String, Vec<(String, String)>, DebugValue);

    /// Every metric in a snapshot.
    fn snapshot(rec: &DebuggingRecorder) -> Vec<Metric> {
        rec.snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(ck, _, _, v)| {
                let key = ck.key();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                (key.name().to_owned(), labels, v)
            })
            .collect()
    }

    fn gauge(v: &DebugValue) -> f64 {
        match v {
            DebugValue::Gauge(g) => g.0,
            other => panic!("not a gauge: {other:?}"),
        }
    }

    #[test]
    fn state_gauge_has_exactly_one_state_at_one() {
        let rec = DebuggingRecorder::new();
        let obs = Observer::new(MetricsHook::new());
        metrics::with_local_recorder(&rec, || {
            let transitions = [
                (State::Closed, State::Closed),
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed),
            ];
            for (from, to) in transitions {
                obs.emit(
                    LayerKind::CircuitBreaker,
                    "payments",
                    EventKind::StateChanged {
                        from,
                        to,
                        failure_rate: Some(0.5),
                        slow_call_rate: None,
                    },
                );
                let states: Vec<(String, f64)> = snapshot(&rec)
                    .into_iter()
                    .filter(|(n, _, _)| n == "seawall.state")
                    .map(|(_, labels, v)| {
                        let state = labels.iter().find(|(k, _)| k == "state").unwrap().1.clone();
                        (state, gauge(&v))
                    })
                    .collect();
                assert_eq!(
                    states.len(),
                    State::all_for(LayerKind::CircuitBreaker).len()
                );
                let ones: Vec<_> = states.iter().filter(|(_, v)| *v == 1.0).collect();
                assert_eq!(
                    ones.len(),
                    1,
                    "exactly one state at 1 after {from:?}->{to:?}: {states:?}"
                );
                assert_eq!(ones[0].0, to.as_str());
                assert!(states.iter().all(|(_, v)| *v == 0.0 || *v == 1.0));
            }
        });
    }

    #[test]
    fn calls_rejections_and_durations_use_documented_names_and_labels() {
        let rec = DebuggingRecorder::new();
        let obs = Observer::new(MetricsHook::new());
        metrics::with_local_recorder(&rec, || {
            for _ in 0..3 {
                obs.emit(
                    LayerKind::Bulkhead,
                    "db",
                    EventKind::CallFinished {
                        outcome: Outcome::Success,
                        latency: Duration::from_millis(250),
                    },
                );
            }
            obs.emit(
                LayerKind::Bulkhead,
                "db",
                EventKind::Rejected {
                    reason: RejectionKind::BulkheadFull,
                    detail: "queue_full",
                    retry_after: None,
                },
            );
            obs.emit(
                LayerKind::Retry,
                "client",
                EventKind::RetryGaveUp {
                    attempts: 2,
                    reason: GiveUpReason::BudgetExhausted,
                },
            );
            obs.emit(
                LayerKind::AdaptiveLimit,
                "api",
                EventKind::LimitChanged { from: 20, to: 27 },
            );
        });
        let snap = snapshot(&rec);
        let find = |name: &str| {
            snap.iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("{name} missing: {snap:?}"))
        };
        let (_, labels, v) = find("seawall.calls");
        assert_eq!(
            labels,
            &vec![
                ("layer".to_owned(), "bulkhead".to_owned()),
                ("name".to_owned(), "db".to_owned()),
                ("outcome".to_owned(), "success".to_owned())
            ]
        );
        assert_eq!(v, &DebugValue::Counter(3));
        let (_, _, v) = find("seawall.call.duration.seconds");
        match v {
            DebugValue::Histogram(h) => {
                assert_eq!(h.len(), 3);
                assert!(h.iter().all(|x| x.0 == 0.25), "seconds, not ms: {h:?}");
            }
            other => panic!("{other:?}"),
        }
        let (_, labels, v) = find("seawall.rejections");
        assert!(labels.contains(&("reason".to_owned(), "bulkhead_full".to_owned())));
        assert_eq!(v, &DebugValue::Counter(1));
        let (_, labels, _) = find("seawall.retry.gave_up");
        assert!(labels.contains(&("reason".to_owned(), "budget_exhausted".to_owned())));
        let (_, _, v) = find("seawall.limit");
        assert_eq!(gauge(v), 27.0);
    }
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tracing_hook_levels_and_fields() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let obs = Observer::new(TracingHook::new());
    tracing::subscriber::with_default(subscriber, || {
        obs.emit(
            LayerKind::RateLimit,
            "api",
            EventKind::Rejected {
                reason: RejectionKind::RateLimited,
                detail: "",
                retry_after: Some(Duration::from_millis(400)),
            },
        );
        obs.emit(
            LayerKind::CircuitBreaker,
            "payments",
            EventKind::StateChanged {
                from: State::Closed,
                to: State::Open,
                failure_rate: Some(0.6),
                slow_call_rate: Some(0.0),
            },
        );
        // The open time over, then a failed probe: open again, about ten
        // times a second each through an outage; said at debug, not as
        // news each time.
        obs.emit(
            LayerKind::CircuitBreaker,
            "payments",
            EventKind::StateChanged {
                from: State::Open,
                to: State::HalfOpen,
                failure_rate: Some(1.0),
                slow_call_rate: Some(0.0),
            },
        );
        obs.emit(
            LayerKind::CircuitBreaker,
            "payments",
            EventKind::StateChanged {
                from: State::HalfOpen,
                to: State::Open,
                failure_rate: Some(1.0),
                slow_call_rate: Some(0.0),
            },
        );
        obs.emit(
            LayerKind::CircuitBreaker,
            "payments",
            EventKind::StateChanged {
                from: State::HalfOpen,
                to: State::Closed,
                failure_rate: Some(0.0),
                slow_call_rate: Some(0.0),
            },
        );
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("DEBUG"), "{}", lines[0]);
    assert!(lines[0].contains("reason=\"rate_limited\""), "{}", lines[0]);
    assert!(lines[0].contains("retry_after_s=0.4"), "{}", lines[0]);
    assert!(lines[0].contains("name=\"api\""), "{}", lines[0]);
    assert!(lines[1].starts_with(" WARN"), "{}", lines[1]);
    assert!(lines[1].contains("to=\"open\""), "{}", lines[1]);
    assert!(lines[2].starts_with("DEBUG"), "{}", lines[2]);
    assert!(lines[2].contains("open time over, probing"), "{}", lines[2]);
    assert!(lines[3].starts_with("DEBUG"), "{}", lines[3]);
    assert!(
        lines[3].contains("probe failed, open again"),
        "{}",
        lines[3]
    );
    assert!(lines[4].starts_with(" INFO"), "{}", lines[4]);
    assert!(lines[4].contains("to=\"closed\""), "{}", lines[4]);
}

#[tokio::test(start_paused = true)]
async fn recorder_keeps_owned_copies_with_tokio_time() {
    let rec = Recorder::new();
    let obs = Observer::new(rec.clone());
    let t0 = tokio::time::Instant::now();
    obs.emit(LayerKind::Retry, "r", EventKind::CallStarted);
    tokio::time::sleep(Duration::from_secs(2)).await;
    obs.emit(
        LayerKind::Retry,
        "r",
        EventKind::RetryScheduled {
            attempt: 2,
            delay: Duration::from_millis(30),
        },
    );
    let events = rec.take();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].at - t0, Duration::ZERO);
    assert_eq!(events[1].at - t0, Duration::from_secs(2));
    assert_eq!(
        events[1].kind,
        EventKind::RetryScheduled {
            attempt: 2,
            delay: Duration::from_millis(30)
        }
    );
    assert!(rec.is_empty());
}

#[test]
fn one_observer_many_layers() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let obs = Observer::new(move |e: &Event<'_>| {
        s.lock()
            .unwrap()
            .push((e.layer, e.name.to_owned(), e.kind.as_str()));
    });
    let a = obs.clone();
    let b = obs.clone();
    a.emit(LayerKind::CircuitBreaker, "db", EventKind::CallStarted);
    b.emit(LayerKind::Bulkhead, "db-pool", EventKind::BudgetExhausted);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (LayerKind::CircuitBreaker, "db".to_owned(), "call_started"),
            (
                LayerKind::Bulkhead,
                "db-pool".to_owned(),
                "budget_exhausted"
            ),
        ]
    );
}
