//! QEMU 7.2's `pcie-root-port` (1b36:000c, `hw/pci-bridge/gen_pcie_root_port.c` on top of
//! `hw/pci-bridge/pcie_root_port.c`), register for register: a type 1 header, the capability
//! layout QEMU builds (SSVID 0x40, MSI-X 0x48 with one vector in a 4 KiB BAR0, PCI Express v2
//! with a hot-plug slot at 0x54, the resource-reserve capability at 0x90 when any reservation is
//! given, AER v2 at 0x100, ACS at 0x148), every mask and reset value, and the guest-visible part
//! of QEMU's write hooks (`rp_write_config()`). The same port built as QEMU's `ioh3420`
//! ([`RootPortModel::Ioh3420`]) has that device's identity and capability layout ([`ioh3420`]).

use serde::{Deserialize, Serialize};

use super::machine::{MachineType, PortCompat};
use crate::pci::bridge;
use crate::pci::caps::express::{self, LinkConfig, LinkSpeed};
use crate::pci::caps::msix::Msix;
use crate::pci::caps::resource_reserve::{self, Reserve};
use crate::pci::caps::slot::{self, SlotConfig};
use crate::pci::caps::{acs, aer, ssvid};
use crate::pci::config_space::{CapabilityError, ConfigSpace, PCIE_CONFIG_SPACE_SIZE};
use crate::pci::header::{self, Identity};
use crate::pci::port::{PciePort, PortFunction, PortLayout};
use crate::topology::TopologyError;

pub mod ioh3420;
pub mod xio3130;

/// The port's identity: Red Hat `PCI_DEVICE_ID_REDHAT_PCIE_RP`, revision 0.
pub const IDENTITY: Identity = Identity {
    vendor_id: 0x1b36,
    device_id: 0x000c,
    revision: 0,
    class_code: bridge::CLASS_BRIDGE_PCI,
};
/// Bridge Subsystem Vendor ID capability (`rpc->ssvid_offset`).
pub const SSVID_OFFSET: u8 = 0x40;
/// PCI Express capability (`rpc->exp_offset`).
pub const EXP_OFFSET: u8 = 0x54;
/// AER (`GEN_PCIE_ROOT_PORT_AER_OFFSET`).
pub const AER_OFFSET: u16 = 0x100;
/// ACS, right after AER (`GEN_PCIE_ROOT_PORT_ACS_OFFSET`).
pub const ACS_OFFSET: u16 = AER_OFFSET + aer::SIZEOF;
/// MSI-X vectors (`GEN_PCIE_ROOT_PORT_MSIX_NR_VECTOR`), in BAR0.
pub const MSIX_VECTORS: u16 = 1;
const MSIX_BAR: u8 = 0;

/// Which QEMU root port device a port is: the QEMU driver name, as in `-device`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootPortModel {
    /// `pcie-root-port` (1b36:000c): MSI-X, ACS, resource reservations, 16 GT/s x32.
    #[default]
    PcieRootPort,
    /// `ioh3420` (8086:3420): MSI, no ACS, no reservations, 2.5 GT/s x1 ([`ioh3420`]).
    Ioh3420,
    /// `x3130-upstream` (104c:8232): a switch's upstream port ([`xio3130`]), behind a root port
    /// or a switch downstream port.
    X3130Upstream,
    /// `xio3130-downstream` (104c:8233): a switch's downstream port with a hot-plug slot
    /// ([`xio3130`]), on an upstream port's secondary bus.
    Xio3130Downstream,
}

/// What a port model is in a hierarchy (PCIe Base 6.0 §7.5.3.2 Device/Port Type), which decides
/// where it sits and which devices its secondary bus forwards Type 0 cycles to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BridgeKind {
    /// A Root Port of the Root Complex, on the root bus.
    RootPort,
    /// A switch's Upstream Port: at device 0 below a root or downstream port; its secondary bus
    /// is the switch's internal bus, holding its downstream ports at any device number.
    SwitchUpstream,
    /// A switch's Downstream Port, on an upstream port's secondary bus.
    SwitchDownstream,
}

impl BridgeKind {
    /// Does a Type 0 configuration cycle on the secondary bus reach device 0 only? True for
    /// Downstream Ports, root ports included (PCIe Base 6.0 §7.3.1, §2.2.6.2); the internal bus
    /// of a switch has every device number.
    pub fn device0_only(self) -> bool {
        self != BridgeKind::SwitchUpstream
    }

    /// Does the port have a slot (root and switch downstream ports)?
    pub fn has_slot(self) -> bool {
        self != BridgeKind::SwitchUpstream
    }
}

impl RootPortModel {
    /// Every model, for parsers.
    pub const ALL: [RootPortModel; 4] = [
        RootPortModel::PcieRootPort,
        RootPortModel::Ioh3420,
        RootPortModel::X3130Upstream,
        RootPortModel::Xio3130Downstream,
    ];

    /// QEMU's driver name (`-device NAME`).
    pub fn driver(self) -> &'static str {
        match self {
            RootPortModel::PcieRootPort => "pcie-root-port",
            RootPortModel::Ioh3420 => "ioh3420",
            RootPortModel::X3130Upstream => "x3130-upstream",
            RootPortModel::Xio3130Downstream => "xio3130-downstream",
        }
    }

    /// Where the model sits in a hierarchy.
    pub fn kind(self) -> BridgeKind {
        match self {
            RootPortModel::PcieRootPort | RootPortModel::Ioh3420 => BridgeKind::RootPort,
            RootPortModel::X3130Upstream => BridgeKind::SwitchUpstream,
            RootPortModel::Xio3130Downstream => BridgeKind::SwitchDownstream,
        }
    }

    /// The model QEMU's driver `name` is, if it is a root port pcierc emulates.
    pub fn from_driver(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.driver() == name)
    }

    fn is_default(&self) -> bool {
        *self == RootPortModel::default()
    }
}

/// A root port's properties, with the meaning and defaults of QEMU 7.2's `pcie-root-port`
/// properties of the same names (`qemu-system-x86_64 -device pcie-root-port,help`; the table in
/// docs/qemu-compat.md says what each changes). `None` = not given. A saved state written before
/// a property existed loads with QEMU's default for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootPortConfig {
    /// Device id (`id=`), used to address the port in the topology.
    pub id: String,
    /// The QEMU device the port is (`pcie-root-port` unless given).
    #[serde(default, skip_serializing_if = "RootPortModel::is_default")]
    pub model: RootPortModel,
    /// Chassis number (`chassis=`); QEMU only uses it to keep (chassis, slot) unique.
    pub chassis: u8,
    /// Physical Slot Number in Slot Capabilities (`slot=`).
    pub slot: u16,
    /// Port Number in Link Capabilities (`port=`).
    pub port: u8,
    /// Multi-function bit in Header Type (`multifunction=`).
    pub multifunction: bool,
    /// Buses firmware should reserve behind the port (`bus-reserve=`).
    pub bus_reserve: Option<u32>,
    /// I/O bytes to reserve (`io-reserve=`); 0 also makes the I/O window read-only.
    pub io_reserve: Option<u64>,
    /// Non-prefetchable memory bytes to reserve (`mem-reserve=`), below 4 GiB.
    pub mem_reserve: Option<u64>,
    /// Prefetchable 32-bit memory bytes to reserve (`pref32-reserve=`), below 4 GiB.
    pub pref32_reserve: Option<u64>,
    /// Prefetchable 64-bit memory bytes to reserve (`pref64-reserve=`).
    pub pref64_reserve: Option<u64>,
    /// The slot is hot-plug capable (`hotplug=`, default on): Slot Capabilities Hot-Plug
    /// Capable and Hot-Plug Surprise; off refuses `device_add`/`device_del` on the port.
    pub hotplug: bool,
    /// Native (PCIe) hot-plug is offered (`x-native-hotplug=`, default on); off hides it as
    /// `hotplug=off` does and reserves 4 KiB of I/O unless `io-reserve` is given (QEMU expects
    /// ACPI hot-plug then, which pcierc does not provide).
    pub native_hotplug: bool,
    /// A power controller is present (`power_controller_present=`, default on): Slot
    /// Capabilities Power Controller Present and a writable Power Controller Control.
    pub power_controller_present: bool,
    /// No ACS extended capability (`disable-acs=`, default off).
    pub disable_acs: bool,
    /// AER error log entries (`aer_log_max=`, default 8, at most 128); 0 clears AER Multiple
    /// Header Recording Capable.
    pub aer_log_max: u16,
    /// Maximum link speed (`x-speed=`: 2_5, 5, 8, 16; default 16).
    pub speed: LinkSpeed,
    /// Maximum link width (`x-width=`: 1, 2, 4, 8, 12, 16, 32; default 32).
    pub width: u8,
    /// `x-pcie-lnksta-dllla=` (default on): accepted and stored. In QEMU 7.2 it is a property
    /// of the device *plugged into* a slot (`pcie_cap_slot_plug_cb()` tests the plugged
    /// device's flag), so a root port's own value changes nothing a guest sees of it.
    pub lnksta_dllla: bool,
    /// `x-pcie-extcap-init=` (default on): accepted and stored; no effect on a root port.
    pub extcap_init: bool,
    /// `x-migrate-msix=` (default on): accepted and stored; pcierc always saves MSI-X state.
    pub migrate_msix: bool,
    /// `acpi-index=` (default 0, at most 16383, unique): accepted and stored; pcierc builds no
    /// ACPI tables.
    pub acpi_index: u32,
    /// `rombar=` (default 1): accepted and stored; without a ROM file there is no ROM BAR.
    pub rombar: u32,
    /// `romsize=` (a power of two): accepted and stored; without a ROM file there is no ROM.
    pub romsize: Option<u32>,
}

impl Default for RootPortConfig {
    /// QEMU 7.2's defaults.
    fn default() -> Self {
        RootPortConfig {
            id: String::new(),
            model: RootPortModel::default(),
            chassis: 0,
            slot: 0,
            port: 0,
            multifunction: false,
            bus_reserve: None,
            io_reserve: None,
            mem_reserve: None,
            pref32_reserve: None,
            pref64_reserve: None,
            hotplug: true,
            native_hotplug: true,
            power_controller_present: true,
            disable_acs: false,
            aer_log_max: aer::LOG_MAX_DEFAULT,
            speed: LinkSpeed::Gt16,
            width: 32,
            lnksta_dllla: true,
            extcap_init: true,
            migrate_msix: true,
            acpi_index: 0,
            rombar: 1,
            romsize: None,
        }
    }
}

/// Most `acpi-index` QEMU accepts (`ONBOARD_INDEX_MAX`).
pub const ACPI_INDEX_MAX: u32 = 16 * 1024 - 1;
/// The widths QEMU's `x-width` accepts (`PCIELinkWidth`).
pub const LINK_WIDTHS: [u8; 7] = [1, 2, 4, 8, 12, 16, 32];
/// I/O QEMU reserves for a port with `x-native-hotplug=off` (`gen_rp_realize()`: ACPI hot-plug
/// needs I/O behind the port).
pub const ACPI_HOTPLUG_IO_RESERVE: u64 = 0x1000;

impl RootPortConfig {
    /// The values and combinations QEMU refuses (`pci_bridge_qemu_reserve_cap_init()`,
    /// `pcie_aer_init()`, `pci_qdev_realize()`), with its messages.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let err = |reason| {
            Err(TopologyError::ResourceReserve {
                id: self.id.clone(),
                reason,
            })
        };
        if self.model != RootPortModel::PcieRootPort {
            // gen_rp_realize() alone has the reservation properties: QEMU's `ioh3420` and
            // switch ports refuse them as unknown.
            let given = [
                ("bus-reserve", self.bus_reserve.is_some()),
                ("io-reserve", self.io_reserve.is_some()),
                ("mem-reserve", self.mem_reserve.is_some()),
                ("pref32-reserve", self.pref32_reserve.is_some()),
                ("pref64-reserve", self.pref64_reserve.is_some()),
            ];
            if let Some((key, _)) = given.into_iter().find(|(_, set)| *set) {
                return Err(TopologyError::UnknownProperty {
                    id: self.id.clone(),
                    key: key.to_string(),
                    driver: self.model.driver().to_string(),
                });
            }
        }
        if self.pref32_reserve.is_some() && self.pref64_reserve.is_some() {
            return err("PREF32 and PREF64 conflict");
        }
        if self.mem_reserve.is_some_and(|m| m >= 1 << 32) {
            return err("mem-reserve must be less than 4G");
        }
        if self.pref32_reserve.is_some_and(|m| m >= 1 << 32) {
            return err("pref32-reserve must be less than 4G");
        }
        let refuse = |property, reason: String| {
            Err(TopologyError::PortProperty {
                id: self.id.clone(),
                property,
                reason,
            })
        };
        if self.aer_log_max > aer::LOG_MAX_LIMIT {
            return refuse(
                "aer_log_max",
                format!(
                    "Invalid aer_log_max {}. The max number of aer log is {}",
                    self.aer_log_max,
                    aer::LOG_MAX_LIMIT
                ),
            );
        }
        crate::topology::pci_device::validate(&self.id, self.acpi_index, self.romsize)?;
        if !LINK_WIDTHS.contains(&self.width) {
            return refuse(
                "x-width",
                format!("Parameter 'x-width' does not accept value '{}'", self.width),
            );
        }
        Ok(())
    }

    /// Is native hot-plug offered (`hotplug` and `x-native-hotplug`)?
    pub fn hotplug_capable(&self) -> bool {
        self.hotplug && self.native_hotplug
    }

    fn reserve(&self) -> Reserve {
        // gen_rp_realize(): a port left to ACPI hot-plug gets I/O for the devices to come.
        let io = match self.io_reserve {
            None if self.hotplug && !self.native_hotplug => ACPI_HOTPLUG_IO_RESERVE,
            io => io.unwrap_or(u64::MAX),
        };
        Reserve {
            bus: self.bus_reserve.unwrap_or(u32::MAX),
            io,
            mem: self.mem_reserve.unwrap_or(u64::MAX),
            pref32: self.pref32_reserve.unwrap_or(u64::MAX),
            pref64: self.pref64_reserve.unwrap_or(u64::MAX),
        }
    }

    fn slot(&self) -> SlotConfig {
        SlotConfig {
            number: self.slot,
            hotplug: self.hotplug_capable(),
            power_controller: self.power_controller_present,
        }
    }

    fn link(&self) -> LinkConfig {
        LinkConfig {
            port: self.port,
            speed: self.speed,
            width: self.width,
        }
    }
}

/// A PCIe root port compatible with QEMU 7.2's `pcie-root-port`: QEMU's capability layout on a
/// [`PciePort`], whose behaviour (bus numbers, windows, slot, AER, PME, and the whole
/// [`crate::pci::PciFunction`]) it has through [`PortFunction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPort {
    config: RootPortConfig,
    port: PciePort,
}

impl RootPort {
    /// A port in its power-on state. The configuration should pass
    /// [`RootPortConfig::validate`]; an invalid reservation is encoded as given (QEMU refuses
    /// to create such a port). See [`RootPort::try_new`].
    pub fn new(config: RootPortConfig) -> Self {
        Self::on_machine(config, MachineType::default())
    }

    /// [`RootPort::new`] with the register behaviour of `machine` (QEMU's compat properties,
    /// [`PortCompat`]).
    pub fn on_machine(config: RootPortConfig, machine: MachineType) -> Self {
        // The layout is QEMU's and fixed; it cannot fail for any configuration (unit-tested).
        Self::build(config, machine.port_compat()).expect("pcie-root-port capability layout")
    }

    /// [`RootPort::new`] for a configuration QEMU accepts; otherwise QEMU's error.
    pub fn try_new(config: RootPortConfig) -> Result<Self, TopologyError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    fn build(config: RootPortConfig, compat: PortCompat) -> Result<Self, CapabilityError> {
        match config.model {
            RootPortModel::PcieRootPort => {}
            RootPortModel::Ioh3420 => {
                let port = ioh3420::build(&config, compat)?;
                return Ok(RootPort { config, port });
            }
            RootPortModel::X3130Upstream | RootPortModel::Xio3130Downstream => {
                let port = xio3130::build(&config, compat)?;
                return Ok(RootPort { config, port });
            }
        }
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        init_port_header(&mut cs, IDENTITY, config.multifunction);
        ssvid::init(&mut cs, SSVID_OFFSET, IDENTITY.vendor_id, 0)?;
        let msix = Msix::init_exclusive_bar(&mut cs, MSIX_VECTORS, MSIX_BAR)?;
        let exp = express::init_root_port(&mut cs, EXP_OFFSET, config.link())?;
        slot::init(&mut cs, exp, config.slot());
        aer::init_root_port(&mut cs, AER_OFFSET, config.aer_log_max > 0)?;
        aer::root_set_vector(&mut cs, AER_OFFSET, 0);
        // rp_realize(): ACS unless `disable-acs`.
        let acs = if config.disable_acs {
            None
        } else {
            Some(acs::init(&mut cs, ACS_OFFSET)?)
        };
        // gen_rp_realize(): the reservations firmware reads, and io-reserve=0 turns I/O off.
        resource_reserve::init(&mut cs, config.reserve())?;
        if config.reserve().io == 0 {
            cs.clear_wmask(header::COMMAND, 2, header::COMMAND_IO.into());
            cs.set_wmask(bridge::IO_BASE, 2, 0);
        }
        let layout = PortLayout {
            exp,
            aer: AER_OFFSET,
            acs,
            msix_bar: MSIX_BAR,
            slot: config.slot(),
            compat,
        };
        Ok(RootPort {
            config,
            port: PciePort::new(cs, msix, layout),
        })
    }

    /// The properties the port was built with.
    pub fn config(&self) -> &RootPortConfig {
        &self.config
    }

    /// What the port is in a hierarchy (root port, switch upstream or downstream port).
    pub fn kind(&self) -> BridgeKind {
        self.config.model.kind()
    }
}

/// The header every root port model starts from: do_pci_register_device() + rp_realize() (pin
/// INTA, bridge header) and pcie_port_init_reg() (no 66 MHz / fast back-to-back, bits that do
/// not apply to PCIe).
fn init_port_header(cs: &mut ConfigSpace, identity: Identity, multifunction: bool) {
    bridge::init_type1(cs, identity, multifunction);
    cs.set_byte(header::INTERRUPT_PIN, 1);
    cs.set_word(header::STATUS, 0);
    cs.set_word(bridge::SEC_STATUS, 0);
    cs.clear_wmask(
        bridge::BRIDGE_CONTROL,
        2,
        (bridge::BRIDGE_CTL_MASTER_ABORT
            | bridge::BRIDGE_CTL_FAST_BACK
            | bridge::BRIDGE_CTL_DISCARD
            | bridge::BRIDGE_CTL_SEC_DISCARD
            | bridge::BRIDGE_CTL_DISCARD_STATUS
            | bridge::BRIDGE_CTL_DISCARD_SERR)
            .into(),
    );
}

impl PortFunction for RootPort {
    type Properties = RootPortConfig;

    fn port(&self) -> &PciePort {
        &self.port
    }

    fn port_mut(&mut self) -> &mut PciePort {
        &mut self.port
    }

    fn properties(&self) -> &RootPortConfig {
        &self.config
    }

    fn id(&self) -> &str {
        &self.config.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::caps::slot::{SLTCTL, SLTSTA};
    use crate::pci::reference::{first_difference, load_dump, load_dump_from, read_all};
    use crate::pci::{BarMapping, BridgeWindows, Effects, PciFunction, SlotEvent};

    fn port(id: &str, chassis: u8, slot: u16, multifunction: bool) -> RootPort {
        RootPort::new(RootPortConfig {
            id: id.into(),
            chassis,
            slot,
            multifunction,
            ..Default::default()
        })
    }

    #[test]
    fn reset_state_matches_qemu_dumps() {
        for (p, dump) in [
            (port("rp1", 1, 1, true), "pcie_root_port_00_1c.0.xxxx"),
            (port("rp2", 2, 2, false), "pcie_root_port_00_1c.1.xxxx"),
        ] {
            let want = load_dump(dump);
            assert_eq!(first_difference(&read_all(&p), &want), None, "{dump}");
        }
    }

    #[test]
    fn pc_q35_10_0_reset_state_matches_qemu_10_0_dumps() {
        for (p, dump) in [
            (port("rp1", 1, 1, true), "pcie_root_port_00_1c.0.xxxx"),
            (port("rp2", 2, 2, false), "pcie_root_port_00_1c.1.xxxx"),
        ] {
            let p = RootPort::on_machine(p.config().clone(), MachineType::PcQ35V10_0);
            let want = load_dump_from("qemu-10.0", dump);
            assert_eq!(first_difference(&read_all(&p), &want), None, "{dump}");
        }
    }

    #[test]
    fn capability_chains_are_qemus() {
        let p = port("rp", 1, 1, false);
        assert_eq!(
            p.port.space().capabilities(),
            vec![(0x10, 0x54), (0x11, 0x48), (0x0d, 0x40)]
        );
        assert_eq!(
            p.port.space().ext_capabilities(),
            vec![(0x1, 2, 0x100), (0xd, 1, 0x148)]
        );
    }

    #[test]
    fn resource_reserve_capability_as_qemu_lays_it_out() {
        let cfg = RootPortConfig {
            id: "rp".into(),
            bus_reserve: Some(2),
            io_reserve: Some(0x2000),
            mem_reserve: Some(0x10_0000),
            pref64_reserve: Some(0x4000_0000),
            ..Default::default()
        };
        let p = RootPort::try_new(cfg).unwrap();
        assert_eq!(p.port.space().capabilities()[0], (0x09, 0x90));
        let cap: Vec<u32> = (0x90..0xb0)
            .step_by(4)
            .map(|o| p.config_read(o, 4))
            .collect();
        assert_eq!(
            cap,
            [
                0x0120_5409,
                2,
                0x2000,
                0,
                0x10_0000,
                0xffff_ffff,
                0x4000_0000,
                0
            ]
        );
        let mut off = RootPort::new(RootPortConfig {
            io_reserve: Some(0),
            ..Default::default()
        });
        assert_eq!(off.config_read(0x94, 4), 0xffff_ffff);
        assert_eq!(off.config_read(0x98, 4), 0);
        off.config_write(0x04, 2, 0xffff);
        off.config_write(0x1c, 2, 0xffff);
        assert_eq!(
            off.config_read(0x04, 2),
            0x0506,
            "io-reserve=0: no I/O decode"
        );
        assert_eq!(off.config_read(0x1c, 2), 0x00f0);
        let bad = RootPortConfig {
            pref32_reserve: Some(1),
            pref64_reserve: Some(1),
            ..Default::default()
        };
        assert!(RootPort::try_new(bad).is_err());
        assert!(RootPort::try_new(RootPortConfig {
            mem_reserve: Some(1 << 32),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn link_and_slot_follow_the_properties() {
        let p = RootPort::new(RootPortConfig {
            port: 0x11,
            slot: 0x1fff,
            ..Default::default()
        });
        assert_eq!(p.config_read(0x60, 4) >> 24, 0x11);
        assert_eq!(p.config_read(0x68, 4) >> 19, 0x1fff);
    }

    #[test]
    fn bus_numbers_and_windows_report_effects() {
        let mut p = port("rp", 1, 1, false);
        assert_eq!(p.config_write(0x18, 4, 0x0003_0100), Effects::BUS_NUMBERS);
        assert_eq!(
            (p.primary_bus(), p.secondary_bus(), p.subordinate_bus()),
            (0, 1, 3)
        );
        assert_eq!(
            p.config_write(0x1b, 1, 0x40),
            Effects::empty(),
            "latency timer is not a bus number"
        );
        assert_eq!(p.config_write(0x20, 4, 0xfe10_fe00), Effects::WINDOWS);
        assert_eq!(
            p.windows(),
            BridgeWindows::default(),
            "memory decode is off"
        );
        assert_eq!(
            p.config_write(0x04, 2, 0x0003),
            Effects::WINDOWS | Effects::BARS
        );
        assert_eq!(p.windows().mem, Some((0xfe00_0000, 0x20_0000)));
        assert_eq!(p.windows().io, None, "I/O base 0xf000 > limit 0x0fff");
        assert_eq!(p.config_write(0x1c, 2, 0x2010), Effects::WINDOWS);
        assert_eq!(p.windows().io, Some((0x1000, 0x2000)));
        assert_eq!(
            p.config_write(0x3e, 2, 0x0040),
            Effects::SECONDARY_BUS_RESET
        );
        assert_eq!(
            p.config_write(0x3e, 2, 0x0040),
            Effects::empty(),
            "only the 0->1 edge"
        );
        p.reset();
        assert_eq!((p.secondary_bus(), p.subordinate_bus()), (0, 0));
        assert_eq!(p.windows(), BridgeWindows::default());
    }

    #[test]
    fn msix_bar_table_and_pba() {
        let mut p = port("rp", 1, 1, false);
        assert!(p.bars().is_empty());
        assert_eq!(p.config_write(0x10, 4, 0xfe00_0000), Effects::BARS);
        assert_eq!(
            p.config_write(0x04, 2, 0x0002),
            Effects::BARS | Effects::WINDOWS
        );
        assert_eq!(
            p.bars(),
            vec![BarMapping {
                index: 0,
                base: 0xfe00_0000,
                size: 4096
            }]
        );
        assert_eq!(p.bar_read(0, 0xc, 4), 1);
        p.bar_write(0, 0, 8, 0xfee0_0000);
        assert_eq!(p.bar_read(0, 0, 8), 0xfee0_0000);
        // A hot-plug event while MSI-X is enabled but masked sets the pending bit.
        p.config_write(0x48, 4, 0xc000_0000);
        p.config_write(0x54 + SLTCTL, 2, 0x0030);
        assert_eq!(p.bar_read(0, 0x800, 4), 1);
        p.bar_write(0, 0xc, 4, 0);
        assert_eq!(p.bar_read(0, 0x800, 4), 1, "still masked by the function");
        p.config_write(0x48, 4, 0x8000_0000);
        assert_eq!(
            p.bar_read(0, 0x800, 4),
            0,
            "unmasking delivers the pending message"
        );
        p.reset();
        assert!(p.bars().is_empty());
        assert_eq!(p.bar_read(0, 0xc, 4), 1);
    }

    /// QEMU 10.0.2's reads (`-M pc-q35-10.0` against `-M pc-q35-7.2`, same binary, and QEMU 7.2):
    /// each compat flag's register, at reset and after writing all ones.
    #[test]
    fn pc_q35_10_0_has_qemu_10_0s_compat_registers() {
        let cfg = || RootPortConfig {
            id: "rp".into(),
            chassis: 1,
            slot: 1,
            ..Default::default()
        };
        let mut old = RootPort::new(cfg());
        let mut new = RootPort::on_machine(cfg(), MachineType::PcQ35V10_0);
        assert_eq!(old, RootPort::on_machine(cfg(), MachineType::PcQ35V7_2));
        // (offset, 7.2 reset, 7.2 after all ones, 10.0 reset, 10.0 after all ones)
        for (off, r7, w7, r10, w10) in [
            // Primary/Secondary/Subordinate Bus and Secondary Latency Timer (0x1b).
            (0x18, 0, 0xffff_ffff, 0, 0x00ff_ffff),
            // Device Capabilities: Extended Tag Field Supported (bit 5).
            (0x58, 0x8000, 0x8000, 0x8020, 0x8020),
            // AER Uncorrectable Error Mask.
            (0x108, 0, 0, 0x0240_0000, 0x03ff_f030),
        ] {
            assert_eq!(old.config_read(off, 4), r7, "7.2 {off:#x}");
            assert_eq!(new.config_read(off, 4), r10, "10.0 {off:#x}");
            old.config_write(off, 4, u32::MAX);
            new.config_write(off, 4, u32::MAX);
            assert_eq!(old.config_read(off, 4), w7, "7.2 {off:#x}");
            assert_eq!(new.config_read(off, 4), w10, "10.0 {off:#x}");
        }
        // A card present from power-on: QEMU 7.2 reads Slot Control 0x1c0 (power indicator
        // on), QEMU 10.0 0x3c0 (off), under either machine type of the 10.0 binary.
        let mut old = RootPort::new(cfg());
        let mut new = RootPort::on_machine(cfg(), MachineType::PcQ35V10_0);
        old.set_present();
        new.set_present();
        assert_eq!(old.config_read(0x54 + SLTCTL, 2), 0x01c0);
        assert_eq!(new.config_read(0x54 + SLTCTL, 2), 0x03c0);
        // The UNC mask keeps its value over a reset, as QEMU's (pcie_aer_init() sets it once).
        new.config_write(0x108, 4, 0x1000);
        new.reset();
        assert_eq!(new.config_read(0x108, 4), 0x1000);
    }

    #[test]
    fn slot_power_off_with_the_card_in_reports_a_reset() {
        let ctl = 0x54 + SLTCTL;
        // PCIe Base 6.0 §7.5.3.10: PIC (bits 9:8) 01 on, 11 off; PCC (bit 10) 1 = power off.
        let (pic_on, pic_off, pcc_off) = (0x0100, 0x0300, 0x0400);
        let mut p = port("rp", 1, 1, false);
        p.set_present();
        assert!(!p
            .config_write(ctl, 2, pic_on)
            .contains(Effects::SLOT_POWER_OFF));
        let fx = p.config_write(ctl, 2, pic_on | pcc_off);
        assert!(
            fx.contains(Effects::SLOT | Effects::SLOT_POWER_OFF),
            "{fx:?}"
        );
        assert!(
            p.slot_occupied(),
            "the power indicator is on: the card stays"
        );
        assert!(
            !p.config_write(ctl, 2, pic_on | pcc_off)
                .contains(Effects::SLOT_POWER_OFF),
            "only the on -> off edge"
        );
        assert!(!p
            .config_write(ctl, 2, pic_on)
            .contains(Effects::SLOT_POWER_OFF));
        // Power and indicator off together detach the card: a removal, not a reset.
        let fx = p.config_write(ctl, 2, pic_off | pcc_off);
        assert!(!fx.contains(Effects::SLOT_POWER_OFF), "{fx:?}");
        assert!(!p.slot_occupied());
        assert_eq!(p.slot_events(), vec![SlotEvent::PoweredOff]);
        // An empty slot powered off resets nothing.
        let mut empty = port("rp", 1, 1, false);
        empty.config_write(ctl, 2, pic_on);
        assert!(!empty
            .config_write(ctl, 2, pic_on | pcc_off)
            .contains(Effects::SLOT_POWER_OFF));
    }

    #[test]
    fn slot_control_writes_complete_commands() {
        let mut p = port("rp", 1, 1, false);
        let (ctl, sta) = (0x54 + SLTCTL, 0x54 + SLTSTA);
        p.config_write(ctl, 2, 0x0030);
        assert_eq!(
            p.config_read(sta, 2),
            0x0010,
            "Command Completed on every Slot Control write"
        );
        assert!(
            !p.intx_asserted(),
            "QEMU's AER hook drops INTx right after the slot raised it"
        );
        p.config_write(sta, 2, 0xffff);
        assert_eq!(
            p.config_read(sta, 2),
            0x0010,
            "QEMU reverts a clear of bits that were not set"
        );
        p.config_write(sta, 2, 0x0010);
        assert_eq!(p.config_read(sta, 2), 0);
        p.config_write(ctl, 2, 0x0800);
        assert_eq!(
            p.config_read(ctl, 4),
            0x0090_0000,
            "EIC toggles the interlock and reads 0"
        );
        p.config_write(ctl, 4, 0xffff_0000);
        assert_eq!(
            p.config_read(ctl, 4),
            0x0090_0000,
            "a dword write clears CC and completes again"
        );
    }

    #[test]
    fn reset_keeps_what_qemu_keeps() {
        let mut p = port("rp", 1, 1, false);
        p.config_write(0x10c, 4, 0);
        p.config_write(0x7c, 2, 0xffff);
        p.config_write(0xa0, 4, 0x1234_5678);
        p.config_write(0x200, 4, 0x8765_4321);
        p.config_write(0x5c, 2, 0xffff);
        p.reset();
        assert_eq!(p.config_read(0x10c, 4), 0, "AER severity is not reset");
        assert_eq!(
            p.config_read(0x7c, 2),
            0x8000,
            "ARI forwarding cleared, prefix blocking kept"
        );
        assert_eq!(p.config_read(0xa0, 4), 0x1234_5678);
        assert_eq!(p.config_read(0x200, 4), 0x8765_4321);
        assert_eq!(p.config_read(0x5c, 2), 0);
    }

    #[test]
    fn save_restore_round_trips() {
        let mut p = port("rp", 1, 1, true);
        p.config_write(0x10, 4, 0xfe00_0000);
        p.config_write(0x04, 2, 0x0002);
        p.config_write(0x48, 4, 0xc000_0000);
        p.config_write(0x6c, 2, 0x0030);
        p.bar_write(0, 0x8, 4, 0x4041);
        let saved = p.save();
        let mut q = port("rp", 1, 1, true);
        q.restore(&saved).unwrap();
        assert_eq!(q, p);
        assert!(
            port("rp", 1, 2, true).restore(&saved).is_err(),
            "other properties"
        );
        let mut broken = saved.clone();
        broken["port"]["msix"]["pba"] = "zz".into();
        assert!(q.restore(&broken).is_err());
        assert_eq!(q, p, "a failed restore changes nothing");
    }

    #[test]
    fn arbitrary_accesses_never_panic() {
        let mut p = port("rp", 1, 1, true);
        let mut x = 0x9e37_79b9u32;
        for _ in 0..40000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let width = [1u8, 2, 4][(x % 3) as usize];
            let offset = ((x >> 4) % 4096) as u16 & !(u16::from(width) - 1);
            p.config_write(offset, width, x.rotate_left(11));
            p.config_read(offset, width);
            let bw = [1u8, 2, 4, 8][(x >> 20) as usize % 4];
            p.bar_write(
                0,
                u64::from(x >> 8) % (4097 - u64::from(bw)),
                bw,
                u64::from(x) << 3,
            );
            p.bar_read(0, u64::from(x >> 9) % (4097 - u64::from(bw)), bw);
        }
        p.config_write(0xfff, 4, 0);
        p.bar_read(0, u64::MAX - 2, 8);
        p.bar_write(0, u64::MAX - 2, 8, 0);
    }
}
