//! The replica scenario: ten replicas behind tower's p2c balancer, one
//! client stack above it; one replica fails, then three, then all recover,
//! then one turns slow (10 times the latency). Three ways to protect the
//! set: the client stack's shared breaker alone, a breaker per replica
//! (the breaker's defaults, in backpressure mode so that an open one
//! reads as not ready), and outlier ejection (`EjectionLayer`, defaults).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::eject::EjectionLayer;
use seawall::stack::ClientStack;
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service, ServiceExt};

/// Replicas in the set.
pub const REPLICAS: usize = 10;

/// How the set is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// The client stack above the balancer, its breaker shared by the set.
    SharedBreaker,
    /// Plus a breaker per replica (backpressure mode).
    PerReplicaBreakers,
    /// Plus outlier ejection per replica.
    Ejection,
}

impl Protection {
    /// Every way, in table order.
    pub const ALL: [Protection; 3] = [
        Protection::SharedBreaker,
        Protection::PerReplicaBreakers,
        Protection::Ejection,
    ];

    /// The label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Protection::SharedBreaker => "shared breaker",
            Protection::PerReplicaBreakers => "per-replica breakers",
            Protection::Ejection => "ejection",
        }
    }
}

/// One phase: which replicas are broken (fail in 2 ms) and which are slow.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    /// Its name in tables.
    pub name: &'static str,
    /// How long it lasts.
    pub secs: u64,
    /// Replicas failing every call.
    pub broken: usize,
    /// Replica 3 answers in 10 times the latency.
    pub slow: bool,
}

/// The scenario.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// Requests per second, evenly spaced.
    pub rate: u32,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// Each request's deadline.
    pub deadline: Duration,
}

impl Replicas {
    /// The example's scenario.
    pub fn full() -> Self {
        Replicas {
            rate: 500,
            phases: vec![
                Phase {
                    name: "healthy",
                    secs: 10,
                    broken: 0,
                    slow: false,
                },
                Phase {
                    name: "1 broken",
                    secs: 15,
                    broken: 1,
                    slow: false,
                },
                Phase {
                    name: "3 broken",
                    secs: 15,
                    broken: 3,
                    slow: false,
                },
                Phase {
                    name: "recovered",
                    secs: 15,
                    broken: 0,
                    slow: false,
                },
                Phase {
                    name: "1 slow",
                    secs: 25,
                    broken: 0,
                    slow: true,
                },
            ],
            deadline: Duration::from_secs(1),
        }
    }

    /// `[from, to)` of phase `i`, in seconds.
    pub fn bounds(&self, i: usize) -> (u64, u64) {
        let from: u64 = self.phases[..i].iter().map(|p| p.secs).sum();
        (from, from + self.phases[i].secs)
    }

    fn total(&self) -> u64 {
        self.phases.iter().map(|p| p.secs).sum()
    }

    fn phase_at(&self, secs: u64) -> Phase {
        let mut from = 0;
        for p in &self.phases {
            if secs < from + p.secs {
                return *p;
            }
            from += p.secs;
        }
        *self.phases.last().expect("phases")
    }
}

/// What one replica saw, per second.
struct Counts {
    calls: Vec<AtomicU64>,
    while_broken: Vec<AtomicU64>,
}

#[derive(Clone)]
struct Replica {
    id: usize,
    start: Instant,
    scenario: Arc<Replicas>,
    counts: Arc<Vec<Counts>>,
}

impl Service<u64> for Replica {
    type Response = u64;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        let sec = self.start.elapsed().as_secs();
        let phase = self.scenario.phase_at(sec);
        let broken = self.id < phase.broken;
        let slow = phase.slow && self.id == 3;
        let c = &self.counts[self.id];
        let s = (sec as usize).min(c.calls.len() - 1);
        c.calls[s].fetch_add(1, Ordering::Relaxed);
        if broken {
            c.while_broken[s].fetch_add(1, Ordering::Relaxed);
        }
        Box::pin(async move {
            if broken {
                tokio::time::sleep(Duration::from_millis(2)).await;
                return Err("replica down".into());
            }
            let ms = if slow { 100 } else { 10 };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(req)
        })
    }
}

/// A protection's run.
pub struct ReplicaRun {
    /// The protection.
    pub protection: Protection,
    /// Per second of arrival: (requests, good).
    pub per_sec: Vec<(u64, u64)>,
    /// Per replica, per second: calls received.
    pub calls: Vec<Vec<u64>>,
    /// Per replica, per second: calls received while broken.
    pub while_broken: Vec<Vec<u64>>,
    /// Latencies of good requests per second (for the slow phase's p99).
    pub latencies: Vec<Vec<Duration>>,
}

/// Figures of a phase.
#[derive(Debug, Clone, Copy)]
pub struct PhaseSummary {
    /// Requests answered well within the deadline.
    pub goodput: f64,
    /// Calls that reached a broken replica, per request.
    pub to_broken: f64,
    /// The p99 latency of the good requests.
    pub p99: Duration,
}

impl ReplicaRun {
    /// The figures of seconds `[from, to)`.
    pub fn summary(&self, from: u64, to: u64) -> PhaseSummary {
        let (from, to) = (from as usize, to as usize);
        let (req, good) = self.per_sec[from..to]
            .iter()
            .fold((0, 0), |(r, g), &(a, b)| (r + a, g + b));
        let broken: u64 = self
            .while_broken
            .iter()
            .map(|c| c[from..to].iter().sum::<u64>())
            .sum();
        let mut lat: Vec<Duration> = self.latencies[from..to].iter().flatten().copied().collect();
        lat.sort();
        let p99 = if lat.is_empty() {
            Duration::ZERO
        } else {
            lat[((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1]
        };
        PhaseSummary {
            goodput: good as f64 / req.max(1) as f64,
            to_broken: broken as f64 / req.max(1) as f64,
            p99,
        }
    }

    /// Seconds from `at` until `replica` gets half its fair share again
    /// (a tenth of the calls) in a second; `None` if it never does.
    pub fn back_after(&self, replica: usize, at: u64) -> Option<u64> {
        (at as usize..self.per_sec.len()).find_map(|s| {
            let all: u64 = self.calls.iter().map(|c| c[s]).sum();
            (all > 0 && self.calls[replica][s] * (REPLICAS as u64) * 2 >= all)
                .then(|| s as u64 - at)
        })
    }
}

/// Runs the scenario with `protection`, in paused time.
pub fn run_replicas(scenario: &Replicas, protection: Protection) -> Result<ReplicaRun, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(run_async(scenario.clone(), protection))
}

type Endpoint = tower::util::BoxService<u64, u64, BoxError>;

async fn run_async(scenario: Replicas, protection: Protection) -> Result<ReplicaRun, BoxError> {
    let start = Instant::now();
    let total = scenario.total() as usize;
    let counts: Arc<Vec<Counts>> = Arc::new(
        (0..REPLICAS)
            .map(|_| Counts {
                calls: (0..total + 2).map(|_| AtomicU64::new(0)).collect(),
                while_broken: (0..total + 2).map(|_| AtomicU64::new(0)).collect(),
            })
            .collect(),
    );
    let scenario = Arc::new(scenario);
    let ejection = EjectionLayer::builder().build()?;
    let endpoints: Vec<Endpoint> = (0..REPLICAS)
        .map(|id| -> Result<Endpoint, BoxError> {
            let r = Replica {
                id,
                start,
                scenario: scenario.clone(),
                counts: counts.clone(),
            };
            Ok(match protection {
                Protection::SharedBreaker => Endpoint::new(r),
                Protection::PerReplicaBreakers => Endpoint::new(
                    CircuitBreakerLayer::builder()
                        .name(format!("replica{id}.breaker"))
                        .backpressure(true)
                        .build()?
                        .layer(r),
                ),
                Protection::Ejection => Endpoint::new(ejection.layer(r)),
            })
        })
        .collect::<Result<_, _>>()?;
    // The balancer's two random picks from a fixed seed (tower's default
    // seeds from the OS): the same picks, so the same figures, every run.
    let picks = tower::util::rng::HasherRng::with_hasher(std::hash::BuildHasherDefault::<
        std::collections::hash_map::DefaultHasher,
    >::default());
    let balanced = Balance::from_rng(
        PendingRequestsDiscover::new(ServiceList::new(endpoints), CompleteOnResponse::default()),
        picks,
    );
    let shared = tower::buffer::Buffer::new(balanced, 4096);
    let client = tower::util::BoxCloneService::<u64, u64, BoxError>::new(
        ClientStack::builder("replicas")
            .total_budget(scenario.deadline)
            // The seed only makes the backoff draws reproducible from run
            // to run (by default they are seeded from the OS).
            .retry(|r| r.seed(0x5EA_3A11))
            .build()?
            .layer(shared),
    );

    let every = Duration::from_secs(1) / scenario.rate;
    let mut tasks = Vec::new();
    for i in 0..(scenario.total() * u64::from(scenario.rate)) {
        let sec = start.elapsed().as_secs() as usize;
        let client = client.clone();
        let deadline = scenario.deadline;
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = tokio::time::timeout(deadline, client.oneshot(i)).await;
            (sec, matches!(r, Ok(Ok(_))), t0.elapsed())
        }));
        tokio::time::sleep(every).await;
    }
    let mut per_sec = vec![(0u64, 0u64); total + 2];
    let mut latencies = vec![Vec::new(); total + 2];
    for t in tasks {
        let (sec, good, latency) = t.await?;
        per_sec[sec].0 += 1;
        if good {
            per_sec[sec].1 += 1;
            latencies[sec].push(latency);
        }
    }
    let read = |f: &dyn Fn(&Counts) -> &Vec<AtomicU64>| -> Vec<Vec<u64>> {
        counts
            .iter()
            .map(|c| f(c).iter().map(|a| a.load(Ordering::Relaxed)).collect())
            .collect()
    };
    Ok(ReplicaRun {
        protection,
        per_sec,
        calls: read(&|c| &c.calls),
        while_broken: read(&|c| &c.while_broken),
        latencies,
    })
}

/// The scenario's table.
pub fn table(scenario: &Replicas, runs: &[ReplicaRun]) -> String {
    let mut out = format!(
        "  {:<10} | {:<20} | {:>7} | {:>17} | {:>8}\n",
        "phase", "protection", "goodput", "to broken/request", "good p99"
    );
    for (i, phase) in scenario.phases.iter().enumerate() {
        let (from, to) = scenario.bounds(i);
        for run in runs {
            let s = run.summary(from, to);
            out.push_str(&format!(
                "  {:<10} | {:<20} | {:>6.2}% | {:>17.4} | {:>8}\n",
                phase.name,
                run.protection.label(),
                s.goodput * 100.0,
                s.to_broken,
                format!("{:.0?}", s.p99)
            ));
        }
    }
    if let Some(i) = scenario.phases.iter().position(|p| p.name == "recovered") {
        let (at, _) = scenario.bounds(i);
        for run in runs {
            let back: Vec<String> = (0..3)
                .map(|r| {
                    run.back_after(r, at)
                        .map_or("never".to_owned(), |s| format!("{s} s"))
                })
                .collect();
            out.push_str(&format!(
                "  {:<20} replicas 0, 1, 2 back to half their share {} after the recovery\n",
                run.protection.label(),
                back.join(", ")
            ));
        }
    }
    if let Some(i) = scenario.phases.iter().position(|p| p.slow) {
        let (from, to) = scenario.bounds(i);
        for run in runs {
            let mid = (from + to) / 2;
            let slow: u64 = run.calls[3][mid as usize..to as usize].iter().sum();
            let all: u64 = run
                .calls
                .iter()
                .map(|c| c[mid as usize..to as usize].iter().sum::<u64>())
                .sum();
            out.push_str(&format!(
                "  {:<20} the slow replica's share of calls in the phase's second half: {:.2}% (p99 {:?})\n",
                run.protection.label(),
                slow as f64 * 100.0 / all.max(1) as f64,
                run.summary(mid, to).p99
            ));
        }
    }
    out
}
