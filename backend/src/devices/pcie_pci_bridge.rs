//! QEMU 7.2's `pcie-pci-bridge` (1b36:000e, `hw/pci-bridge/pcie_pci_bridge.c`), register for
//! register: a PCI Express to PCI bridge (PCI-to-PCI Bridge 1.2 type 1 header) whose secondary
//! bus is conventional PCI with a Standard Hot-Plug Controller ([`crate::pci::caps::shpc`]).
//! The capability layout is QEMU's (`pci_find_space()` order of `pcie_pci_bridge_realize()`):
//! SHPC at 0x40, PCI Express (PCI/PCI-X bridge type, no slot) at 0x48, Power Management at 0x84,
//! MSI (one 64-bit vector with per-vector masking, unless `msi=off`) at 0x8c, AER at 0x100; the
//! SHPC Working Register Set in a 256-byte 64-bit memory BAR0. Writes go through QEMU's
//! `pcie_pci_bridge_write_config()`: masks, the bridge's windows, MSI, then the SHPC capability.
//! Where a card on the secondary bus lives and how the hierarchy reaches it is the hierarchy's
//! business: this model gives the slot entry points ([`PciePciBridge::hot_add`],
//! [`PciePciBridge::unplug_request`], ...) and reports the cards the guest releases
//! ([`PciePciBridge::take_released`]).

use serde::{Deserialize, Serialize};

use super::machine::{MachineType, PortCompat};
use crate::pci::bridge::{self, BridgeWindows, Watched};
use crate::pci::caps::msi::Msi;
use crate::pci::caps::shpc::{self, Shpc, ShpcError, ShpcState, ShpcUnplug};
use crate::pci::caps::{aer, express, CAP_ID_PM};
use crate::pci::config_space::{CapabilityError, ConfigSpace, SpaceImage, PCIE_CONFIG_SPACE_SIZE};
use crate::pci::header::{self, valid_access, Identity};
use crate::pci::{AerError, BarMapping, Effects, Interrupt, PciFunction, Width};

/// The bridge's identity: Red Hat `PCI_DEVICE_ID_REDHAT_PCIE_BRIDGE`, revision 0.
pub const IDENTITY: Identity = Identity {
    vendor_id: 0x1b36,
    device_id: 0x000e,
    revision: 0,
    class_code: bridge::CLASS_BRIDGE_PCI,
};
/// SHPC capability.
pub const SHPC_OFFSET: u8 = 0x40;
/// PCI Express capability.
pub const EXP_OFFSET: u8 = 0x48;
/// Power Management capability (PCI Bus Power Management Interface 1.2 §3.2).
pub const PM_OFFSET: u8 = 0x84;
/// MSI capability (absent with `msi=off`).
pub const MSI_OFFSET: u8 = 0x8c;
/// AER extended capability.
pub const AER_OFFSET: u16 = 0x100;
/// The BAR holding the SHPC Working Register Set.
pub const SHPC_BAR: u8 = 0;
/// BAR0 as the write effects watch it.
const WATCHED_BAR: bridge::Bar = bridge::Bar::Bits64(SHPC_BAR);
/// Power Management Capabilities as QEMU sets them: version 3 (PCI PM 1.2), nothing else; the
/// whole capability is read-only in QEMU 7.2 (no power states).
const PM_PMC: u16 = 0x3;
const PM_SIZEOF: u8 = 8;

/// QEMU's `OnOffAuto` for the `msi` property.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOffAuto {
    /// MSI when the machine has a working MSI controller (q35 always has one).
    #[default]
    Auto,
    /// MSI.
    On,
    /// No MSI capability: the SHPC interrupts by INTx.
    Off,
}

/// A `pcie-pci-bridge`'s properties, with the meaning and defaults of QEMU 7.2's properties of
/// the same names (`qemu-system-x86_64 -device pcie-pci-bridge,help`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PciePciBridgeConfig {
    /// Device id (`id=`).
    pub id: String,
    /// MSI capability (`msi=`, default auto: present).
    pub msi: OnOffAuto,
    /// Multi-function bit in Header Type (`multifunction=`).
    pub multifunction: bool,
    /// `acpi-index=` (default 0): accepted and stored; pcierc builds no ACPI tables.
    pub acpi_index: u32,
    /// `rombar=` (default 1): accepted and stored; without a ROM file there is no ROM BAR.
    pub rombar: u32,
    /// `romsize=`: accepted and stored; without a ROM file there is no ROM.
    pub romsize: Option<u32>,
    /// `x-pcie-extcap-init=` (default on): accepted and stored; with AER at 0x100 it changes
    /// nothing QEMU shows.
    pub extcap_init: bool,
    /// `x-pcie-lnksta-dllla=` (default on): a property of the bridge as a card in its parent's
    /// slot (the port sets Data Link Layer Link Active when the bridge is plugged); stored.
    pub lnksta_dllla: bool,
}

impl Default for PciePciBridgeConfig {
    /// QEMU 7.2's defaults.
    fn default() -> Self {
        PciePciBridgeConfig {
            id: String::new(),
            msi: OnOffAuto::Auto,
            multifunction: false,
            acpi_index: 0,
            rombar: 1,
            romsize: None,
            extcap_init: true,
            lnksta_dllla: true,
        }
    }
}

impl PciePciBridgeConfig {
    /// Does the bridge have an MSI capability? (QEMU's `msi_init()` succeeds on q35 for `auto`.)
    pub fn has_msi(&self) -> bool {
        self.msi != OnOffAuto::Off
    }
}

/// A `pcie-pci-bridge` in a given state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciePciBridge {
    config: PciePciBridgeConfig,
    space: ConfigSpace,
    msi: Option<Msi>,
    shpc: Shpc,
    /// INTx level (QEMU's `irq_state`), mirrored in Status.Interrupt Status.
    intx: bool,
    /// Interrupts generated and not yet taken (transient).
    interrupts: Vec<Interrupt>,
    /// Device numbers whose cards the guest released and the hierarchy has not taken (transient).
    released: Vec<u8>,
    /// The machine type's behaviour (fixed when built).
    compat: PortCompat,
}

/// Serialized [`PciePciBridge`] state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeState {
    config: PciePciBridgeConfig,
    space: SpaceImage,
    shpc: ShpcState,
    intx: bool,
}

impl PciePciBridge {
    /// A bridge in its power-on state with no card on its secondary bus (`pc-q35-7.2`).
    pub fn new(config: PciePciBridgeConfig) -> Self {
        Self::on_machine(config, MachineType::default())
    }

    /// [`PciePciBridge::new`] with the register behaviour of `machine`. Of QEMU's compat
    /// properties ([`PortCompat`]) two reach this bridge (measured against QEMU 10.0.2):
    /// `x-pcie-ext-tag` (Device Capabilities Extended Tag Field Supported, PCIe Base 6.0
    /// §7.5.3.3) and `x-pcie-err-unc-mask` (AER Uncorrectable Error Mask writable with a
    /// default, §7.8.4.3); the Secondary Latency Timer stays writable (QEMU 10.0 makes it
    /// read-only on PCI Express ports only).
    pub fn on_machine(config: PciePciBridgeConfig, machine: MachineType) -> Self {
        // The layout is QEMU's and fixed; it cannot fail for any configuration (unit-tested).
        Self::build(config, machine.port_compat()).expect("pcie-pci-bridge capability layout")
    }

    fn build(config: PciePciBridgeConfig, compat: PortCompat) -> Result<Self, CapabilityError> {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        // pci_bridge_initfn(): the type 1 header with 66 MHz and fast back-to-back in Status and
        // Secondary Status; Interrupt Pin INTA (the SHPC's interrupt without MSI).
        bridge::init_type1(&mut cs, IDENTITY, config.multifunction);
        cs.set_byte(header::INTERRUPT_PIN, 1);
        // The SHPC's register and hot-plug differences between machine types are PortCompat
        // flags too (power_indicator_off_at_reset, shpc_*).
        let shpc = Shpc::init(&mut cs, SHPC_OFFSET, 0, compat)?;
        let exp = express::init_pci_bridge(&mut cs, EXP_OFFSET)?;
        if compat.ext_tag {
            cs.set_bits(exp + express::DEVCAP, 4, express::DEVCAP_EXT_TAG.into());
        }
        let pm = cs.add_capability(CAP_ID_PM, Some(PM_OFFSET), PM_SIZEOF)?;
        cs.set_word(u16::from(pm) + 2, PM_PMC);
        // pcie_aer_init() with no error log (the bridge has no aer_log_max property).
        let aer_at = aer::init(&mut cs, AER_OFFSET, false)?;
        if compat.err_unc_mask {
            cs.set_dword(aer_at + aer::UNCOR_MASK, aer::UNC_MASK_DEFAULT);
            cs.set_wmask(aer_at + aer::UNCOR_MASK, 4, aer::UNC_SUPPORTED.into());
        }
        let msi = if config.has_msi() {
            Some(Msi::init(&mut cs, MSI_OFFSET, 1, true, true)?)
        } else {
            None
        };
        // pci_register_bar(): BAR0, 64-bit non-prefetchable memory, the SHPC's 256 bytes.
        header::register_memory_bar64(&mut cs, SHPC_BAR, shpc::BAR_SIZE, false);
        let mut b = PciePciBridge {
            config,
            space: cs,
            msi,
            shpc,
            intx: false,
            interrupts: Vec::new(),
            released: Vec::new(),
            compat,
        };
        b.reset();
        Ok(b)
    }

    /// The properties the bridge was built with.
    pub fn config(&self) -> &PciePciBridgeConfig {
        &self.config
    }

    /// The configuration space.
    pub fn space(&self) -> &ConfigSpace {
        &self.space
    }

    /// Primary Bus Number.
    pub fn primary_bus(&self) -> u8 {
        self.space.byte(bridge::PRIMARY_BUS)
    }

    /// Secondary Bus Number: the conventional bus the slots are on.
    pub fn secondary_bus(&self) -> u8 {
        self.space.byte(bridge::SECONDARY_BUS)
    }

    /// Subordinate Bus Number.
    pub fn subordinate_bus(&self) -> u8 {
        self.space.byte(bridge::SUBORDINATE_BUS)
    }

    /// The I/O, memory and prefetchable windows the bridge forwards now.
    pub fn windows(&self) -> BridgeWindows {
        bridge::windows(&self.space)
    }

    /// Is the bridge asserting INTx (Status.Interrupt Status)?
    pub fn intx_asserted(&self) -> bool {
        self.intx
    }

    /// Interrupts generated since the last call (after an operation returned
    /// `Effects::INTERRUPT`).
    pub fn take_interrupts(&mut self) -> Vec<Interrupt> {
        std::mem::take(&mut self.interrupts)
    }

    /// Device numbers on the secondary bus whose cards the guest released since the last call
    /// (after an operation returned `Effects::SLOT`): it disabled the slot with its power
    /// indicator off, which QEMU 7.2 answers by unplugging the card.
    pub fn take_released(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.released)
    }

    /// The MSI message the bridge sends now and whether it cannot fire (`None` without MSI).
    pub fn msi_route(&self) -> Option<(u64, u32, bool)> {
        self.msi.and_then(|m| m.route(&self.space, 0))
    }

    /// SHPC Slot Status of `device`'s slot (devices 1-31).
    pub fn slot_status(&self, device: u8) -> Option<u16> {
        self.shpc.slot_status(device)
    }

    /// SHPC Slot Status of every slot, device 1 first.
    pub fn slot_statuses(&self) -> [u16; shpc::NSLOTS_MAX as usize] {
        self.shpc.slot_statuses()
    }

    /// Is a card in `device`'s slot?
    pub fn slot_occupied(&self, device: u8) -> bool {
        self.shpc.occupied(device)
    }

    fn set_intx(&mut self, level: bool) {
        // PCI Local Bus 3.0 §6.2.2: with Interrupt Disable set the pin is not driven, but
        // Interrupt Status still shows the condition (QEMU's pci_irq_handler()).
        let disabled = self.space.word(header::COMMAND) & header::COMMAND_INTX_DISABLE != 0;
        if level != self.intx && !disabled {
            self.interrupts.push(Interrupt::Intx { asserted: level });
        }
        self.intx = level;
        header::set_interrupt_status(&mut self.space, level);
    }

    fn send_msi(&mut self) {
        let Some(m) = self.msi else { return };
        if m.notify(&mut self.space, 0) {
            if let Some((address, data, _)) = m.route(&self.space, 0) {
                self.interrupts.push(Interrupt::Msi {
                    vector: 0,
                    address,
                    data,
                });
            }
        }
    }

    /// QEMU's `shpc_interrupt_update()`: the Interrupt Locator rebuilt; with MSI enabled a
    /// change of level sends the message (on both edges, as QEMU does), otherwise INTx follows
    /// the level (including with MSI enabled and the level unchanged, QEMU's quirk).
    fn update_interrupt(&mut self) {
        let level = self.shpc.interrupt_level();
        let msi = self.msi.is_some_and(|m| m.enabled(&self.space));
        if msi && self.shpc.msi_requested() != level {
            self.send_msi();
        } else {
            self.set_intx(level);
        }
        self.shpc.set_msi_requested(level);
    }

    fn queued(&self) -> Effects {
        let mut e = Effects::empty();
        if !self.interrupts.is_empty() {
            e |= Effects::INTERRUPT;
        }
        if !self.released.is_empty() {
            e |= Effects::SLOT;
        }
        e
    }

    /// `Effects::SLOT` when a slot's status (state, indicators, MRL, presence) differs from
    /// `before`: a command the guest issued, for whoever reports slots.
    fn slots_moved(&self, before: &[u16; shpc::NSLOTS_MAX as usize]) -> Effects {
        if self.shpc.slot_statuses() != *before {
            Effects::SLOT
        } else {
            Effects::empty()
        }
    }

    /// After a register set access that reached it: released cards recorded, interrupt updated.
    fn after_shpc(&mut self, (touched, released): (bool, Vec<u8>)) {
        self.released.extend(released);
        if touched {
            self.update_interrupt();
        }
    }

    /// A card present from power-on at `device` (1-31; cold-plugged). See
    /// [`Shpc::set_present`].
    pub fn set_present(&mut self, device: u8) -> Result<(), ShpcError> {
        self.shpc.set_present(device)
    }

    /// May a card be hot-added at `device`? See [`Shpc::may_hot_add`].
    pub fn may_hot_add(&self, device: u8) -> Result<(), ShpcError> {
        self.shpc.may_hot_add(device)
    }

    /// A card is inserted at `device`. See [`Shpc::hot_add`].
    pub fn hot_add(&mut self, device: u8) -> Result<Effects, ShpcError> {
        self.shpc.hot_add(device)?;
        self.update_interrupt();
        Ok(self.queued() | Effects::SLOT)
    }

    /// A removal request for the card at `device`. See [`Shpc::unplug_request`]; with
    /// [`ShpcUnplug::Now`] the caller removes the card.
    pub fn unplug_request(&mut self, device: u8) -> Result<(ShpcUnplug, Effects), ShpcError> {
        let r = self.shpc.unplug_request(device)?;
        self.update_interrupt();
        Ok((r, self.queued()))
    }

    /// The attention button of `device`'s slot is pressed. See [`Shpc::attention_button`].
    pub fn attention_button(&mut self, device: u8) -> Result<Effects, ShpcError> {
        self.shpc.attention_button(device)?;
        self.update_interrupt();
        Ok(self.queued())
    }

    /// An error the bridge detected itself (QEMU's HMP `pcie_aer_inject_error` naming it):
    /// Device Status and its AER capability record it ([`aer::detect_own`], PCIe Base 6.0
    /// §7.5.3.5, §7.8.4). An error it reports sets Status Signaled System Error by
    /// [`aer::signals_system_error`] (§7.5.1.1.4 bit 14; QEMU's `pcie_aer_msg_alldev()` on the
    /// bridge itself). Returns the message the bridge sends upstream (ERR_COR / ERR_NONFATAL /
    /// ERR_FATAL with `e.requester`, §6.2.2), or `None` when masked (recorded, not reported).
    pub fn record_error(&mut self, e: &AerError) -> Result<Option<AerError>, aer::InjectError> {
        let exp = u16::from(EXP_OFFSET);
        let msg = aer::detect_own(&mut self.space, exp, AER_OFFSET, e)?;
        if let Some(m) = &msg {
            let devctl_too = self.compat.aer_msg_devctl;
            if aer::signals_system_error(&self.space, exp, m.severity, devctl_too) {
                self.space
                    .set_bits(header::STATUS, 2, header::STATUS_SIG_SYSTEM_ERROR.into());
            }
        }
        Ok(msg)
    }

    /// The card at `device` is gone. See [`Shpc::removed`].
    pub fn removed(&mut self, device: u8) -> Result<Effects, ShpcError> {
        self.shpc.removed(device)?;
        self.update_interrupt();
        Ok(self.queued() | Effects::SLOT)
    }
}

impl PciFunction for PciePciBridge {
    fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.space.read(offset, width)
    }

    fn config_image(&self) -> Vec<u8> {
        self.space.image_4k()
    }

    /// QEMU's `pcie_pci_bridge_write_config()`: `pci_bridge_write_config()` (masks, INTx
    /// Disable, BARs, windows, Secondary Bus Reset), `msi_write_config()`, then
    /// `shpc_cap_write_config()`.
    fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects {
        if !valid_access(offset, width) {
            return Effects::empty();
        }
        let watched = Watched::of(&self.space, WATCHED_BAR);
        let intx_disabled =
            |cs: &ConfigSpace| cs.word(header::COMMAND) & header::COMMAND_INTX_DISABLE != 0;
        let was_disabled = intx_disabled(&self.space);
        self.space.write(offset, width, value);
        // pci_update_irq_disabled(): Interrupt Disable toggled while the level is up moves the
        // pin (PCI Local Bus 3.0 §6.2.2).
        let disabled = intx_disabled(&self.space);
        if self.intx && disabled != was_disabled {
            self.interrupts.push(Interrupt::Intx {
                asserted: !disabled,
            });
        }
        if let Some(m) = self.msi {
            let (deassert, sent) = m.write_config(&mut self.space, offset, width);
            for v in sent {
                if let Some((address, data, _)) = m.route(&self.space, v) {
                    self.interrupts.push(Interrupt::Msi {
                        vector: v,
                        address,
                        data,
                    });
                }
            }
            if deassert {
                self.set_intx(false);
            }
        }
        let slots = self.shpc.slot_statuses();
        let r = self.shpc.write_config(&mut self.space, offset, width);
        self.after_shpc(r);
        watched.effects(&self.space, WATCHED_BAR) | self.queued() | self.slots_moved(&slots)
    }

    fn bars(&self) -> Vec<BarMapping> {
        header::memory_bar64(&self.space, SHPC_BAR, shpc::BAR_SIZE)
            .map(|base| BarMapping {
                index: SHPC_BAR,
                base,
                size: shpc::BAR_SIZE,
            })
            .into_iter()
            .collect()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, width: Width) -> u64 {
        if bar != SHPC_BAR {
            return u64::MAX;
        }
        self.shpc.bar_read(offset, width)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, width: Width, value: u64) -> Effects {
        let slots = self.shpc.slot_statuses();
        if bar == SHPC_BAR {
            let r = self.shpc.bar_write(offset, width, value);
            self.after_shpc(r);
        }
        self.queued() | self.slots_moved(&slots)
    }

    /// QEMU's `pcie_pci_bridge_reset()` (`pci_bridge_reset()`: bus numbers, latency timer,
    /// Bridge Control and the window address bits zeroed; `msi_reset()`; `shpc_reset()` with
    /// its interrupt update) then `pci_do_device_reset()` (INTx deasserted; Command, Status,
    /// Interrupt Line, Cache Line Size and BAR0 cleared). What QEMU leaves alone keeps its
    /// value: Device Control error enables, Device Control 2, AER severity/mask/ECRC enables,
    /// the SHPC's DWORD Select and Data, and the bytes after the capabilities.
    fn reset(&mut self) {
        bridge::reset_zeroed(&mut self.space);
        if let Some(m) = self.msi {
            m.reset(&mut self.space);
        }
        self.shpc.reset();
        self.update_interrupt();
        self.set_intx(false);
        header::device_reset(&mut self.space, &[]);
        self.space
            .set_qword(header::BAR0, header::BAR_MEM_TYPE_64.into());
    }

    fn save(&self) -> serde_json::Value {
        let s = BridgeState {
            config: self.config.clone(),
            space: self.space.image(),
            shpc: self.shpc.state(),
            intx: self.intx,
        };
        serde_json::to_value(s).unwrap_or_default()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), crate::Error> {
        use crate::topology::StateError;
        let id = self.config.id.clone();
        let s: BridgeState =
            crate::topology::state::function_state(&id, state, &self.config, |s: &BridgeState| {
                &s.config
            })?;
        let registers = |source| StateError::Registers {
            id: id.clone(),
            source,
        };
        let mut space = self.space.clone();
        space.load_image(&s.space).map_err(registers)?;
        let mut shpc = self.shpc.clone();
        shpc.load_state(&s.shpc)
            .map_err(|_| registers(pcierc_config_space::StateError::Plane("shpc")))?;
        self.space = space;
        self.shpc = shpc;
        self.intx = s.intx;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
