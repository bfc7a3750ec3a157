//! `pcierc-afl TARGET`: one of `pcierc_tests::fuzz::TARGETS` under AFL++ (`afl-fuzz` feeds
//! inputs on standard input; `fuzz/run.sh` builds and runs it). A target's `Err` (a broken
//! invariant) is a panic here, which AFL++ records as a crash; so is any panic of the code
//! under test. Built without `cargo afl`, it runs one input from standard input.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(&(name, target)) = pcierc_tests::fuzz::TARGETS.iter().find(|t| t.0 == name) else {
        let names: Vec<&str> = pcierc_tests::fuzz::TARGETS.iter().map(|t| t.0).collect();
        eprintln!("usage: pcierc-afl TARGET  (targets: {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        if let Err(why) = target(data) {
            panic!("{name}: {why}");
        }
    });
}
