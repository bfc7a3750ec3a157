//! The core of a PCI Express port: a type 1 header with MSI-X or MSI, a PCI Express capability
//! with a hot-plug slot, AER and optionally ACS, and QEMU 7.2's configuration-write pipeline for such ports
//! (`rp_write_config()` in `hw/pci-bridge/pcie_root_port.c`: masks, `msix_write_config()`,
//! `pcie_cap_slot_write_config()`, `pcie_aer_write_config()`, `pcie_aer_root_write_config()`)
//! and their reset. Root ports and switch ports (`devices::root_port::xio3130`) build their
//! capability layout and wrap this, so hot-plug, AER and PME behaviour live once; what differs by
//! port type (slot, Root Error registers, Function Level Reset) follows the PCI Express
//! capability the model built.

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::bridge::{self, BridgeWindows};
use super::caps::aer::{self, RootSignal};
use super::caps::express::{RTCTL_PMEIE, RTSTA_PME_PENDING, RTSTA_PME_STATUS};
use super::caps::msi::Msi;
use super::caps::msix::Delivery;
use super::caps::msix::{Msix, MsixState};
use super::caps::slot::{self, HotplugSlot, Signal, SlotConfig};
use super::caps::{acs, express};
use super::config_space::{ConfigSpace, SpaceImage, StateError};
use super::header::{self, valid_access};
use super::{
    AerError, BarMapping, Effects, ErrorSeverity, Interrupt, PciFunction, SlotError, SlotEvent,
    Width,
};
use crate::devices::machine::PortCompat;

/// Where a port's capabilities are and how its slot is built.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortLayout {
    /// PCI Express capability.
    pub exp: u16,
    /// AER extended capability.
    pub aer: u16,
    /// ACS extended capability, if the port has one.
    pub acs: Option<u16>,
    /// BAR holding the MSI-X table and PBA (unused by a port with MSI).
    pub msix_bar: u8,
    /// The slot.
    pub slot: SlotConfig,
    /// The machine type's register behaviour ([`crate::devices::machine`]).
    pub compat: PortCompat,
}

/// How a port sends its interrupt messages (PCIe Base 6.0 §6.1.4): MSI-X with its table and PBA
/// in a BAR (`pcie-root-port`), or MSI in configuration space (`ioh3420`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Messages {
    /// MSI-X (PCIe Base 6.0 §7.7.2).
    Msix(Msix),
    /// MSI (PCIe Base 6.0 §7.7.1).
    Msi(Msi),
}

impl From<Msix> for Messages {
    fn from(m: Msix) -> Self {
        Messages::Msix(m)
    }
}

impl From<Msi> for Messages {
    fn from(m: Msi) -> Self {
        Messages::Msi(m)
    }
}

/// What a removal request does to an occupied slot ([`PciePort::unplug_request`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnplugRequest {
    /// The slot is powered off with its power indicator off: the card goes at once.
    Now,
    /// The attention button is pressed; the card goes when the guest powers the slot off.
    AttentionButton,
}

/// A PCI Express port's complete state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciePort {
    space: ConfigSpace,
    messages: Messages,
    layout: PortLayout,
    slot: HotplugSlot,
    /// INTx level (QEMU's `irq_state`), mirrored in Status.Interrupt Status.
    intx: bool,
    /// Interrupts generated and not yet taken (transient: not part of the saved state).
    interrupts: Vec<Interrupt>,
    /// Slot events not yet taken (transient).
    slot_events: Vec<SlotEvent>,
    /// PME requester ids waiting while PME Status is set (PCIe Base 6.0 §6.1.6).
    pme_queue: VecDeque<u16>,
}

/// Status / Secondary Status bit 14: Signaled System Error / Received System Error.
const STATUS_SIG_SYSTEM_ERROR: u16 = 1 << 14;

/// Most PME requester ids held while PME Status is set.
pub const PME_QUEUE_MAX: usize = 16;

/// Serialized [`PciePort`] state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortState {
    /// Configuration space, masks included.
    pub space: SpaceImage,
    /// MSI-X table and PBA (a port with MSI has none: its state is all in `space`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msix: Option<MsixState>,
    /// Slot state outside registers.
    pub slot: HotplugSlot,
    /// INTx level.
    pub intx: bool,
    /// PME requester ids waiting behind the one in Root Status (PME Pending).
    #[serde(default)]
    pub pme_queue: Vec<u16>,
}

/// The register differences of the machine type, on a port whose capabilities are laid out
/// (QEMU applies them in the same realize functions, by compat property; see
/// [`PortCompat`] for each flag's QEMU property and spec section).
fn apply_compat(cs: &mut ConfigSpace, layout: &PortLayout) {
    let c = layout.compat;
    if c.slt_read_only {
        // PCIe Base 6.0 §7.5.1.3.5: Secondary Latency Timer does not apply to PCIe, RO zero
        // (QEMU's pci_init_mask_bridge() without x-pci-express-writeable-slt-bug).
        cs.set_wmask(bridge::SEC_LATENCY_TIMER, 1, 0);
        cs.set_byte(bridge::SEC_LATENCY_TIMER, 0);
    }
    if c.ext_tag {
        // PCIe Base 6.0 §7.5.3.3 Device Capabilities: Extended Tag Field Supported
        // (QEMU's pcie_cap_v1_fill() with x-pcie-ext-tag).
        cs.set_bits(
            layout.exp + express::DEVCAP,
            4,
            express::DEVCAP_EXT_TAG.into(),
        );
    }
    if c.err_unc_mask {
        // PCIe Base 6.0 §7.8.4.3 Uncorrectable Error Mask (QEMU's pcie_aer_init() with
        // x-pcie-err-unc-mask): writable for the supported errors, with a default.
        cs.set_dword(layout.aer + aer::UNCOR_MASK, aer::UNC_MASK_DEFAULT);
        cs.set_wmask(layout.aer + aer::UNCOR_MASK, 4, aer::UNC_SUPPORTED.into());
    }
}

impl PciePort {
    /// Take over a built configuration space, give it the machine type's differences
    /// ([`PortLayout::compat`]) and reset it to its power-on state.
    pub fn new(mut space: ConfigSpace, messages: impl Into<Messages>, layout: PortLayout) -> Self {
        apply_compat(&mut space, &layout);
        let mut p = PciePort {
            space,
            messages: messages.into(),
            layout,
            slot: HotplugSlot::default(),
            intx: false,
            interrupts: Vec::new(),
            slot_events: Vec::new(),
            pme_queue: VecDeque::new(),
        };
        p.reset();
        p
    }

    /// The configuration space.
    pub fn space(&self) -> &ConfigSpace {
        &self.space
    }

    /// Primary Bus Number.
    pub fn primary_bus(&self) -> u8 {
        self.space.byte(bridge::PRIMARY_BUS)
    }

    /// Secondary Bus Number.
    pub fn secondary_bus(&self) -> u8 {
        self.space.byte(bridge::SECONDARY_BUS)
    }

    /// Subordinate Bus Number.
    pub fn subordinate_bus(&self) -> u8 {
        self.space.byte(bridge::SUBORDINATE_BUS)
    }

    /// The I/O, memory and prefetchable windows the port forwards now.
    pub fn windows(&self) -> BridgeWindows {
        bridge::windows(&self.space)
    }

    /// Is the port asserting INTx (Status.Interrupt Status)?
    pub fn intx_asserted(&self) -> bool {
        self.intx
    }

    fn set_intx(&mut self, level: bool) {
        // A function without an Interrupt Pin (a switch port) has no INTx: QEMU's
        // hotplug_event_notify() skips pci_set_irq() when pci_intx() is -1.
        if self.space.byte(header::INTERRUPT_PIN) == 0 {
            return;
        }
        // PCI Local Bus 3.0 §6.2.2: with Interrupt Disable set the pin is not driven, but
        // Interrupt Status still shows the condition.
        let disabled = self.space.word(header::COMMAND) & header::COMMAND_INTX_DISABLE != 0;
        if level != self.intx && !disabled {
            self.interrupts.push(Interrupt::Intx { asserted: level });
        }
        self.intx = level;
        header::set_interrupt_status(&mut self.space, level);
    }

    /// Queue the message of a vector that fired, as the guest programmed its MSI-X table entry
    /// or its MSI capability.
    fn deliver(&mut self, d: Delivery) {
        if let Delivery::Sent(v) = d {
            if let Some((address, data, _)) = self.msi_route(v) {
                self.interrupts.push(Interrupt::Msi {
                    vector: v,
                    address,
                    data,
                });
            }
        }
    }

    /// The message `vector` sends now and whether it cannot fire (see [`Msix::route`] and
    /// [`Msi::route`]).
    pub fn msi_route(&self, vector: u16) -> Option<(u64, u32, bool)> {
        match &self.messages {
            Messages::Msix(m) => m.route(vector),
            Messages::Msi(m) => m.route(&self.space, vector),
        }
    }

    /// Is MSI-X or MSI enabled (QEMU's `msix_enabled() || msi_enabled()`)?
    fn messages_enabled(&self) -> bool {
        match &self.messages {
            Messages::Msix(m) => m.enabled(&self.space),
            Messages::Msi(m) => m.enabled(&self.space),
        }
    }

    /// Fire `vector` (QEMU's `msix_notify()` or `msi_notify()`), with messages enabled.
    fn notify(&mut self, vector: u16) {
        let d = match &mut self.messages {
            Messages::Msix(m) => m.notify(&self.space, vector),
            Messages::Msi(m) if m.notify(&mut self.space, vector) => Delivery::Sent(vector),
            Messages::Msi(_) => Delivery::Pending,
        };
        self.deliver(d);
    }

    /// The Advanced Error Interrupt Message Number (PCIe Base 6.0 §7.8.4.10): 0 with MSI-X
    /// (QEMU's `pcie-root-port`); with MSI, the last allocated vector of at most two (QEMU's
    /// `ioh3420_aer_vector()`, which aborts for more than two: see docs/qemu-compat.md).
    fn aer_vector(&self) -> u8 {
        match &self.messages {
            Messages::Msix(_) => 0,
            Messages::Msi(m) => m.allocated(&self.space).min(2) - 1,
        }
    }

    /// Interrupts generated since the last call.
    pub fn take_interrupts(&mut self) -> Vec<Interrupt> {
        std::mem::take(&mut self.interrupts)
    }

    /// Slot events since the last call.
    pub fn take_slot_events(&mut self) -> Vec<SlotEvent> {
        std::mem::take(&mut self.slot_events)
    }

    /// `INTERRUPT` and `SLOT` for what is queued.
    fn queued(&self) -> Effects {
        let mut e = Effects::empty();
        if !self.interrupts.is_empty() {
            e |= Effects::INTERRUPT;
        }
        if !self.slot_events.is_empty() {
            e |= Effects::SLOT;
        }
        e
    }

    fn slot_status(&self) -> u16 {
        self.space.word(self.layout.exp + slot::SLTSTA)
    }

    /// Is the port a Root Port (PCI Express Capabilities Device/Port Type, PCIe Base 6.0
    /// §7.5.3.2), with Root Control/Status and AER's Root Error registers?
    fn is_root_port(&self) -> bool {
        self.space.word(self.layout.exp + express::FLAGS) >> 4 & 0xf == express::TYPE_ROOT_PORT
    }

    /// Does the port implement a slot (PCI Express Capabilities Slot Implemented, PCIe Base 6.0
    /// §7.5.3.2)? A switch's upstream port has none.
    fn has_slot(&self) -> bool {
        self.space.word(self.layout.exp + express::FLAGS) & express::FLAGS_SLOT != 0
    }

    /// Set Link Status Current Link Speed and Negotiated Link Width (bits 9:0) to those of the
    /// link partner's `lnksta`, clamped to this port's Link Capabilities: QEMU's
    /// `pcie_sync_bridge_lnk()` for a slot holding a function pcierc emulates (a switch's upstream
    /// port), whose Link Status it can read.
    pub fn sync_link(&mut self, lnksta: u16) {
        let at = self.layout.exp + express::LNKSTA;
        let cap = self.space.dword(self.layout.exp + express::LNKCAP);
        let (max_width, max_speed) = ((cap >> 4 & 0x3f) as u16, (cap & 0xf) as u16);
        let mut width = (lnksta >> 4 & 0x3f).min(max_width);
        let mut speed = (lnksta & 0xf).min(max_speed);
        if width == 0 {
            width = 1;
        }
        if speed == 0 {
            speed = 1;
        }
        let now = self.space.word(at) & !0x3ff;
        self.space.set_word(at, now | width << 4 | speed);
    }

    /// Is a card present (Slot Status Presence Detect State, PCIe Base 6.0 §7.5.3.11)?
    pub fn slot_occupied(&self) -> bool {
        self.slot_status() & slot::SLTSTA_PDS != 0
    }

    fn slot_event(&mut self, bits: u16) -> Effects {
        let exp = self.layout.exp;
        for s in self.slot.event(&mut self.space, exp, bits) {
            self.signal(s);
        }
        self.queued()
    }

    /// A card present since power-on (declared in the topology, or cold-plugged before the guest
    /// runs): Presence Detect State and Data Link Layer Link Active set without a change event,
    /// and, with a power controller, the slot powered with its power indicator on, as QEMU's
    /// `pcie_cap_slot_reset()` leaves a populated slot (off under
    /// [`PortCompat::power_indicator_off_at_reset`], as QEMU 10.0's).
    pub fn set_present(&mut self) {
        let exp = self.layout.exp;
        self.space
            .set_bits(exp + slot::SLTSTA, 2, slot::SLTSTA_PDS.into());
        self.link_up();
        if self.layout.slot.power_controller {
            self.space.clear_bits(
                exp + slot::SLTCTL,
                2,
                (slot::SLTCTL_PCC | slot::SLTCTL_PIC).into(),
            );
            let pic = if self.layout.compat.power_indicator_off_at_reset {
                slot::SLTCTL_PIC_OFF
            } else {
                slot::SLTCTL_PIC_ON
            };
            self.space.set_bits(exp + slot::SLTCTL, 2, pic.into());
        }
    }

    /// A card is inserted (PCIe Base 6.0 §6.7.1): Presence Detect State and Data Link Layer
    /// Link Active go up, Presence Detect Changed is set and signalled when enabled.
    pub fn hot_add(&mut self) -> Result<Effects, SlotError> {
        if self.slot_occupied() {
            return Err(SlotError::Occupied);
        }
        let exp = self.layout.exp;
        self.space
            .set_bits(exp + slot::SLTSTA, 2, slot::SLTSTA_PDS.into());
        let link = self.link_up();
        // QEMU's pcie_cap_slot_plug_cb(): Presence Detect Changed and Attention Button Pressed,
        // so a guest that enables only ABPE (Linux pciehp on a slot with a button) hears of it;
        // and the link came up (§6.7.3.3, which QEMU does not model).
        // Effects::SLOT: presence changed.
        let dllsc = if link { self.dllsc() } else { 0 };
        Ok(self.slot_event(slot::SLTSTA_PDC | slot::SLTSTA_ABP | dllsc) | Effects::SLOT)
    }

    /// A card arrived: Data Link Layer Link Active set (PCIe Base 6.0 §7.5.3.8). QEMU 7.2 sets
    /// it when the port reports link activity or the *plugged device* has
    /// `x-pcie-lnksta-dllla` (on by default); pcierc does not know the device's properties and
    /// takes the default. Whether it changed.
    fn link_up(&mut self) -> bool {
        let at = self.layout.exp + express::LNKSTA;
        self.space.set_bits(at, 2, slot::LNKSTA_DLLLA.into()) == 0
    }

    /// Slot Capabilities (PCIe Base 6.0 §7.5.3.9).
    fn slot_capabilities(&self) -> u32 {
        self.space.dword(self.layout.exp + slot::SLTCAP)
    }

    /// QEMU 7.2's `pcie_cap_slot_pre_plug_cb()`: may a card be hot-added now? Not into a slot
    /// that is not hot-plug capable (Slot Capabilities Hot-Plug Capable, §7.5.3.9), nor while
    /// the electromechanical interlock is engaged (Slot Status, §7.5.3.11).
    pub fn may_hot_add(&self) -> Result<(), SlotError> {
        if self.slot_capabilities() & slot::SLTCAP_HPC == 0 {
            return Err(SlotError::HotPlugUnsupported);
        }
        if self.slot_status() & slot::SLTSTA_EIS != 0 {
            return Err(SlotError::Interlocked);
        }
        Ok(())
    }

    /// QEMU 7.2's `pcie_cap_slot_unplug_request_cb()`: what a removal request does now. Refused
    /// when the slot is not hot-plug capable, while the interlock is engaged, and while the
    /// power indicator blinks (the guest is busy with the slot, §6.7.1.1.1); a slot the guest
    /// keeps powered off with its indicator off gives the card up at once; otherwise the
    /// attention button is pressed (§6.7.1.5).
    pub fn unplug_request(&self) -> Result<UnplugRequest, SlotError> {
        let ctl = self.space.word(self.layout.exp + slot::SLTCTL);
        if self.slot_capabilities() & slot::SLTCAP_HPC == 0 {
            return Err(SlotError::HotUnplugUnsupported);
        }
        if self.slot_status() & slot::SLTSTA_EIS != 0 {
            return Err(SlotError::Interlocked);
        }
        match ctl & slot::SLTCTL_PIC {
            slot::SLTCTL_PIC_BLINK => Err(SlotError::PowerIndicatorBlinking),
            slot::SLTCTL_PIC_OFF if ctl & slot::SLTCTL_PCC != 0 => Ok(UnplugRequest::Now),
            _ => Ok(UnplugRequest::AttentionButton),
        }
    }

    /// A card leaves a slot the guest keeps powered off (QEMU's fast path of
    /// `pcie_cap_slot_unplug_request_cb()`): [`PciePort::removed`], then Attention Button
    /// Pressed cleared, as QEMU does after its event.
    pub fn unplugged_while_off(&mut self) -> Result<Effects, SlotError> {
        let fx = self.removed()?;
        self.space
            .clear_bits(self.layout.exp + slot::SLTSTA, 2, slot::SLTSTA_ABP.into());
        Ok(fx)
    }

    /// The operator presses the attention button (PCIe Base 6.0 §6.7.1.5): Attention Button
    /// Pressed is set and signalled when enabled; the guest decides to power the slot off.
    /// While the guest has not cleared an earlier press the status bit is already set and
    /// nothing new is signalled (QEMU's `pcie_cap_slot_event()`).
    pub fn attention_button(&mut self) -> Result<Effects, SlotError> {
        if !self.slot_occupied() {
            return Err(SlotError::Empty);
        }
        Ok(self.slot_event(slot::SLTSTA_ABP))
    }

    /// The card is gone (surprise removal, PCIe Base 6.0 §6.7.6, or the end of an orderly one
    /// where the guest already powered the slot off): presence and link down, Presence Detect
    /// Changed set and signalled when enabled.
    pub fn removed(&mut self) -> Result<Effects, SlotError> {
        if !self.slot_occupied() {
            return Err(SlotError::Empty);
        }
        let exp = self.layout.exp;
        self.space
            .clear_bits(exp + slot::SLTSTA, 2, slot::SLTSTA_PDS.into());
        let link = self
            .space
            .clear_bits(exp + express::LNKSTA, 2, slot::LNKSTA_DLLLA.into());
        let dllsc = if link != 0 { self.dllsc() } else { 0 };
        Ok(self.slot_event(slot::SLTSTA_PDC | dllsc) | Effects::SLOT)
    }

    /// Data Link Layer State Changed, when the slot reports it (hot-plug capable slots).
    fn dllsc(&self) -> u16 {
        let at = self.layout.exp + slot::SLTSTA;
        if self.space.w1cmask(at, 2) & u64::from(slot::SLTSTA_DLLSC) != 0 {
            slot::SLTSTA_DLLSC
        } else {
            0
        }
    }

    /// Record an error and signal it through the Root Error logic (see [`aer::inject`]): `own` for
    /// an error the port detected, else a message from the function `e.requester` below it.
    pub fn inject_error(&mut self, e: &AerError, own: bool) -> Result<Effects, aer::InjectError> {
        let at = self.layout.aer;
        let old = self.space.dword(at + aer::ROOT_STATUS);
        let correctable = e.severity == ErrorSeverity::Correctable;
        let fatal = e.severity == ErrorSeverity::Fatal;
        if !aer::inject(&mut self.space, at, own, e)? {
            return Ok(self.queued());
        }
        if own {
            // PCIe Base 6.0 §7.5.3.5 Device Status: Correctable / Non-Fatal / Fatal Error Detected.
            let bit: u16 = if correctable {
                1
            } else if fatal {
                4
            } else {
                2
            };
            self.space
                .set_bits(self.layout.exp + express::DEVSTA, 2, bit.into());
        }
        // QEMU's pcie_aer_msg_alldev() and pcie_aer_msg_vbridge(): an ERR_NONFATAL/ERR_FATAL
        // message passing a port whose Command SERR# Enable is set sets Signaled System Error
        // (PCIe Base 6.0 §7.5.1.1.4 Status bit 14; from QEMU 8.0 also a message its Device
        // Control enables, aer::signals_system_error) and, crossing the bridge, Secondary Status
        // Received System Error (PCI-to-PCI Bridge 1.2 §3.2.5.7 bit 14). The Root Error
        // Status and the interrupt do not depend on it (docs/qemu-compat.md).
        let devctl_too = self.layout.compat.aer_msg_devctl;
        if aer::signals_system_error(&self.space, self.layout.exp, e.severity, devctl_too) {
            self.space
                .set_bits(header::STATUS, 2, STATUS_SIG_SYSTEM_ERROR.into());
        }
        let serr = self.space.word(header::COMMAND) & header::COMMAND_SERR != 0;
        if !correctable && serr {
            self.space
                .set_bits(bridge::SEC_STATUS, 2, STATUS_SIG_SYSTEM_ERROR.into());
        }
        let msi = self.messages_enabled();
        match aer::root_signal(&self.space, at, old, msi) {
            RootSignal::Intx(level) => self.set_intx(level),
            RootSignal::Msi(vector) => self.notify(vector),
            RootSignal::None => {}
        }
        Ok(self.queued())
    }

    /// An error a port that is not a root port (a switch port) detected itself: recorded in its
    /// AER capability and Device Status ([`aer::detect_own`], PCIe Base 6.0 §7.8.4, §7.5.3.5);
    /// the message it sends upstream (ERR_COR/ERR_NONFATAL/ERR_FATAL from `e.requester`), or
    /// `None` when masked. The root port above receives it ([`PciePort::inject_error`] with
    /// `own` false).
    pub fn record_error(&mut self, e: &AerError) -> Result<Option<AerError>, aer::InjectError> {
        aer::detect_own(&mut self.space, self.layout.exp, self.layout.aer, e)
    }

    fn root_status(&self) -> u32 {
        self.space.dword(self.layout.exp + express::RTSTA)
    }

    /// A PME message from `requester` below the port (PCIe Base 6.0 §6.1.6, §7.5.3.14 Root
    /// Status): with PME Status clear it is presented at once (PME Status, PME Requester ID);
    /// otherwise PME Pending is set and it waits until software clears PME Status. The interrupt
    /// fires when Root Control PME Interrupt Enable is set. Ids beyond a queue of
    /// [`PME_QUEUE_MAX`] are dropped (the requester re-sends, as §6.1.6 allows).
    pub fn raise_pme(&mut self, requester: u16) -> Effects {
        let at = self.layout.exp + express::RTSTA;
        if self.root_status() & RTSTA_PME_STATUS != 0 {
            if self.pme_queue.len() < PME_QUEUE_MAX {
                self.pme_queue.push_back(requester);
            }
            self.space.set_bits(at, 4, RTSTA_PME_PENDING.into());
            return self.queued();
        }
        self.present_pme(requester);
        self.queued()
    }

    fn present_pme(&mut self, requester: u16) {
        let at = self.layout.exp + express::RTSTA;
        let pending = if self.pme_queue.is_empty() {
            0
        } else {
            RTSTA_PME_PENDING
        };
        self.space
            .set_dword(at, u32::from(requester) | RTSTA_PME_STATUS | pending);
        self.signal_pme();
    }

    /// PME interrupt: when PME Interrupt Enable and PME Status are both set (§6.1.6).
    fn signal_pme(&mut self) {
        let enabled = self.space.word(self.layout.exp + express::RTCTL) & RTCTL_PMEIE != 0;
        if !enabled || self.root_status() & RTSTA_PME_STATUS == 0 {
            return;
        }
        if self.messages_enabled() {
            let vector = express::interrupt_message_number(&self.space, self.layout.exp);
            self.notify(vector);
        } else {
            self.set_intx(true);
        }
    }

    /// After a configuration write: PME Status cleared presents the next queued PME; PME
    /// Interrupt Enable turned on while PME Status is set interrupts.
    fn pme_after_write(&mut self, old_status: u32, old_ctl: u16) {
        let status = self.root_status();
        let ctl = self.space.word(self.layout.exp + express::RTCTL);
        if old_status & RTSTA_PME_STATUS != 0 && status & RTSTA_PME_STATUS == 0 {
            match self.pme_queue.pop_front() {
                Some(next) => self.present_pme(next),
                None if !self.messages_enabled() && self.intx && ctl & RTCTL_PMEIE != 0 => {
                    self.set_intx(false)
                }
                None => {}
            }
        } else if old_ctl & RTCTL_PMEIE == 0 && ctl & RTCTL_PMEIE != 0 {
            self.signal_pme();
        }
    }

    /// Turn a slot signal into INTx or MSI-X as QEMU's `hotplug_event_notify()` /
    /// `hotplug_event_clear()` do.
    fn signal(&mut self, s: Signal) {
        let msix = self.messages_enabled();
        match s {
            Signal::Notify(_) if msix => {
                let vector = express::interrupt_message_number(&self.space, self.layout.exp);
                self.notify(vector);
            }
            Signal::Notify(level) => self.set_intx(level),
            Signal::Clear(level) if !msix && !level => self.set_intx(false),
            Signal::Clear(_) => {}
        }
    }

    /// A configuration read.
    pub fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.space.read(offset, width)
    }

    /// QEMU's `rp_write_config()`: masks (`pci_default_write_config()` with
    /// `msix_write_config()`), then the slot, AER and Root Error Command hooks.
    pub fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects {
        if !valid_access(offset, width) {
            return Effects::empty();
        }
        let (exp, aer) = (self.layout.exp, self.layout.aer);
        let bar = bridge::Bar::Bits32(self.layout.msix_bar);
        let watched = bridge::Watched::of(&self.space, bar);
        let root_cmd = self.space.dword(aer + aer::ROOT_COMMAND);
        let slot_regs = HotplugSlot::snapshot(&self.space, exp);
        let was_occupied = self.slot_occupied();
        let (old_rtsta, old_rtctl) = (self.root_status(), self.space.word(exp + express::RTCTL));
        self.space.write(offset, width, value);
        let (deassert, sent) = match &mut self.messages {
            Messages::Msix(m) => m.write_config(&self.space, offset, width),
            Messages::Msi(m) => {
                let (deassert, sent) = m.write_config(&mut self.space, offset, width);
                (deassert, sent.into_iter().map(Delivery::Sent).collect())
            }
        };
        for d in sent {
            self.deliver(d);
        }
        if deassert {
            self.set_intx(false);
        }
        // QEMU's rp_aer_vector_update() (root ports only: a switch port has no Root Error
        // Status).
        if self.is_root_port() {
            let vector = self.aer_vector();
            aer::root_set_vector(&mut self.space, aer, vector);
        }
        let slot_signals = if self.has_slot() {
            self.slot
                .write_config(&mut self.space, exp, slot_regs, offset, width, value)
        } else {
            Vec::new()
        };
        for s in slot_signals {
            self.signal(s);
        }
        aer::write_config(&mut self.space, aer);
        let msi = self.messages_enabled();
        match aer::root_write_config(&self.space, aer, root_cmd, msi) {
            RootSignal::Intx(level) => self.set_intx(level),
            RootSignal::Msi(vector) => self.notify(vector),
            RootSignal::None => {}
        }
        self.pme_after_write(old_rtsta, old_rtctl);
        // The slot hook took presence down: the guest powered an occupied slot off.
        if was_occupied && !self.slot_occupied() {
            self.slot_events.push(SlotEvent::PoweredOff);
        }
        // Slot Control written: power or indicators may have changed (Effects::SLOT).
        let slot_written = if header::overlaps(offset, width, exp + slot::SLTCTL, 2) {
            // PCIe Base 6.0 §6.7.1.8 Power Controller: power removed from an occupied slot
            // resets what is in it (QEMU's pcie_cap_update_power() -> pci_set_power(false) ->
            // pci_device_reset()). PCC is writable only with a power controller (Slot
            // Capabilities PCP), and a write that also detached the card is a removal.
            let pcc_off = |ctl: u16| ctl & slot::SLTCTL_PCC != 0;
            let now = self.space.word(exp + slot::SLTCTL);
            if !pcc_off(slot_regs.0) && pcc_off(now) && self.slot_occupied() {
                Effects::SLOT | Effects::SLOT_POWER_OFF
            } else {
                Effects::SLOT
            }
        } else {
            Effects::empty()
        };
        // A port without a slot (a switch's upstream port) has no Slot Control to write.
        let slot_written = if self.has_slot() {
            slot_written
        } else {
            Effects::empty()
        };
        // PCIe Base 6.0 §7.5.3.4 Device Control Initiate Function Level Reset (writable only on
        // a port with Function Level Reset Capability): the bit reads 0 and the function resets
        // (QEMU's pcie_cap_flr_write_config()).
        let devctl = exp + express::DEVCTL;
        let flr = if self.space.word(devctl) & express::DEVCTL_BCR_FLR != 0 {
            self.space
                .clear_bits(devctl, 2, express::DEVCTL_BCR_FLR.into());
            self.reset();
            Effects::FUNCTION_LEVEL_RESET
        } else {
            Effects::empty()
        };
        watched.effects(&self.space, bar) | self.queued() | slot_written | flr
    }

    /// The MSI-X BAR when it decodes (none with MSI).
    pub fn bars(&self) -> Vec<BarMapping> {
        let Messages::Msix(msix) = &self.messages else {
            return Vec::new();
        };
        let (index, size) = (self.layout.msix_bar, msix.bar_size());
        header::memory_bar32(&self.space, index, size)
            .map(|base| BarMapping {
                index,
                base,
                size: size.into(),
            })
            .into_iter()
            .collect()
    }

    /// A read of the MSI-X BAR (all ones for BARs the port does not have).
    pub fn bar_read(&mut self, bar: u8, offset: u64, width: Width) -> u64 {
        match &self.messages {
            Messages::Msix(m) if bar == self.layout.msix_bar => m.bar_read(offset, width),
            _ => u64::MAX,
        }
    }

    /// A write to the MSI-X BAR.
    pub fn bar_write(&mut self, bar: u8, offset: u64, width: Width, value: u64) -> Effects {
        if let Messages::Msix(m) = &mut self.messages {
            if bar == self.layout.msix_bar {
                for d in m.bar_write(&self.space, offset, width, value) {
                    self.deliver(d);
                }
            }
        }
        self.queued()
    }

    /// QEMU's `pci_do_device_reset()` + `rp_reset()`: INTx deasserted; Command, Status, BARs,
    /// Interrupt Line, Cache Line Size and MSI-X reset; Root Control, Device Control error
    /// enables, ARI Forwarding, the slot, ACS Control and Root Error Command cleared; bus numbers
    /// and Bridge Control cleared and the windows closed. What QEMU does not reset keeps its
    /// value: AER severity/mask/ECRC enables, End-End TLP Prefix Blocking, and the writable
    /// bytes after the capabilities.
    pub fn reset(&mut self) {
        let l = self.layout;
        // QEMU resets the device (rp_reset_hold(), whose rp_aer_vector_update() reads the MSI
        // allocation) before pci_do_device_reset() resets MSI: the AER message number keeps
        // the allocation from before the reset until the next configuration write.
        let aer_vector = self.aer_vector();
        self.set_intx(false);
        self.pme_queue.clear();
        match &mut self.messages {
            Messages::Msix(m) => {
                header::device_reset(&mut self.space, &[l.msix_bar]);
                m.reset(&mut self.space);
            }
            Messages::Msi(m) => {
                header::device_reset(&mut self.space, &[]);
                m.reset(&mut self.space);
            }
        }
        if self.is_root_port() {
            aer::root_set_vector(&mut self.space, l.aer, aer_vector);
        }
        express::reset_root_port(&mut self.space, l.exp);
        // Nothing behind the port is modelled as present yet (presence detect is the slot's).
        if self.has_slot() {
            self.slot.reset(&mut self.space, l.exp, l.slot, false);
            if l.compat.power_indicator_off_at_reset {
                // PCIe Base 6.0 §7.5.3.10 Power Indicator Control: QEMU 10.0's
                // pcie_cap_slot_reset() turns it Off on every slot, with or without a power
                // controller (QEMU 7.2 leaves 00b on a slot without one).
                self.space
                    .clear_bits(l.exp + slot::SLTCTL, 2, slot::SLTCTL_PIC.into());
                self.space
                    .set_bits(l.exp + slot::SLTCTL, 2, slot::SLTCTL_PIC_OFF.into());
            }
        }
        if let Some(acs) = l.acs {
            acs::reset(&mut self.space, acs);
        }
        aer::root_reset(&mut self.space, l.aer);
        bridge::reset(&mut self.space);
        if !self.is_root_port() {
            // A switch port's windows reset to zero, not disabled (QEMU's xio3130 reset hooks
            // call pci_bridge_reset() alone).
            bridge::zero_base_limit(&mut self.space);
        }
    }

    /// The state for saving.
    pub fn state(&self) -> PortState {
        PortState {
            space: self.space.image(),
            msix: match &self.messages {
                Messages::Msix(m) => Some(m.state()),
                Messages::Msi(_) => None,
            },
            slot: self.slot,
            intx: self.intx,
            pme_queue: self.pme_queue.iter().copied().collect(),
        }
    }

    /// How [`PciePort::state`] differs from `old`'s (a copy of this port taken earlier) when
    /// only register values changed: see [`ConfigSpace::value_changes`]. `None` when anything
    /// else it saves differs.
    pub fn value_changes<'a>(
        &'a self,
        old: &PciePort,
        gap: usize,
    ) -> Option<Vec<(usize, &'a [u8])>> {
        if self.messages != old.messages
            || self.slot != old.slot
            || self.intx != old.intx
            || self.pme_queue != old.pme_queue
        {
            return None;
        }
        self.space.value_changes(&old.space, gap)
    }

    /// Overwrite register values with `runs` from [`PciePort::value_changes`] of another port
    /// (see [`ConfigSpace::set_values`]); nothing else changes.
    pub fn set_values(&mut self, runs: &[(usize, &[u8])]) {
        self.space.set_values(runs);
    }

    /// Load state made by [`PciePort::state`] of a port with the same layout; nothing changes
    /// on error.
    pub fn load_state(&mut self, s: &PortState) -> Result<(), StateError> {
        let mut space = self.space.clone();
        space.load_image(&s.space)?;
        let mut messages = self.messages.clone();
        match (&mut messages, &s.msix) {
            (Messages::Msix(m), Some(state)) => m.load_state(state)?,
            (Messages::Msi(_), None) => {}
            // An MSI-X state for a port with MSI, or none for one with MSI-X.
            _ => return Err(StateError::MsixTable),
        }
        self.space = space;
        self.messages = messages;
        self.slot = s.slot;
        self.intx = s.intx;
        self.pme_queue = s.pme_queue.iter().copied().take(PME_QUEUE_MAX).collect();
        Ok(())
    }
}

/// A function model made of a [`PciePort`]: pcierc's root ports and switch ports. A model gives
/// its port ([`PortFunction::port`], [`PortFunction::port_mut`]) and the properties it was built
/// with; the port's behaviour is the model's through the default methods
/// here, and its [`PciFunction`] implementation (configuration space, BARs, reset, state) is the
/// one below, so no model forwards calls of its own.
pub trait PortFunction: Send {
    /// The properties the model was built with, saved with its state (a state only loads into a
    /// model with the same properties).
    type Properties: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned;

    /// The port.
    fn port(&self) -> &PciePort;

    /// The port, to change.
    fn port_mut(&mut self) -> &mut PciePort;

    /// The properties the model was built with.
    fn properties(&self) -> &Self::Properties;

    /// The model's id (topology name), for messages.
    fn id(&self) -> &str;

    /// Primary Bus Number.
    fn primary_bus(&self) -> u8 {
        self.port().primary_bus()
    }

    /// Secondary Bus Number.
    fn secondary_bus(&self) -> u8 {
        self.port().secondary_bus()
    }

    /// Subordinate Bus Number.
    fn subordinate_bus(&self) -> u8 {
        self.port().subordinate_bus()
    }

    /// The I/O, memory and prefetchable windows the port forwards now.
    fn windows(&self) -> BridgeWindows {
        self.port().windows()
    }

    /// Interrupts generated since the last call (after an operation returned
    /// `Effects::INTERRUPT`).
    fn take_interrupts(&mut self) -> Vec<Interrupt> {
        self.port_mut().take_interrupts()
    }

    /// Slot events since the last call (after an operation returned `Effects::SLOT`).
    fn slot_events(&mut self) -> Vec<SlotEvent> {
        self.port_mut().take_slot_events()
    }

    /// Is a card present in the slot? See [`PciePort::slot_occupied`].
    fn slot_occupied(&self) -> bool {
        self.port().slot_occupied()
    }

    /// Mark the slot occupied from power-on (no change event). See [`PciePort::set_present`].
    fn set_present(&mut self) {
        self.port_mut().set_present()
    }

    /// Record and signal an error: `own` for the port's own, else from a function below. See
    /// [`PciePort::inject_error`].
    fn inject_error(&mut self, e: &AerError, own: bool) -> Result<Effects, aer::InjectError> {
        self.port_mut().inject_error(e, own)
    }

    /// The MSI-X message `vector` sends now and whether it is masked.
    fn msi_route(&self, vector: u16) -> Option<(u64, u32, bool)> {
        self.port().msi_route(vector)
    }

    /// Slot Status (PCIe Base 6.0 §7.5.3.11).
    fn slot_status(&self) -> u16 {
        let p = self.port();
        p.config_read(p.layout.exp + slot::SLTSTA, 2) as u16
    }

    /// Slot Control (PCIe Base 6.0 §7.5.3.10).
    fn slot_control(&self) -> u16 {
        let p = self.port();
        p.config_read(p.layout.exp + slot::SLTCTL, 2) as u16
    }

    /// Is the slot powered? Without a power controller (Slot Capabilities Power Controller
    /// Present, PCIe Base 6.0 §7.5.3.9) always; with one, while Slot Control Power Controller
    /// Control is 0 (on, §7.5.3.10), as QEMU's `pcie_cap_update_power()` decides.
    fn slot_powered(&self) -> bool {
        let p = self.port();
        let cap = p.config_read(p.layout.exp + slot::SLTCAP, 4);
        cap & slot::SLTCAP_PCP == 0 || self.slot_control() & slot::SLTCTL_PCC == 0
    }

    /// A PME from `requester` below the port. See [`PciePort::raise_pme`].
    fn raise_pme(&mut self, requester: u16) -> Effects {
        self.port_mut().raise_pme(requester)
    }

    /// A card is inserted. See [`PciePort::hot_add`].
    fn hot_add(&mut self) -> Result<Effects, SlotError> {
        self.port_mut().hot_add()
    }

    /// The attention button is pressed. See [`PciePort::attention_button`].
    fn attention_button(&mut self) -> Result<Effects, SlotError> {
        self.port_mut().attention_button()
    }

    /// May a card be hot-added now? See [`PciePort::may_hot_add`].
    fn may_hot_add(&self) -> Result<(), SlotError> {
        self.port().may_hot_add()
    }

    /// What a removal request does now. See [`PciePort::unplug_request`].
    fn unplug_request(&self) -> Result<UnplugRequest, SlotError> {
        self.port().unplug_request()
    }

    /// The card leaves a powered-off slot. See [`PciePort::unplugged_while_off`].
    fn unplugged_while_off(&mut self) -> Result<Effects, SlotError> {
        self.port_mut().unplugged_while_off()
    }

    /// The card is gone. See [`PciePort::removed`].
    fn removed(&mut self) -> Result<Effects, SlotError> {
        self.port_mut().removed()
    }

    /// Is the port asserting INTx (Status.Interrupt Status)?
    fn intx_asserted(&self) -> bool {
        self.port().intx_asserted()
    }
}

/// Where a port model's register values are in its saved state ([`PciFunction::save`]): the
/// hex string of [`ConfigSpace::image`]'s `value`, under `port` and `space`.
pub const SAVED_VALUES_PATH: [&str; 3] = ["port", "space", "value"];

/// A port model's saved state: its properties and its port's state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortFunctionState<P> {
    config: P,
    port: PortState,
}

impl<T: PortFunction> PciFunction for T {
    fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.port().config_read(offset, width)
    }

    fn config_image(&self) -> Vec<u8> {
        self.port().space().image_4k()
    }

    fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects {
        self.port_mut().config_write(offset, width, value)
    }

    fn bars(&self) -> Vec<BarMapping> {
        self.port().bars()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, width: Width) -> u64 {
        self.port_mut().bar_read(bar, offset, width)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, width: Width, value: u64) -> Effects {
        self.port_mut().bar_write(bar, offset, width, value)
    }

    /// See [`PciePort::reset`].
    fn reset(&mut self) {
        self.port_mut().reset();
    }

    fn save(&self) -> serde_json::Value {
        let s = PortFunctionState {
            config: self.properties().clone(),
            port: self.port().state(),
        };
        serde_json::to_value(s).unwrap_or_default()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), crate::Error> {
        use crate::topology::StateError;
        let id = self.id().to_string();
        let s: PortFunctionState<T::Properties> = crate::topology::state::function_state(
            &id,
            state,
            self.properties(),
            |s: &PortFunctionState<T::Properties>| &s.config,
        )?;
        self.port_mut()
            .load_state(&s.port)
            .map_err(|source| StateError::Registers { id, source }.into())
    }
}
