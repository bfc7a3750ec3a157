//! Machine types: which QEMU release's guest-visible register behaviour pcierc reproduces.
//!
//! QEMU changes device registers between releases behind *compat properties*: a new machine type
//! (`pc-q35-10.0`) gets the new behaviour, older machine types (`pc-q35-7.2`) keep the old one
//! through `hw_compat_X_Y` entries in `hw/core/machine.c`, so a guest sees the same hardware when
//! migrated to a newer QEMU. pcierc follows the same scheme: a [`MachineType`] selects a
//! [`PortCompat`], a small set of named behaviour flags, one per QEMU compat property (or binary
//! change), that the port models read. The Q35 host bridge (MCH) reads identically under both
//! machine types (checked against QEMU 10.0.2, docs/qemu-compat.md), so it has no flags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A Q35 machine type pcierc reproduces, by QEMU's name for it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum MachineType {
    /// `pc-q35-7.2`: QEMU 7.2's `q35` (the default; pcierc's long-standing oracle).
    #[default]
    PcQ35V7_2,
    /// `pc-q35-10.0`: QEMU 10.0's `q35`.
    PcQ35V10_0,
}

/// A machine type name pcierc does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown machine type '{0}' (known: pc-q35-7.2, pc-q35-10.0, and q35 for the newest)")]
pub struct UnknownMachine(pub String);

impl MachineType {
    /// Every machine type, oldest first.
    pub const ALL: [MachineType; 2] = [MachineType::PcQ35V7_2, MachineType::PcQ35V10_0];
    /// What `q35` means: the newest machine type, as in QEMU (its `q35` alias moves with each
    /// release).
    pub const NEWEST: MachineType = MachineType::PcQ35V10_0;

    /// QEMU's name (`-M NAME`).
    pub fn name(self) -> &'static str {
        match self {
            MachineType::PcQ35V7_2 => "pc-q35-7.2",
            MachineType::PcQ35V10_0 => "pc-q35-10.0",
        }
    }

    /// The port behaviour of this machine type.
    pub fn port_compat(self) -> PortCompat {
        match self {
            MachineType::PcQ35V7_2 => PortCompat::QEMU_7_2,
            MachineType::PcQ35V10_0 => PortCompat::QEMU_10_0,
        }
    }
}

impl fmt::Display for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MachineType {
    type Err = UnknownMachine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "q35" {
            return Ok(Self::NEWEST);
        }
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMachine(s.to_string()))
    }
}

impl Serialize for MachineType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for MachineType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The behaviour of root ports (`pcie-root-port`, `ioh3420`) and of the `pcie-pci-bridge`'s
/// SHPC that differs between machine types: registers, and the `device_add`/`device_del` slot
/// rules. Each flag is `true` for the newer behaviour.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortCompat {
    /// QEMU `x-pcie-err-unc-mask` (off in `hw_compat_7_2`): the AER Uncorrectable Error Mask is
    /// writable for the supported errors, with Uncorrectable Internal Error and TLP Prefix
    /// Blocked masked by default (`PCI_ERR_UNC_MASK_DEFAULT`). Off: read-only zero.
    /// PCIe Base 6.0 §7.8.4.3 Uncorrectable Error Mask Register.
    pub err_unc_mask: bool,
    /// QEMU `x-pci-express-writeable-slt-bug` inverted (on in `hw_compat_8_1`): the Secondary
    /// Latency Timer is read-only zero, as PCIe requires. Off: writable, as on a PCI bridge.
    /// PCIe Base 6.0 §7.5.1.3.5 Secondary Latency Timer (RO, hardwired to 0).
    pub slt_read_only: bool,
    /// QEMU `x-pcie-ext-tag` (off in `hw_compat_9_1`): Device Capabilities Extended Tag Field
    /// Supported (8-bit tags). PCIe Base 6.0 §7.5.3.3 Device Capabilities bit 5.
    pub ext_tag: bool,
    /// No compat property: a change of the QEMU binary (every machine type of QEMU 10.0 reads
    /// so; "pcie: set power indicator to off on reset by default", QEMU 8.0). A reset leaves
    /// every slot's Power Indicator Off: a slot populated at reset (Power Controller on) and a
    /// slot without a power controller too, where QEMU 7.2 turns the first On and leaves the
    /// second's field at 00b (QEMU 10.0's `pcie_cap_slot_reset()` sets Off before or-ing in
    /// On). The `pcie-pci-bridge`'s SHPC follows it: its reset turns the attention indicators
    /// off. PCIe Base 6.0 §7.5.3.10 Slot Control, Power Indicator Control.
    pub power_indicator_off_at_reset: bool,
    /// No compat property: a change of the QEMU binary (Igor Mammedov's `is_hotpluggable_bus()`
    /// hook, which PCIe slots answer with their `hotplug` property; QEMU 8.0). qdev asks a port
    /// whether its bus takes hot-plug before the slot's callbacks run: a port with `hotplug=off` refuses `device_add` and `device_del`
    /// with qdev's "Bus 'ID' does not support hotplugging" (before the id is checked), where
    /// QEMU 7.2's slot callbacks answer "Hot-plug failed: unsupported by the port device 'ID'"
    /// ("Hot-unplug failed: ..."). A port that has `hotplug` on but no Hot-Plug Capable bit
    /// still refuses with the slot's message.
    pub hotplug_off_refused_by_bus: bool,
    /// No compat property: a change of the QEMU binary ("shpc: disallow unplug when power
    /// indicator is blinking", Vladimir Sementsov-Ogievskiy, after 7.2). The SHPC refuses a
    /// removal request while the slot's power indicator blinks, with "Hot-unplug failed: guest
    /// is busy (power indicator blinking)", as PCIe slots do in both releases (SHPC 1.0's power
    /// indicator blinks while the slot is in transition).
    pub shpc_refuse_unplug_while_blinking: bool,
    /// No compat property: a change of the QEMU binary ("pci/shpc: shpc_slot_command(): handle
    /// PWRONLY -> ENABLED transition" and "pci/shpc: more generic handle hot-unplug in
    /// shpc_slot_command()", Vladimir Sementsov-Ogievskiy, QEMU 8.0). A Slot Operation command
    /// sets any commanded slot state (QEMU 7.2 ignores power-only -> enabled and any change
    /// that is not from or to disabled), and the card is released when the slot becomes
    /// disabled with its power indicator off from any other combination (QEMU 7.2: only when
    /// the command takes an enabled or power-only slot to disabled). SHPC 1.0 Slot Operation
    /// commands.
    pub shpc_generic_slot_command: bool,
    /// No compat property: a change of the QEMU binary ("hw/pci/aer: Add missing routing for AER
    /// errors", Jonathan Cameron, QEMU 8.0). An error message passing a function
    /// (`pcie_aer_msg_alldev()`) is let through by the Device Control reporting enable of its
    /// severity as well as by Command SERR# Enable, and sets Status Signaled System Error
    /// whenever it is let through: a correctable error (Correctable Error Reporting Enable)
    /// sets it too, where QEMU 7.2 sets it for ERR_NONFATAL/ERR_FATAL with SERR# Enable only.
    /// PCIe Base 6.0 §6.2.6 (Figure 6-3), §7.5.1.1.4 Status bit 14, §7.5.3.4 Device Control.
    pub aer_msg_devctl: bool,
}

impl PortCompat {
    /// QEMU 7.2's `pc-q35-7.2`.
    pub const QEMU_7_2: PortCompat = PortCompat {
        err_unc_mask: false,
        slt_read_only: false,
        ext_tag: false,
        power_indicator_off_at_reset: false,
        hotplug_off_refused_by_bus: false,
        shpc_refuse_unplug_while_blinking: false,
        shpc_generic_slot_command: false,
        aer_msg_devctl: false,
    };
    /// QEMU 10.0's `pc-q35-10.0`.
    pub const QEMU_10_0: PortCompat = PortCompat {
        err_unc_mask: true,
        slt_read_only: true,
        ext_tag: true,
        power_indicator_off_at_reset: true,
        hotplug_off_refused_by_bus: true,
        shpc_refuse_unplug_while_blinking: true,
        shpc_generic_slot_command: true,
        aer_msg_devctl: true,
    };
}

impl Default for PortCompat {
    fn default() -> Self {
        MachineType::default().port_compat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_q35_is_the_newest() {
        for m in MachineType::ALL {
            assert_eq!(m.name().parse::<MachineType>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        assert_eq!("q35".parse(), Ok(MachineType::PcQ35V10_0));
        assert_eq!(MachineType::default(), MachineType::PcQ35V7_2);
        assert!(matches!(
            "pc-q35-9.2".parse::<MachineType>(),
            Err(UnknownMachine(n)) if n == "pc-q35-9.2"
        ));
    }

    #[test]
    fn serializes_as_qemus_name() {
        let json = serde_json::to_string(&MachineType::PcQ35V10_0).unwrap();
        assert_eq!(json, "\"pc-q35-10.0\"");
        assert_eq!(
            serde_json::from_str::<MachineType>(&json).unwrap(),
            MachineType::PcQ35V10_0
        );
        assert!(serde_json::from_str::<MachineType>("\"pc-i440fx-7.2\"").is_err());
    }
}
