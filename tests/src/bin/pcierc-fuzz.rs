//! `pcierc-fuzz`: run the randomized robustness targets of `pcierc_tests::fuzz` for a number
//! of inputs or a time, and keep every failing input under `tests/fuzz-regressions/` (replayed
//! by `cargo test` from then on).
//!
//! ```sh
//! cargo run --release -p pcierc-tests --bin pcierc-fuzz -- --seconds 60
//! cargo run --release -p pcierc-tests --bin pcierc-fuzz -- --target qmp --count 100000 --seed 7
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pcierc_tests::fuzz::{run_one, save_regression, Inputs, TARGETS};

fn usage() -> ExitCode {
    eprintln!(
        "usage: pcierc-fuzz [--target NAME] [--count N] [--seconds S] [--seed N]\n\
         targets: {}",
        TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut target = None;
    let mut count = u64::MAX;
    let mut seconds = None;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let Some(v) = args.next() else {
            return usage();
        };
        let number = v.parse::<u64>().ok();
        match (a.as_str(), number) {
            ("--target", _) if TARGETS.iter().any(|(n, _)| *n == v) => target = Some(v),
            ("--count", Some(n)) => count = n,
            ("--seconds", Some(n)) => seconds = Some(Duration::from_secs(n)),
            ("--seed", Some(n)) => seed = n,
            _ => return usage(),
        }
    }
    if count == u64::MAX && seconds.is_none() {
        seconds = Some(Duration::from_secs(10));
    }
    let chosen: Vec<_> = TARGETS
        .iter()
        .filter(|(n, _)| target.as_deref().is_none_or(|t| t == *n))
        .collect();
    let per_target = seconds.map(|s| s / chosen.len() as u32);
    let mut failed = false;
    for (name, f) in chosen {
        let mut inputs = Inputs::new(seed);
        let started = Instant::now();
        let mut n = 0u64;
        let mut found = 0;
        while n < count && per_target.is_none_or(|d| started.elapsed() < d) {
            let input = inputs.input(name);
            if let Err(why) = run_one(*f, &input) {
                found += 1;
                match save_regression(name, &input) {
                    Ok(p) => eprintln!("{name}: FAIL ({why}); input kept in {}", p.display()),
                    Err(e) => eprintln!("{name}: FAIL ({why}); could not keep the input: {e}"),
                }
            }
            n += 1;
        }
        println!(
            "fuzz {name}: {n} inputs in {:.1?}, {found} failing",
            started.elapsed()
        );
        failed |= found > 0;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
