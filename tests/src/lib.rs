//! Test support for pcierc: running the real processes ([`process`]), QEMU's qtest protocol
//! ([`qtest`]), and the differential engine that compares pcierc with QEMU 7.2 register by
//! register ([`differential`]), QEMU and pcierc side by side through QMP ([`qmp_pair`]), the images the Linux guests boot ([`linux_images`], archives
//! built by [`initramfs`]), and live Linux on the example VMM through nested virtualization
//! ([`nested`]). The tests themselves are in `tests/`.

pub mod differential;
pub mod fuzz;
pub mod initramfs;
pub mod linux_facts;
pub mod linux_images;
pub mod nested;
pub mod qmp;
pub mod qmp_pair;
pub mod qtest;
pub mod qtest_target;
pub mod trace;

pub use pcierc_testkit::{noise, process, qmp_socket};
