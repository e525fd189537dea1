//! Plain-text tables and the "what happened" paragraph, computed from the runs.

use std::fmt::Write as _;
use std::time::Duration;

use crate::sim::{Run, Scenario, Summary};

/// Seconds the goodput must hold at >= 90% of offered to count as recovered.
pub const HOLD: usize = 5;

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.2} ms", ms)
    } else if ms < 1000.0 {
        format!("{:.0} ms", ms)
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

fn failures(s: &Summary) -> String {
    if s.failures.is_empty() {
        return "-".into();
    }
    s.failures
        .iter()
        .map(|(label, n)| format!("{label} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn recover(run: &Run, scenario: &Scenario) -> Option<f64> {
    let outage = scenario.phases.iter().position(|p| p.name == "outage")?;
    let (_, end) = scenario.bounds(outage);
    run.time_to_recover(end, HOLD)
}

fn recover_text(t: Option<f64>) -> String {
    match t {
        Some(t) => format!("{t:.0} s"),
        None => "not within the run".into(),
    }
}

/// The per-phase tables (one block per phase, one row per mode), plus totals.
pub fn tables(scenario: &Scenario, runs: &[Run]) -> String {
    let mut out = String::new();
    let header = format!(
        "  {:<12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7}  {}",
        "mode",
        "offered",
        "good",
        "goodput",
        "p50",
        "p99",
        "attempts",
        "doomed",
        "not good (by reason)"
    );
    let row = |out: &mut String, run: &Run, s: &Summary| {
        let _ = writeln!(
            out,
            "  {:<12} {:>8} {:>8} {:>7.1}% {:>9} {:>9} {:>8.2}x {:>6.0}%  {}",
            run.mode.label(),
            s.offered,
            s.good,
            s.goodput() * 100.0,
            ms(s.p50),
            ms(s.p99),
            s.amplification,
            s.doomed_share * 100.0,
            failures(s)
        );
    };
    for (i, phase) in scenario.phases.iter().enumerate() {
        let (from, to) = scenario.bounds(i);
        let _ = writeln!(
            out,
            "{} ({:.0}-{:.0} s): offered {:.0} req/s = {:.0}% of capacity, {}",
            phase.name,
            from,
            to,
            phase.load * scenario.capacity(),
            phase.load * 100.0,
            phase.condition
        );
        let _ = writeln!(out, "{header}");
        for run in runs {
            row(&mut out, run, &run.summary(from, to));
        }
        out.push('\n');
    }
    let total = scenario.total().as_secs_f64();
    let _ = writeln!(out, "whole run (0-{total:.0} s)");
    let _ = writeln!(out, "{header}");
    for run in runs {
        row(&mut out, run, &run.summary(0.0, total));
    }
    out.push('\n');
    let _ = write!(
        out,
        "time to recover after the outage (goodput back to >= 90% of offered, held {HOLD} s):"
    );
    for run in runs {
        let _ = write!(
            out,
            "  {} {}",
            run.mode.label(),
            recover_text(recover(run, scenario))
        );
    }
    out.push('\n');
    out
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// One paragraph on what happened, from the numbers.
pub fn what_happened(scenario: &Scenario, runs: &[Run]) -> String {
    let phase = |name: &str| -> Option<(f64, f64)> {
        let i = scenario.phases.iter().position(|p| p.name == name)?;
        Some(scenario.bounds(i))
    };
    let summary = |run: &Run, name: &str| -> Option<Summary> {
        let (a, b) = phase(name)?;
        Some(run.summary(a, b))
    };
    let mut s = String::new();
    let Some(surge) = phase("surge") else {
        return s;
    };
    let _ = surge;
    let parts: Vec<String> = ["surge", "brownout"]
        .iter()
        .map(|name| {
            let cells: Vec<String> = runs
                .iter()
                .filter_map(|r| {
                    summary(r, name).map(|x| {
                        format!(
                            "{} {} ({:.2} backend calls per request, {} of worker time on answers nobody could use)",
                            r.mode.label(),
                            pct(x.goodput()),
                            x.amplification,
                            pct(x.doomed_share)
                        )
                    })
                })
                .collect();
            format!("in the {name}, goodput was {}", cells.join("; "))
        })
        .collect();
    let _ = write!(s, "{}. ", capitalize(&parts.join(". ")));
    let outage: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            summary(r, "outage")
                .map(|x| format!("{} {:.2}", r.mode.label(), x.amplification))
        })
        .collect();
    let _ = write!(
        s,
        "While the backend was down, each request cost the backend this many calls: {}. ",
        outage.join(", ")
    );
    let rec: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}", r.mode.label(), recover_text(recover(r, scenario))))
        .collect();
    let _ = write!(
        s,
        "After the outage, goodput was back to 90% of offered after: {}.",
        rec.join(", ")
    );
    s
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
