//! Plain-text tables and the "what happened" paragraph, computed from the runs.

use std::fmt::Write as _;
use std::time::Duration;

use seawall::EventKind;
use seawall::observe::{LayerKind, State};

use crate::sim::{Run, Scenario, Summary};

/// Seconds the goodput must hold at >= 90% of offered to count as recovered.
pub const HOLD: usize = 5;

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms == 0.0 {
        "0 ms".into()
    } else if ms < 1.0 {
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

/// What the tables' columns and reasons mean: printed once, above the
/// first table.
pub fn legend(scenario: &Scenario) -> String {
    format!(
        "How to read the tables (one row per configuration, every figure over the requests \
         offered in the phase):
  offered     requests sent by the simulated callers (open loop: they do not slow down)
  good        answered successfully within the {deadline:?} deadline
  goodput     good / offered
  of poss.    goodput over the best the backend's capacity allows in the phase (its workers' \
time; a phase that inherits a queue from the one before can pass 100 % by a little)
  p50, p99    what the caller waited, whatever the outcome (an instant refusal waits 0 ms)
  attempts    calls the caller's client stack sent per request (retries included; below 1 \
when a breaker refuses calls without sending them)
  doomed      share of the backend's worker time spent on answers that came after the \
caller's deadline, or on work cut off before its end
  backend/req calls that reached the backend per request (a server's refusals do not)
  not good    why the rest failed: late = answered after the deadline (only a caller that \
waits for everything sees it); timeout = tower's Timeout fired; deadline_exceeded / \
attempt_timeout = seawall's request deadline or attempt timeout ended it; overloaded = \
the server refused it (seawall's adaptive limit or bulkhead, tower-resilience's bulkhead); \
circuit_open = the client's breaker refused it; backend_error = the backend answered with \
its error (it was down or failing; a request queued long enough meets an outage after its \
own phase)
",
        deadline = scenario.deadline
    )
}

/// The per-phase tables (one block per phase, one row per mode), plus totals.
pub fn tables(scenario: &Scenario, runs: &[Run]) -> String {
    let mut out = String::new();
    let header = header_line("doomed", 7);
    let row = |out: &mut String, run: &Run, s: &Summary, possible: f64| {
        let doomed = format!("{:>6.0}%", s.doomed_share * 100.0);
        let _ = writeln!(out, "{}", row_line(run, s, possible, &doomed));
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
            row(&mut out, run, &run.summary(from, to), scenario.possible(i));
        }
        out.push('\n');
    }
    if scenario.phases.len() == 1 {
        // One phase: its table is the whole run's.
        out.pop();
        return out;
    }
    let total = scenario.total().as_secs_f64();
    let _ = writeln!(out, "whole run (0-{total:.0} s)");
    let _ = writeln!(out, "{header}");
    for run in runs {
        row(
            &mut out,
            run,
            &run.summary(0.0, total),
            scenario.possible_overall(),
        );
    }
    if !scenario.phases.iter().any(|p| p.name == "outage") {
        return out;
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
    let mut sentences = Vec::new();
    for (i, phase) in scenario.phases.iter().enumerate() {
        if i == 0 || phase.name == "recovery" {
            continue;
        }
        let (from, to) = scenario.bounds(i);
        let mut by_goodput: Vec<(&Run, Summary)> =
            runs.iter().map(|r| (r, r.summary(from, to))).collect();
        by_goodput.sort_by(|a, b| b.1.goodput().total_cmp(&a.1.goodput()));
        let goodput = by_goodput
            .iter()
            .map(|(r, s)| format!("{} {}", r.mode.label(), pct(s.goodput())))
            .collect::<Vec<_>>()
            .join(", ");
        let attempts = by_goodput
            .iter()
            .map(|(r, s)| format!("{} {:.2}", r.mode.label(), s.amplification))
            .collect::<Vec<_>>()
            .join(", ");
        let doomed = by_goodput
            .iter()
            .filter(|(_, s)| s.doomed_share >= 0.01)
            .map(|(r, s)| format!("{} {}", r.mode.label(), pct(s.doomed_share)))
            .collect::<Vec<_>>();
        let best = scenario.possible(i);
        let best = if best > 0.0 {
            format!("at most {} was possible", pct(best))
        } else {
            "no answer was possible".to_string()
        };
        let mut sentence = format!(
            "In the {} ({}, {:.0}% of capacity offered), goodput was {} ({best}); attempts per request: {}",
            phase.name,
            phase.condition,
            phase.load * 100.0,
            goodput,
            attempts
        );
        if !doomed.is_empty() {
            sentence.push_str(&format!(
                "; worker time spent on answers that came after the deadline: {}",
                doomed.join(", ")
            ));
        }
        sentences.push(sentence);
    }
    let mut rec = Vec::new();
    let mut stuck = Vec::new();
    if let Some(i) = scenario.phases.iter().position(|p| p.name == "recovery") {
        let (from, to) = scenario.bounds(i);
        for r in runs {
            let t = recover(r, scenario);
            let s = r.summary(from, to);
            if t.is_none() && s.amplification > 1.5 && s.doomed_share > 0.5 {
                stuck.push(format!(
                    "{} never did: with the trigger gone, its retries ({:.2} attempts per request) kept the backend's queue longer than the deadline, so every try timed out and was retried again (a metastable failure)",
                    r.mode.label(),
                    s.amplification
                ));
            } else {
                rec.push(format!("{} {}", r.mode.label(), recover_text(t)));
            }
        }
        let mut sentence = format!(
            "After the outage, goodput was back to 90% of offered after: {}",
            rec.join(", ")
        );
        if !stuck.is_empty() {
            sentence.push_str(&format!("; {}", stuck.join("; ")));
        }
        sentences.push(sentence);
    }
    sentences.join(". ") + "."
}

/// A breaker's transitions in words, each run of failed probes (half-open,
/// then open again) told as one: "open at 50.3 s, 198 probes failed until
/// 70.0 s, half_open at 70.1 s, closed at 70.1 s".
fn breaker_story(transitions: &[(State, f64)]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < transitions.len() {
        let (state, t) = transitions[i];
        parts.push(format!("{} at {t:.1} s", state.as_str()));
        i += 1;
        if state != State::Open {
            continue;
        }
        let (mut failed, mut last) = (0, t);
        while i + 1 < transitions.len()
            && transitions[i].0 == State::HalfOpen
            && transitions[i + 1].0 == State::Open
        {
            failed += 1;
            last = transitions[i + 1].1;
            i += 2;
        }
        if failed > 0 {
            parts.push(format!(
                "{failed} probe{} failed until {last:.1} s",
                if failed == 1 { "" } else { "s" }
            ));
        }
    }
    parts.join(", ")
}

/// What the seawall layers reported: breaker transitions and the range of the
/// adaptive limit.
pub fn seawall_events(run: &Run) -> Option<String> {
    if run.events.is_empty() {
        return None;
    }
    let mut transitions = Vec::new();
    let mut limits: Option<(usize, usize)> = None;
    for (t, layer, kind) in &run.events {
        match *kind {
            EventKind::StateChanged { from, to, .. } if from != to => {
                transitions.push((to, *t));
            }
            // (The bulkhead reports its limit too.)
            EventKind::LimitChanged { from, to } if *layer == LayerKind::AdaptiveLimit => {
                let (lo, hi) = limits.unwrap_or((from, from));
                limits = Some((lo.min(to), hi.max(to)));
            }
            _ => {}
        }
    }
    let mut out = String::new();
    if !transitions.is_empty() {
        let _ = write!(out, "circuit breaker: {}", breaker_story(&transitions));
    }
    if let Some((lo, hi)) = limits {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let _ = write!(out, "adaptive limit between {lo} and {hi} in flight");
    }
    Some(out)
}

/// One table for a whole scenario: a row per mode over the whole run.
pub fn whole_run(title: &str, scenario: &Scenario, runs: &[Run]) -> String {
    let mut out = String::new();
    let total = scenario.total().as_secs_f64();
    let _ = writeln!(out, "{title} (0-{total:.0} s)");
    let _ = writeln!(out, "{}", header_line("backend/req", 11));
    for run in runs {
        let x = run.summary(0.0, total);
        let backend = format!("{:>10.2}x", x.backend_per_request);
        let _ = writeln!(
            out,
            "{}",
            row_line(run, &x, scenario.possible_overall(), &backend)
        );
    }
    out
}

/// A table header: the columns every table has, then `last` (right-aligned
/// in `width`) before the reasons.
fn header_line(last: &str, width: usize) -> String {
    format!(
        "  {:<12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {last:>width$}  not good (by reason)",
        "mode", "offered", "good", "goodput", "of poss.", "p50", "p99", "attempts"
    )
}

/// A table row for `run`'s summary `s`: the columns every table has, then the
/// formatted `last` cell and the reasons.
fn row_line(run: &Run, s: &Summary, possible: f64, last: &str) -> String {
    let of_possible = if possible > 0.0 {
        format!("{:.1}%", s.goodput() / possible * 100.0)
    } else {
        "-".into()
    };
    format!(
        "  {:<12} {:>8} {:>8} {:>7.1}% {:>9} {:>9} {:>9} {:>8.2}x {last}  {}",
        run.mode.label(),
        s.offered,
        s.good,
        s.goodput() * 100.0,
        of_possible,
        ms(s.p50),
        ms(s.p99),
        s.amplification,
        failures(s)
    )
}
