//! QEMU 7.2's `ioh3420` (8086:3420, `hw/pci-bridge/ioh3420.c`): the Intel X58 I/O hub's PCI
//! Express root port, built by the same `rp_realize()` as `pcie-root-port` with its own class
//! hooks: Subsystem ID capability at 0x40 naming Intel, MSI with two maskable 32-bit vectors at
//! 0x60 instead of MSI-X (so no BAR), the PCI Express capability at 0x90 with a 2.5 GT/s x1 link,
//! AER at 0x100 whose interrupt message is the last allocated MSI vector, no ACS and no
//! resource-reserve capability (`gen_rp_realize()` is `pcie-root-port`'s only). The hot-plug
//! slot, AER, PME and reset behaviour are the shared [`PciePort`]'s.

use super::{init_port_header, RootPortConfig};
use crate::devices::machine::PortCompat;
use crate::pci::bridge;
use crate::pci::caps::express::{self, LinkConfig, LinkSpeed};
use crate::pci::caps::msi::Msi;
use crate::pci::caps::{aer, slot, ssvid};
use crate::pci::config_space::{CapabilityError, ConfigSpace, PCIE_CONFIG_SPACE_SIZE};
use crate::pci::header::Identity;
use crate::pci::port::{PciePort, PortLayout};

/// The port's identity: Intel `PCI_DEVICE_ID_IOH_EPORT`, revision `PCI_DEVICE_ID_IOH_REV` (2).
pub const IDENTITY: Identity = Identity {
    vendor_id: 0x8086,
    device_id: 0x3420,
    revision: 2,
    class_code: bridge::CLASS_BRIDGE_PCI,
};
/// Bridge Subsystem Vendor ID capability (`IOH_EP_SSVID_OFFSET`), Subsystem ID 0.
pub const SSVID_OFFSET: u8 = 0x40;
/// MSI capability (`IOH_EP_MSI_OFFSET`).
pub const MSI_OFFSET: u8 = 0x60;
/// MSI vectors requested (`IOH_EP_MSI_NR_VECTOR`), 32-bit, with per-vector masking
/// (`IOH_EP_MSI_SUPPORTED_FLAGS`).
pub const MSI_VECTORS: u8 = 2;
/// PCI Express capability (`IOH_EP_EXP_OFFSET`).
pub const EXP_OFFSET: u8 = 0x90;
/// AER (`IOH_EP_AER_OFFSET`).
pub const AER_OFFSET: u16 = 0x100;

/// The link QEMU 7.2 gives an `ioh3420` (it has no `x-speed`/`x-width` properties): 2.5 GT/s, x1.
pub fn link(port: u8) -> LinkConfig {
    LinkConfig {
        port,
        speed: LinkSpeed::Gt2_5,
        width: 1,
    }
}

/// Build the port in its power-on state (`rp_realize()` with the `ioh3420` class hooks).
pub(super) fn build(
    config: &RootPortConfig,
    compat: PortCompat,
) -> Result<PciePort, CapabilityError> {
    let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
    init_port_header(&mut cs, IDENTITY, config.multifunction);
    ssvid::init(&mut cs, SSVID_OFFSET, IDENTITY.vendor_id, 0)?;
    // ioh3420_interrupts_init(): msi_init(d, 0x60, 2, 64-bit off, per-vector mask on).
    let msi = Msi::init(&mut cs, MSI_OFFSET, MSI_VECTORS, false, true)?;
    let exp = express::init_root_port(&mut cs, EXP_OFFSET, link(config.port))?;
    slot::init(&mut cs, exp, config.slot());
    aer::init_root_port(&mut cs, AER_OFFSET, config.aer_log_max > 0)?;
    let layout = PortLayout {
        exp,
        aer: AER_OFFSET,
        acs: None,
        msix_bar: 0,
        slot: config.slot(),
        compat,
    };
    Ok(PciePort::new(cs, msi, layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::root_port::{RootPort, RootPortModel};
    use crate::devices::MachineType;
    use crate::pci::caps::slot::SLTCTL;
    use crate::pci::port::PortFunction;
    use crate::pci::reference::{first_difference, load_dump, load_dump_from, read_all};
    use crate::pci::{Effects, Interrupt, PciFunction};

    fn port(id: &str, chassis: u8, slot: u16, multifunction: bool) -> RootPort {
        RootPort::new(RootPortConfig {
            id: id.into(),
            model: RootPortModel::Ioh3420,
            chassis,
            slot,
            multifunction,
            ..Default::default()
        })
    }

    #[test]
    fn reset_state_matches_the_qemu_dump() {
        let want = load_dump("ioh3420_00_1c.0.xxxx");
        let p = port("rp1", 1, 1, true);
        assert_eq!(first_difference(&read_all(&p), &want), None);
    }

    #[test]
    fn pc_q35_10_0_reset_state_matches_the_qemu_10_0_dump() {
        let want = load_dump_from("qemu-10.0", "ioh3420_00_1c.0.xxxx");
        let p = port("rp1", 1, 1, true);
        let p = RootPort::on_machine(p.config().clone(), MachineType::PcQ35V10_0);
        assert_eq!(first_difference(&read_all(&p), &want), None);
    }

    #[test]
    fn capability_chains_are_qemus() {
        let p = port("rp", 1, 1, false);
        assert_eq!(
            p.port().space().capabilities(),
            vec![(0x10, 0x90), (0x05, 0x60), (0x0d, 0x40)]
        );
        assert_eq!(p.port().space().ext_capabilities(), vec![(0x1, 2, 0x100)]);
        assert!(p.bars().is_empty(), "MSI needs no BAR");
    }

    #[test]
    fn hot_plug_events_use_msi_and_pend_while_masked() {
        let mut p = port("rp", 1, 1, false);
        p.config_write(0x64, 4, 0xfee0_0000);
        p.config_write(0x68, 2, 0x4040);
        p.config_write(0x6c, 4, 1);
        p.config_write(0x62, 2, 0x0001);
        p.take_interrupts();
        p.config_write(0x90 + SLTCTL, 2, 0x0030);
        assert_eq!(p.config_read(0x70, 4), 1, "vector 0 masked: pending");
        assert!(p.take_interrupts().is_empty());
        assert!(!p.intx_asserted());
        let fx = p.config_write(0x6c, 4, 0);
        assert!(fx.contains(Effects::INTERRUPT));
        assert_eq!(
            p.take_interrupts(),
            vec![Interrupt::Msi {
                vector: 0,
                address: 0xfee0_0000,
                data: 0x4040
            }]
        );
        assert_eq!(p.config_read(0x70, 4), 0);
        assert_eq!(p.msi_route(1), Some((0xfee0_0000, 0x4040, false)));
        assert_eq!(p.msi_route(2), None);
    }

    #[test]
    fn the_aer_message_number_follows_the_msi_allocation() {
        let mut p = port("rp", 1, 1, false);
        let vector = |p: &RootPort| p.config_read(0x130, 4) >> 27;
        assert_eq!(vector(&p), 0);
        p.config_write(0x62, 2, 0x0011);
        assert_eq!(vector(&p), 1, "two vectors allocated: AER uses vector 1");
        assert_eq!(p.msi_route(1), Some((0, 1, false)));
        p.config_write(0x62, 2, 0x0050);
        assert_eq!(vector(&p), 1, "QEMU aborts here; pcierc keeps vector 1");
        p.reset();
        assert_eq!(vector(&p), 1, "QEMU updates it before resetting MSI");
        p.config_write(0x3c, 1, 0);
        assert_eq!(vector(&p), 0, "and again on the next write");
        assert_eq!(p.config_read(0x60, 4), 0x0102_4005);
    }

    #[test]
    fn save_restore_round_trips_without_msix_state() {
        let mut p = port("rp", 1, 1, false);
        p.config_write(0x64, 4, 0xfee0_0000);
        p.config_write(0x6c, 4, 1);
        p.config_write(0x62, 2, 0x0011);
        p.config_write(0x90 + SLTCTL, 2, 0x0030);
        let saved = p.save();
        assert!(saved["port"].get("msix").is_none(), "{saved}");
        assert_eq!(saved["config"]["model"], "ioh3420");
        let mut q = port("rp", 1, 1, false);
        q.restore(&saved).unwrap();
        assert_eq!(q, p);
        let mut generic = RootPort::new(RootPortConfig {
            id: "rp".into(),
            chassis: 1,
            slot: 1,
            ..Default::default()
        });
        assert!(generic.restore(&saved).is_err(), "another model");
        assert!(q.restore(&generic.save()).is_err());
        assert_eq!(q, p, "a failed restore changes nothing");
    }
}
