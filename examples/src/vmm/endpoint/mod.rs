//! The VMM's own PCIe endpoint: a small test device that the VMM serves behind one of pcierc's
//! root ports (pcierc owns the hierarchy, the VMM keeps its devices; docs/vmm.md).
//!
//! The model is pure: configuration and BAR accesses in, [`Effects`] out (BARs to re-map,
//! interrupt messages to send); the VMM applies them.
//!
//! Configuration space (all offsets hex):
//!
//! | offset | what |
//! |---|---|
//! | 00 | vendor 1b36 (Red Hat, QEMU's), device 0005 (QEMU's "PCI test device" id, which no Linux driver claims; the registers below are this model's, not QEMU's `pci-testdev`) |
//! | 08 | revision 01, class ff0000 (unassigned) |
//! | 10 | BAR0: 64-bit memory, non-prefetchable, 16 KiB: registers at 0, MSI-X table at 0x2000, PBA at 0x3000 |
//! | 2c | subsystem 1af4:1100 (QEMU's) |
//! | 40 | Power Management capability (version 3, D0/D3hot) |
//! | 48 | PCI Express capability, version 2, Endpoint, link x1 at 2.5 GT/s |
//! | 90 | MSI-X capability, 4 vectors in BAR0 |
//! | 100 | Device Serial Number extended capability (PCIe Base 6.0 §7.9.3) |
//!
//! BAR0 registers (dwords): 0x0 `ID` (RO, [`REG_ID_VALUE`]), 0x4 `SCRATCH` (RW), 0x8 `DOORBELL`
//! (WO: writing N fires MSI-X vector N), 0xc `SENT` (RO: messages sent so far).

use pcierc_config_space::caps::msix::{Delivery, EntryBits, Message, Msix, MsixLayout};
use pcierc_config_space::caps::{CAP_ID_EXP, CAP_ID_PM, EXT_CAP_ID_DSN};
use pcierc_config_space::config_space::PCIE_CONFIG_SPACE_SIZE;
use pcierc_config_space::header::{
    self, valid_access, Identity, CACHE_LINE_SIZE, COMMAND, COMMAND_INTX_DISABLE, COMMAND_MASTER,
    INTERRUPT_LINE, INTERRUPT_PIN, QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID, STATUS,
    SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID,
};
use pcierc_config_space::{CapabilityError, ConfigSpace, Register};

/// Vendor ID: Red Hat, Inc. (QEMU's devices).
pub const VENDOR_ID: u16 = 0x1b36;
/// Device ID: QEMU's PCI test device id (no Linux driver binds to it).
pub const DEVICE_ID: u16 = 0x0005;
/// Class code: unassigned (base class 0xff).
pub const CLASS_CODE: u32 = 0xff_0000;
/// The driver name the VMM claims its endpoints with (informational for pcierc).
pub const DRIVER: &str = "pcierc-testdev";
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x4000;
/// MSI-X vectors.
pub const VECTORS: u16 = 4;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE: u64 = 0x2000;
/// Offset of the MSI-X PBA in BAR0.
pub const MSIX_PBA: u64 = 0x3000;
/// BAR0 register: identification.
pub const REG_ID: u64 = 0x0;
/// What [`REG_ID`] reads.
pub const REG_ID_VALUE: u32 = 0x7063_6965;
/// BAR0 register: scratch.
pub const REG_SCRATCH: u64 = 0x4;
/// BAR0 register: doorbell (write a vector number to fire it).
pub const REG_DOORBELL: u64 = 0x8;
/// BAR0 register: messages sent.
pub const REG_SENT: u64 = 0xc;
/// BAR0 register (INTx model): writing anything deasserts INTx (the device's interrupt
/// condition is acknowledged).
pub const REG_INTX_ACK: u64 = 0x10;

const PM_CAP: u8 = 0x40;
/// PCI Power Management capability length (PCI Bus Power Management Interface 1.2 §3.2).
const PM_CAP_LENGTH: u8 = 8;
const EXP_CAP: u8 = 0x48;
/// PCI Express capability length, version 2, no slot or root registers used (PCIe Base 6.0
/// §7.5.3).
const EXP_CAP_LENGTH: u8 = 0x3c;
const MSIX_CAP: u8 = 0x90;
/// Device Serial Number extended capability (PCIe Base 6.0 §7.9.3).
pub const DSN_CAP: u16 = 0x100;
/// Extended capability id of the DSN.
pub const DSN_CAP_ID: u16 = EXT_CAP_ID_DSN;
/// Device Serial Number capability length: header and the two serial number dwords.
const DSN_CAP_LENGTH: u16 = 12;

/// The header registers this model implements beyond identity and BAR0 (which
/// [`header::init_identity`] and [`header::register_memory_bar64`] declare).
fn header_registers() -> [Register; 6] {
    [
        // Command (PCI Local Bus 3.0 §6.2.2): Memory Space, Bus Master, Parity Error Response,
        // SERR#, Interrupt Disable.
        Register::rw(COMMAND, 2, 0, 0x0546),
        // Status (PCI Local Bus 3.0 §6.2.3): the error bits are RW1C (never set by this device).
        Register::w1c(STATUS, 2, 0, 0xf900),
        Register::rw(CACHE_LINE_SIZE, 1, 0, 0xff),
        Register::ro(SUBSYSTEM_VENDOR_ID, 2, QEMU_SUBSYSTEM_VENDOR_ID as u32),
        Register::ro(SUBSYSTEM_ID, 2, QEMU_SUBSYSTEM_ID as u32),
        // Interrupt Line (Interrupt Pin: 0, INTA for the INTx model).
        Register::rw(INTERRUPT_LINE, 1, 0, 0xff),
    ]
}

/// The registers of the Power Management and PCI Express capabilities.
fn capability_registers() -> Vec<Register> {
    let e = u16::from(EXP_CAP);
    let p = u16::from(PM_CAP);
    vec![
        // PCI Power Management (PCI PM 1.2 §3.2): version 3, no PME; PMCSR PowerState RW,
        // No_Soft_Reset.
        Register::ro(p + 2, 2, 0x0003),
        Register::rw(p + 4, 2, 1 << 3, 0x0003),
        // PCI Express capability (PCIe Base 6.0 §7.5.3), version 2, Device/Port Type 0.
        Register::ro(e + 0x02, 2, 0x0002),
        // Device Capabilities: 128-byte MPS, Role-Based Error Reporting.
        Register::ro(e + 0x04, 4, 1 << 15),
        // Device Control: error reporting enables, Relaxed Ordering, MPS, Extended Tag, Phantom,
        // Aux Power, No Snoop, MRRS (reset: RO and No Snoop set, MRRS 512 bytes).
        Register::rw(e + 0x08, 2, 0x2810, 0x7fff),
        // Device Status: the four error-detected bits are RW1C.
        Register::w1c(e + 0x0a, 2, 0, 0x000f),
        // Link Capabilities: 2.5 GT/s, x1, no ASPM, port 0.
        Register::ro(e + 0x0c, 4, 0x0000_0011),
        // Link Control: ASPM Control, RCB, Common Clock, Extended Synch.
        Register::rw(e + 0x10, 2, 0, 0x00cb),
        // Link Status: 2.5 GT/s, x1.
        Register::ro(e + 0x12, 2, 0x0011),
        // Link Capabilities 2: supported speeds 2.5 GT/s; Link Control 2: target 2.5 GT/s.
        Register::ro(e + 0x2c, 4, 1 << 1),
        Register::rw(e + 0x30, 2, 0x0001, 0x000f),
    ]
}

/// MSI-X (PCIe Base 6.0 §7.7.2): the table and PBA in BAR0 beside the registers, entries
/// keeping only the bits the specification defines.
const MSIX_LAYOUT: MsixLayout = MsixLayout {
    cap: Some(MSIX_CAP),
    entries: VECTORS,
    table_bar: 0,
    table_offset: MSIX_TABLE as u32,
    pba_bar: 0,
    pba_offset: MSIX_PBA as u32,
    entry_bits: EntryBits::Defined,
};

/// FNV-1a (64-bit): the serial number the VMM gives the endpoint with id `id` (unique per id,
/// the same on every run).
pub fn serial_number(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How the endpoint signals its doorbell.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Interrupts {
    /// MSI-X (4 vectors in BAR0), no Interrupt Pin.
    #[default]
    Msix,
    /// INTx only (Interrupt Pin INTA, no MSI-X capability): the doorbell asserts INTA until
    /// [`REG_INTX_ACK`] is written; Command.Interrupt Disable keeps the pin from being driven
    /// and Status.Interrupt Status shows the condition either way.
    Intx,
}

/// What an access asks of the VMM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// BAR0's address or its decode (Command.Memory Space) changed: re-map it.
    pub bars_changed: bool,
    /// Interrupt messages to send (already checked against MSI-X Enable, masks and the
    /// function's Bus Master Enable).
    pub messages: Vec<Message>,
    /// Messages dropped because Bus Master Enable is clear.
    pub blocked: u32,
    /// INTA changed level (the INTx model): the new level.
    pub intx: Option<bool>,
}

/// The test endpoint's state.
#[derive(Clone)]
pub struct Endpoint {
    config: ConfigSpace,
    /// The MSI-X model's table and PBA (`None` for the INTx model).
    msix: Option<Msix>,
    serial: u64,
    scratch: u32,
    sent: u32,
    interrupts: Interrupts,
    /// The INTx model's interrupt condition.
    intx_pending: bool,
}

impl Endpoint {
    /// An endpoint after reset, with Device Serial Number `serial`.
    pub fn new(serial: u64) -> Endpoint {
        Endpoint::with_interrupts(serial, Interrupts::Msix)
    }

    /// An endpoint after reset that signals through `interrupts`.
    pub fn with_interrupts(serial: u64, interrupts: Interrupts) -> Endpoint {
        // The layout is fixed (the tests build both models), never guest input.
        Self::build(serial, interrupts).expect("test endpoint capability layout")
    }

    fn build(serial: u64, interrupts: Interrupts) -> Result<Endpoint, CapabilityError> {
        let mut config = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        let id = Identity {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            revision: 0x01,
            class_code: CLASS_CODE,
        };
        header::init_identity(&mut config, id, false);
        config.declare(&header_registers());
        header::register_memory_bar64(&mut config, 0, BAR0_SIZE, false);
        // Each capability added becomes the head of the list: add them last to first so that
        // the list runs PM (0x40), PCI Express (0x48), MSI-X (0x90).
        let msix = match interrupts {
            Interrupts::Msix => Some(Msix::new(&mut config, MSIX_LAYOUT)?),
            Interrupts::Intx => {
                config.set_byte(INTERRUPT_PIN, 1);
                None
            }
        };
        config.add_capability(CAP_ID_EXP, Some(EXP_CAP), EXP_CAP_LENGTH)?;
        config.add_capability(CAP_ID_PM, Some(PM_CAP), PM_CAP_LENGTH)?;
        config.declare(&capability_registers());
        config.add_ext_capability(DSN_CAP_ID, 1, DSN_CAP, DSN_CAP_LENGTH)?;
        config.set_qword(DSN_CAP + 4, serial);
        Ok(Endpoint {
            config,
            msix,
            serial,
            scratch: 0,
            sent: 0,
            interrupts,
            intx_pending: false,
        })
    }

    /// How it signals.
    pub fn interrupts(&self) -> Interrupts {
        self.interrupts
    }

    /// The level it drives on INTA now.
    pub fn intx_level(&self) -> bool {
        self.intx_pending && self.command() & COMMAND_INTX_DISABLE == 0
    }

    /// Set the interrupt condition (Status.Interrupt Status follows it) and report a change of
    /// the pin's level in `fx`.
    fn set_intx(&mut self, pending: bool, before: bool, fx: &mut Effects) {
        self.intx_pending = pending;
        header::set_interrupt_status(&mut self.config, pending);
        if self.intx_level() != before {
            fx.intx = Some(self.intx_level());
        }
    }

    /// The Device Serial Number.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// A configuration read (1, 2 or 4 naturally aligned bytes; all ones otherwise).
    pub fn config_read(&self, offset: u16, width: u8) -> u32 {
        if !valid_access(offset, width) {
            return u32::MAX;
        }
        self.config.read(offset, width)
    }

    /// A configuration write (1, 2 or 4 naturally aligned bytes; dropped otherwise).
    pub fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Effects {
        if !valid_access(offset, width) {
            return Effects::default();
        }
        let (bar_before, intx_before) = (self.bar0(), self.intx_level());
        self.config.write(offset, width, value);
        let mut fx = Effects {
            bars_changed: self.bar0() != bar_before,
            ..Effects::default()
        };
        // Interrupt Disable may have changed what the pin drives.
        if self.intx_level() != intx_before {
            fx.intx = Some(self.intx_level());
        }
        // MSI-X Enable or Function Mask may have let pending messages out.
        if let Some(m) = self.msix.as_mut() {
            let (_, fired) = m.write_config(&self.config, offset, width);
            let messages = messages(m, fired);
            self.send(messages, &mut fx);
        }
        fx
    }

    fn command(&self) -> u16 {
        self.config.word(COMMAND)
    }

    /// BAR0 as (base, size) while it decodes: Memory Space enabled and an address assigned (0,
    /// or a range past the end of the address space, is unmapped, as in QEMU).
    pub fn bar0(&self) -> Option<(u64, u64)> {
        header::memory_bar64(&self.config, 0, BAR0_SIZE).map(|base| (base, BAR0_SIZE))
    }

    /// A read of `width` (1, 2, 4 or 8) bytes at `offset` in BAR `bar`.
    pub fn bar_read(&self, bar: u8, offset: u64, width: u8) -> u64 {
        if bar != 0 || !matches!(width, 1 | 2 | 4 | 8) || offset >= BAR0_SIZE {
            return u64::MAX;
        }
        if width == 8 {
            return u64::from(self.read32(offset & !3))
                | u64::from(self.read32((offset & !3) + 4)) << 32;
        }
        let shift = (offset & 3) * 8;
        let v = u64::from(self.read32(offset & !3)) >> shift;
        v & (u64::MAX >> (64 - 8 * u32::from(width)))
    }

    /// Where `offset` of BAR0 falls in the MSI-X table or PBA: the offset in it.
    fn msix_region(&self, offset: u64) -> Option<(&Msix, MsixRegion)> {
        let m = self.msix.as_ref()?;
        let in_table = offset
            .checked_sub(MSIX_TABLE)
            .filter(|&o| o < u64::from(m.table_len()));
        let in_pba = offset
            .checked_sub(MSIX_PBA)
            .filter(|&o| o < u64::from(m.pba_len()));
        match (in_table, in_pba) {
            (Some(o), _) => Some((m, MsixRegion::Table(o as u32))),
            (None, Some(o)) => Some((m, MsixRegion::Pba(o as u32))),
            (None, None) => None,
        }
    }

    fn read32(&self, offset: u64) -> u32 {
        match (offset, self.msix_region(offset)) {
            (REG_ID, _) => REG_ID_VALUE,
            (REG_SCRATCH, _) => self.scratch,
            (REG_SENT, _) => self.sent,
            (_, Some((m, MsixRegion::Table(o)))) => m.table_read32(o),
            (_, Some((m, MsixRegion::Pba(o)))) => m.pba_read32(o),
            _ => 0,
        }
    }

    /// A write of `width` (1, 2, 4 or 8) bytes at `offset` in BAR `bar`. Narrow writes merge
    /// into the dword they touch.
    pub fn bar_write(&mut self, bar: u8, offset: u64, width: u8, value: u64) -> Effects {
        let mut fx = Effects::default();
        if bar != 0 || !matches!(width, 1 | 2 | 4 | 8) || offset >= BAR0_SIZE {
            return fx;
        }
        if width == 8 {
            self.write32(offset & !3, value as u32, &mut fx);
            self.write32((offset & !3) + 4, (value >> 32) as u32, &mut fx);
            return fx;
        }
        let shift = (offset & 3) * 8;
        let mask = (u64::MAX >> (64 - 8 * u32::from(width))) << shift;
        let old = u64::from(self.read32(offset & !3));
        let merged = (old & !mask | (value << shift) & mask) as u32;
        self.write32(offset & !3, merged, &mut fx);
        fx
    }

    fn write32(&mut self, offset: u64, value: u32, fx: &mut Effects) {
        let table = match self.msix_region(offset) {
            Some((_, MsixRegion::Table(o))) => Some(o),
            _ => None,
        };
        match (offset, self.msix.as_mut()) {
            (REG_SCRATCH, _) => self.scratch = value,
            (REG_DOORBELL, _) if self.interrupts == Interrupts::Intx => {
                let before = self.intx_level();
                self.set_intx(true, before, fx);
            }
            (REG_INTX_ACK, _) if self.interrupts == Interrupts::Intx => {
                let before = self.intx_level();
                self.set_intx(false, before, fx);
            }
            (REG_DOORBELL, Some(m)) => {
                let fired =
                    u16::try_from(value).map_or(Delivery::Dropped, |v| m.notify(&self.config, v));
                let messages = messages(m, vec![fired]);
                self.send(messages, fx);
            }
            (_, Some(m)) => {
                if let Some(o) = table {
                    let fired = m.table_write32(&self.config, o, value);
                    let messages = messages(m, vec![fired]);
                    self.send(messages, fx);
                }
            }
            _ => {} // ID, SENT, the PBA: read-only
        }
    }

    /// Messages leave only with Bus Master Enable (PCI 3.0 §6.2.2): otherwise they are lost.
    fn send(&mut self, messages: Vec<Message>, fx: &mut Effects) {
        if self.command() & COMMAND_MASTER == 0 {
            fx.blocked += messages.len() as u32;
            return;
        }
        self.sent = self.sent.wrapping_add(messages.len() as u32);
        fx.messages.extend(messages);
    }
}

/// A place in BAR0's MSI-X structures.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum MsixRegion {
    /// Byte offset in the table.
    Table(u32),
    /// Byte offset in the PBA.
    Pba(u32),
}

/// The messages of the vectors in `fired` that were sent.
fn messages(m: &Msix, fired: Vec<Delivery>) -> Vec<Message> {
    fired
        .into_iter()
        .filter_map(|d| match d {
            Delivery::Sent(v) => m.message(v),
            Delivery::Dropped | Delivery::Pending => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcierc_config_space::caps::msix;

    const COMMAND_MEMORY: u32 = header::COMMAND_MEMORY as u32;
    const COMMAND_INTX_DISABLE: u32 = header::COMMAND_INTX_DISABLE as u32;
    const STATUS_INTERRUPT: u32 = header::STATUS_INTERRUPT as u32;
    const MSIX_CONTROL: u16 = MSIX_CAP as u16 + msix::FLAGS;
    const MSIX_ENABLE: u32 = msix::CONTROL_ENABLE as u32;
    const MSIX_FUNCTION_MASK: u32 = msix::CONTROL_FUNCTION_MASK as u32;

    #[test]
    fn intx_model_asserts_on_the_doorbell_until_acknowledged_and_honours_interrupt_disable() {
        let mut ep = Endpoint::with_interrupts(1, Interrupts::Intx);
        assert_eq!(ep.config_read(INTERRUPT_PIN, 1), 1, "INTA");
        assert_eq!(caps(&ep), vec![(0x01, 0x40), (0x10, 0x48)], "no MSI-X");
        ep.config_write(COMMAND, 2, COMMAND_MEMORY);
        let fx = ep.bar_write(0, REG_DOORBELL, 4, 0);
        assert_eq!(fx.intx, Some(true));
        assert!(fx.messages.is_empty());
        assert_ne!(ep.config_read(STATUS, 2) & STATUS_INTERRUPT, 0);
        assert_eq!(
            ep.bar_write(0, REG_DOORBELL, 4, 0).intx,
            None,
            "already asserted"
        );
        // Interrupt Disable: the pin goes low, the status stays; cleared again: high.
        let fx = ep.config_write(COMMAND, 2, COMMAND_MEMORY | COMMAND_INTX_DISABLE);
        assert_eq!(fx.intx, Some(false));
        assert_ne!(ep.config_read(STATUS, 2) & STATUS_INTERRUPT, 0);
        assert_eq!(ep.config_write(COMMAND, 2, COMMAND_MEMORY).intx, Some(true));
        let fx = ep.bar_write(0, REG_INTX_ACK, 4, 1);
        assert_eq!(fx.intx, Some(false));
        assert_eq!(ep.config_read(STATUS, 2) & STATUS_INTERRUPT, 0);
        // The MSI-X model ignores the acknowledge register and has no pin.
        let mut m = Endpoint::new(1);
        assert_eq!(m.config_read(INTERRUPT_PIN, 1), 0);
        assert_eq!(m.bar_write(0, REG_INTX_ACK, 4, 1).intx, None);
    }

    /// Walk the capability list as an OS does: (id, offset) pairs.
    fn caps(ep: &Endpoint) -> Vec<(u8, u16)> {
        let mut v = Vec::new();
        let mut p = ep.config_read(0x34, 1) as u16;
        while p != 0 && v.len() < 48 {
            v.push((ep.config_read(p, 1) as u8, p));
            p = ep.config_read(p + 1, 1) as u16 & 0xfc;
        }
        v
    }

    #[test]
    fn both_models_build() {
        for i in [Interrupts::Msix, Interrupts::Intx] {
            assert!(Endpoint::build(1, i).is_ok(), "{i:?}");
        }
    }

    #[test]
    fn msix_table_entries_keep_the_defined_bits_and_narrow_writes_merge() {
        let mut ep = Endpoint::new(1);
        ep.bar_write(0, MSIX_TABLE, 4, 0xfee0_0003);
        assert_eq!(
            ep.bar_read(0, MSIX_TABLE, 4),
            0xfee0_0000,
            "Message Address 1:0"
        );
        ep.bar_write(0, MSIX_TABLE + 12, 4, 0xffff_fffe);
        assert_eq!(ep.bar_read(0, MSIX_TABLE + 12, 4), 0, "Vector Control 31:1");
        ep.bar_write(0, MSIX_TABLE + 12, 1, 1);
        assert_eq!(ep.bar_read(0, MSIX_TABLE + 12, 4), 1, "a byte write masks");
        ep.bar_write(0, MSIX_TABLE + 9, 1, 0x12);
        assert_eq!(ep.bar_read(0, MSIX_TABLE + 8, 4), 0x1200);
        assert_eq!(ep.bar_read(0, MSIX_PBA, 8), 0);
        ep.bar_write(0, MSIX_PBA, 4, u64::MAX);
        assert_eq!(ep.bar_read(0, MSIX_PBA, 4), 0, "the PBA is read-only");
        let intx = Endpoint::with_interrupts(1, Interrupts::Intx);
        assert_eq!(
            intx.bar_read(0, MSIX_TABLE + 12, 4),
            0,
            "no MSI-X structures in the INTx model"
        );
    }

    #[test]
    fn identity_capabilities_and_serial_number() {
        let ep = Endpoint::new(0x0123_4567_89ab_cdef);
        assert_eq!(ep.config_read(0, 4), 0x0005_1b36);
        assert_eq!(ep.config_read(8, 4) >> 8, 0xff_0000);
        assert_eq!(ep.config_read(0x0e, 1), 0, "type 0 header, single function");
        assert_eq!(caps(&ep), vec![(0x01, 0x40), (0x10, 0x48), (0x11, 0x90)]);
        assert_eq!(
            ep.config_read(0x4a, 2) >> 4 & 0xf,
            0,
            "PCI Express Endpoint"
        );
        // Extended capabilities: DSN first, the last in the list.
        assert_eq!(ep.config_read(0x100, 4), 0x0001_0003);
        assert_eq!(ep.config_read(0x104, 4), 0x89ab_cdef);
        assert_eq!(ep.config_read(0x108, 4), 0x0123_4567);
        assert_eq!(ep.config_read(0x3d, 1), 0, "no INTx pin");
        assert_ne!(serial_number("ep-rp1"), serial_number("ep-rp2"));
    }

    #[test]
    fn bar0_is_sized_and_decodes_with_memory_space() {
        let mut ep = Endpoint::new(1);
        ep.config_write(0x10, 4, u32::MAX);
        ep.config_write(0x14, 4, u32::MAX);
        assert_eq!(ep.config_read(0x10, 4), 0xffff_c004, "16 KiB, 64-bit");
        assert_eq!(ep.config_read(0x14, 4), u32::MAX);
        ep.config_write(0x14, 4, 0);
        let fx = ep.config_write(0x10, 4, 0xc020_0000);
        assert!(!fx.bars_changed, "no decode yet");
        assert_eq!(ep.bar0(), None);
        let fx = ep.config_write(0x04, 2, 0x0006);
        assert!(fx.bars_changed);
        assert_eq!(ep.bar0(), Some((0xc020_0000, BAR0_SIZE)));
        assert_eq!(ep.bar_read(0, REG_ID, 4), u64::from(REG_ID_VALUE));
        ep.bar_write(0, REG_SCRATCH, 4, 0x1234_5678);
        ep.bar_write(0, REG_SCRATCH + 1, 1, 0xab);
        assert_eq!(ep.bar_read(0, REG_SCRATCH, 4), 0x1234_ab78);
        assert_eq!(ep.bar_read(0, REG_SCRATCH + 2, 2), 0x1234);
        assert_eq!(ep.bar_read(0, 0, 8), 0x1234_ab78_7063_6965);
    }

    #[test]
    fn doorbell_sends_the_vectors_message() {
        let mut ep = Endpoint::new(1);
        let t = MSIX_TABLE + 16; // vector 1
        ep.bar_write(0, t, 8, 0xfee0_0000);
        ep.bar_write(0, t + 8, 4, 0x41);
        ep.bar_write(0, t + 12, 4, 0);
        assert_eq!(
            ep.bar_write(0, REG_DOORBELL, 4, 1),
            Effects::default(),
            "MSI-X off"
        );
        ep.config_write(MSIX_CONTROL, 2, MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert!(ep.bar_write(0, REG_DOORBELL, 4, 1).messages.is_empty());
        assert_eq!(ep.bar_read(0, MSIX_PBA, 4), 0b10, "pending while masked");
        let fx = ep.config_write(MSIX_CONTROL, 2, MSIX_ENABLE);
        assert_eq!(fx.blocked, 1, "no Bus Master Enable: lost");
        ep.config_write(0x04, 2, 0x0004);
        let fx = ep.bar_write(0, REG_DOORBELL, 4, 1);
        assert_eq!(
            fx.messages,
            vec![Message {
                address: 0xfee0_0000,
                data: 0x41
            }]
        );
        assert_eq!(ep.bar_read(0, REG_SENT, 4), 1);
        assert!(
            ep.bar_write(0, REG_DOORBELL, 4, 7).messages.is_empty(),
            "no vector 7"
        );
    }
}
