//! The Standard Hot-Plug Controller (PCI Standard Hot-Plug Controller and Subsystem
//! Specification 1.0, "SHPC 1.0"), as QEMU 7.2's `hw/pci/shpc.c` builds it for a bridge's
//! conventional secondary bus: the SHPC capability in configuration space (PCI Local Bus 3.0
//! Appendix H capability ID 0x0C; SHPC 1.0 "SHPC Capability": DWORD Select, Pending/Interrupt
//! bits, DWORD Data) and the SHPC Working Register Set, memory-mapped in a BAR, with 31 logical
//! slots: logical slot `n` (1-31) is device number `n` on the secondary bus, so device 0 is never
//! hot-pluggable. QEMU models no slot power: a card is reachable from the moment it is added,
//! whatever the slot state; the slot state, indicators, MRL and presence are what the guest sees
//! and commands. Every register, mask, command and event below is QEMU 7.2's (checked against it
//! by `tests/tests/models_vs_qemu.rs` and `tests/tests/shpc_hotplug_vs_qemu.rs`), including its
//! quirks, named where they appear; under `pc-q35-10.0` the [`PortCompat`] flags give QEMU
//! 10.0's reset and hot-plug rules instead (checked against QEMU 10.0.2 by the same tests). SHPC 1.0's register and command names are used throughout;
//! the capability ID is PCI Local Bus 3.0's (Appendix H).

use serde::{Deserialize, Serialize};

use crate::devices::machine::PortCompat;
use crate::pci::config_space::{CapabilityError, ConfigSpace};
use crate::pci::header::overlaps;

/// Capability ID of the SHPC capability (PCI Local Bus 3.0 Appendix H, "Hot-Plug").
pub const CAP_ID_SHPC: u8 = 0x0c;
/// Size of the capability: ID, next, DWORD Select, Pending/Interrupt, DWORD Data.
pub const CAP_SIZEOF: u8 = 8;
// SHPC 1.0 "SHPC Capability" fields, relative to the capability.
/// DWORD Select: which dword of the Working Register Set DWORD Data shows.
pub const CAP_DWORD_SELECT: u16 = 0x2;
/// Pending and interrupt bits (CIP/CSP): read as zero in QEMU.
pub const CAP_CXP: u16 = 0x3;
/// DWORD Data: the selected Working Register Set dword.
pub const CAP_DWORD_DATA: u16 = 0x4;

// SHPC 1.0 Working Register Set (offsets in the BAR).
/// Base Offset: where the register set starts in the BAR (0).
pub const BASE_OFFSET: u16 = 0x00;
/// Slots Available I: 33 MHz conventional slots (and the PCI-X modes, none here).
pub const SLOTS_33: u16 = 0x04;
/// Slots Available II: 66 MHz slots.
pub const SLOTS_66: u16 = 0x08;
/// Slot Configuration: Number of Slots Implemented.
pub const NSLOTS: u16 = 0x0c;
/// Slot Configuration: First Device Number.
pub const FIRST_DEV: u16 = 0x0d;
/// Slot Configuration: Physical Slot Number, Up/Down, MRL Sensor and Attention Button
/// Implemented.
pub const PHYS_SLOT: u16 = 0x0e;
/// Secondary Bus Configuration: current bus speed/mode.
pub const SEC_BUS: u16 = 0x10;
/// MSI Control: the MSI vector the SHPC uses (0).
pub const MSI_CTL: u16 = 0x12;
/// Programming Interface (1: SHPC 1.0).
pub const PROG_IFC: u16 = 0x13;
/// Command: the command code (writing it starts the command).
pub const CMD_CODE: u16 = 0x14;
/// Command: the target logical slot.
pub const CMD_TRGT: u16 = 0x15;
/// Command Status.
pub const CMD_STATUS: u16 = 0x16;
/// Interrupt Locator: bit 0 the command, bit n logical slot n.
pub const INT_LOCATOR: u16 = 0x18;
/// SERR Locator (always zero: QEMU signals no SERR).
pub const SERR_LOCATOR: u16 = 0x1c;
/// Controller SERR-INT: the controller's masks and the Command Completed / Arbiter Timeout
/// Detected bits.
pub const SERR_INT: u16 = 0x20;
/// Logical Slot Register of logical slot 1 (the next 30 follow, one dword each).
pub const SLOT_REGS: u16 = 0x24;
/// Slots QEMU implements (`SHPC_MAX_SLOTS`).
pub const NSLOTS_MAX: u8 = 31;
/// Bytes of the Working Register Set (`SHPC_SIZEOF`).
pub const SIZEOF: u16 = SLOT_REGS + 4 * NSLOTS_MAX as u16;
/// Size of the BAR holding it (`shpc_bar_size()`: the register set rounded up to a power of two).
pub const BAR_SIZE: u64 = 0x100;

// SHPC 1.0 Slot Configuration, Physical Slot Number field's flags.
const PHYS_NUM_UP: u16 = 0x2000;
const PHYS_MRL: u16 = 0x4000;
const PHYS_BUTTON: u16 = 0x8000;
// SHPC 1.0 Command Status bits.
const CMD_STATUS_BUSY: u16 = 0x1;
const CMD_STATUS_MRL_OPEN: u16 = 0x2;
const CMD_STATUS_INVALID_CMD: u16 = 0x4;
const CMD_STATUS_INVALID_MODE: u16 = 0x8;
/// Interrupt Locator bit 0: Command Completed.
const INT_COMMAND: u32 = 0x1;
// SHPC 1.0 Controller SERR-INT bits.
/// Global Interrupt Mask.
pub const SERR_INT_INT_DIS: u32 = 0x1;
/// Global SERR Mask.
pub const SERR_INT_SERR_DIS: u32 = 0x2;
/// Command Completed Interrupt Mask.
pub const SERR_INT_CMD_INT_DIS: u32 = 0x4;
/// Arbiter SERR Mask.
pub const SERR_INT_ARB_SERR_DIS: u32 = 0x8;
/// Command Completed Detected (RW1C).
pub const SERR_INT_CMD_DETECTED: u32 = 0x1_0000;
/// Arbiter Timeout Detected (RW1C; never set by QEMU).
pub const SERR_INT_ARB_DETECTED: u32 = 0x2_0000;
const SERR_INT_MASKS: u32 =
    SERR_INT_INT_DIS | SERR_INT_SERR_DIS | SERR_INT_CMD_INT_DIS | SERR_INT_ARB_SERR_DIS;

// SHPC 1.0 Logical Slot Register: Slot Status (bits 15:0), Event Latch (23:16) and
// SERR-INT Mask (31:24). The state and indicator fields use the command's encodings.
/// Slot State (bits 1:0).
pub const SLOT_STATE_MASK: u16 = 0x03;
/// Power Indicator State (bits 3:2).
pub const SLOT_PWR_LED_MASK: u16 = 0x0c;
/// Attention Indicator State (bits 5:4).
pub const SLOT_ATTN_LED_MASK: u16 = 0x30;
/// Power Fault Detected.
pub const SLOT_STATUS_PWR_FAULT: u16 = 0x40;
/// Attention Button Pressed (the button's current state).
pub const SLOT_STATUS_BUTTON: u16 = 0x80;
/// MRL Sensor: 1 = open.
pub const SLOT_STATUS_MRL_OPEN: u16 = 0x100;
/// 66 MHz Capable.
pub const SLOT_STATUS_66: u16 = 0x200;
/// PRSNT1#/PRSNT2# (bits 11:10): 11b empty, else the card's power.
pub const SLOT_STATUS_PRSNT_MASK: u16 = 0xc00;

/// Slot State / command field values (SHPC 1.0 Logical Slot Register, Slot Operation command).
pub const STATE_NO: u8 = 0;
/// Powered only.
pub const STATE_PWRONLY: u8 = 1;
/// Enabled.
pub const STATE_ENABLED: u8 = 2;
/// Disabled.
pub const STATE_DISABLED: u8 = 3;
/// Indicator values: no change (in a command), on, blink, off.
pub const LED_NO: u8 = 0;
/// On.
pub const LED_ON: u8 = 1;
/// Blinking.
pub const LED_BLINK: u8 = 2;
/// Off.
pub const LED_OFF: u8 = 3;
/// PRSNT field: empty slot.
const PRSNT_EMPTY: u8 = 3;
/// PRSNT field: a 7.5 W card (what QEMU reports for every card).
const PRSNT_7_5W: u8 = 0;

// SHPC 1.0 Logical Slot Register, Event Latch bits (RW1C) and the SERR-INT Mask bits that share
// their positions (plus two SERR-only masks).
/// Card Presence Changed.
pub const EVENT_PRESENCE: u8 = 0x01;
/// Isolated Power Fault Detected.
pub const EVENT_ISOLATED_FAULT: u8 = 0x02;
/// Attention Button Pressed.
pub const EVENT_BUTTON: u8 = 0x04;
/// MRL Sensor Changed.
pub const EVENT_MRL: u8 = 0x08;
/// Connected Power Fault Detected.
pub const EVENT_CONNECTED_FAULT: u8 = 0x10;
const EVENT_ALL: u8 = 0x1f;
/// The SERR-INT Mask byte at reset: every event and both SERR-only masks (MRL Sensor SERR Mask,
/// Connected Power Fault SERR Mask).
const SLOT_MASK_ALL: u8 = 0x7f;

/// Command codes (SHPC 1.0 Command Register): 00h-3Fh Slot Operation (state, power and
/// attention indicators), 40h-47h Set Bus Segment Speed/Mode, 48h Power-Only All Slots,
/// 49h Enable All Slots.
const CMD_SET_SPEED: u8 = 0x40;
const CMD_POWER_ONLY_ALL: u8 = 0x48;
const CMD_ENABLE_ALL: u8 = 0x49;

/// Why a hot-plug operation on an SHPC slot was refused; nothing changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShpcError {
    /// The device number has no SHPC slot (QEMU's `shpc_device_plug_common()` message).
    #[error(
        "Unsupported PCI slot {0} for standard hotplug controller. Valid slots are between 1 and {NSLOTS_MAX}."
    )]
    NoSlot(u8),
    /// A card is already in the slot.
    #[error("slot {0} is occupied")]
    Occupied(u8),
    /// No card is in the slot.
    #[error("slot {0} is empty")]
    Empty(u8),
    /// The slot's power indicator blinks: the guest is busy with it (QEMU 10.0's message).
    #[error("Hot-unplug failed: guest is busy (power indicator blinking)")]
    PowerIndicatorBlinking(u8),
}

/// What a removal request did ([`Shpc::unplug_request`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ShpcUnplug {
    /// The slot was disabled with its power indicator off: the card is gone now (the MRL opened
    /// and the slot reads empty).
    Now,
    /// The attention button was pressed; the card goes when the guest disables the slot with
    /// its power indicator off (see [`Shpc::bar_write`]).
    AttentionButton,
}

/// The Working Register Set and the slots' occupancy: everything the SHPC holds outside
/// configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shpc {
    cap: u16,
    regs: [u8; SIZEOF as usize],
    /// Device numbers (bit n = device n) with a card, QEMU's `sec_bus->devices[]` at function 0.
    occupied: u32,
    /// The level last signalled by MSI (QEMU's `msi_requested`).
    msi_requested: bool,
    /// The machine type's differences: the reset turns every attention indicator off
    /// ([`PortCompat::power_indicator_off_at_reset`], QEMU 10.0's `shpc_reset()`; QEMU 7.2
    /// leaves the field at 0), and the hot-plug rules of QEMU 10.0
    /// ([`PortCompat::shpc_refuse_unplug_while_blinking`],
    /// [`PortCompat::shpc_generic_slot_command`]).
    compat: PortCompat,
}

/// Serialized [`Shpc`] state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShpcState {
    /// The Working Register Set, lowercase hex.
    pub regs: String,
    /// Occupied device numbers, bit n = device n.
    pub occupied: u32,
    /// The level last signalled by MSI.
    pub msi_requested: bool,
}

/// A saved SHPC state that does not fit.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the SHPC register set is not {SIZEOF} bytes of hex")]
pub struct ShpcStateError;

/// The write mask of a Working Register Set byte (`shpc_init()`).
fn wmask(addr: u16) -> u8 {
    match addr {
        CMD_CODE => 0xff,
        CMD_TRGT => 0x1f,
        a if (SERR_INT..SERR_INT + 4).contains(&a) => {
            (SERR_INT_MASKS >> (8 * (a - SERR_INT))) as u8
        }
        a if a >= SLOT_REGS && (a - SLOT_REGS) % 4 == 3 => SLOT_MASK_ALL,
        _ => 0,
    }
}

/// The write-1-to-clear mask of a Working Register Set byte (`shpc_init()`).
fn w1cmask(addr: u16) -> u8 {
    let detected = SERR_INT_CMD_DETECTED | SERR_INT_ARB_DETECTED;
    match addr {
        a if (SERR_INT..SERR_INT + 4).contains(&a) => (detected >> (8 * (a - SERR_INT))) as u8,
        a if a >= SLOT_REGS && (a - SLOT_REGS) % 4 == 2 => EVENT_ALL,
        _ => 0,
    }
}

/// Logical slot register of slot index `i` (logical slot `i + 1`).
fn slot_reg(i: u8) -> u16 {
    SLOT_REGS + 4 * u16::from(i)
}

impl Shpc {
    /// Add the SHPC capability at `offset` (QEMU's `shpc_cap_add_config()`: DWORD Select and
    /// DWORD Data writable) and build the register set in its power-on state with the cards in
    /// `occupied` (bit n = device n) present.
    pub fn init(
        cs: &mut ConfigSpace,
        offset: u8,
        occupied: u32,
        compat: PortCompat,
    ) -> Result<Shpc, CapabilityError> {
        let at = u16::from(cs.add_capability(CAP_ID_SHPC, Some(offset), CAP_SIZEOF)?);
        cs.set_wmask(at + CAP_DWORD_SELECT, 1, 0xff);
        cs.set_wmask(at + CAP_DWORD_DATA, 4, 0xffff_ffff);
        let mut s = Shpc {
            cap: at,
            regs: [0; SIZEOF as usize],
            occupied,
            msi_requested: false,
            compat,
        };
        s.reset();
        s.update_dword(cs);
        Ok(s)
    }

    /// Offset of the capability in configuration space.
    pub fn cap(&self) -> u16 {
        self.cap
    }

    fn byte(&self, a: u16) -> u8 {
        self.regs[usize::from(a)]
    }

    fn word(&self, a: u16) -> u16 {
        u16::from_le_bytes([self.byte(a), self.byte(a + 1)])
    }

    fn dword(&self, a: u16) -> u32 {
        u32::from_le_bytes([
            self.byte(a),
            self.byte(a + 1),
            self.byte(a + 2),
            self.byte(a + 3),
        ])
    }

    fn set_word(&mut self, a: u16, v: u16) {
        let a = usize::from(a);
        self.regs[a..a + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_dword(&mut self, a: u16, v: u32) {
        let a = usize::from(a);
        self.regs[a..a + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A field of slot index `i`'s status (QEMU's `shpc_get_status()`).
    fn status(&self, i: u8, mask: u16) -> u8 {
        ((self.word(slot_reg(i)) & mask) >> mask.trailing_zeros()) as u8
    }

    /// Set a field of slot index `i`'s status (QEMU's `shpc_set_status()`).
    fn set_status(&mut self, i: u8, value: u8, mask: u16) {
        let w = self.word(slot_reg(i)) & !mask | (u16::from(value) << mask.trailing_zeros()) & mask;
        self.set_word(slot_reg(i), w);
    }

    fn latch(&mut self, i: u8, events: u8) {
        self.regs[usize::from(slot_reg(i) + 2)] |= events;
    }

    fn is_occupied(&self, i: u8) -> bool {
        self.occupied & 1 << (u32::from(i) + 1) != 0
    }

    /// QEMU 7.2's `shpc_reset()`: the register set rebuilt, occupied slots enabled with their
    /// power indicator on, empty ones disabled with the MRL open; every event masked, the
    /// controller's interrupts masked. (QEMU 7.2 leaves the attention indicator field at 0.)
    /// The caller then updates the interrupt ([`Shpc::interrupt_level`]) with `msi_requested`
    /// cleared, as QEMU does.
    pub fn reset(&mut self) {
        self.regs = [0; SIZEOF as usize];
        self.regs[usize::from(NSLOTS)] = NSLOTS_MAX;
        self.set_dword(SLOTS_33, NSLOTS_MAX.into());
        self.regs[usize::from(FIRST_DEV)] = 1;
        self.set_word(PHYS_SLOT, 1 | PHYS_NUM_UP | PHYS_MRL | PHYS_BUTTON);
        self.set_dword(SERR_INT, SERR_INT_MASKS);
        self.regs[usize::from(PROG_IFC)] = 1;
        for i in 0..NSLOTS_MAX {
            self.regs[usize::from(slot_reg(i) + 3)] = SLOT_MASK_ALL;
            if self.is_occupied(i) {
                self.set_status(i, STATE_ENABLED, SLOT_STATE_MASK);
                self.set_status(i, 0, SLOT_STATUS_MRL_OPEN);
                self.set_status(i, PRSNT_7_5W, SLOT_STATUS_PRSNT_MASK);
                self.set_status(i, LED_ON, SLOT_PWR_LED_MASK);
            } else {
                self.set_status(i, STATE_DISABLED, SLOT_STATE_MASK);
                self.set_status(i, 1, SLOT_STATUS_MRL_OPEN);
                self.set_status(i, PRSNT_EMPTY, SLOT_STATUS_PRSNT_MASK);
                self.set_status(i, LED_OFF, SLOT_PWR_LED_MASK);
            }
            if self.compat.power_indicator_off_at_reset {
                self.set_status(i, LED_OFF, SLOT_ATTN_LED_MASK);
            }
        }
        self.msi_requested = false;
    }

    /// A read of the Working Register Set (QEMU's `shpc_read()`): zero past its end.
    fn read_regs(&self, addr: u64, len: u8) -> u32 {
        (0..u64::from(len)).fold(0, |v, b| {
            let byte = addr
                .checked_add(b)
                .filter(|&a| a < u64::from(SIZEOF))
                .map_or(0, |a| self.regs[a as usize]);
            v | u32::from(byte) << (8 * b)
        })
    }

    /// QEMU's `shpc_write()` without the interrupt update: bytes through the masks, then the
    /// command when the Command register was written. Returns the device numbers whose cards
    /// the command released, and whether the write reached the register set at all.
    fn write_regs(&mut self, addr: u64, len: u8, val: u32) -> (bool, Vec<u8>) {
        if addr >= u64::from(SIZEOF) {
            return (false, Vec::new());
        }
        let addr = addr as u16;
        let len = u16::from(len).min(SIZEOF - addr);
        for b in 0..len {
            let a = addr + b;
            let d = (val >> (8 * b)) as u8;
            let (w, c) = (wmask(a), w1cmask(a));
            let r = &mut self.regs[usize::from(a)];
            *r = (*r & !w) | (d & w);
            *r &= !(d & c);
        }
        let released = if overlaps(addr, len as u8, CMD_CODE, 2) {
            self.command()
        } else {
            Vec::new()
        };
        (true, released)
    }

    /// A guest access to the BAR, split as QEMU's memory core splits it for a region of 1- to
    /// 4-byte accesses (`memory_access_size()`): naturally aligned pieces of at most 4 bytes.
    /// Returns the value read.
    pub fn bar_read(&self, offset: u64, width: u8) -> u64 {
        pieces(offset, width).fold(0, |v, (at, n, shift)| {
            v | u64::from(self.read_regs(at, n)) << shift
        })
    }

    /// A guest write to the BAR (split as [`Shpc::bar_read`]). Returns the device numbers the
    /// guest's commands released and whether any piece reached the register set (the interrupt
    /// must then be updated, [`Shpc::interrupt_level`]).
    pub fn bar_write(&mut self, offset: u64, width: u8, value: u64) -> (bool, Vec<u8>) {
        let mut touched = false;
        let mut released = Vec::new();
        for (at, n, shift) in pieces(offset, width) {
            let (t, r) = self.write_regs(at, n, (value >> shift) as u32);
            touched |= t;
            released.extend(r);
        }
        (touched, released)
    }

    /// QEMU's `shpc_cap_update_dword()`: DWORD Data shows the selected register dword.
    pub fn update_dword(&self, cs: &mut ConfigSpace) {
        let select = u64::from(cs.byte(self.cap + CAP_DWORD_SELECT));
        cs.set_dword(self.cap + CAP_DWORD_DATA, self.read_regs(select * 4, 4));
    }

    /// QEMU 7.2's `shpc_cap_write_config()` after a configuration write: a write to DWORD Data
    /// writes the selected register dword, then DWORD Data is refreshed. QEMU's quirk, kept:
    /// the value written is not the guest's but the register set's own dword at the
    /// capability's offset plus 4 (it reads `shpc->config` where it means `d->config`).
    /// Returns what [`Shpc::bar_write`] returns.
    pub fn write_config(
        &mut self,
        cs: &mut ConfigSpace,
        offset: u16,
        width: u8,
    ) -> (bool, Vec<u8>) {
        if !overlaps(offset, width, self.cap, CAP_SIZEOF.into()) {
            return (false, Vec::new());
        }
        let mut out = (false, Vec::new());
        if overlaps(offset, width, self.cap + CAP_DWORD_DATA, 4) {
            let select = u64::from(cs.byte(self.cap + CAP_DWORD_SELECT));
            let quirk = u64::from(self.cap + CAP_DWORD_DATA);
            let value = self.read_regs(quirk, 4);
            out = self.write_regs(select * 4, 4, value);
        }
        self.update_dword(cs);
        out
    }

    /// QEMU's `shpc_interrupt_update()` register part: the Interrupt Locator rebuilt from the
    /// unmasked slot events and Command Completed Detected; the interrupt level (the Global
    /// Interrupt Mask clear and something located).
    pub fn interrupt_level(&mut self) -> bool {
        let mut locator = 0u32;
        for i in 0..NSLOTS_MAX {
            let event = self.byte(slot_reg(i) + 2);
            let disable = self.byte(slot_reg(i) + 3);
            if event & !disable != 0 {
                locator |= 1 << (u32::from(i) + 1);
            }
        }
        let serr_int = self.dword(SERR_INT);
        if serr_int & SERR_INT_CMD_DETECTED != 0 && serr_int & SERR_INT_CMD_INT_DIS == 0 {
            locator |= INT_COMMAND;
        }
        self.set_dword(INT_LOCATOR, locator);
        serr_int & SERR_INT_INT_DIS == 0 && locator != 0
    }

    /// The level MSI last signalled (QEMU's `msi_requested`).
    pub fn msi_requested(&self) -> bool {
        self.msi_requested
    }

    /// Record the level just signalled.
    pub fn set_msi_requested(&mut self, level: bool) {
        self.msi_requested = level;
    }

    fn set_speed(&mut self, speed: u8) {
        // SHPC 1.0 Secondary Bus Configuration: only 33 MHz conventional PCI (mode 0).
        if speed == 0 {
            self.regs[usize::from(SEC_BUS)] &= !0x7;
        } else {
            self.set_word(CMD_STATUS, self.word(CMD_STATUS) | CMD_STATUS_INVALID_MODE);
        }
    }

    fn invalid_command(&mut self) {
        self.set_word(CMD_STATUS, self.word(CMD_STATUS) | CMD_STATUS_INVALID_CMD);
    }

    /// QEMU 7.2's `shpc_command()` (SHPC 1.0 Command Register and its command codes): the
    /// previous status cleared, the command run at once (never Busy), Command Completed
    /// Detected set. Returns the device numbers of cards released.
    fn command(&mut self) -> Vec<u8> {
        let code = self.byte(CMD_CODE);
        let clear = CMD_STATUS_BUSY
            | CMD_STATUS_MRL_OPEN
            | CMD_STATUS_INVALID_CMD
            | CMD_STATUS_INVALID_MODE;
        self.set_word(CMD_STATUS, self.word(CMD_STATUS) & !clear);
        let mut released = Vec::new();
        match code {
            0x00..=0x3f => {
                let target = self.byte(CMD_TRGT) & 0x1f;
                let field = |mask: u16| ((u16::from(code) & mask) >> mask.trailing_zeros()) as u8;
                let (state, power, attn) = (
                    field(SLOT_STATE_MASK),
                    field(SLOT_PWR_LED_MASK),
                    field(SLOT_ATTN_LED_MASK),
                );
                released.extend(self.slot_command(target, state, power, attn));
            }
            CMD_SET_SPEED..=0x47 => self.set_speed(code & 0x7),
            CMD_POWER_ONLY_ALL | CMD_ENABLE_ALL => {
                let any_enabled =
                    (0..NSLOTS_MAX).any(|i| self.status(i, SLOT_STATE_MASK) == STATE_ENABLED);
                if any_enabled {
                    self.invalid_command();
                } else {
                    let state = if code == CMD_POWER_ONLY_ALL {
                        STATE_PWRONLY
                    } else {
                        STATE_ENABLED
                    };
                    for i in 0..NSLOTS_MAX {
                        let r = if self.status(i, SLOT_STATUS_MRL_OPEN) == 0 {
                            self.slot_command(i + 1, state, LED_ON, LED_NO)
                        } else {
                            self.slot_command(i + 1, STATE_NO, LED_OFF, LED_NO)
                        };
                        released.extend(r);
                    }
                }
            }
            _ => self.invalid_command(),
        }
        self.set_dword(SERR_INT, self.dword(SERR_INT) | SERR_INT_CMD_DETECTED);
        released
    }

    /// QEMU's `shpc_slot_command()` (SHPC 1.0 Slot Operation command): indicators set as
    /// commanded; an enabled slot cannot go to power-only. The card's device number is
    /// returned when the command releases it (QEMU unplugs it; `shpc_free_devices_in_slot()`):
    /// the MRL opens, the slot reads empty, MRL Sensor Changed and Card Presence Changed are
    /// latched. QEMU 7.2 changes the state only from disabled to power-only or enabled and
    /// from those two to disabled, and releases on the latter when the power indicator is then
    /// off; under [`PortCompat::shpc_generic_slot_command`] (QEMU 10.0) every commanded state
    /// is set, and the card goes when the slot becomes disabled with its power indicator off
    /// from any other combination.
    fn slot_command(&mut self, target: u8, state: u8, power: u8, attn: u8) -> Option<u8> {
        if !(1..=NSLOTS_MAX).contains(&target) {
            self.invalid_command();
            return None;
        }
        let i = target - 1;
        let current = self.status(i, SLOT_STATE_MASK);
        let old_power = self.status(i, SLOT_PWR_LED_MASK);
        if current == STATE_ENABLED && state == STATE_PWRONLY {
            self.invalid_command();
            return None;
        }
        if power != LED_NO {
            self.set_status(i, power, SLOT_PWR_LED_MASK);
        }
        if attn != LED_NO {
            self.set_status(i, attn, SLOT_ATTN_LED_MASK);
        }
        if self.compat.shpc_generic_slot_command {
            if state != STATE_NO {
                self.set_status(i, state, SLOT_STATE_MASK);
            }
            let off = |state: u8, power: u8| state == STATE_DISABLED && power == LED_OFF;
            let now = (
                self.status(i, SLOT_STATE_MASK),
                self.status(i, SLOT_PWR_LED_MASK),
            );
            if !off(current, old_power) && off(now.0, now.1) {
                return self.release(i);
            }
            return None;
        }
        let enabling = current == STATE_DISABLED && matches!(state, STATE_PWRONLY | STATE_ENABLED);
        let leaving = matches!(current, STATE_ENABLED | STATE_PWRONLY) && state == STATE_DISABLED;
        if enabling || leaving {
            self.set_status(i, state, SLOT_STATE_MASK);
        }
        if leaving && self.status(i, SLOT_PWR_LED_MASK) == LED_OFF {
            return self.release(i);
        }
        None
    }

    /// The card in slot index `i` is gone: MRL open, empty, MRL and presence events latched.
    /// Its device number if there was one.
    fn release(&mut self, i: u8) -> Option<u8> {
        let had = self.is_occupied(i);
        self.occupied &= !(1 << (u32::from(i) + 1));
        self.set_status(i, 1, SLOT_STATUS_MRL_OPEN);
        self.set_status(i, PRSNT_EMPTY, SLOT_STATUS_PRSNT_MASK);
        self.latch(i, EVENT_MRL | EVENT_PRESENCE);
        had.then_some(i + 1)
    }

    /// The slot index of `device`, or QEMU's refusal.
    fn slot_of(device: u8) -> Result<u8, ShpcError> {
        if (1..=NSLOTS_MAX).contains(&device) {
            Ok(device - 1)
        } else {
            Err(ShpcError::NoSlot(device))
        }
    }

    /// Is a card in `device`'s slot?
    pub fn occupied(&self, device: u8) -> bool {
        device < 32 && self.occupied & 1 << device != 0
    }

    /// The occupied device numbers, bit n = device n.
    pub fn occupancy(&self) -> u32 {
        self.occupied
    }

    /// A card present from power-on at `device` (QEMU's cold plug, `shpc_device_plug_cb()`
    /// with `hotplugged` false, followed by the machine reset): the slot enabled with its power
    /// indicator on, the MRL closed, a 7.5 W card present; no event.
    pub fn set_present(&mut self, device: u8) -> Result<(), ShpcError> {
        let i = Self::slot_of(device)?;
        self.occupied |= 1 << device;
        self.set_status(i, STATE_ENABLED, SLOT_STATE_MASK);
        self.set_status(i, 0, SLOT_STATUS_MRL_OPEN);
        self.set_status(i, PRSNT_7_5W, SLOT_STATUS_PRSNT_MASK);
        self.set_status(i, LED_ON, SLOT_PWR_LED_MASK);
        Ok(())
    }

    /// QEMU's `shpc_device_plug_common()`: may a card go to `device`? Only devices 1-31 have
    /// slots.
    pub fn may_hot_add(&self, device: u8) -> Result<(), ShpcError> {
        let i = Self::slot_of(device)?;
        if self.is_occupied(i) {
            return Err(ShpcError::Occupied(device));
        }
        Ok(())
    }

    /// A card is inserted at `device` (QEMU 7.2's `shpc_device_plug_cb()`, hot-plugged): into a
    /// slot with the MRL open, the MRL closes and a 7.5 W card is present, with Attention Button
    /// Pressed, MRL Sensor Changed and Card Presence Changed latched; into a slot whose MRL is
    /// closed (a removal the guest has not finished) the button is pressed again to cancel it.
    /// The caller updates the interrupt.
    pub fn hot_add(&mut self, device: u8) -> Result<(), ShpcError> {
        self.may_hot_add(device)?;
        let i = device - 1;
        self.occupied |= 1 << device;
        if self.status(i, SLOT_STATUS_MRL_OPEN) != 0 {
            self.set_status(i, 0, SLOT_STATUS_MRL_OPEN);
            self.set_status(i, PRSNT_7_5W, SLOT_STATUS_PRSNT_MASK);
            self.latch(i, EVENT_BUTTON | EVENT_MRL | EVENT_PRESENCE);
        } else {
            self.latch(i, EVENT_BUTTON);
        }
        self.set_status(i, 0, SLOT_STATUS_66);
        Ok(())
    }

    /// A removal request for the card at `device` (QEMU's `shpc_device_unplug_request_cb()`):
    /// refused while the power indicator blinks under
    /// [`PortCompat::shpc_refuse_unplug_while_blinking`] (QEMU 10.0; QEMU 7.2 does not refuse);
    /// a slot the guest keeps disabled with its power indicator off gives the card up at once
    /// ([`ShpcUnplug::Now`]: MRL open, empty, MRL and presence events); otherwise Attention
    /// Button Pressed is latched. The caller updates the interrupt.
    pub fn unplug_request(&mut self, device: u8) -> Result<ShpcUnplug, ShpcError> {
        let i = Self::slot_of(device)?;
        if !self.is_occupied(i) {
            return Err(ShpcError::Empty(device));
        }
        let state = self.status(i, SLOT_STATE_MASK);
        let led = self.status(i, SLOT_PWR_LED_MASK);
        if led == LED_BLINK && self.compat.shpc_refuse_unplug_while_blinking {
            return Err(ShpcError::PowerIndicatorBlinking(device));
        }
        let r = if state == STATE_DISABLED && led == LED_OFF {
            self.release(i);
            ShpcUnplug::Now
        } else {
            self.latch(i, EVENT_BUTTON);
            ShpcUnplug::AttentionButton
        };
        self.set_status(i, 0, SLOT_STATUS_66);
        Ok(r)
    }

    /// The attention button of `device`'s slot is pressed (SHPC 1.0 Attention Button Pressed
    /// event): latched. The caller updates the interrupt.
    pub fn attention_button(&mut self, device: u8) -> Result<(), ShpcError> {
        let i = Self::slot_of(device)?;
        if !self.is_occupied(i) {
            return Err(ShpcError::Empty(device));
        }
        self.latch(i, EVENT_BUTTON);
        Ok(())
    }

    /// The card at `device` is gone without the guest's consent (surprise removal): the MRL
    /// opens, the slot reads empty, MRL and presence events latched. The caller updates the
    /// interrupt.
    pub fn removed(&mut self, device: u8) -> Result<(), ShpcError> {
        let i = Self::slot_of(device)?;
        if !self.is_occupied(i) {
            return Err(ShpcError::Empty(device));
        }
        self.release(i);
        Ok(())
    }

    /// Slot Status of every slot, logical slot 1 first.
    pub fn slot_statuses(&self) -> [u16; NSLOTS_MAX as usize] {
        std::array::from_fn(|i| self.word(slot_reg(i as u8)))
    }

    /// Slot Status of `device`'s slot (bits 15:0 of its Logical Slot Register).
    pub fn slot_status(&self, device: u8) -> Option<u16> {
        Self::slot_of(device).ok().map(|i| self.word(slot_reg(i)))
    }

    /// The state for saving.
    pub fn state(&self) -> ShpcState {
        ShpcState {
            regs: self.regs.iter().map(|b| format!("{b:02x}")).collect(),
            occupied: self.occupied,
            msi_requested: self.msi_requested,
        }
    }

    /// Load state made by [`Shpc::state`]; nothing changes on error.
    pub fn load_state(&mut self, s: &ShpcState) -> Result<(), ShpcStateError> {
        let hex = s.regs.as_bytes();
        if hex.len() != 2 * usize::from(SIZEOF) {
            return Err(ShpcStateError);
        }
        let mut regs = [0u8; SIZEOF as usize];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| ShpcStateError)?;
            regs[i] = u8::from_str_radix(text, 16).map_err(|_| ShpcStateError)?;
        }
        self.regs = regs;
        self.occupied = s.occupied & !1;
        self.msi_requested = s.msi_requested;
        Ok(())
    }
}

/// QEMU's split of a `width`-byte access at `offset` for a region taking 1- to 4-byte accesses:
/// (offset, size, shift of the piece in the value).
fn pieces(offset: u64, width: u8) -> impl Iterator<Item = (u64, u8, u32)> {
    let mut at = offset;
    let mut left = u64::from(width.min(8));
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let align = if at == 0 { 8 } else { at & at.wrapping_neg() };
        let mut n = left.min(4).min(align);
        while !n.is_power_of_two() {
            n -= 1;
        }
        let piece = (at, n as u8, (8 * at.wrapping_sub(offset)) as u32);
        at = at.wrapping_add(n);
        left -= n;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config_space::PCIE_CONFIG_SPACE_SIZE;

    fn shpc(occupied: u32) -> (ConfigSpace, Shpc) {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        let s = Shpc::init(&mut cs, 0x40, occupied, PortCompat::QEMU_7_2).unwrap();
        (cs, s)
    }

    #[test]
    fn accesses_split_as_qemus_memory_core() {
        let v: Vec<_> = pieces(0x2, 4).collect();
        assert_eq!(v, vec![(0x2, 2, 0), (0x4, 2, 16)]);
        let v: Vec<_> = pieces(0x0, 8).collect();
        assert_eq!(v, vec![(0x0, 4, 0), (0x4, 4, 32)]);
        let v: Vec<_> = pieces(0x3, 2).collect();
        assert_eq!(v, vec![(0x3, 1, 0), (0x4, 1, 8)]);
        let n: u8 = pieces(u64::MAX, 8).map(|(_, n, _)| n).sum();
        assert_eq!(n, 8, "wraps without panicking");
    }

    /// Values read from QEMU 7.2 (`-M q35`, `pcie-pci-bridge` with an `e1000` cold-plugged at
    /// device 3, BAR0 read through qtest).
    #[test]
    fn reset_state_is_qemus() {
        let (_, s) = shpc(1 << 3);
        assert_eq!(
            s.bar_read(SLOT_REGS.into(), 4),
            0x7f00_0d0f,
            "empty: disabled, LED off, MRL open"
        );
        assert_eq!(
            s.bar_read(u64::from(SLOT_REGS) + 8, 4),
            0x7f00_0006,
            "device 3: enabled, LED on"
        );
        assert_eq!(s.bar_read(SERR_INT.into(), 4), 0xf);
        assert_eq!(s.bar_read(NSLOTS.into(), 4), 0xe001_011f);
        assert_eq!(s.bar_read(SIZEOF.into(), 4), 0, "past the register set");
    }

    /// The slot rules that differ between QEMU 7.2 and 10.0 (both compared with QEMU in
    /// `tests/tests/shpc_hotplug_vs_qemu.rs`): power-only -> enabled, a card released when the
    /// slot turns disabled and off without a state change, and `device_del` while blinking.
    #[test]
    fn slot_rules_follow_the_machine_type() {
        for compat in [PortCompat::QEMU_7_2, PortCompat::QEMU_10_0] {
            let newer = compat.shpc_generic_slot_command;
            let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
            let mut s = Shpc::init(&mut cs, 0x40, 0, compat).unwrap();
            s.hot_add(7).unwrap();
            let slot7 = || u64::from(slot_reg(6));
            let cmd = |s: &mut Shpc, code: u16| {
                s.bar_write(CMD_CODE.into(), 2, (0x07 << 8 | code).into())
            };
            // Power-only, power indicator on; then enabled.
            cmd(&mut s, 0x05);
            cmd(&mut s, 0x06);
            let state = s.bar_read(slot7(), 2) as u16 & SLOT_STATE_MASK;
            let want = if newer { STATE_ENABLED } else { STATE_PWRONLY };
            assert_eq!(state, u16::from(want), "{compat:?}");
            // Blinking: 10.0 refuses the removal request, 7.2 presses the button.
            cmd(&mut s, 0x08);
            let r = s.unplug_request(7);
            if newer {
                assert_eq!(r, Err(ShpcError::PowerIndicatorBlinking(7)));
            } else {
                assert_eq!(r, Ok(ShpcUnplug::AttentionButton));
            }
            // Disabled with the indicator on, then the indicator off alone.
            let (_, released) = cmd(&mut s, 0x07);
            assert!(released.is_empty(), "{compat:?}");
            let (_, released) = cmd(&mut s, 0x0c);
            let want: Vec<u8> = if newer { vec![7] } else { vec![] };
            assert_eq!(released, want, "{compat:?}");
            assert_eq!(s.occupied(7), !newer, "{compat:?}");
        }
    }
}
