//! Property tests of the configuration-space models under arbitrary guest accesses, through the
//! public API only: the function models ([`Mch`], [`RootPort`]) and the [`Hierarchy`] of the
//! embedded default topology through its configuration mechanism #1, ECAM and direct entry
//! points.
//!
//! Properties: no access panics, whatever its width (1, 2, 4 and invalid ones) or offset
//! (unaligned, past the space, past 4 KiB); reads fit their width; identity registers and
//! capability chains never change; a write changes exactly the bits the engine's masks allow
//! (`(old & !wmask) | (data & wmask)`, then write-1-to-clear), the masks read from the models'
//! saved state; W1C status registers clear on 1 and keep on 0 (with QEMU's Slot Status
//! work-around); the hierarchy answers with the documented statuses, routes mechanism #1 and
//! ECAM to the same registers and always describes a valid topology. Failing cases are persisted
//! in `tests/proptest-regressions/config_properties.txt`.
//!
//! The harness: [`identity`] (what must not change), [`masks`] (the engine's write rule),
//! [`ops`] (what happens to a function) and [`accesses`] (what happens to the hierarchy); the
//! properties: [`models`], [`write_rules`] and [`hierarchy`].

mod accesses;
mod hierarchy;
mod identity;
mod masks;
mod models;
mod ops;
mod write_rules;

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

/// Where proptest records failing cases (its default for a `tests/` file would be
/// `tests/config_properties.proptest-regressions`, since no `lib.rs` is beside or above it).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/config_properties.txt"
);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

type CaseResult<T = ()> = Result<T, TestCaseError>;

fn fail<T>(why: impl std::fmt::Display) -> CaseResult<T> {
    Err(TestCaseError::fail(why.to_string()))
}

/// Does `v` fit in `width` bytes (at most 8)?
fn fits(v: u64, width: u8) -> bool {
    width >= 8 || v >> (8 * u32::from(width)) == 0
}
