//! Runs the orchestrator's deterministic simulation (`strand_saga::sim`) over many seeds, or
//! replays one:
//!
//! ```text
//! cargo run --release -p strand-saga --example simulate -- --seeds 1000000   # from seed 0
//! cargo run --release -p strand-saga --example simulate -- --from 5000000 --seeds 100000
//! cargo run --release -p strand-saga --example simulate -- --seed 1234       # replay one
//! ```
//!
//! The first seed that breaks an invariant is printed with what broke and its last events,
//! and the process exits 1.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    if let Some(seed) = value("--seed") {
        let options = strand_saga::sim::Options::for_seed(seed);
        println!("seed {seed}: {options:?}");
        match strand_saga::sim::run(seed, &options) {
            Ok(summary) => println!("ok: {summary:?}"),
            Err(v) => {
                eprintln!("{v}");
                std::process::exit(1);
            }
        }
        return;
    }
    let from = value("--from").unwrap_or(0);
    let seeds = value("--seeds").unwrap_or(10_000);
    let started = Instant::now();
    let step = (seeds / 20).max(1);
    let mut done = 0;
    while done < seeds {
        let n = step.min(seeds - done);
        match strand_saga::sim::run_many(from + done, n) {
            Ok(_) => {}
            Err(v) => {
                eprintln!("{v}");
                std::process::exit(1);
            }
        }
        done += n;
        eprintln!(
            "{done}/{seeds} seeds passed ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "{seeds} seeds from {from} passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
