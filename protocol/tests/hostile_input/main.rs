//! Hostile input against the backend side of the protocol (`docs/protocol.md` sections 2, 3, 6
//! and 9), as property tests: random bytes, truncated headers, headers whose `size` lies, unknown
//! codes, wrong descriptor counts and wrong payload sizes for every request code.
//!
//! Each case serves one socket-pair connection with the real [`Connection::serve`] on its own
//! thread (a small [`BackendHandler`] behind it) and checks that:
//! - every reply is well-formed (header flags, size = bytes that follow, empty payload on error);
//! - each malformed, well-framed request gets one error reply with its code and id, and every
//!   descriptor it carried is closed by the time the reply arrives;
//! - broken framing closes the connection, and the backend thread ends (nothing hangs, a panic
//!   fails the case: the thread is joined), telling the handler `disconnected` once;
//! - a well-formed request on a fresh connection to the same handler still works.
//!
//! Every wait is bounded by [`WAIT`]. The harness: [`probe`] (the backend under test),
//! [`client`] (the hostile peer), [`requests`] and [`frames`] (what it sends); the properties:
//! [`serving`], [`malformed`], and [`decoders`] (pure decoder properties: header, payloads,
//! topology, notifications, the frame assembler). Failing cases are persisted in
//! `tests/proptest-regressions/hostile_input.txt`.

mod client;
mod decoders;
mod frames;
mod malformed;
mod probe;
mod requests;
mod serving;

use std::time::Duration;

use pcierc_protocol::*;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

/// Upper bound of every wait: a backend that takes longer to answer or to close has hung.
const WAIT: Duration = Duration::from_secs(5);

/// Where proptest records failing cases (its default for a `tests/` file would be
/// `tests/hostile_input.proptest-regressions`, since no `lib.rs` is beside or above it).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/hostile_input.txt"
);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    }
}

type CaseResult<T = ()> = Result<T, TestCaseError>;

fn fail<T>(why: impl std::fmt::Display) -> CaseResult<T> {
    Err(TestCaseError::fail(why.to_string()))
}

/// Harness set-up failures (socket pairs, eventfds) fail the case instead of panicking.
fn setup<T, E: std::fmt::Display>(r: Result<T, E>) -> CaseResult<T> {
    r.or_else(|e| fail(format!("test set-up: {e}")))
}
