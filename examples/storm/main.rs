//! storm: the same traffic through a backend outage, served four ways.
//!
//! ```text
//! cargo run --release --example storm            # every scenario, about 10 s of wall time
//! cargo run --release --example storm -- --quick # 40 s simulated (or STORM_QUICK=1)
//! STORM_TRACE=1 cargo run --release --example storm # also print every breaker and limit change
//! ```
//!
//! A backend of fixed capacity (20 workers x 20 ms = 1000 req/s, an unbounded
//! queue in front of them) goes through five phases under an open-loop load
//! with a 1 s deadline per request:
//!
//! | phase    | time (`--quick`)   | offered         | backend                 |
//! |----------|--------------------|-----------------|-------------------------|
//! | healthy  | 0-20 s (0-6)       | 60% of capacity | normal                  |
//! | surge    | 20-30 s (6-12)     | 180%            | normal                  |
//! | brownout | 30-50 s (12-20)    | 60%             | latency x10             |
//! | outage   | 50-70 s (20-28)    | 60%             | every call fails (5 ms) |
//! | recovery | 70-100 s (28-40)   | 60%             | normal                  |
//!
//! The same arrivals are served four ways:
//!
//! - **unprotected**: no timeout, no retry, no limit;
//! - **naive**: tower `Timeout` (1 s per try) + tower `Retry` (3 retries, no
//!   backoff, no budget, no breaker), what most code does;
//! - **t-resilience**: the best stack tower-resilience allows, tuned to the
//!   backend: see `resilience.rs`;
//! - **seawall**: the crate's `ClientStack` and `ServerStack` with their
//!   defaults, only the budgets set: see `stacks.rs`.
//!
//! Then more scenarios on the same backend: a partial failure (30 % of
//! calls fail fast, at 60 % of capacity), a flapping dependency, a latency
//! creep, a chain of three hops, one route of the dependency down, a
//! dependency behind a load shedder, a surge with mixed criticality; and on a
//! backend of its own, a heavy tail then a brownout, served without
//! hedging, with seawall's hedge and with tower's `Hedge` (`tail.rs`).
//!
//! Everything runs in paused tokio time with a seeded RNG: every run prints
//! the same numbers, in about 20 seconds for every scenario.
//!
//! What to look at, per phase: **goodput** (answered successfully within the
//! deadline: the only answers a caller can use), **attempts** (calls sent to
//! the server per request: retry amplification), **doomed** (backend worker
//! time spent on answers that came after the caller's deadline), the latency
//! the caller saw, why requests failed, and how long each mode took to serve
//! 90% of the load again after the outage. The chart (`target/storm.svg`)
//! shows goodput and calls sent to the server per second over time.

#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
mod chart;
#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed",
    feature = "eject"
))]
mod replicas;
#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
mod report;
#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
mod sim;
#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed",
    feature = "hedge"
))]
mod tail;

#[cfg(not(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
)))]
fn main() {
    eprintln!("storm needs the default features: cargo run --release --example storm");
}

#[cfg(all(
    feature = "deadline",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "shed"
))]
fn main() -> Result<(), seawall::BoxError> {
    use std::path::PathBuf;

    use sim::{Mode, Scenario};

    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(other) = args.iter().find(|a| *a != "--quick") {
        if other != "--help" && other != "-h" {
            eprintln!("storm: unknown argument {other:?}\n");
        }
        eprintln!(
            "usage: cargo run --release --example storm [-- --quick]\n\n\
             Runs every failure scenario against four configurations, in paused time,\n\
             and prints the tables (the same figures on every run).\n\
             --quick   shorter timelines (also STORM_QUICK=1), as the tests run them"
        );
        std::process::exit(if other == "--help" || other == "-h" {
            0
        } else {
            2
        });
    }
    let quick =
        !args.is_empty() || std::env::var("STORM_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let scenario = if quick {
        Scenario::quick()
    } else {
        Scenario::full()
    };

    println!(
        "storm: backend of {} workers x {:?} mean service time = {:.0} req/s capacity; \
         deadline {:?} per request; seed {:#x}; {} s simulated{}",
        scenario.workers,
        scenario.service_time,
        scenario.capacity(),
        scenario.deadline,
        scenario.seed,
        scenario.total().as_secs(),
        if quick { " (--quick)" } else { "" }
    );

    let mut runs = Vec::new();
    for mode in Mode::ALL {
        let run = sim::run(&scenario, mode)?;
        println!("  {:<12} client: {}", mode.label(), run.client_desc);
        println!("  {:<12} server: {}", "", run.server_desc);
        runs.push(run);
    }
    println!();
    print!("{}", report::legend(&scenario));
    println!();
    print!("{}", report::tables(&scenario, &runs));
    println!();
    for run in &runs {
        if let Some(events) = report::seawall_events(run) {
            println!("{} layers reported: {events}", run.mode.label());
        }
    }
    println!();
    println!("what happened: {}", report::what_happened(&scenario, &runs));
    println!();
    // The retry budget alone: the same run with the client's breaker off.
    let no_breaker = sim::run(&scenario, Mode::SeawallWithoutBreaker)?;
    if let Some(i) = scenario.phases.iter().position(|p| p.name == "outage") {
        let (a, b) = scenario.bounds(i);
        println!(
            "with the client's breaker off, the outage cost seawall {:.2} attempts per request \
             (the retry budget alone: nothing succeeds, so only its 5% and floor are left)",
            no_breaker.summary(a, b).amplification
        );
        println!();
    }

    // Under the target directory in use (`CARGO_TARGET_DIR` when set).
    let path = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("storm.svg");
    chart::draw(&path, &scenario, &runs)?;
    println!("chart: {}", path.display());

    // A second scenario: a partial failure, where a retry saves the request.
    let partial = Scenario::partial_failure(if quick { 10 } else { 30 });
    println!();
    println!(
        "partial failure: {} s at 60% of capacity, 30% of calls fail fast",
        partial.total().as_secs()
    );
    let runs = Mode::ALL
        .iter()
        .map(|&mode| sim::run(&partial, mode))
        .collect::<Result<Vec<_>, _>>()?;
    print!("{}", report::tables(&partial, &runs));

    // More failure classes, one line per mode.
    let more = [
        (
            "flapping: up 3 s, down 2 s, six times, at 60% of capacity",
            Scenario::flapping(6),
        ),
        (
            "latency creep: service time x1, x2, x4, x8, x16, 5 s each, at 30% of capacity",
            Scenario::latency_creep(5),
        ),
        (
            "chain: client -> A -> B -> backend, each hop with its stacks; backend healthy 10 s, \
             down 10 s, healthy 10 s; attempts count every hop",
            Scenario::chain([10, 10, 10]),
        ),
        (
            "one route down: half of the requests (one route of two) fail fast, every attempt, \
             for 20 s between 5 s healthy before and after, at 60% of capacity",
            Scenario::route_down(20),
        ),
        (
            "one route hangs: half of the requests (one route of two) wait on a dependency of the \
             backend's that hung (answers after 30 s), for 20 s between 5 s healthy before and \
             after, at 60% of capacity",
            Scenario::route_hangs(20),
        ),
        (
            "shedding dependency: a proxy in front of the backend answers a bare error beyond 40 \
             calls in flight or queued; 200% of capacity for 20 s between 5 s at 60%",
            Scenario::shedding(20),
        ),
        (
            "started under load: a fresh server (80 workers x 20 ms) offered 60% of its \
             capacity from its first instant, 48 calls in flight",
            Scenario::started_under_load(if quick { 3 } else { 5 }),
        ),
        (
            "slow dependency, client stacks only (400 workers, never all busy): every call x15 \
             (150-450 ms, within the attempt timeout) for 10 s between 5 s healthy, 400 req/s",
            Scenario::slow_dependency(10, 15.0, 400.0),
        ),
        (
            "queueing dependency, client stacks only (a service you do not own, 4 workers, its \
             queue unbounded): 110% of capacity for 6 s between 5 s at 60%",
            Scenario::queueing(6, 1.1),
        ),
        (
            "queueing dependency past the deadline, client stacks only: 130% of capacity for \
             10 s between 5 s at 60%",
            Scenario::queueing(10, 1.3),
        ),
    ];
    for (title, scenario) in more {
        let runs = Mode::ALL
            .iter()
            .map(|&mode| sim::run(&scenario, mode))
            .collect::<Result<Vec<_>, _>>()?;
        println!();
        print!("{}", report::whole_run(title, &scenario, &runs));
    }

    // A surge where some requests matter more than others.
    let priority = Scenario::priority_surge();
    let runs = Mode::ALL
        .iter()
        .map(|&mode| sim::run(&priority, mode))
        .collect::<Result<Vec<_>, _>>()?;
    println!();
    print!(
        "{}",
        report::whole_run(
            "priority surge: 180% of capacity for 15 s, 30% of requests critical, the rest sheddable",
            &priority,
            &runs
        )
    );
    let surge = priority
        .phases
        .iter()
        .position(|p| p.name == "surge")
        .map(|i| priority.bounds(i))
        .unwrap_or((0.0, 0.0));
    for run in &runs {
        println!(
            "  {:<12} in the surge: critical {:.1}% good, sheddable {:.1}% good",
            run.mode.label(),
            run.goodput_of(true, surge.0, surge.1) * 100.0,
            run.goodput_of(false, surge.0, surge.1) * 100.0
        );
    }

    // A heavy tail, then a brownout: hedging, and what it costs.
    #[cfg(feature = "hedge")]
    {
        let scenario = tail::Tail::full();
        let runs = tail::TailMode::ALL
            .iter()
            .map(|&mode| tail::run_tail(&scenario, mode))
            .collect::<Result<Vec<_>, _>>()?;
        println!();
        println!(
            "heavy tail: {} req/s for {} s, 5% of calls take 200 ms (20x the median), then {} s \
             of brownout (every call {} ms, 90% of the 8 backend workers); deadline {:?}",
            scenario.rate,
            scenario.tail_secs,
            scenario.brownout_secs,
            tail::BROWNOUT_MS,
            scenario.deadline
        );
        print!("{}", tail::table(&scenario, &runs));
    }

    // Ten replicas behind a balancer: a shared breaker, a breaker per
    // replica, or ejection.
    #[cfg(feature = "eject")]
    {
        let scenario = replicas::Replicas::full();
        let runs = replicas::Protection::ALL
            .iter()
            .map(|&p| replicas::run_replicas(&scenario, p))
            .collect::<Result<Vec<_>, _>>()?;
        println!();
        println!(
            "replicas: {} replicas behind tower's p2c balancer, {} req/s, one client stack above; \
             1 replica broken, then 3, then all recovered, then 1 slow (10x latency)",
            replicas::REPLICAS,
            scenario.rate
        );
        print!("{}", replicas::table(&scenario, &runs));
    }
    Ok(())
}
