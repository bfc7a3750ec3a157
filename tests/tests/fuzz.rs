//! The randomized robustness targets (`pcierc_tests::fuzz`) in the normal suite: every input
//! `pcierc-fuzz` ever kept under `tests/fuzz-regressions/` is replayed, then each target gets
//! a short bounded pass with a fixed seed, and the AFL++ seed corpora (`fuzz/corpus/TARGET/`,
//! minimised from the coverage-guided runs of docs/security.md) are replayed. Longer runs: `cargo run --release -p pcierc-tests
//! --bin pcierc-fuzz -- --seconds 600`.

use pcierc_tests::fuzz::{regression_dir, run_one, Inputs, TARGETS};

#[test]
fn kept_failing_inputs_stay_fixed() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(dir) = std::fs::read_dir(regression_dir(name)) else {
            continue;
        };
        for entry in dir.flatten() {
            let input = std::fs::read(entry.path()).expect("reading a kept input");
            if let Err(why) = run_one(*target, &input) {
                panic!("{name}: {} fails again: {why}", entry.path().display());
            }
            replayed += 1;
        }
    }
    eprintln!("fuzz regressions replayed: {replayed}");
}

#[test]
fn the_afl_corpora_replay_clean() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = std::fs::read_dir(corpus.join(name))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{name}: {e} (every target has seeds)"));
        for entry in dir.flatten() {
            let input = std::fs::read(entry.path()).expect("reading a seed");
            if let Err(why) = run_one(*target, &input) {
                panic!("{name}: seed {} fails: {why}", entry.path().display());
            }
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len(), "only {replayed} seeds found");
    eprintln!("AFL++ seeds replayed: {replayed}");
}

#[test]
fn a_bounded_pass_of_every_target_finds_nothing() {
    for (name, target) in TARGETS {
        let count = match *name {
            "qmp" => 400,
            "qtest" => 300,
            "xen" => 20_000,
            "state_file" => 300,
            _ => 1500,
        };
        let mut inputs = Inputs::new(0x5eed);
        for i in 0..count {
            let input = inputs.input(name);
            if let Err(why) = run_one(*target, &input) {
                let kept = pcierc_tests::fuzz::save_regression(name, &input);
                panic!("{name}: input {i} fails ({why}); kept in {kept:?}");
            }
        }
    }
}
