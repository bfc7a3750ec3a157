//! QEMU's resource-reserve capability: a Red Hat vendor-specific capability (PCI Local Bus 3.0
//! §6.8.4, ID 0x09) through which SeaBIOS and OVMF learn how many buses and how much I/O and
//! memory to reserve behind a bridge (QEMU `docs/pcie_pci_bridge.txt`,
//! `pci_bridge_qemu_reserve_cap_init()` in `hw/pci/pci_bridge.c`).

use crate::pci::config_space::{CapabilityError, ConfigSpace};

use super::CAP_ID_VENDOR;

// QEMU `PCIBridgeQemuCap` (include/hw/pci/pci_bridge.h): id, next, len, type, then the fields.
/// Length of the vendor-specific capability (its `len` byte).
pub const LEN: u16 = 0x02;
/// Red Hat capability type; 1 = resource reserve.
pub const TYPE: u16 = 0x03;
/// Minimum number of buses to reserve (u32).
pub const BUS_RES: u16 = 0x04;
/// I/O space to reserve (u64).
pub const IO: u16 = 0x08;
/// Non-prefetchable memory to reserve (u32).
pub const MEM: u16 = 0x10;
/// Prefetchable 32-bit memory to reserve (u32).
pub const MEM_PREF_32: u16 = 0x14;
/// Prefetchable 64-bit memory to reserve (u64).
pub const MEM_PREF_64: u16 = 0x18;
/// Size of the capability.
pub const SIZEOF: u8 = 0x20;
/// `REDHAT_PCI_CAP_RESOURCE_RESERVE`.
pub const TYPE_RESOURCE_RESERVE: u8 = 1;

/// The reservations, with QEMU's "unset" sentinel (all ones) for fields not given.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Reserve {
    /// Buses.
    pub bus: u32,
    /// I/O bytes.
    pub io: u64,
    /// Non-prefetchable memory bytes.
    pub mem: u64,
    /// Prefetchable memory bytes below 4 GiB.
    pub pref32: u64,
    /// Prefetchable 64-bit memory bytes.
    pub pref64: u64,
}

impl Reserve {
    /// Is anything set? QEMU adds the capability only then.
    pub fn any(&self) -> bool {
        self.bus != u32::MAX
            || self.io != u64::MAX
            || self.mem != u64::MAX
            || self.pref32 != u64::MAX
            || self.pref64 != u64::MAX
    }
}

/// Add the capability in the first free gap (QEMU passes offset 0) when anything is set, all
/// read-only. `mem` and `pref32` are 32-bit fields and are truncated as QEMU does.
pub fn init(cs: &mut ConfigSpace, r: Reserve) -> Result<Option<u8>, CapabilityError> {
    if !r.any() {
        return Ok(None);
    }
    let at = cs.add_capability(CAP_ID_VENDOR, None, SIZEOF)?;
    let base = u16::from(at);
    cs.set_byte(base + LEN, SIZEOF);
    cs.set_byte(base + TYPE, TYPE_RESOURCE_RESERVE);
    cs.set_dword(base + BUS_RES, r.bus);
    cs.set_qword(base + IO, r.io);
    cs.set_dword(base + MEM, r.mem as u32);
    cs.set_dword(base + MEM_PREF_32, r.pref32 as u32);
    cs.set_qword(base + MEM_PREF_64, r.pref64);
    Ok(Some(at))
}
