//! QEMU 7.2's PCI Express switch ports (`hw/pci-bridge/xio3130_upstream.c`,
//! `hw/pci-bridge/xio3130_downstream.c`): the Texas Instruments XIO3130's upstream port
//! `x3130-upstream` (104c:8232 rev 2) and downstream port `xio3130-downstream` (104c:8233 rev 1).
//! Both have MSI with one 64-bit, not maskable vector at 0x70, the Subsystem ID capability at
//! 0x80 (0:0), the PCI Express capability at 0x90 with Function Level Reset, AER at 0x100, no
//! ACS, no Interrupt Pin. The upstream port (PCI Express type Upstream Port) has a 2.5 GT/s x1
//! link and no slot; a downstream port (type Downstream Port) has a hot-plug slot, ARI
//! forwarding, and Link Capabilities speed 0 and width x0 (QEMU fills them from `PCIESlot`
//! properties the device does not expose). Behaviour (slot, reset, FLR) is the shared
//! [`PciePort`]'s; where they sit in a hierarchy is `crate::topology::hierarchy`'s.

use super::{init_port_header, RootPortConfig, RootPortModel};
use crate::devices::machine::PortCompat;
use crate::pci::bridge;
use crate::pci::caps::express::{self, LinkSpeed};
use crate::pci::caps::msi::Msi;
use crate::pci::caps::slot::{self, SlotConfig};
use crate::pci::caps::{aer, ssvid};
use crate::pci::config_space::{CapabilityError, ConfigSpace, PCIE_CONFIG_SPACE_SIZE};
use crate::pci::header::{self, Identity};
use crate::pci::port::{PciePort, PortLayout};

/// `x3130-upstream`: `PCI_VENDOR_ID_TI`, `PCI_DEVICE_ID_TI_XIO3130U`, `XIO3130_REVISION` 2.
pub const UPSTREAM_IDENTITY: Identity = Identity {
    vendor_id: 0x104c,
    device_id: 0x8232,
    revision: 2,
    class_code: bridge::CLASS_BRIDGE_PCI,
};
/// `xio3130-downstream`: `PCI_DEVICE_ID_TI_XIO3130D`, `XIO3130_REVISION` 1.
pub const DOWNSTREAM_IDENTITY: Identity = Identity {
    vendor_id: 0x104c,
    device_id: 0x8233,
    revision: 1,
    class_code: bridge::CLASS_BRIDGE_PCI,
};
/// MSI capability (`XIO3130_MSI_OFFSET`): one 64-bit vector without per-vector masking.
pub const MSI_OFFSET: u8 = 0x70;
/// Subsystem ID capability (`XIO3130_SSVID_OFFSET`), Subsystem Vendor and ID 0.
pub const SSVID_OFFSET: u8 = 0x80;
/// PCI Express capability (`XIO3130_EXP_OFFSET`).
pub const EXP_OFFSET: u8 = 0x90;
/// AER (`XIO3130_AER_OFFSET`).
pub const AER_OFFSET: u16 = 0x100;

/// The slot of a port without one (the upstream port): nothing to hot-plug, no power controller.
const NO_SLOT: SlotConfig = SlotConfig {
    number: 0,
    hotplug: false,
    power_controller: false,
};

/// Build the port in its power-on state (QEMU's `xio3130_upstream_realize()` or
/// `xio3130_downstream_realize()`).
pub(super) fn build(
    config: &RootPortConfig,
    compat: PortCompat,
) -> Result<PciePort, CapabilityError> {
    let upstream = config.model == RootPortModel::X3130Upstream;
    let identity = if upstream {
        UPSTREAM_IDENTITY
    } else {
        DOWNSTREAM_IDENTITY
    };
    let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
    init_port_header(&mut cs, identity, config.multifunction);
    // pcie_port_init_reg() only: no Interrupt Pin (rp_realize() is the root ports' own).
    cs.set_byte(header::INTERRUPT_PIN, 0);
    let msi = Msi::init(&mut cs, MSI_OFFSET, 1, true, false)?;
    ssvid::init(&mut cs, SSVID_OFFSET, 0, 0)?;
    let (exp, slot_config) = if upstream {
        let link = Some((LinkSpeed::Gt2_5, 1));
        let exp = express::init_switch_port(
            &mut cs,
            EXP_OFFSET,
            express::TYPE_UPSTREAM,
            config.port,
            link,
        )?;
        (exp, NO_SLOT)
    } else {
        let exp = express::init_switch_port(
            &mut cs,
            EXP_OFFSET,
            express::TYPE_DOWNSTREAM,
            config.port,
            None,
        )?;
        slot::init(&mut cs, exp, config.slot());
        (exp, config.slot())
    };
    aer::init(&mut cs, AER_OFFSET, config.aer_log_max > 0)?;
    let layout = PortLayout {
        exp,
        aer: AER_OFFSET,
        acs: None,
        msix_bar: 0,
        slot: slot_config,
        compat,
    };
    Ok(PciePort::new(cs, msi, layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::root_port::RootPort;
    use crate::pci::port::PortFunction;
    use crate::pci::reference::{first_difference, load_dump, read_all};
    use crate::pci::{Effects, PciFunction};

    fn port(model: RootPortModel, id: &str, chassis: u8, slot: u16) -> RootPort {
        RootPort::new(RootPortConfig {
            id: id.into(),
            model,
            chassis,
            slot,
            ..Default::default()
        })
    }

    /// QEMU's dumps were taken with the bus numbers programmed (fixtures/qemu-7.2/dump_q35.py).
    #[test]
    fn reset_state_matches_the_qemu_dumps() {
        for (model, slot, numbers, dump) in [
            (
                RootPortModel::X3130Upstream,
                0,
                0x04_0201,
                "x3130_upstream_01_00.0.xxxx",
            ),
            (
                RootPortModel::Xio3130Downstream,
                1,
                0x03_0302,
                "xio3130_downstream_02_00.0.xxxx",
            ),
            (
                RootPortModel::Xio3130Downstream,
                2,
                0x04_0402,
                "xio3130_downstream_02_01.0.xxxx",
            ),
        ] {
            let mut p = port(model, "p", 5, slot);
            assert_eq!(p.config_write(0x18, 4, numbers), Effects::BUS_NUMBERS);
            let want = load_dump(dump);
            assert_eq!(first_difference(&read_all(&p), &want), None, "{dump}");
        }
    }

    #[test]
    fn capability_chains_are_qemus() {
        let p = port(RootPortModel::Xio3130Downstream, "dp", 1, 1);
        assert_eq!(
            p.port().space().capabilities(),
            vec![(0x10, 0x90), (0x0d, 0x80), (0x05, 0x70)]
        );
        assert_eq!(p.port().space().ext_capabilities(), vec![(0x1, 2, 0x100)]);
        assert!(p.bars().is_empty());
    }

    #[test]
    fn function_level_reset_resets_the_port_and_its_bus_numbers() {
        let mut p = port(RootPortModel::Xio3130Downstream, "dp", 1, 1);
        p.config_write(0x18, 4, 0x03_0302);
        p.config_write(0x20, 4, 0xfe10_fe00);
        let fx = p.config_write(0x98, 2, 0x8000);
        assert!(
            fx.contains(Effects::FUNCTION_LEVEL_RESET | Effects::BUS_NUMBERS),
            "{fx:?}"
        );
        assert_eq!(p.config_read(0x18, 4), 0);
        assert_eq!(p.config_read(0x98, 2), 0, "Initiate FLR reads 0");
        assert_eq!(p.config_read(0x20, 4), 0);
    }

    #[test]
    fn slot_events_without_msi_raise_no_intx() {
        let mut p = port(RootPortModel::Xio3130Downstream, "dp", 1, 1);
        p.config_write(0xa8, 2, 0x0030);
        assert_eq!(p.config_read(0xaa, 2), 0x0010, "command completed");
        assert!(!p.intx_asserted());
        assert!(p.take_interrupts().is_empty());
        assert_eq!(p.config_read(0x04, 4) & 1 << 19, 0, "no Interrupt Status");
        // The upstream port has no slot: Slot Control stays 0 and completes nothing.
        let mut u = port(RootPortModel::X3130Upstream, "up", 0, 0);
        u.config_write(0xa8, 2, 0xffff);
        assert_eq!(u.config_read(0xa8, 4), 0);
    }
}
