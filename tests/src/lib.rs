//! Test support for pcierc end-to-end tests.

pub mod process;
