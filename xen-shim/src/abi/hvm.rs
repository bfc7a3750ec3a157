//! `xen/include/public/hvm/hvm_op.h` and `hvm_info_table.h`: the values `create_ioreq_server`
//! takes and the vCPU limit.
//!
//! In C the `HVM_IOREQSRV_BUFIOREQ_*` values exist only with `__XEN_TOOLS__` defined
//! (`xendevicemodel.h` does not define it; `xenctrl.h` does).

/// `HVM_IOREQSRV_BUFIOREQ_OFF`: no buffered ring; every request is synchronous. The shim's
/// choice (FLOW.md §3).
pub const HVM_IOREQSRV_BUFIOREQ_OFF: u8 = 0;
/// `HVM_IOREQSRV_BUFIOREQ_LEGACY`: buffered ring, pointers never rewritten by Xen.
pub const HVM_IOREQSRV_BUFIOREQ_LEGACY: u8 = 1;
/// `HVM_IOREQSRV_BUFIOREQ_ATOMIC`: buffered ring, pointer pair canonicalised by Xen with a
/// 64-bit cmpxchg; the consumer must advance `read_pointer` atomically (QEMU's choice).
pub const HVM_IOREQSRV_BUFIOREQ_ATOMIC: u8 = 2;

/// `HVM_MAX_VCPUS` (`hvm_info_table.h`): Xen 4.17 maps one ioreq page, so 128 slots.
pub const HVM_MAX_VCPUS: u32 = 128;
