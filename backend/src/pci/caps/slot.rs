//! The slot registers of the PCI Express capability (PCIe Base 6.0 §7.5.3.9-§7.5.3.11) and QEMU
//! 7.2's hot-plug slot logic around them (`pcie_cap_slot_init()`, `pcie_cap_slot_reset()`,
//! `pcie_cap_slot_write_config()`, `hotplug_event_*()` in `hw/pci/pcie.c`).
//!
//! The logic is register-level and pure: it returns [`Signal`]s for the port to turn into INTx
//! or MSI-X, in the order QEMU raises them. Device presence (attention button, plug, unplug)
//! enters through [`HotplugSlot::event`].

use serde::{Deserialize, Serialize};

use crate::pci::config_space::ConfigSpace;
use crate::pci::header::overlaps;

use super::express::{FLAGS, FLAGS_SLOT, LNKSTA};

// PCIe Base 6.0 §7.5.3.8 Link Status: Data Link Layer Link Active.
/// Link Status Data Link Layer Link Active (PCIe Base 6.0 §7.5.3.8).
pub const LNKSTA_DLLLA: u16 = 1 << 13;

// PCIe Base 6.0 §7.5.3.9 Slot Capabilities Register.
/// Slot Capabilities (offset in the PCI Express capability).
pub const SLTCAP: u16 = 0x14;
// PCIe Base 6.0 §7.5.3.10 Slot Control Register.
/// Slot Control.
pub const SLTCTL: u16 = 0x18;
// PCIe Base 6.0 §7.5.3.11 Slot Status Register.
/// Slot Status.
pub const SLTSTA: u16 = 0x1a;

// PCIe Base 6.0 §7.5.3.9 fields.
/// Attention Button Present.
pub const SLTCAP_ABP: u32 = 1 << 0;
/// Power Controller Present.
pub const SLTCAP_PCP: u32 = 1 << 1;
/// Attention Indicator Present.
pub const SLTCAP_AIP: u32 = 1 << 3;
/// Power Indicator Present.
pub const SLTCAP_PIP: u32 = 1 << 4;
/// Hot-Plug Surprise.
pub const SLTCAP_HPS: u32 = 1 << 5;
/// Hot-Plug Capable.
pub const SLTCAP_HPC: u32 = 1 << 6;
/// Electromechanical Interlock Present.
pub const SLTCAP_EIP: u32 = 1 << 17;
/// Physical Slot Number, bits 31:19.
pub const SLTCAP_PSN_SHIFT: u32 = 19;

// PCIe Base 6.0 §7.5.3.10 fields.
/// Attention Button Pressed Enable.
pub const SLTCTL_ABPE: u16 = 1 << 0;
/// Presence Detect Changed Enable.
pub const SLTCTL_PDCE: u16 = 1 << 3;
/// Command Completed Interrupt Enable.
pub const SLTCTL_CCIE: u16 = 1 << 4;
/// Hot-Plug Interrupt Enable.
pub const SLTCTL_HPIE: u16 = 1 << 5;
/// Attention Indicator Control (2 bits).
pub const SLTCTL_AIC: u16 = 3 << 6;
/// Attention Indicator Control = Off.
pub const SLTCTL_AIC_OFF: u16 = 3 << 6;
/// Power Indicator Control (2 bits).
pub const SLTCTL_PIC: u16 = 3 << 8;
/// Power Indicator Control = Off.
pub const SLTCTL_PIC_OFF: u16 = 3 << 8;
/// Power Indicator Control = On.
pub const SLTCTL_PIC_ON: u16 = 1 << 8;
/// Power Indicator Control = Blink.
pub const SLTCTL_PIC_BLINK: u16 = 2 << 8;
/// Power Controller Control (1 = power off).
pub const SLTCTL_PCC: u16 = 1 << 10;
/// Electromechanical Interlock Control (write 1 to toggle the interlock; reads 0).
pub const SLTCTL_EIC: u16 = 1 << 11;
/// Data Link Layer State Changed Enable (§7.5.3.10 bit 12). Not writable in QEMU 7.2: pcierc
/// implements it (docs/qemu-compat.md).
pub const SLTCTL_DLLSCE: u16 = 1 << 12;

// PCIe Base 6.0 §7.5.3.11 fields.
/// Attention Button Pressed.
pub const SLTSTA_ABP: u16 = 1 << 0;
/// Power Fault Detected.
pub const SLTSTA_PFD: u16 = 1 << 1;
/// MRL Sensor Changed.
pub const SLTSTA_MRLSC: u16 = 1 << 2;
/// Presence Detect Changed.
pub const SLTSTA_PDC: u16 = 1 << 3;
/// Command Completed.
pub const SLTSTA_CC: u16 = 1 << 4;
/// Presence Detect State.
pub const SLTSTA_PDS: u16 = 1 << 6;
/// Electromechanical Interlock Status.
pub const SLTSTA_EIS: u16 = 1 << 7;
/// Data Link Layer State Changed (§7.5.3.11 bit 8, RW1C): Data Link Layer Link Active changed.
pub const SLTSTA_DLLSC: u16 = 1 << 8;

/// The events QEMU signals (`PCI_EXP_HP_EV_SUPPORTED`): attention button, presence detect
/// changed, command completed. Each enable bit in Slot Control sits at its status bit.
pub const EVENTS_SUPPORTED: u16 = SLTSTA_ABP | SLTSTA_PDC | SLTSTA_CC;
/// QEMU's `PCIE_SLOT_EVENTS`: the status bits its racy-clear work-around protects.
const SLOT_EVENTS: u16 = SLTSTA_ABP | SLTSTA_PFD | SLTSTA_MRLSC | SLTSTA_PDC | SLTSTA_CC;

/// How the slot is built (QEMU's `slot`, `hotplug` and `x-...-pcp` properties).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SlotConfig {
    /// Physical Slot Number (13 bits are visible).
    pub number: u16,
    /// Hot-plug capable (Hot-Plug Surprise and Hot-Plug Capable).
    pub hotplug: bool,
    /// A power controller is present (QEMU's `QEMU_PCIE_SLTCAP_PCP`, on for 7.2 machines).
    pub power_controller: bool,
}

/// What the port must do for the slot, in order (QEMU's `hotplug_event_notify()` and
/// `hotplug_event_clear()` calls).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The hot-plug event condition changed to this level: send MSI-X if enabled, else set INTx.
    Notify(bool),
    /// Status was written: with MSI/MSI-X off and the condition now false, drop INTx.
    Clear(bool),
}

/// Slot state that is not a register: whether a hot-plug event is being signalled
/// (QEMU's `exp.hpev_notified`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugSlot {
    notified: bool,
}

/// QEMU's `pcie_cap_slot_init()` for the capability at `at`.
pub fn init(cs: &mut ConfigSpace, at: u16, cfg: SlotConfig) {
    cs.set_bits(at + FLAGS, 2, FLAGS_SLOT.into());
    let mut cap = u32::from(cfg.number) << SLTCAP_PSN_SHIFT
        | SLTCAP_EIP
        | SLTCAP_PIP
        | SLTCAP_AIP
        | SLTCAP_ABP;
    if cfg.hotplug {
        cap |= SLTCAP_HPS | SLTCAP_HPC;
    }
    let mut wmask = SLTCTL_PIC
        | SLTCTL_AIC
        | SLTCTL_HPIE
        | SLTCTL_CCIE
        | SLTCTL_PDCE
        | SLTCTL_ABPE
        | SLTCTL_EIC;
    if cfg.power_controller {
        cap |= SLTCAP_PCP;
        wmask |= SLTCTL_PCC;
    }
    cs.set_dword(at + SLTCAP, cap);
    cs.set_word(at + SLTCTL, SLTCTL_PIC_OFF | SLTCTL_AIC_OFF);
    cs.set_wmask(at + SLTCTL, 2, wmask.into());
    cs.or_w1cmask(at + SLTSTA, 2, EVENTS_SUPPORTED.into());
    if cfg.hotplug {
        // PCIe Base 6.0 §6.7.3.3: a hot-plug capable port with Data Link Layer Link Active
        // Reporting (which the root ports advertise, as QEMU's) reports link changes as
        // Data Link Layer State Changed. QEMU 7.2 leaves both read-only zero.
        cs.or_wmask(at + SLTCTL, 2, SLTCTL_DLLSCE.into());
        cs.or_w1cmask(at + SLTSTA, 2, SLTSTA_DLLSC.into());
    }
}

impl HotplugSlot {
    /// Is a hot-plug event being signalled?
    pub fn notified(&self) -> bool {
        self.notified
    }

    /// QEMU's `hotplug_event_update_event_status()`.
    fn update(&mut self, cs: &ConfigSpace, at: u16) {
        let (ctl, sta) = (cs.word(at + SLTCTL), cs.word(at + SLTSTA));
        // §6.7.3.4: each enabled event; DLLSC's enable sits at another bit position.
        let dllsc = ctl & SLTCTL_DLLSCE != 0 && sta & SLTSTA_DLLSC != 0;
        self.notified = ctl & SLTCTL_HPIE != 0 && (sta & ctl & EVENTS_SUPPORTED != 0 || dllsc);
    }

    /// QEMU's `hotplug_event_notify()`: signal only when the condition changes.
    fn notify(&mut self, cs: &ConfigSpace, at: u16, out: &mut Vec<Signal>) {
        let prev = self.notified;
        self.update(cs, at);
        if prev != self.notified {
            out.push(Signal::Notify(self.notified));
        }
    }

    /// QEMU's `pcie_cap_slot_event()`: set status bits `event`, signal if any was newly set.
    pub fn event(&mut self, cs: &mut ConfigSpace, at: u16, event: u16) -> Vec<Signal> {
        let mut out = Vec::new();
        if cs.set_bits(at + SLTSTA, 2, event.into()) != u64::from(event) {
            self.notify(cs, at, &mut out);
        }
        out
    }

    /// Slot Control and Slot Status before a configuration write, for [`HotplugSlot::write_config`].
    pub fn snapshot(cs: &ConfigSpace, at: u16) -> (u16, u16) {
        (cs.word(at + SLTCTL), cs.word(at + SLTSTA))
    }

    /// QEMU's `pcie_cap_slot_write_config()`, after the masks were applied. `data` is the raw
    /// value of the access at `offset` (QEMU tests it unshifted, whatever the offset).
    pub fn write_config(
        &mut self,
        cs: &mut ConfigSpace,
        at: u16,
        (old_ctl, old_sta): (u16, u16),
        offset: u16,
        width: u8,
        data: u32,
    ) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut sta = cs.word(at + SLTSTA);
        let val = data as u16;
        if overlaps(offset, width, at + SLTSTA, 2) {
            // QEMU work-around for guests that clear every bit during init: a write that would
            // clear event bits that were not set reverts them all to their value before it.
            if data & u32::from(!old_sta & SLOT_EVENTS) != 0 {
                sta = (sta & !SLOT_EVENTS) | (old_sta & SLOT_EVENTS);
                cs.set_word(at + SLTSTA, sta);
            }
            self.update(cs, at);
            out.push(Signal::Clear(self.notified));
        }
        if !overlaps(offset, width, at + SLTCTL, 2) {
            return out;
        }
        if cs.clear_bits(at + SLTCTL, 2, SLTCTL_EIC.into()) != 0 {
            sta ^= SLTSTA_EIS;
            cs.set_word(at + SLTSTA, sta);
        }
        // Powering off an occupied slot (power controller and indicator both off, and they were
        // not before) detaches what is in it. QEMU unplugs the devices here; pcierc reports
        // presence through the hierarchy, so only the register side is modelled.
        let off = |c: u16| c & SLTCTL_PCC != 0 && c & SLTCTL_PIC_OFF == SLTCTL_PIC_OFF;
        if sta & SLTSTA_PDS != 0 && off(val) && !off(old_ctl) {
            cs.clear_bits(at + SLTSTA, 2, SLTSTA_PDS.into());
            let link = cs.clear_bits(at + LNKSTA, 2, LNKSTA_DLLLA.into());
            cs.set_bits(at + SLTSTA, 2, SLTSTA_PDC.into());
            if link != 0 && cs.w1cmask(at + SLTSTA, 2) & u64::from(SLTSTA_DLLSC) != 0 {
                cs.set_bits(at + SLTSTA, 2, SLTSTA_DLLSC.into());
            }
        }
        self.notify(cs, at, &mut out);
        // PCIe Base 6.0 §6.7.3.2: every write to Slot Control is a command, completed at once.
        out.extend(self.event(cs, at, SLTSTA_CC));
        out
    }

    /// QEMU's `pcie_cap_slot_reset()`: enables and indicators cleared, attention indicator off,
    /// power off and power indicator off when the slot is empty (on when `populated`), and the
    /// interlock, command-completed, presence-changed and button events cleared.
    pub fn reset(&mut self, cs: &mut ConfigSpace, at: u16, cfg: SlotConfig, populated: bool) {
        cs.clear_bits(
            at + SLTCTL,
            2,
            (SLTCTL_EIC
                | SLTCTL_PIC
                | SLTCTL_AIC
                | SLTCTL_HPIE
                | SLTCTL_CCIE
                | SLTCTL_PDCE
                | SLTCTL_ABPE
                | SLTCTL_DLLSCE)
                .into(),
        );
        cs.set_bits(at + SLTCTL, 2, SLTCTL_AIC_OFF.into());
        if cfg.power_controller {
            if populated {
                cs.clear_bits(at + SLTCTL, 2, SLTCTL_PCC.into());
            } else {
                cs.set_bits(at + SLTCTL, 2, SLTCTL_PCC.into());
            }
            let pic = if populated {
                SLTCTL_PIC_ON
            } else {
                SLTCTL_PIC_OFF
            };
            cs.set_bits(at + SLTCTL, 2, pic.into());
        }
        cs.clear_bits(
            at + SLTSTA,
            2,
            (SLTSTA_EIS | SLTSTA_CC | SLTSTA_PDC | SLTSTA_ABP | SLTSTA_DLLSC).into(),
        );
        self.update(cs, at);
    }
}
