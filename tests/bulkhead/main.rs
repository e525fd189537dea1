#![cfg(feature = "bulkhead")]
//! Bulkhead behaviour, in paused time: exact admissions, rejections (which
//! ones, why, when), queue orders, CoDel, drops at every point, backpressure.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::join_all;
use seawall::BoxError;
use seawall::bulkhead::{Bulkhead, BulkheadHandle, BulkheadLayer, QueueOrder};
use seawall::deadline::{self, Deadline};
use seawall::error::{RejectionKind, rejection_of};
use seawall::observe::{EventKind, LayerKind, Observer, Outcome, Recorder};
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

type Log = Arc<Mutex<Vec<(u32, Duration)>>>;

/// A request: an id and how long the dependency takes to answer it.
#[derive(Clone, Copy, Debug)]
struct Req(u32, u64);

/// Carries no deadline of its own (the task-local one applies).
impl seawall::HasDeadline for Req {}

/// The protected dependency: logs (id, time) when called (i.e. admitted),
/// then sleeps for the request's work time and answers its id.
#[derive(Clone)]
struct Dep {
    log: Log,
    t0: Instant,
}

impl Service<Req> for Dep {
    type Response = u32;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u32, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, Req(id, work): Req) -> Self::Future {
        self.log.lock().unwrap().push((id, self.t0.elapsed()));
        Box::pin(async move {
            sleep(Duration::from_millis(work)).await;
            Ok(id)
        })
    }
}

struct Fixture {
    svc: Bulkhead<Dep>,
    handle: BulkheadHandle,
    log: Log,
    rec: Recorder,
    t0: Instant,
}

impl Fixture {
    fn new(builder: seawall::bulkhead::BulkheadBuilder) -> Self {
        let rec = Recorder::new();
        let layer = builder
            .name("db")
            .observer(Observer::new(rec.clone()))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let log = Log::default();
        Fixture {
            svc: layer.layer(Dep {
                log: log.clone(),
                t0,
            }),
            handle: layer.handle(),
            log,
            rec,
            t0,
        }
    }

    /// `call` (after `poll_ready`) without polling the response future.
    fn call(&mut self, id: u32, work_ms: u64) -> seawall::bulkhead::ResponseFuture<Dep, Req> {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(self.svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        self.svc.call(Req(id, work_ms))
    }

    fn admitted(&self) -> Vec<(u32, Duration)> {
        self.log.lock().unwrap().clone()
    }

    fn admitted_ids(&self) -> Vec<u32> {
        self.admitted().into_iter().map(|(id, _)| id).collect()
    }

    fn rejections(&self) -> Vec<&'static str> {
        self.rec
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Rejected {
                    reason: RejectionKind::BulkheadFull | RejectionKind::DeadlineExceeded,
                    detail,
                    ..
                } => Some(detail),
                _ => None,
            })
            .collect()
    }

    fn idle(&self) -> bool {
        self.handle.available_permits() == self.handle.max_concurrent()
            && self.handle.queue_len() == 0
            && self.handle.in_flight() == 0
    }
}

/// Awaits `fut`, returning its result and the time (since `t0`) it finished.
async fn timed<F: Future<Output = Result<u32, BoxError>>>(
    t0: Instant,
    fut: F,
) -> (Result<u32, BoxError>, Duration) {
    let r = fut.await;
    (r, t0.elapsed())
}

fn assert_bulkhead_full(r: &Result<u32, BoxError>) {
    let err = r.as_ref().expect_err("expected a rejection");
    let view = rejection_of(err).expect("a seawall rejection");
    assert_eq!(view.kind(), RejectionKind::BulkheadFull);
    assert_eq!(view.name(), "db");
    assert!(view.is_local());
    // 100 ms (a full queue) or `max_wait` (a wait without a place), at
    // least 100 ms, stretched by [1, 1.5).
    let hint = view
        .retry_after()
        .expect("a full bulkhead says when to come back");
    assert!(hint >= 100 * MS, "{hint:?}");
}

/// A wait ended by the request's deadline: `DeadlineExceeded` (504), not
/// `BulkheadFull` (nothing is left to come back with).
fn assert_deadline_exceeded(r: &Result<u32, BoxError>) {
    let err = r.as_ref().expect_err("expected a rejection");
    let view = rejection_of(err).expect("a seawall rejection");
    assert_eq!(view.kind(), RejectionKind::DeadlineExceeded);
    assert_eq!(view.name(), "db");
    assert_eq!(view.retry_after(), None);
    assert!(view.is_local(), "never sent: a local refusal");
}

#[tokio::test(start_paused = true)]
async fn bulkhead_full_says_when_to_come_back_jittered() {
    // (max_queue, max_wait, base): a request that finds the places and the
    // queue taken comes back in 100 ms, queue or not (with `max_wait`'s
    // 1 s, a caller with a budget of 1 s never came back).
    for (queue, max_wait, base) in [
        (0, Duration::from_secs(1), 100 * MS),
        (1, 40 * MS, 100 * MS),
        (1, Duration::from_secs(1), 100 * MS),
    ] {
        let b = BulkheadLayer::builder()
            .max_concurrent(1)
            .max_queue(queue)
            .max_wait(max_wait);
        let mut f = Fixture::new(b);
        let _running = f.call(0, 10_000);
        let queued = (queue > 0).then(|| f.call(99, 1));
        let mut hints = Vec::new();
        for i in 1..=20 {
            let err = f.call(i, 1).await.expect_err("full");
            let view = rejection_of(&err).unwrap();
            assert_eq!(view.kind(), RejectionKind::BulkheadFull);
            let hint = view.retry_after().unwrap();
            assert!(
                hint >= base && hint < base.mul_f64(1.5),
                "{hint:?} for base {base:?}"
            );
            hints.push(hint);
        }
        hints.sort();
        hints.dedup();
        assert!(
            hints.len() > 10,
            "jittered: {} distinct hints of 20",
            hints.len()
        );
        // A waiter that waited `max_wait` without a place is told
        // `max_wait` (at least 100 ms): that is how long waiting takes.
        if let Some(queued) = queued {
            let err = queued.await.expect_err("waited max_wait");
            let hint = rejection_of(&err).unwrap().retry_after().unwrap();
            let base = max_wait.max(100 * MS);
            assert!(
                hint >= base && hint < base.mul_f64(1.5),
                "{hint:?} after waiting {max_wait:?}"
            );
        }
    }
}

fn polled_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test(start_paused = true)]
async fn ten_permits_queue_five_of_twenty_simultaneous_calls() {
    let mut f = Fixture::new(
        BulkheadLayer::builder()
            .max_concurrent(10)
            .max_queue(5)
            .max_wait(Duration::from_secs(1)),
    );
    let futs: Vec<_> = (0..20).map(|i| f.call(i, 100)).collect();

    // Admission is decided in `call`: 0..10 run, 10..15 wait, 15..20 refused.
    assert_eq!(f.admitted_ids(), (0..10).collect::<Vec<_>>());
    assert_eq!(f.handle.available_permits(), 0);
    assert_eq!(f.handle.in_flight(), 10);
    assert_eq!(f.handle.queue_len(), 5);
    assert_eq!(f.rejections(), vec!["queue_full"; 5]);

    let t0 = f.t0;
    let results = join_all(futs.into_iter().map(|fut| timed(t0, fut))).await;
    for (i, (r, at)) in results.iter().enumerate() {
        match i {
            0..10 => {
                assert_eq!(r.as_ref().unwrap(), &(i as u32));
                assert_eq!(*at, 100 * MS, "call {i}");
            }
            10..15 => {
                assert_eq!(r.as_ref().unwrap(), &(i as u32));
                assert_eq!(*at, 200 * MS, "call {i}");
            }
            _ => {
                assert_bulkhead_full(r);
                assert_eq!(*at, Duration::ZERO, "call {i} is refused at once");
            }
        }
    }
    // The five waiters were admitted the moment the first ten finished.
    let admitted = f.admitted();
    assert_eq!(admitted.len(), 15);
    assert!(
        admitted[10..]
            .iter()
            .enumerate()
            .all(|(k, &(id, at))| id == 10 + k as u32 && at == 100 * MS)
    );
    assert_eq!(
        f.rec
            .count(|e| e.layer == LayerKind::Bulkhead && e.kind == EventKind::CallStarted),
        15
    );
    assert_eq!(
        f.rec.count(|e| matches!(
            e.kind,
            EventKind::CallFinished { outcome: Outcome::Success, latency } if latency == 100 * MS
        )),
        15
    );
    assert_eq!(f.rejections().len(), 5);
    assert!(f.idle());
}

#[tokio::test(start_paused = true)]
async fn waiters_give_up_at_exactly_max_wait() {
    let mut f = Fixture::new(
        BulkheadLayer::builder()
            .max_concurrent(1)
            .max_queue(3)
            .max_wait(30 * MS),
    );
    let t0 = f.t0;
    let running = tokio::spawn(timed(t0, f.call(0, 100)));
    let early: Vec<_> = (1..3)
        .map(|i| tokio::spawn(timed(t0, f.call(i, 1))))
        .collect();
    sleep(10 * MS).await;
    let late = tokio::spawn(timed(t0, f.call(3, 1)));
    assert_eq!(f.handle.queue_len(), 3);

    for h in early {
        let (r, at) = h.await.unwrap();
        assert_bulkhead_full(&r);
        assert_eq!(at, 30 * MS);
    }
    let (r, at) = late.await.unwrap();
    assert_bulkhead_full(&r);
    assert_eq!(at, 40 * MS, "queued at 10 ms, gave up 30 ms later");
    assert_eq!(f.handle.queue_len(), 0);

    let (r, at) = running.await.unwrap();
    assert_eq!((r.unwrap(), at), (0, 100 * MS));
    assert_eq!(f.admitted_ids(), vec![0]);
    assert_eq!(f.rejections(), vec!["max_wait"; 3]);
    assert!(f.idle());
}

#[tokio::test(start_paused = true)]
async fn the_request_deadline_wins_when_it_comes_before_max_wait() {
    let mut f = Fixture::new(
        BulkheadLayer::builder()
            .max_concurrent(1)
            .max_queue(4)
            .max_wait(100 * MS),
    );
    let t0 = f.t0;
    let running = f.call(0, 500);

    // Deadline in scope around `call` (20 ms < max_wait).
    let a = deadline::sync_scope(Deadline::after(20 * MS), || f.call(1, 1));
    // Deadline in scope around the future only (35 ms < max_wait).
    let b = deadline::scope(Deadline::after(35 * MS), f.call(2, 1));
    // Deadline later than max_wait: max_wait wins.
    let c = deadline::sync_scope(Deadline::after(300 * MS), || f.call(3, 1));
    // Deadline already passed: refused at once, never queued.
    let d = deadline::sync_scope(Deadline::at(t0), || f.call(4, 1));
    assert_eq!(f.handle.queue_len(), 3);

    let (ra, rb, rc, rd) = tokio::join!(timed(t0, a), timed(t0, b), timed(t0, c), timed(t0, d));
    for r in [&ra.0, &rb.0, &rd.0] {
        assert_deadline_exceeded(r);
    }
    assert_bulkhead_full(&rc.0);
    assert_eq!(
        (ra.1, rb.1, rc.1, rd.1),
        (20 * MS, 35 * MS, 100 * MS, Duration::ZERO)
    );
    assert_eq!(
        f.rejections(),
        vec!["deadline", "deadline", "deadline", "max_wait"],
        "d at 0 ms, a at 20, b at 35, c at 100"
    );
    drop(running);
    assert!(f.idle());
}

#[tokio::test(start_paused = true)]
async fn zero_queue_rejects_at_once() {
    let mut f = Fixture::new(BulkheadLayer::builder().max_concurrent(2));
    let t0 = f.t0;
    let futs: Vec<_> = (0..5).map(|i| f.call(i, 50)).collect();
    assert_eq!(f.handle.queue_len(), 0);
    assert_eq!(f.rejections(), vec!["queue_full"; 3]);
    let results = join_all(futs.into_iter().map(|fut| timed(t0, fut))).await;
    assert_eq!(results[0].0.as_ref().unwrap(), &0);
    assert_eq!(results[1].0.as_ref().unwrap(), &1);
    for (r, at) in &results[2..] {
        assert_bulkhead_full(r);
        assert_eq!(*at, Duration::ZERO);
    }
    assert!(f.idle());
}

async fn admission_order(order: QueueOrder) -> Vec<(u32, Duration)> {
    let mut f = Fixture::new(
        BulkheadLayer::builder()
            .max_concurrent(1)
            .max_queue(5)
            .queue_order(order),
    );
    let futs: Vec<_> = (0..6).map(|i| f.call(i, 10)).collect();
    assert_eq!(f.handle.queue_len(), 5);
    let results = join_all(futs).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(f.idle());
    f.admitted()
}

#[tokio::test(start_paused = true)]
async fn fifo_admits_oldest_first_lifo_newest_first() {
    let at = |ids: [u32; 6]| -> Vec<(u32, Duration)> {
        ids.iter()
            .enumerate()
            .map(|(k, &id)| (id, 10 * k as u32 * MS))
            .collect()
    };
    assert_eq!(
        admission_order(QueueOrder::Fifo).await,
        at([0, 1, 2, 3, 4, 5])
    );
    assert_eq!(
        admission_order(QueueOrder::Lifo).await,
        at([0, 5, 4, 3, 2, 1])
    );
    // CoDel is FIFO while the queue drains within an interval (50 ms < 100 ms).
    assert_eq!(
        admission_order(QueueOrder::Codel).await,
        at([0, 1, 2, 3, 4, 5])
    );
    assert_eq!(
        admission_order(QueueOrder::AdaptiveLifo).await,
        at([0, 1, 2, 3, 4, 5])
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_futures_at_every_point_returns_every_permit() {
    let mut f = Fixture::new(
        BulkheadLayer::builder()
            .max_concurrent(1)
            .max_queue(4)
            .max_wait(Duration::from_secs(10)),
    );
    let mut f0 = Box::pin(f.call(0, 100)); // running
    let mut f1 = Box::pin(f.call(1, 100)); // will be dropped just after being granted
    let f2 = Box::pin(f.call(2, 100)); // will be dropped while queued
    let mut f3 = Box::pin(f.call(3, 100)); // will be dropped while running
    let mut f4 = Box::pin(f.call(4, 100)); // completes
    assert_eq!((f.handle.in_flight(), f.handle.queue_len()), (1, 4));
    for fut in [&mut f0, &mut f1, &mut f3, &mut f4] {
        assert!(polled_once(fut.as_mut()).is_pending());
    }

    // Queued, dropped: leaves the queue.
    drop(f2);
    assert_eq!((f.handle.in_flight(), f.handle.queue_len()), (1, 3));

    // The running call finishes: its permit is handed to f1 (not yet polled).
    advance(100 * MS).await;
    assert!(matches!(polled_once(f0.as_mut()), Poll::Ready(Ok(0))));
    assert_eq!((f.handle.in_flight(), f.handle.queue_len()), (1, 2));

    // Granted, dropped before it ran: the permit passes on to f3.
    drop(f1);
    assert_eq!((f.handle.in_flight(), f.handle.queue_len()), (1, 1));
    assert!(polled_once(f3.as_mut()).is_pending());
    assert_eq!(f.admitted_ids(), vec![0, 3]);

    // Running, dropped: the permit passes on to f4.
    drop(f3);
    assert_eq!((f.handle.in_flight(), f.handle.queue_len()), (1, 0));
    let (r, at) = timed(f.t0, f4).await;
    assert_eq!((r.unwrap(), at), (4, 200 * MS));
    assert_eq!(f.admitted_ids(), vec![0, 3, 4]);

    // Admitted on the fast path and dropped without ever being polled.
    let never_polled = f.call(5, 1);
    assert_eq!(f.handle.available_permits(), 0);
    drop(never_polled);

    assert!(f.idle());
    assert!(f.rejections().is_empty());
}

#[tokio::test(start_paused = true)]
async fn random_drops_never_leak_a_permit() {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    for seed in 0..20u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let order = [
            QueueOrder::Fifo,
            QueueOrder::Lifo,
            QueueOrder::Codel,
            QueueOrder::AdaptiveLifo,
        ][seed as usize % 4];
        let mut f = Fixture::new(
            BulkheadLayer::builder()
                .max_concurrent(3)
                .max_queue(4)
                .max_wait(40 * MS)
                .queue_order(order),
        );
        let mut live: Vec<Pin<Box<_>>> = Vec::new();
        for step in 0..200u32 {
            match rng.random_range(0..4) {
                0 | 1 => {
                    let fut = Box::pin(f.call(step, rng.random_range(1..30)));
                    live.push(fut);
                }
                2 if !live.is_empty() => {
                    let k = rng.random_range(0..live.len());
                    drop(live.swap_remove(k));
                }
                _ => advance(rng.random_range(0..10) * MS).await,
            }
            live.retain_mut(|fut| polled_once(fut.as_mut()).is_pending());
            assert!(f.handle.queue_len() <= 4);
            assert!(f.handle.in_flight() <= 3);
        }
        drop(live);
        assert!(f.idle(), "seed {seed}: {:?}", f.handle);
    }
}

#[tokio::test(start_paused = true)]
async fn codel_absorbs_a_short_burst() {
    // 12 calls at once on 4 permits: 8 wait 10 to 20 ms, well above the 5 ms
    // target, but the queue drains within the 100 ms interval: nobody is shed.
    let mut f = Fixture::new(
        BulkheadLayer::builder()
            .max_concurrent(4)
            .max_queue(100)
            .codel(),
    );
    let futs: Vec<_> = (0..12).map(|i| f.call(i, 10)).collect();
    assert_eq!(f.handle.queue_len(), 8);
    let results = join_all(futs.into_iter().map(|fut| timed(f.t0, fut))).await;
    let finished: Vec<_> = results
        .iter()
        .map(|(r, at)| (*r.as_ref().unwrap(), *at))
        .collect();
    let expect: Vec<_> = (0..12).map(|i| (i, 10 * (1 + i / 4) * MS)).collect();
    assert_eq!(finished, expect);
    assert!(f.rejections().is_empty());
    assert!(f.idle());
}

#[tokio::test(start_paused = true)]
async fn codel_makes_a_standing_queue_fail_fast() {
    // The one permit is held for a second by a stuck call. Waiters arrive over
    // time; the queue never drains.
    let run = |order: QueueOrder| async move {
        let mut f = Fixture::new(
            BulkheadLayer::builder()
                .max_concurrent(1)
                .max_queue(100)
                .max_wait(Duration::from_secs(2))
                .queue_order(order),
        );
        let t0 = f.t0;
        let stuck = tokio::spawn(timed(t0, f.call(0, 1000)));
        let mut waiters = Vec::new();
        let arrivals = [
            (1, 0),
            (2, 0),
            (3, 0),
            (4, 50),
            (5, 98),
            (6, 101),
            (7, 104),
            (8, 200),
        ];
        for (id, arrive_ms) in arrivals {
            let now = t0.elapsed();
            if now < arrive_ms * MS {
                sleep(arrive_ms * MS - now).await;
            }
            waiters.push((id, tokio::spawn(timed(t0, f.call(id, 1)))));
        }
        let mut gave_up = Vec::new();
        for (id, h) in waiters {
            let (r, at) = h.await.unwrap();
            if r.is_err() {
                assert_bulkhead_full(&r);
            }
            gave_up.push((id, r.is_err(), at));
        }
        let (r, at) = stuck.await.unwrap();
        assert_eq!((r.unwrap(), at), (0, 1000 * MS));
        assert!(f.idle());
        (gave_up, f.rejections())
    };

    // CoDel: the queue has been non-empty since 0 ms. At 100 ms (one interval)
    // it is standing: waiters 1-4 (older than the 5 ms target) fail at once;
    // 5, 6 and 7 arrive into the standing queue and fail after exactly the
    // target. 7 leaving empties the queue, so 8 (at 200 ms) starts a new busy
    // period and may wait a full interval.
    let (gave_up, details) = run(QueueOrder::Codel).await;
    assert_eq!(
        gave_up,
        vec![
            (1, true, 100 * MS),
            (2, true, 100 * MS),
            (3, true, 100 * MS),
            (4, true, 100 * MS),
            (5, true, 103 * MS),
            (6, true, 106 * MS),
            (7, true, 109 * MS),
            (8, true, 300 * MS),
        ]
    );
    assert_eq!(details, vec!["codel"; 8]);

    // FIFO: every waiter sits out its full 2 s max_wait; the stuck call ends at
    // 1 s and hands its permit to waiter 1.
    let (gave_up, details) = run(QueueOrder::Fifo).await;
    assert_eq!(gave_up[0], (1, false, 1001 * MS));
    assert_eq!(gave_up[1], (2, false, 1002 * MS));
    assert_eq!(gave_up.len(), 8);
    assert!(gave_up.iter().all(|&(_, failed, _)| !failed));
    assert!(details.is_empty());
}

#[tokio::test(start_paused = true)]
async fn adaptive_lifo_serves_the_newest_once_the_queue_stands() {
    let run = |order: QueueOrder| async move {
        let mut f = Fixture::new(
            BulkheadLayer::builder()
                .max_concurrent(1)
                .max_queue(10)
                .codel_target(50 * MS)
                .codel_interval(100 * MS)
                .queue_order(order),
        );
        let t0 = f.t0;
        let mut all = vec![tokio::spawn(timed(t0, f.call(0, 130)))];
        for (id, arrive_ms) in [(1, 0), (2, 60), (3, 105), (4, 108)] {
            let now = t0.elapsed();
            if now < arrive_ms * MS {
                sleep(arrive_ms * MS - now).await;
            }
            all.push(tokio::spawn(timed(t0, f.call(id, 100))));
        }
        for h in all {
            let _ = h.await.unwrap();
        }
        assert!(f.idle());
        (f.admitted(), f.rejections())
    };
    // When the permit frees at 130 ms the queue (3, 4) has stood since 0 ms,
    // longer than the interval: adaptive LIFO admits the newest, 4; 3 gives up
    // at 155 ms (105 + 50 ms target). Plain CoDel admits 3; 4 gives up at 158.
    let (admitted, rejected) = run(QueueOrder::AdaptiveLifo).await;
    assert_eq!(admitted, vec![(0, Duration::ZERO), (4, 130 * MS)]);
    assert_eq!(rejected, vec!["codel"; 3]);
    let (admitted, rejected) = run(QueueOrder::Codel).await;
    assert_eq!(admitted, vec![(0, Duration::ZERO), (3, 130 * MS)]);
    assert_eq!(rejected, vec!["codel"; 3]);
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_is_pending_instead_of_queueing() {
    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(1)
        .max_queue(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let t0 = Instant::now();
    let log = Log::default();
    let mut a = layer.layer(Dep {
        log: log.clone(),
        t0,
    });
    let mut b = a.clone();
    let mut c = a.clone();
    let mut cx = Context::from_waker(Waker::noop());

    // a reserves the only permit in poll_ready.
    assert!(matches!(a.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(handle.available_permits(), 0);
    // b waits (Pending, in the queue); c finds the queue full.
    assert!(b.poll_ready(&mut cx).is_pending());
    assert_eq!(handle.queue_len(), 1);
    match c.poll_ready(&mut cx) {
        Poll::Ready(Err(e)) => {
            assert_eq!(
                rejection_of(&e).unwrap().kind(),
                RejectionKind::BulkheadFull
            )
        }
        other => panic!("expected queue_full, got {other:?}"),
    }

    // b is woken, with the permit, when a's call completes.
    let b_ready = tokio::spawn(async move {
        b.ready().await.unwrap();
        let at = t0.elapsed();
        (b, at)
    });
    let r = a.call(Req(0, 40)).await.unwrap();
    assert_eq!(r, 0);
    let (b, at) = b_ready.await.unwrap();
    assert_eq!(at, 40 * MS);
    assert_eq!((handle.available_permits(), handle.queue_len()), (0, 0));

    // A reserved permit is released when the service is dropped; a clone
    // never copies it.
    let b2 = b.clone();
    drop(b2);
    assert_eq!(handle.available_permits(), 0);
    drop(b);
    assert_eq!(handle.available_permits(), 1);

    // A waiting clone that is dropped leaves the queue.
    assert!(matches!(a.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut d = a.clone();
    assert!(d.poll_ready(&mut cx).is_pending());
    assert_eq!(handle.queue_len(), 1);
    drop(d);
    assert_eq!(handle.queue_len(), 0);
    drop(a);
    assert_eq!((handle.available_permits(), handle.queue_len()), (1, 0));
}

/// Backpressure mode with the defaults (no `max_queue`): every clone
/// polled while the permits are taken waits, none fails `poll_ready` (a
/// `Buffer` or a balancer would take that for a dead service); each gets
/// the permit in turn.
#[tokio::test(start_paused = true)]
async fn backpressure_mode_without_a_queue_bound_never_fails_readiness() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let t0 = Instant::now();
    let log = Log::default();
    let mut a = layer.layer(Dep {
        log: log.clone(),
        t0,
    });
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(a.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let waiting: Vec<_> = (1..=3u32)
        .map(|i| {
            let mut clone = a.clone();
            assert!(clone.poll_ready(&mut cx).is_pending(), "clone {i}");
            tokio::spawn(async move {
                clone.ready().await.unwrap();
                let r = clone.call(Req(i, 10)).await.unwrap();
                (r, t0.elapsed())
            })
        })
        .collect();
    assert_eq!(handle.queue_len(), 3);
    assert_eq!(a.call(Req(0, 10)).await.unwrap(), 0);
    let mut done = Vec::new();
    for w in waiting {
        done.push(w.await.unwrap());
    }
    assert_eq!(done, vec![(1, 20 * MS), (2, 30 * MS), (3, 40 * MS)]);
    assert_eq!((handle.available_permits(), handle.queue_len()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn services_and_clones_from_one_layer_share_one_bulkhead() {
    let layer = BulkheadLayer::builder().max_concurrent(2).build().unwrap();
    let handle = layer.handle();
    let t0 = Instant::now();
    let dep = Dep {
        log: Log::default(),
        t0,
    };
    let mut one = layer.layer(dep.clone());
    let mut two = layer.layer(dep.clone());
    let mut one_clone = one.clone();
    let a = one.ready().await.unwrap().call(Req(0, 10));
    let b = two.ready().await.unwrap().call(Req(1, 10));
    let c = one_clone.ready().await.unwrap().call(Req(2, 10));
    assert_eq!(handle.in_flight(), 2);
    assert_eq!(one.handle().in_flight(), 2);
    let (a, b, c) = tokio::join!(a, b, c);
    assert_eq!((a.unwrap(), b.unwrap()), (0, 1));
    assert!(c.is_err());
    assert_eq!(handle.available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_and_release_the_permit() {
    let rec = Recorder::new();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .observer(Observer::new(rec.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|_: ()| async {
        sleep(7 * MS).await;
        Err::<(), _>(std::io::Error::other("boom"))
    }));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert!(rejection_of(&err).is_none());
    assert_eq!(handle.available_permits(), 1);
    assert_eq!(
        rec.count(|e| e.kind
            == EventKind::CallFinished {
                outcome: Outcome::Failure,
                latency: 7 * MS
            }),
        1
    );
}

#[test]
fn builder_rejects_nonsense() {
    let msg = |b: seawall::bulkhead::BulkheadBuilder| b.build().unwrap_err().to_string();
    assert_eq!(
        msg(BulkheadLayer::builder().max_concurrent(0)),
        "invalid bulkhead configuration: max_concurrent must be in 1..=1000000, got 0"
    );
    assert_eq!(
        msg(BulkheadLayer::builder().max_queue(2_000_000)),
        "invalid bulkhead configuration: max_queue must be at most 1000000, got 2000000"
    );
    assert!(msg(BulkheadLayer::builder().max_wait(Duration::ZERO)).contains("max_wait"));
    assert!(msg(BulkheadLayer::builder().codel_target(200 * MS)).contains("codel_target"));
    assert!(
        msg(BulkheadLayer::builder().codel_interval(Duration::from_secs(7200)))
            .contains("codel_interval")
    );

    let layer = BulkheadLayer::builder().build().unwrap();
    let h = layer.handle();
    assert_eq!(layer.name(), "bulkhead");
    assert_eq!((h.max_concurrent(), h.max_queue()), (25, 0));
    assert_eq!(h.queue_order(), QueueOrder::Fifo);
}

#[test]
fn rejects_without_a_runtime_when_nothing_would_wait() {
    // The admitted path and a full queue need no tokio runtime.
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let mut svc = layer.layer(tower::service_fn(|x: u8| {
        std::future::ready(Ok::<_, Infallible>(x))
    }));
    let mut cx = Context::from_waker(Waker::noop());
    let mut first = pin!(svc.call(1));
    let mut second = pin!(svc.call(2));
    assert!(matches!(second.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
    assert!(matches!(first.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
    assert_eq!(layer.handle().available_permits(), 1);
}

/// Many tasks on a multi-thread runtime hammer 2 permits through a queue,
/// abandoning some calls right after their first poll. No timer is involved;
/// a lost wakeup would hang the run (the 60 s guard below only turns such a
/// hang into a failure, it measures nothing).
#[test]
fn multi_thread_hammering_loses_no_wakeup_and_no_permit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // (CoDel orders shed on real time here, by design; they share the hand-off code.)
    for order in [QueueOrder::Fifo, QueueOrder::Lifo] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .unwrap();
            let layer = BulkheadLayer::builder()
                .max_concurrent(2)
                .max_queue(64)
                .max_wait(Duration::from_secs(3600))
                .queue_order(order)
                .build()
                .unwrap();
            let handle = layer.handle();
            let in_flight = Arc::new(AtomicUsize::new(0));
            let max_seen = Arc::new(AtomicUsize::new(0));
            let (i2, m2) = (in_flight.clone(), max_seen.clone());
            let svc = layer.layer(tower::service_fn(move |x: u32| {
                let (i, m) = (i2.clone(), m2.clone());
                async move {
                    // Counts calls in flight, also when the call is dropped midway.
                    struct InFlight(Arc<AtomicUsize>);
                    impl Drop for InFlight {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                    let _guard = InFlight(i);
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, Infallible>(x)
                }
            }));
            let ok = rt.block_on(async move {
                let tasks: Vec<_> = (0..16u32)
                    .map(|t| {
                        let mut svc = svc.clone();
                        tokio::spawn(async move {
                            let mut ok = 0;
                            for k in 0..300u32 {
                                let fut = svc.ready().await.unwrap().call(k);
                                if (t + k) % 7 == 0 {
                                    // Abandon it after one poll (queued, granted or running).
                                    let mut fut = pin!(fut);
                                    let _ = futures::poll!(fut.as_mut());
                                } else {
                                    assert_eq!(fut.await.unwrap(), k);
                                    ok += 1;
                                }
                            }
                            ok
                        })
                    })
                    .collect();
                let mut ok = 0;
                for t in tasks {
                    ok += t.await.unwrap();
                }
                ok
            });
            tx.send((
                ok,
                max_seen.load(Ordering::SeqCst),
                handle.available_permits(),
                handle.queue_len(),
            ))
            .unwrap();
        });
        let expected_ok = (0..16u32)
            .flat_map(|t| (0..300u32).map(move |k| (t + k) % 7 != 0))
            .filter(|&b| b)
            .count();
        let (ok, max_seen, available, queued) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("hammering hung: a wakeup or a permit was lost");
        assert_eq!(ok, expected_ok, "{order:?}");
        assert!(max_seen <= 2, "{order:?}: {max_seen} calls in flight");
        assert_eq!((available, queued), (2, 0), "{order:?}");
    }
}

/// A reload during a running load: 50 calls of 1 s in flight under a
/// limit of 50, shrunk to 20 (the 50 finish; new calls are refused until
/// fewer than 20 are in flight), then grown to 80 (admitted at once, the
/// queue's waiters first).
#[tokio::test(start_paused = true)]
async fn the_limit_changes_at_run_time_without_breaking_calls_in_flight() {
    let rec = Recorder::new();
    let layer = BulkheadLayer::builder()
        .max_concurrent(50)
        .max_queue(10)
        .max_wait(Duration::from_secs(10))
        .observer(Observer::from(rec.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let slow = tower::service_fn(|x: u32| async move {
        sleep(Duration::from_secs(1)).await;
        Ok::<u32, BoxError>(x)
    });
    let svc = layer.layer(slow);
    let first: Vec<_> = (0..50)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 50);

    handle.set_max_concurrent(20).unwrap();
    assert_eq!((handle.max_concurrent(), handle.in_flight()), (20, 50));
    // Every call in flight finishes; a new one waits in the queue.
    let waiting = tokio::spawn(svc.clone().oneshot(99));
    for f in first {
        assert!(f.await.unwrap().is_ok());
    }
    assert_eq!(waiting.await.unwrap().unwrap(), 99);
    assert_eq!((handle.in_flight(), handle.available_permits()), (0, 20));
    // Now 20 at once, and the 21st waits.
    let twenty: Vec<_> = (0..21)
        .map(|i| tokio::spawn(svc.clone().oneshot(i)))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queue_len()), (20, 1));

    // Grown to 80: the waiter is admitted at once.
    handle.set_max_concurrent(80).unwrap();
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queue_len()), (21, 0));
    for t in twenty {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(handle.available_permits(), 80);

    // A refused reload changes nothing; the limit in place again reports
    // nothing.
    assert!(handle.set_max_concurrent(0).is_err());
    handle.set_max_concurrent(80).unwrap();
    assert_eq!(handle.max_concurrent(), 80);
    let changes: Vec<(usize, usize)> = rec
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::LimitChanged { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
    // The limit as built (a gauge has it from the start), then each change.
    assert_eq!(changes, vec![(50, 50), (50, 20), (20, 80)]);
}

/// Ready until its first call starts; every call takes 100 ms.
#[derive(Clone)]
struct UnreadyAfterFirstCall(Arc<Mutex<u32>>);

impl Service<u32> for UnreadyAfterFirstCall {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if *self.0.lock().unwrap() == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, x: u32) -> Self::Future {
        *self.0.lock().unwrap() += 1;
        Box::pin(async move {
            sleep(Duration::from_millis(100)).await;
            Ok(x)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_uses_the_instance_polled_ready_and_waits_for_nothing_else() {
    let calls = Arc::new(Mutex::new(0));
    let svc = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_queue(1)
        .build()
        .unwrap()
        .layer(UnreadyAfterFirstCall(calls.clone()));
    let (mut a, mut b) = (svc.clone(), svc);
    // Both polled ready before either call; then the service stops being
    // ready, and the second call waits in the queue with the instance that
    // was polled ready.
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let start = Instant::now();
    let first = a.call(1);
    let second = b.call(2);
    let (x, y) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(first, second)
    })
    .await
    .expect("the queued call is made when the first one ends");
    assert_eq!((x.unwrap(), y.unwrap()), (1, 2));
    // Admitted at 100 ms, answered at 200 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(*calls.lock().unwrap(), 2);
}
