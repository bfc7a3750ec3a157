//! Fixed-size payloads. Every struct is `#[repr(C)]`, has no implicit padding, and implements
//! `VhostUserMsgValidator::is_valid()`, which checks every field a peer sent before anything else
//! looks at it.

use vhost::vhost_user::message::VhostUserMsgValidator;
use vm_memory::ByteValued;

use crate::topology::FunctionRecord;
use crate::wire::Status;

/// Size of a function's configuration space (PCIe Base 6.0 §7.2.2: 4 KiB per function).
pub const CONFIG_SPACE_SIZE: u16 = 4096;

/// A single 64-bit value (features, acknowledgements).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct U64 {
    /// The value.
    pub value: u64,
}
// SAFETY: plain integer, no padding.
unsafe impl ByteValued for U64 {}
impl VhostUserMsgValidator for U64 {}

crate::wire_enum! {
    /// What a frontend is, sent with `SetFrontendInfo`.
    pub enum FrontendRole: u32 {
        /// A VMM that runs the guest and forwards its trapped accesses.
        Vmm = 1,
        /// A hypervisor shim (e.g. the Xen ioreq server) forwarding accesses.
        HypervisorShim = 2,
        /// A device emulator that owns functions behind the ports.
        DeviceEmulator = 3,
        /// A tool (dump, qtest, monitoring).
        Tool = 4,
    }
}

/// Maximum length of a name (frontend, function id, owner) on the wire.
pub const NAME_LEN: usize = 32;

/// Encode `s` into a NUL-padded name field; `None` if it does not fit or is not printable ASCII.
pub fn encode_name(s: &str) -> Option<[u8; NAME_LEN]> {
    if s.len() > NAME_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut out = [0u8; NAME_LEN];
    out[..s.len()].copy_from_slice(s.as_bytes());
    Some(out)
}

/// Decode a NUL-padded name field; `None` unless it is printable ASCII followed only by NULs.
pub fn decode_name(raw: &[u8; NAME_LEN]) -> Option<&str> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    if raw[len..].iter().any(|&b| b != 0) || !raw[..len].iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(&raw[..len]).ok()
}

/// `SetFrontendInfo` payload.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendInfo {
    /// A [`FrontendRole`] value.
    pub role: u32,
    /// Reserved, must be 0.
    pub flags: u32,
    /// The frontend's name (emulator name used for ownership), NUL-padded printable ASCII.
    pub name: [u8; NAME_LEN],
}
// SAFETY: integers and a byte array, no padding (4+4+32).
unsafe impl ByteValued for FrontendInfo {}
impl VhostUserMsgValidator for FrontendInfo {
    fn is_valid(&self) -> bool {
        FrontendRole::try_from(self.role).is_ok()
            && self.flags == 0
            && decode_name(&self.name).is_some_and(|n| !n.is_empty())
    }
}

/// What an access addresses; each kind allows its own widths (`docs/protocol.md`, section 8).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// Configuration space ([`ConfigAccess`], ECAM and CONFIG_DATA reads): 1, 2 or 4 bytes.
    Config,
    /// Trapped port I/O ([`GuestAccess`] of `PioRead`/`PioWrite`): 1, 2 or 4 bytes.
    Pio,
    /// Trapped MMIO ([`GuestAccess`] of `MmioRead`/`MmioWrite`): 1, 2, 4 or 8 bytes.
    Mmio,
}

impl AccessKind {
    /// The width rule, in one place for the payload checks, the backend's [`crate::Session`],
    /// the configuration snapshot and pcierc's hierarchy: `Ok` if an access of this kind may be
    /// `width` bytes wide, else [`Status::Invalid`] (`EINVAL`).
    pub fn check_width(self, width: u8) -> Result<(), Status> {
        match (self, width) {
            (_, 1 | 2 | 4) | (AccessKind::Mmio, 8) => Ok(()),
            _ => Err(Status::Invalid),
        }
    }
}

/// The low `width` bytes set: the part of a `u64` an access of `width` bytes carries (all of it
/// from 8 bytes on).
pub fn width_mask(width: u8) -> u64 {
    match width {
        0..=7 => (1u64 << (8 * u32::from(width))) - 1,
        _ => u64::MAX,
    }
}

/// Does `data` fit in `width` bytes (no bit set above them)?
pub fn fits_width(data: u64, width: u8) -> bool {
    data & !width_mask(width) == 0
}

/// A configuration read or write addressed by (segment, bus, device/function, offset, width).
///
/// Offsets must be naturally aligned to the width and the access must lie within 4 KiB.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigAccess {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7-3) and function (bits 2-0).
    pub devfn: u8,
    /// Register offset, 0..4096, aligned to `width`.
    pub offset: u16,
    /// 1, 2 or 4.
    pub width: u8,
    /// Reserved, must be 0.
    pub reserved: u8,
    /// Data written, or (in a read reply) data read, in the low `width` bytes; upper bytes 0.
    pub data: u64,
}
// SAFETY: integers, no padding (2+1+1+2+1+1 = 8, then u64).
unsafe impl ByteValued for ConfigAccess {}
impl VhostUserMsgValidator for ConfigAccess {
    fn is_valid(&self) -> bool {
        AccessKind::Config.check_width(self.width).is_ok()
            && self.reserved == 0
            && self.offset.is_multiple_of(u16::from(self.width))
            && self.offset < CONFIG_SPACE_SIZE
            && fits_width(self.data, self.width)
    }
}

/// A raw guest access a VMM trapped (port I/O or MMIO), forwarded without decoding.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestAccess {
    /// Guest-physical address or I/O port.
    pub addr: u64,
    /// Data written, or (in a read reply) data read, in the low `width` bytes.
    pub data: u64,
    /// 1, 2, 4 or 8 (port I/O: 1, 2 or 4).
    pub width: u8,
    /// Reserved, must be 0.
    pub reserved: [u8; 7],
}
// SAFETY: integers and a byte array, no padding (8+8+1+7).
unsafe impl ByteValued for GuestAccess {}
impl VhostUserMsgValidator for GuestAccess {
    fn is_valid(&self) -> bool {
        // The widest kind: port I/O's narrower rule is the session's (it knows the request).
        AccessKind::Mmio.check_width(self.width).is_ok()
            && self.reserved == [0; 7]
            && self.addr.checked_add(u64::from(self.width) - 1).is_some()
            && fits_width(self.data, self.width)
    }
}

/// The MCH's legacy memory routing (Q35 PAM0-6 at 0x90-0x96, SMRAM 0x9d, ESMRAMC 0x9e).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChipsetMemory {
    /// PAM0..PAM6 register values.
    pub pam: [u8; 7],
    /// SMRAM register value.
    pub smram: u8,
    /// ESMRAMC register value.
    pub esmramc: u8,
    /// Reserved, must be 0.
    pub reserved: [u8; 7],
}
// SAFETY: byte arrays only, no padding (7+1+1+7).
unsafe impl ByteValued for ChipsetMemory {}
impl VhostUserMsgValidator for ChipsetMemory {
    fn is_valid(&self) -> bool {
        self.reserved == [0; 7]
    }
}

/// Header of a `LayoutChanged` notification; the encoded new topology follows.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LayoutChange {
    /// What changed: a set of [`crate::LayoutChanges`] bits.
    pub changes: u32,
    /// Reserved, must be 0.
    pub reserved: u32,
}
// SAFETY: integers, no padding.
unsafe impl ByteValued for LayoutChange {}
impl VhostUserMsgValidator for LayoutChange {
    fn is_valid(&self) -> bool {
        self.reserved == 0 && crate::LayoutChanges::from_bits(self.changes).is_some()
    }
}

/// A function's address (`RaisePme` payload).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionAddress {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number (as the guest numbered it).
    pub bus: u8,
    /// Device/function.
    pub devfn: u8,
    /// Reserved, must be 0.
    pub reserved: u32,
}
// SAFETY: integers, no padding (2+1+1+4).
unsafe impl ByteValued for FunctionAddress {}
impl VhostUserMsgValidator for FunctionAddress {
    fn is_valid(&self) -> bool {
        self.reserved == 0
    }
}

/// `ClaimFunction` payload: a function the frontend serves, plugged into a root port's slot
/// (or a `pcie-pci-bridge`'s SHPC slot).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionClaim {
    /// The root or downstream port's id, or a `pcie-pci-bridge`'s (topology name), NUL-padded.
    pub port: [u8; NAME_LEN],
    /// The new function's id, NUL-padded (unique in the hierarchy).
    pub id: [u8; NAME_LEN],
    /// The QEMU driver name it corresponds to (informational), NUL-padded.
    pub driver: [u8; NAME_LEN],
    /// Device/function on the port's secondary bus (device 0: a port has one slot; below a
    /// `pcie-pci-bridge` devices 1-31, one SHPC slot each).
    pub devfn: u8,
    /// [`FunctionClaim::COLDPLUG`], [`FunctionClaim::MULTIFUNCTION`].
    pub flags: u8,
    /// Reserved, must be 0.
    pub reserved: [u8; 6],
}
// SAFETY: byte arrays and bytes, no padding (32*3+1+1+6).
unsafe impl ByteValued for FunctionClaim {}
impl FunctionClaim {
    /// Present from power-on: presence without a hot-plug event (before the guest runs).
    pub const COLDPLUG: u8 = 1;
    /// Function 0 of a multi-function device (header type bit 7).
    pub const MULTIFUNCTION: u8 = 2;
}
impl VhostUserMsgValidator for FunctionClaim {
    fn is_valid(&self) -> bool {
        self.flags & !(Self::COLDPLUG | Self::MULTIFUNCTION) == 0
            && self.reserved == [0; 6]
            && self.devfn >> 3 == 0
            && decode_name(&self.port).is_some_and(|n| !n.is_empty())
            && decode_name(&self.id).is_some_and(|n| !n.is_empty())
            && decode_name(&self.driver).is_some()
    }
}

/// `ReleaseFunction` payload.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionRelease {
    /// The function's id, NUL-padded.
    pub id: [u8; NAME_LEN],
    /// [`FunctionRelease::SURPRISE`] or 0.
    pub flags: u32,
    /// Reserved, must be 0.
    pub reserved: u32,
}
// SAFETY: a byte array and integers, no padding (32+4+4).
unsafe impl ByteValued for FunctionRelease {}
impl FunctionRelease {
    /// Leave at once (surprise removal) instead of asking the guest (attention button).
    pub const SURPRISE: u32 = 1;
}
impl VhostUserMsgValidator for FunctionRelease {
    fn is_valid(&self) -> bool {
        self.flags & !Self::SURPRISE == 0
            && self.reserved == 0
            && decode_name(&self.id).is_some_and(|n| !n.is_empty())
    }
}

/// `SetInterruptFd` payload: which MSI-X vector of which function, and whether to register
/// (one eventfd attached) or unregister (no fd).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct InterruptFd {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number (pcierc's own functions sit on the root bus).
    pub bus: u8,
    /// Device/function.
    pub devfn: u8,
    /// MSI-X vector (table entry index).
    pub vector: u16,
    /// [`InterruptFd::UNREGISTER`] or 0.
    pub flags: u16,
}
// SAFETY: integers, no padding (2+1+1+2+2).
unsafe impl ByteValued for InterruptFd {}
impl InterruptFd {
    /// Remove the registration (no fd attached).
    pub const UNREGISTER: u16 = 1;
}
impl VhostUserMsgValidator for InterruptFd {
    fn is_valid(&self) -> bool {
        self.flags & !Self::UNREGISTER == 0
    }
}

/// `MsiRoute` notification: the message an MSI-X vector sends now.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MsiRoute {
    /// Message address from the vector's table entry.
    pub address: u64,
    /// Message data from the vector's table entry.
    pub data: u32,
    /// Segment of the function.
    pub segment: u16,
    /// Bus of the function.
    pub bus: u8,
    /// Devfn of the function.
    pub devfn: u8,
    /// The vector.
    pub vector: u16,
    /// 1 when the vector cannot fire now (entry masked, Function Mask set, or MSI-X disabled).
    pub masked: u8,
    /// Reserved, must be 0.
    pub reserved: [u8; 5],
}
// SAFETY: integers and a byte array, no padding (8+4+2+1+1+2+1+5).
unsafe impl ByteValued for MsiRoute {}
impl VhostUserMsgValidator for MsiRoute {
    fn is_valid(&self) -> bool {
        self.masked <= 1 && self.reserved == [0; 5]
    }
}

/// An MSI/MSI-X message a function pcierc emulates sends (`Msi` notification).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (PCIe Base 6.0 §7.7.2.4: the guest programmed it in the MSI-X table).
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Segment of the function that sends it.
    pub segment: u16,
    /// Bus of that function.
    pub bus: u8,
    /// Devfn of that function.
    pub devfn: u8,
}
// SAFETY: integers, no padding (8+4+2+1+1).
unsafe impl ByteValued for MsiMessage {}
impl VhostUserMsgValidator for MsiMessage {}

/// The level of a function's INTx pin (`Intx` notification).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IntxLevel {
    /// Segment of the function.
    pub segment: u16,
    /// Bus of the function.
    pub bus: u8,
    /// Devfn of the function.
    pub devfn: u8,
    /// Interrupt Pin register value: 1 = INTA# .. 4 = INTD#.
    pub pin: u8,
    /// 1 = asserted, 0 = deasserted.
    pub level: u8,
    /// Reserved, must be 0.
    pub reserved: [u8; 2],
}
// SAFETY: integers, no padding (2+1+1+1+1+2).
unsafe impl ByteValued for IntxLevel {}
impl VhostUserMsgValidator for IntxLevel {
    fn is_valid(&self) -> bool {
        (1..=4).contains(&self.pin) && self.level <= 1 && self.reserved == [0; 2]
    }
}

crate::wire_enum! {
    /// Severity of a reported error (PCIe Base 6.0 §6.2.2).
    pub enum ErrorSeverityCode: u8 {
        /// Correctable (ERR_COR).
        Correctable = 0,
        /// Uncorrectable, non-fatal (ERR_NONFATAL).
        NonFatal = 1,
        /// Uncorrectable, fatal (ERR_FATAL).
        Fatal = 2,
    }
}

/// An error a function detected (`ReportError` payload), as its AER capability would log it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorReport {
    /// Segment of the requester (the function that detected the error).
    pub segment: u16,
    /// Bus of the requester.
    pub bus: u8,
    /// Devfn of the requester.
    pub devfn: u8,
    /// An [`ErrorSeverityCode`].
    pub severity: u8,
    /// Reserved, must be 0.
    pub reserved: [u8; 3],
    /// Correctable Error Status bits (severity 0) or Uncorrectable Error Status bits (PCIe Base
    /// 6.0 §7.8.4.5 / §7.8.4.2); must be non-zero.
    pub status: u32,
    /// Reserved, must be 0.
    pub reserved2: u32,
    /// TLP header log (PCIe Base 6.0 §7.8.4.8), zero when none.
    pub header_log: [u32; 4],
}
// SAFETY: integers, no padding (2+1+1+1+3 = 8, 4, 4, 16).
unsafe impl ByteValued for ErrorReport {}
impl VhostUserMsgValidator for ErrorReport {
    fn is_valid(&self) -> bool {
        ErrorSeverityCode::try_from(self.severity).is_ok()
            && self.reserved == [0; 3]
            && self.reserved2 == 0
            && self.status != 0
    }
}

crate::wire_enum! {
    /// Why the functions of a [`FunctionReset`] notification were reset.
    pub enum ResetReason: u32 {
        /// The guest set Secondary Bus Reset in the Bridge Control register of the root port above
        /// the function (PCI-to-PCI Bridge 1.2 §3.2.5.18: a 0 -> 1 edge resets the secondary bus).
        SecondaryBusReset = 1,
        /// The guest turned the power of the function's slot off while the card stays in it
        /// (Slot Control Power Controller Control = off, PCIe Base 6.0 §6.7.1.8 and §7.5.3.10).
        SlotPowerOff = 2,
        /// Platform reset (`Reset` request).
        PlatformReset = 3,
    }
}

/// `FunctionReset` notification: a function this frontend owns was reset; its owner resets the
/// device and the state it keeps for it (registers, DMA, interrupts) to the power-on state.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionReset {
    /// The function (its record as in the topology, `bus`/`devfn` where it is).
    pub function: FunctionRecord,
    /// A [`ResetReason`] value.
    pub reason: u32,
    /// Reserved, must be 0.
    pub reserved: u32,
}
// SAFETY: a padding-free record (88 bytes, 4-byte aligned) and two u32s, no padding.
unsafe impl ByteValued for FunctionReset {}
impl VhostUserMsgValidator for FunctionReset {
    fn is_valid(&self) -> bool {
        self.function.is_valid() && ResetReason::try_from(self.reason).is_ok() && self.reserved == 0
    }
}

impl FunctionReset {
    /// The reset's reason (always known in a notification that passed validation).
    pub fn reason(&self) -> Option<ResetReason> {
        ResetReason::try_from(self.reason).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_no_padding() {
        assert_eq!(std::mem::size_of::<U64>(), 8);
        assert_eq!(std::mem::size_of::<FrontendInfo>(), 40);
        assert_eq!(std::mem::size_of::<ConfigAccess>(), 16);
        assert_eq!(std::mem::size_of::<GuestAccess>(), 24);
        assert_eq!(std::mem::size_of::<ChipsetMemory>(), 16);
        assert_eq!(std::mem::size_of::<LayoutChange>(), 8);
        assert_eq!(std::mem::size_of::<FunctionAddress>(), 8);
        assert_eq!(std::mem::size_of::<MsiMessage>(), 16);
        assert_eq!(std::mem::size_of::<InterruptFd>(), 8);
        assert_eq!(std::mem::size_of::<MsiRoute>(), 24);
        assert_eq!(std::mem::size_of::<FunctionClaim>(), 104);
        assert_eq!(std::mem::size_of::<FunctionRelease>(), 40);
        assert_eq!(std::mem::size_of::<IntxLevel>(), 8);
        assert_eq!(std::mem::size_of::<ErrorReport>(), 32);
        assert_eq!(std::mem::size_of::<FunctionReset>(), 96);
    }

    #[test]
    fn function_reset_validation() {
        let ok = FunctionReset {
            function: FunctionRecord {
                kind: crate::topology::FunctionKind::Endpoint as u8,
                owner: encode_name("vmm").unwrap(),
                id: encode_name("ep0").unwrap(),
                ..Default::default()
            },
            reason: ResetReason::SlotPowerOff as u32,
            reserved: 0,
        };
        assert!(ok.is_valid());
        assert_eq!(ok.reason(), Some(ResetReason::SlotPowerOff));
        for reason in [0, 4, u32::MAX] {
            assert!(!FunctionReset { reason, ..ok }.is_valid());
        }
        assert!(!FunctionReset { reserved: 1, ..ok }.is_valid());
        let mut bad = ok;
        bad.function.owner = [0; NAME_LEN];
        assert!(!bad.is_valid(), "a record without an owner is refused");
    }

    #[test]
    fn config_access_validation() {
        let ok = ConfigAccess {
            offset: 0x100,
            width: 4,
            ..Default::default()
        };
        assert!(ok.is_valid());
        assert!(!ConfigAccess { width: 3, ..ok }.is_valid());
        assert!(!ConfigAccess {
            offset: 0x101,
            width: 2,
            ..ok
        }
        .is_valid());
        assert!(!ConfigAccess { offset: 4096, ..ok }.is_valid());
        assert!(!ConfigAccess { reserved: 1, ..ok }.is_valid());
        assert!(!ConfigAccess {
            width: 1,
            data: 0x100,
            ..ok
        }
        .is_valid());
        assert!(ConfigAccess {
            offset: 4095,
            width: 1,
            data: 0xff,
            ..ok
        }
        .is_valid());
    }

    #[test]
    fn width_rules() {
        let widths =
            |k: AccessKind| -> Vec<u8> { (0..=16).filter(|&w| k.check_width(w).is_ok()).collect() };
        assert_eq!(widths(AccessKind::Config), [1, 2, 4]);
        assert_eq!(widths(AccessKind::Pio), [1, 2, 4]);
        assert_eq!(widths(AccessKind::Mmio), [1, 2, 4, 8]);
        assert_eq!(AccessKind::Pio.check_width(8), Err(Status::Invalid));
        assert_eq!(width_mask(1), 0xff);
        assert_eq!(width_mask(4), 0xffff_ffff);
        assert_eq!(width_mask(8), u64::MAX);
        assert!(fits_width(0xffff, 2) && !fits_width(0x1_0000, 2) && fits_width(u64::MAX, 8));
    }

    #[test]
    fn names_round_trip_and_reject_garbage() {
        let n = encode_name("qemu-storage").unwrap();
        assert_eq!(decode_name(&n), Some("qemu-storage"));
        assert!(encode_name("has space").is_none());
        assert!(encode_name(&"x".repeat(33)).is_none());
        let mut bad = n;
        bad[20] = b'x'; // data after the NUL terminator
        assert!(decode_name(&bad).is_none());
    }
}
