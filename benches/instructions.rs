//! Deterministic cost per call: every contender of `benches/stack.rs`, run a
//! fixed number of times inside one function that valgrind's callgrind
//! counts alone, so the figures are instructions and clock reads, not
//! seconds, and do not drift with a noisy machine.
//!
//! ```text
//! .ci/instructions                 # builds, runs every contender under callgrind, prints the table
//! cargo bench --bench instructions -- list          # the contenders' names
//! cargo bench --bench instructions -- run NAME N    # N calls of one contender (what the script runs)
//! ```
//!
//! Without arguments (as `cargo bench` runs it) it runs every contender a
//! few times without valgrind, as a smoke check.

#[path = "common/mod.rs"]
mod common;
#[macro_use]
#[path = "common/contenders.rs"]
mod contenders;

use std::time::Duration;

use contenders::*;
use seawall::BoxError;
use tower::{Layer, Service, ServiceBuilder};

/// Calls made before the counted ones: layers that build state on their
/// first calls (windows, buckets, timers) have done so.
const WARM_UP: u64 = 1_000;

/// The counted calls: callgrind collects only inside this function
/// (`--toggle-collect=*seawall_counted_calls*`).
#[inline(never)]
fn seawall_counted_calls<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(drive(svc, iters));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = common::runtime();
    let mode = args.first().map(String::as_str);
    let (want, iters) = match mode {
        Some("list") => (None, 0),
        Some("run") => (
            args.get(1).cloned(),
            args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000),
        ),
        // `cargo bench` passes `--bench`: a quick smoke run of everything.
        _ => (Some(String::new()), 10),
    };
    let mut found = false;
    macro_rules! each {
        (@single $name:expr, $make:expr) => {
            each!($name, $make)
        };
        ($name:expr, $make:expr) => {{
            let name: &str = $name;
            match (&want, mode) {
                (_, Some("list")) => println!("{name}"),
                (Some(w), _) if w.is_empty() || w == name => {
                    found = true;
                    let mut svc = {
                        let _enter = rt.enter();
                        ($make)(())
                    };
                    // The same warm-up whatever `iters` (the script takes a
                    // run of 0 counted calls off to count clock reads, which
                    // callgrind tallies outside the counted calls too).
                    let warm_up = if mode == Some("run") {
                        WARM_UP
                    } else {
                        iters * 10
                    };
                    rt.block_on(drive(&mut svc, warm_up));
                    seawall_counted_calls(&rt, &mut svc, iters);
                }
                _ => {}
            }
        }};
    }
    per_layer!(each);
    full_stacks!(each);
    http_unary!(each);
    if mode == Some("run") && !found {
        eprintln!("no contender named {:?}; try `list`", want);
        std::process::exit(2);
    }
}
