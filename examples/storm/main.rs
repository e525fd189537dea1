//! storm: the same traffic through a backend outage, served three ways.
//!
//! ```text
//! cargo run --release --example storm            # 100 s simulated, a few seconds of wall time
//! cargo run --release --example storm -- --quick # 40 s simulated (or STORM_QUICK=1)
//! ```
//!
//! A backend of fixed capacity goes through five phases (healthy, a surge above
//! capacity, a brownout where latency is x10, an outage where every call fails,
//! recovery) under an open-loop client load with a 1 s deadline per request.
//! The same arrivals are served three ways:
//!
//! - **unprotected**: no timeout, no retry, no limit;
//! - **naive**: tower `Timeout` (1 s per try) + tower `Retry` (3 retries, no
//!   backoff, no budget, no breaker), what most code does;
//! - **seawall**: the crate's recommended client stack (deadline, retry with a
//!   budget, circuit breaker, attempt timeout) and server stack (adaptive
//!   concurrency limit) — see `stacks.rs`, copy it from there.
//!
//! Everything runs in paused tokio time with a seeded RNG: the numbers are the
//! same on every run and every machine.
//!
//! What to look at, per phase: **goodput** (answered successfully within the
//! deadline — the only answers a caller can use), **attempts** (backend calls
//! per request: retry amplification), **doomed** (worker time spent on answers
//! that arrived after the caller's deadline), the latency the caller saw, why
//! requests failed, and how long each mode took to serve 90% of the load again
//! after the outage. The chart (`target/storm.svg`) shows goodput and backend
//! calls per second over time.

mod chart;
mod report;
mod sim;

use std::path::PathBuf;

use sim::{Mode, Scenario};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("STORM_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
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
    print!("{}", report::tables(&scenario, &runs));
    println!();
    println!("what happened: {}", report::what_happened(&scenario, &runs));
    println!();

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("storm.svg");
    chart::draw(&path, &scenario, &runs)?;
    println!("chart: {}", path.display());
    Ok(())
}
