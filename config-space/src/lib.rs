//! The configuration-space engine: PCI functions as data, for device emulators.
//!
//! A function's configuration space is a [`ConfigSpace`]: register values, a write mask and a
//! write-1-to-clear mask per byte, and a size (256 bytes for conventional PCI, 4 KiB for PCI
//! Express; reads past it return all ones and writes are dropped). A guest write changes each
//! byte as `value = (value & !wmask) | (data & wmask); value &= !(data & w1cmask)`, which is
//! QEMU's `pci_default_write_config()`; the model's own updates (a status bit the device sets,
//! a serial number) bypass the masks. The engine does no I/O and keeps no clock: an emulator
//! feeds it the accesses it traps and acts on what changed.
//!
//! What is here:
//! - [`config_space`]: the space, [`Register`] declarations, standard capabilities linked from
//!   0x34 ([`ConfigSpace::add_capability`]) and extended ones from 0x100
//!   ([`ConfigSpace::add_ext_capability`]), and saving ([`ConfigSpace::image`]).
//! - [`header`]: the predefined header (PCI Local Bus 3.0 §6.2): register offsets and bits,
//!   identity, QEMU's default masks and device reset, BAR registration (the write mask is what
//!   makes BAR sizing work: a guest writes all ones and reads the size back) and decoding
//!   ([`header::memory_bar32`], [`header::memory_bar64`]), INTx status, access validation.
//! - [`caps`]: capability IDs, [`caps::msix`], the MSI-X table and Pending Bit Array with
//!   masking, pending bits and QEMU's delivery rules, and [`caps::msi`], MSI with per-vector
//!   masking as QEMU's `msi.c` delivers it.
//!
//! pcierc's backend builds its Q35 host bridge and root ports on this crate and re-exports it
//! as `pcierc_backend::pci`; an emulator depends on this crate alone.
//!
//! # A complete endpoint
//!
//! A PCI Express endpoint with a 64-bit memory BAR holding its registers and its MSI-X table and
//! PBA, a Power Management and a PCI Express capability, and a Device Serial Number extended
//! capability. The emulator decodes its BAR itself and asks the MSI-X model what to send.
//!
//! ```
//! use pcierc_config_space::caps::msix::{self, Delivery, EntryBits, Message, Msix, MsixLayout};
//! use pcierc_config_space::caps::{CAP_ID_EXP, CAP_ID_PM, EXT_CAP_ID_DSN};
//! use pcierc_config_space::config_space::PCIE_CONFIG_SPACE_SIZE;
//! use pcierc_config_space::header::{self, Identity, COMMAND, COMMAND_MASTER, STATUS};
//! use pcierc_config_space::{ConfigSpace, Register};
//!
//! const BAR0_SIZE: u64 = 0x4000;
//! const REG_DOORBELL: u64 = 0x0; // write a vector number to fire it
//! const MSIX_TABLE: u32 = 0x2000;
//! const MSIX_PBA: u32 = 0x3000;
//! const PM: u8 = 0x40;
//! const EXP: u8 = 0x48;
//! const DSN: u16 = 0x100;
//!
//! struct Endpoint {
//!     config: ConfigSpace,
//!     msix: Msix,
//! }
//!
//! impl Endpoint {
//!     fn new(serial: u64) -> Result<Endpoint, pcierc_config_space::CapabilityError> {
//!         let mut config = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
//!         let id = Identity { vendor_id: 0x1b36, device_id: 0x0005, revision: 1, class_code: 0xff0000 };
//!         header::init_identity(&mut config, id, false);
//!         config.declare(&[
//!             // Command (PCI Local Bus 3.0 §6.2.2): Memory Space, Bus Master, Interrupt Disable.
//!             Register::rw(COMMAND, 2, 0, 0x0406),
//!             // Status (§6.2.3): the error bits are write-1-to-clear.
//!             Register::w1c(STATUS, 2, 0, 0xf900),
//!         ]);
//!         header::register_memory_bar64(&mut config, 0, BAR0_SIZE, false);
//!         // Each capability added becomes the head of the list: add the last one first.
//!         let msix = Msix::new(&mut config, MsixLayout {
//!             cap: Some(0x90),
//!             entries: 4,
//!             table_bar: 0,
//!             table_offset: MSIX_TABLE,
//!             pba_bar: 0,
//!             pba_offset: MSIX_PBA,
//!             entry_bits: EntryBits::Defined,
//!         })?;
//!         // PCI Express capability (PCIe Base 6.0 §7.5.3), version 2, Endpoint.
//!         let e = u16::from(config.add_capability(CAP_ID_EXP, Some(EXP), 0x3c)?);
//!         // Power Management (PCI Bus Power Management Interface 1.2 §3.2), version 3.
//!         let p = u16::from(config.add_capability(CAP_ID_PM, Some(PM), 8)?);
//!         config.declare(&[
//!             Register::ro(p + 2, 2, 0x0003),
//!             Register::rw(p + 4, 2, 1 << 3, 0x0003), // PMCSR: PowerState
//!             Register::ro(e + 2, 2, 0x0002),
//!             Register::rw(e + 8, 2, 0x2810, 0x7fff), // Device Control
//!             Register::w1c(e + 0xa, 2, 0, 0x000f),   // Device Status: errors detected
//!         ]);
//!         // Device Serial Number (PCIe Base 6.0 §7.9.3).
//!         config.add_ext_capability(EXT_CAP_ID_DSN, 1, DSN, 12)?;
//!         config.set_qword(DSN + 4, serial);
//!         Ok(Endpoint { config, msix })
//!     }
//!
//!     fn config_read(&self, offset: u16, width: u8) -> u32 {
//!         if !header::valid_access(offset, width) {
//!             return u32::MAX;
//!         }
//!         self.config.read(offset, width)
//!     }
//!
//!     /// A configuration write; the messages that MSI-X Enable or Function Mask let out.
//!     fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Vec<Message> {
//!         if !header::valid_access(offset, width) {
//!             return Vec::new();
//!         }
//!         self.config.write(offset, width, value);
//!         let (_, fired) = self.msix.write_config(&self.config, offset, width);
//!         self.sent(fired)
//!     }
//!
//!     /// Where BAR0 is decoded now.
//!     fn bar0(&self) -> Option<u64> {
//!         header::memory_bar64(&self.config, 0, BAR0_SIZE)
//!     }
//!
//!     fn bar_read32(&self, offset: u64) -> u32 {
//!         let (table, pba) = (u64::from(MSIX_TABLE), u64::from(MSIX_PBA));
//!         match offset {
//!             o if (table..table + u64::from(self.msix.table_len())).contains(&o) => {
//!                 self.msix.table_read32((o - table) as u32)
//!             }
//!             o if (pba..pba + u64::from(self.msix.pba_len())).contains(&o) => {
//!                 self.msix.pba_read32((o - pba) as u32)
//!             }
//!             _ => 0,
//!         }
//!     }
//!
//!     fn bar_write32(&mut self, offset: u64, value: u32) -> Vec<Message> {
//!         let table = u64::from(MSIX_TABLE);
//!         let fired = match offset {
//!             REG_DOORBELL => u16::try_from(value)
//!                 .map_or(Delivery::Dropped, |v| self.msix.notify(&self.config, v)),
//!             o if (table..table + u64::from(self.msix.table_len())).contains(&o) => {
//!                 self.msix.table_write32(&self.config, (o - table) as u32, value)
//!             }
//!             _ => Delivery::Dropped,
//!         };
//!         self.sent(vec![fired])
//!     }
//!
//!     /// Messages leave only with Bus Master Enable (PCI Local Bus 3.0 §6.2.2).
//!     fn sent(&self, fired: Vec<Delivery>) -> Vec<Message> {
//!         if self.config.word(COMMAND) & COMMAND_MASTER == 0 {
//!             return Vec::new();
//!         }
//!         fired
//!             .into_iter()
//!             .filter_map(|d| match d {
//!                 Delivery::Sent(v) => self.msix.message(v),
//!                 Delivery::Dropped | Delivery::Pending => None,
//!             })
//!             .collect()
//!     }
//! }
//!
//! let mut ep = Endpoint::new(0x0123_4567_89ab_cdef).unwrap();
//! assert_eq!(ep.config_read(0x00, 4), 0x0005_1b36);
//! assert_eq!(ep.config_read(0x02, 1), 0x05);
//! assert_eq!(ep.config_read(0x01, 2), u32::MAX, "unaligned: all ones");
//!
//! // Read-only registers ignore writes, writable bits take them.
//! ep.config_write(0x00, 4, 0);
//! assert_eq!(ep.config_read(0x00, 4), 0x0005_1b36);
//! ep.config_write(COMMAND, 2, 0xffff);
//! assert_eq!(ep.config_read(COMMAND, 2), 0x0406);
//!
//! // BAR sizing: write all ones, read back the size (16 KiB, 64-bit, non-prefetchable).
//! ep.config_write(0x10, 4, u32::MAX);
//! ep.config_write(0x14, 4, u32::MAX);
//! assert_eq!(ep.config_read(0x10, 4), 0xffff_c004);
//! assert_eq!(ep.config_read(0x14, 4), u32::MAX);
//! ep.config_write(0x10, 4, 0xc020_0000);
//! ep.config_write(0x14, 4, 0);
//! assert_eq!(ep.bar0(), Some(0xc020_0000), "Memory Space is enabled");
//!
//! // The capability lists, as an OS walks them.
//! assert_eq!(ep.config.capabilities(), vec![(0x01, 0x40), (0x10, 0x48), (0x11, 0x90)]);
//! assert_eq!(ep.config.ext_capabilities(), vec![(EXT_CAP_ID_DSN, 1, DSN)]);
//! assert_eq!(ep.config_read(DSN + 4, 4), 0x89ab_cdef);
//!
//! // Write-1-to-clear: the device reports an error, the guest clears it by writing 1.
//! ep.config.set_bits(u16::from(EXP) + 0xa, 2, 0b0101);
//! ep.config_write(u16::from(EXP) + 0xa, 2, 0b0001);
//! assert_eq!(ep.config_read(u16::from(EXP) + 0xa, 2), 0b0100);
//!
//! // MSI-X: program vector 1, enable with the function masked: the doorbell leaves it pending.
//! let entry = u64::from(MSIX_TABLE) + u64::from(msix::ENTRY_SIZE);
//! ep.bar_write32(entry, 0xfee0_0000);
//! ep.bar_write32(entry + 8, 0x41);
//! ep.bar_write32(entry + 12, 0); // Vector Control: unmasked
//! let control = 0x90 + msix::FLAGS;
//! let (enable, mask) = (msix::CONTROL_ENABLE, msix::CONTROL_FUNCTION_MASK);
//! ep.config_write(control, 2, u32::from(enable | mask));
//! assert!(ep.bar_write32(REG_DOORBELL, 1).is_empty());
//! assert_eq!(ep.bar_read32(u64::from(MSIX_PBA)), 0b10, "vector 1 pending");
//! // Clearing Function Mask sends it.
//! let sent = ep.config_write(control, 2, u32::from(enable));
//! assert_eq!(sent, vec![Message { address: 0xfee0_0000, data: 0x41 }]);
//! assert_eq!(ep.bar_read32(u64::from(MSIX_PBA)), 0);
//! assert_eq!(ep.bar_write32(REG_DOORBELL, 1).len(), 1);
//! ```

#![deny(missing_docs)]

pub mod caps;
pub mod config_space;
pub mod header;

pub use caps::msix::{Delivery, Message, Msix, MsixLayout};
pub use config_space::{CapabilityError, ConfigSpace, Register, SpaceImage, StateError};

/// An access width in bytes: 1, 2 or 4 for configuration space, also 8 for BARs.
pub type Width = u8;

/// A memory BAR currently decoded by a function: where the guest put it and how big it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BarMapping {
    /// BAR index (0-5).
    pub index: u8,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}
