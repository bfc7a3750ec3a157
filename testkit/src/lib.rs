//! Test helpers shared by pcierc's crates: the real `pcierc` process of this build, scratch
//! directories and loud skips ([`process`]), a QMP client for QEMU's and pcierc's control
//! sockets ([`qmp_socket`]), and deterministic noise for hostile peers ([`noise`]). `pcierc-tests` re-exports both; `pcierc-xen-shim`'s tests use them
//! directly (this crate depends on none of the workspace's, so no dependency cycle).

pub mod noise;
pub mod process;
pub mod qmp_socket;
