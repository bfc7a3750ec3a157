//! pcierc's PCI functions: functions are data (register values, write masks, write-1-to-clear
//! masks, capability lists), and writes return [`Effects`] for the hierarchy to apply.
//!
//! The engine itself (configuration space, the predefined header, BAR sizing, capability chains,
//! MSI-X) is the `pcierc-config-space` crate, which device emulators use without the rest of
//! pcierc; it is re-exported here under its own module names ([`config_space`], [`header`],
//! [`caps::msix`]). What is specific to pcierc's hierarchy stays here: the type 1 header
//! ([`bridge`]), the PCI Express port ([`port`]) and its capabilities ([`caps`]), the
//! [`PciFunction`] trait and its [`Effects`].

pub mod bridge;
pub mod caps;
pub mod port;
#[cfg(test)]
pub(crate) mod reference;

pub use bridge::BridgeWindows;
pub use pcierc_config_space::{config_space, header, BarMapping, ConfigSpace, Width};

bitflags::bitflags! {
    /// What a write changed, for the hierarchy to re-derive and report. Device models do no I/O.
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
    pub struct Effects: u32 {
        /// PCIEXBAR changed: the ECAM window moved, resized, was enabled or disabled.
        const ECAM = 1 << 0;
        /// PAM or SMRAM changed: legacy memory routing for the VMM to apply.
        const CHIPSET_MEMORY = 1 << 1;
        /// Primary/secondary/subordinate bus numbers of a bridge changed.
        const BUS_NUMBERS = 1 << 2;
        /// A bridge's I/O or memory windows, or its Command decode bits, changed.
        const WINDOWS = 1 << 3;
        /// A BAR of this function moved, or its memory/IO decode was toggled.
        const BARS = 1 << 4;
        /// Bridge Control Secondary Bus Reset went from 0 to 1 (PCI-to-PCI Bridge 1.2 §3.2.5.18
        /// Bridge Control Register): the functions below the bridge are reset.
        const SECONDARY_BUS_RESET = 1 << 5;
        /// The function has interrupts to deliver: drain them (e.g. `PortFunction::take_interrupts`).
        const INTERRUPT = 1 << 6;
        /// Slot state changed: presence, Slot Control (power, indicators) or events the
        /// hierarchy acts on (drain `PortFunction::slot_events`).
        const SLOT = 1 << 7;
        /// Slot Control Power Controller Control went from on to off while the card stays in
        /// the slot (PCIe Base 6.0 §7.5.3.10 Slot Control Register; §6.7.1.8: removing power
        /// resets the functions in the slot). Not set when the same write detached the card.
        const SLOT_POWER_OFF = 1 << 8;
        /// The function reset itself through Device Control Initiate Function Level Reset
        /// (PCIe Base 6.0 §6.6.2, §7.5.3.4): a bridge's FLR resets what is below it too (QEMU's
        /// `pcie_cap_flr_write_config()` -> `pci_device_reset()` resets its secondary bus).
        const FUNCTION_LEVEL_RESET = 1 << 9;
    }
}

/// One PCI function that pcierc emulates. Pure: no I/O, no sockets, no clocks.
///
/// Callers validate accesses before calling: `offset + width <= 4096`, `offset % width == 0`,
/// width 1, 2 or 4 for configuration space.
pub trait PciFunction: Send {
    /// Read `width` bytes of configuration space at `offset` (all ones beyond the function's size).
    fn config_read(&self, offset: u16, width: Width) -> u32;
    /// Write `width` bytes of `value` at `offset`, honouring write and W1C masks.
    fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects;
    /// All 4 KiB of configuration space as reads see them (what the configuration snapshot
    /// holds). The default reads every dword; models backed by a plain space copy it.
    fn config_image(&self) -> Vec<u8> {
        (0..4096u16)
            .step_by(4)
            .flat_map(|off| self.config_read(off, 4).to_le_bytes())
            .collect()
    }
    /// The memory BARs the function decodes now (memory space enabled, BAR programmed).
    fn bars(&self) -> Vec<BarMapping> {
        Vec::new()
    }
    /// Read from BAR `bar` at byte `offset` (`offset + width <= size`, width 1/2/4/8).
    fn bar_read(&mut self, _bar: u8, _offset: u64, _width: Width) -> u64 {
        u64::MAX
    }
    /// Write to BAR `bar` at byte `offset`.
    fn bar_write(&mut self, _bar: u8, _offset: u64, _width: Width, _value: u64) -> Effects {
        Effects::empty()
    }
    /// A platform reset, as QEMU 7.2 performs one (`system_reset`): the registers QEMU resets
    /// return to their power-on values, the ones it leaves alone (device-specific registers such
    /// as the MCH's PAMs) keep theirs. A model fresh from its constructor is in the power-on
    /// state.
    fn reset(&mut self);
    /// Serialize the complete guest-visible state.
    fn save(&self) -> serde_json::Value;
    /// Restore state produced by [`PciFunction::save`] of the same model.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), crate::Error>;
}

/// An interrupt a function sends, for the frontend that runs the guest to inject.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// An MSI-X message as the guest programmed it in the table (PCIe Base 6.0 §7.7.2).
    Msi {
        /// The MSI-X vector (table entry) that fired.
        vector: u16,
        /// Message Address.
        address: u64,
        /// Message Data.
        data: u32,
    },
    /// The INTx pin's level changed (PCI Local Bus 3.0 §2.2.6).
    Intx {
        /// Asserted.
        asserted: bool,
    },
}

/// What the guest did to a slot that the hierarchy must act on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SlotEvent {
    /// The guest powered an occupied slot off (Slot Control Power Controller Control = off,
    /// PCIe Base 6.0 §7.5.3.10): what is in it is released.
    PoweredOff,
}

/// Why a slot operation was refused; the slot is unchanged.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// A card is already present.
    #[error("the slot is occupied")]
    Occupied,
    /// No card is present.
    #[error("the slot is empty")]
    Empty,
    /// The slot is not hot-plug capable (Slot Capabilities Hot-Plug Capable clear): no hot-add.
    #[error("the slot is not hot-plug capable")]
    HotPlugUnsupported,
    /// The slot is not hot-plug capable: no removal request.
    #[error("the slot is not hot-plug capable")]
    HotUnplugUnsupported,
    /// The electromechanical interlock is engaged (Slot Status EIS).
    #[error("the slot is electromechanically locked")]
    Interlocked,
    /// The power indicator blinks: the guest is busy with the slot.
    #[error("the power indicator is blinking")]
    PowerIndicatorBlinking,
}

/// Severity of an error (PCIe Base 6.0 §6.2.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ErrorSeverity {
    /// Correctable (ERR_COR).
    Correctable,
    /// Uncorrectable, non-fatal (ERR_NONFATAL).
    NonFatal,
    /// Uncorrectable, fatal (ERR_FATAL).
    Fatal,
}

/// An error to record and signal through a root port.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AerError {
    /// Severity (for the port's own uncorrectable errors the Severity register decides).
    pub severity: ErrorSeverity,
    /// Correctable or Uncorrectable Error Status bits (PCIe Base 6.0 §7.8.4.5 / §7.8.4.2).
    pub status: u32,
    /// The detecting function's id, bus << 8 | devfn.
    pub requester: u16,
    /// TLP header log (§7.8.4.8).
    pub header_log: [u32; 4],
}
