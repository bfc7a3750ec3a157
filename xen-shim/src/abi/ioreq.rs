//! `xen/include/public/hvm/ioreq.h`: the request slots Xen shares with a device model.
//!
//! The synchronous ioreq page ([`shared_iopage_t`]) holds one [`ioreq_t`] per vCPU at byte
//! `32 * vcpu_id`; the optional buffered page ([`buffered_iopage_t`]) is a ring of
//! [`buf_ioreq_t`]. Both are mapped with `IOCTL_PRIVCMD_MMAP_RESOURCE` (see
//! [`super::privcmd`]). How to read and complete a slot is in `crate::ioreq_service`.

use super::evtchn_port_t;

/// `IOREQ_READ`: value of [`ioreq_t::dir`] for a read (device -> guest).
pub const IOREQ_READ: u8 = 1;
/// `IOREQ_WRITE`: value of [`ioreq_t::dir`] for a write (guest -> device).
pub const IOREQ_WRITE: u8 = 0;

/// `STATE_IOREQ_NONE`: the slot is free.
pub const STATE_IOREQ_NONE: u8 = 0;
/// `STATE_IOREQ_READY`: Xen filled the slot; the device model must answer it.
pub const STATE_IOREQ_READY: u8 = 1;
/// `STATE_IOREQ_INPROCESS`: the device model took the slot (optional intermediate state).
pub const STATE_IOREQ_INPROCESS: u8 = 2;
/// `STATE_IORESP_READY`: the device model answered; Xen resets the slot to NONE.
pub const STATE_IORESP_READY: u8 = 3;

/// `IOREQ_TYPE_PIO`: port I/O; `addr` is the port.
pub const IOREQ_TYPE_PIO: u8 = 0;
/// `IOREQ_TYPE_COPY`: MMIO; `addr` is the guest-physical address.
pub const IOREQ_TYPE_COPY: u8 = 1;
/// `IOREQ_TYPE_PCI_CONFIG`: a CF8/CFC access Xen decoded; `addr` is `sbdf << 32 | reg`.
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
/// `IOREQ_TYPE_TIMEOFFSET`: RTC offset change (buffered ring only in Xen 4.17).
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
/// `IOREQ_TYPE_INVALIDATE`: flush the map cache (broadcast to every enabled server).
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// `IOREQ_BUFFER_SLOT_NUM`: slots in [`buffered_iopage_t::buf_ioreq`].
pub const IOREQ_BUFFER_SLOT_NUM: usize = 511;

/// `struct ioreq` / `ioreq_t`: one vCPU's synchronous request slot (32 bytes).
///
/// Byte 30 holds the C bitfields `state:4, data_is_ptr:1, dir:1, df:1, _pad1:1` (gcc allocates
/// them from bit 0 on little-endian x86); read them through the accessors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ioreq_t {
    /// Port, guest-physical address, or for PCI_CONFIG `sbdf << 32 | reg`.
    pub addr: u64,
    /// The value (or, if `data_is_ptr`, the guest-physical address of the data).
    pub data: u64,
    /// Repeat count (rep prefixes).
    pub count: u32,
    /// Item size in bytes.
    pub size: u32,
    /// Xen's (remote) event channel for this vCPU. Written by Xen; never by the device model.
    pub vp_eport: evtchn_port_t,
    /// Padding.
    pub _pad0: u16,
    /// The bitfield byte (`state`, `data_is_ptr`, `dir`, `df`, `_pad1`); see the accessors.
    pub bitfields: u8,
    /// `type`: one of the `IOREQ_TYPE_*` values.
    pub type_: u8,
}

/// Byte offset of [`ioreq_t::bitfields`] in the slot (byte 30).
pub const IOREQ_BITFIELDS_OFFSET: usize = core::mem::offset_of!(ioreq_t, bitfields);
/// Mask of `state:4` in [`ioreq_t::bitfields`].
pub const IOREQ_STATE_MASK: u8 = 0x0f;
const DATA_IS_PTR_BIT: u8 = 4;
const DIR_BIT: u8 = 5;
const DF_BIT: u8 = 6;

const _: () = assert!(core::mem::size_of::<ioreq_t>() == 32 && IOREQ_BITFIELDS_OFFSET == 30);

impl ioreq_t {
    /// `state:4`, one of the `STATE_*` values.
    pub const fn state(&self) -> u8 {
        self.bitfields & IOREQ_STATE_MASK
    }

    /// `data_is_ptr:1`: `data` is the guest-physical address of the data.
    pub const fn data_is_ptr(&self) -> bool {
        self.bitfields & (1 << DATA_IS_PTR_BIT) != 0
    }

    /// `dir:1`: [`IOREQ_READ`] or [`IOREQ_WRITE`].
    pub const fn dir(&self) -> u8 {
        (self.bitfields >> DIR_BIT) & 1
    }

    /// `df:1`: addresses decrease between repeated items.
    pub const fn df(&self) -> bool {
        self.bitfields & (1 << DF_BIT) != 0
    }

    /// `type`: one of the `IOREQ_TYPE_*` values.
    pub const fn ioreq_type(&self) -> u8 {
        self.type_
    }

    /// Sets `state:4` (the upper bits of the byte are kept).
    pub fn set_state(&mut self, state: u8) {
        self.bitfields = Self::bitfields_with_state(self.bitfields, state);
    }

    /// Sets `data_is_ptr:1`.
    pub fn set_data_is_ptr(&mut self, on: bool) {
        self.set_bit(DATA_IS_PTR_BIT, on);
    }

    /// Sets `dir:1` (only bit 0 of `dir` is used, as with the C bitfield).
    pub fn set_dir(&mut self, dir: u8) {
        self.set_bit(DIR_BIT, dir & 1 != 0);
    }

    /// Sets `df:1`.
    pub fn set_df(&mut self, on: bool) {
        self.set_bit(DF_BIT, on);
    }

    /// The bitfield byte `bits` with its `state:4` replaced by `state` (the read-modify-write
    /// FLOW.md prescribes for completing a request).
    pub const fn bitfields_with_state(bits: u8, state: u8) -> u8 {
        (bits & !IOREQ_STATE_MASK) | (state & IOREQ_STATE_MASK)
    }

    fn set_bit(&mut self, bit: u8, on: bool) {
        self.bitfields = (self.bitfields & !(1 << bit)) | (u8::from(on) << bit);
    }
}

/// `struct shared_iopage` / `shared_iopage_t`: the synchronous ioreq page.
///
/// C declares `vcpu_ioreq[1]` but the page holds one slot per vCPU: vCPU `v`'s slot is at byte
/// [`shared_iopage_slot_offset`]`(v)`, up to [`IOREQS_PER_PAGE`] slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct shared_iopage_t {
    /// The first slot (vCPU 0); the others follow it in the page.
    pub vcpu_ioreq: [ioreq_t; 1],
}

/// Number of [`ioreq_t`] slots in one 4 KiB ioreq page (128, = `HVM_MAX_VCPUS`).
pub const IOREQS_PER_PAGE: usize = super::XEN_PAGE_SIZE / core::mem::size_of::<ioreq_t>();

/// Byte offset of vCPU `vcpu`'s slot in the ioreq page(s).
pub const fn shared_iopage_slot_offset(vcpu: usize) -> usize {
    vcpu * core::mem::size_of::<ioreq_t>()
}

/// `struct buf_ioreq` / `buf_ioreq_t`: one buffered-ring slot (8 bytes).
///
/// Bytes 1..4 hold the C bitfields `pad:1, dir:1, size:2, addr:20`; as a little-endian `u32`
/// together with `type`, that is `type` bits 0-7, `pad` bit 8, `dir` bit 9, `size` bits 10-11,
/// `addr` bits 12-31.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct buf_ioreq_t {
    /// `type`: one of the `IOREQ_TYPE_*` values.
    pub type_: u8,
    /// The bitfield bytes (`pad`, `dir`, `size`, `addr`); see the accessors.
    pub bitfields: [u8; 3],
    /// The (low 32 bits of the) data.
    pub data: u32,
}

impl buf_ioreq_t {
    fn word0(&self) -> u32 {
        let [a, b, c] = self.bitfields;
        u32::from_le_bytes([self.type_, a, b, c])
    }

    fn set_word0(&mut self, w: u32) {
        let [t, a, b, c] = w.to_le_bytes();
        self.type_ = t;
        self.bitfields = [a, b, c];
    }

    fn set_field(&mut self, shift: u32, width: u32, value: u32) {
        let mask = ((1u32 << width) - 1) << shift;
        self.set_word0((self.word0() & !mask) | ((value << shift) & mask));
    }

    /// `pad:1`.
    pub fn pad(&self) -> u8 {
        ((self.word0() >> 8) & 1) as u8
    }

    /// `dir:1`: [`IOREQ_READ`] or [`IOREQ_WRITE`].
    pub fn dir(&self) -> u8 {
        ((self.word0() >> 9) & 1) as u8
    }

    /// `size:2`: the size code, 0..=3 for 1, 2, 4, 8 bytes (8 bytes use two slots).
    pub fn size_code(&self) -> u8 {
        ((self.word0() >> 10) & 3) as u8
    }

    /// The item size in bytes (`1 << size_code`).
    pub fn size_bytes(&self) -> u32 {
        1 << self.size_code()
    }

    /// `addr:20`.
    pub fn addr(&self) -> u32 {
        self.word0() >> 12
    }

    /// Sets `pad:1`.
    pub fn set_pad(&mut self, pad: u8) {
        self.set_field(8, 1, pad.into());
    }

    /// Sets `dir:1`.
    pub fn set_dir(&mut self, dir: u8) {
        self.set_field(9, 1, dir.into());
    }

    /// Sets `size:2` (the size code, not the byte count).
    pub fn set_size_code(&mut self, code: u8) {
        self.set_field(10, 2, code.into());
    }

    /// Sets `addr:20` (bits above 20 are dropped, as with the C bitfield).
    pub fn set_addr(&mut self, addr: u32) {
        self.set_field(12, 20, addr);
    }
}

/// `struct buffered_iopage` / `buffered_iopage_t`: the buffered ring (one 4 KiB page), as seen
/// outside Xen (inside, the two pointers are a union with one `u64` that Xen updates with
/// cmpxchg under `HVM_IOREQSRV_BUFIOREQ_ATOMIC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct buffered_iopage_t {
    /// Consumer index (the device model advances it).
    pub read_pointer: u32,
    /// Producer index (Xen advances it).
    pub write_pointer: u32,
    /// The ring; slot `i` is `buf_ioreq[i % IOREQ_BUFFER_SLOT_NUM]`.
    pub buf_ioreq: [buf_ioreq_t; IOREQ_BUFFER_SLOT_NUM],
}

const _: () = assert!(core::mem::size_of::<buffered_iopage_t>() == super::XEN_PAGE_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioreq_bitfields_match_abi_txt_samples() {
        // abi.txt: READY + dir=READ gives byte[30] = 0x21;
        // IORESP_READY | data_is_ptr | df with dir=WRITE gives 0x53.
        let mut r = ioreq_t::default();
        r.set_state(STATE_IOREQ_READY);
        r.set_dir(IOREQ_READ);
        assert_eq!(r.bitfields, 0x21);
        let mut r = ioreq_t::default();
        r.set_state(STATE_IORESP_READY);
        r.set_data_is_ptr(true);
        r.set_dir(IOREQ_WRITE);
        r.set_df(true);
        assert_eq!(r.bitfields, 0x53);
        assert_eq!(
            (r.state(), r.data_is_ptr(), r.dir(), r.df()),
            (3, true, 0, true)
        );
        r.set_state(STATE_IOREQ_INPROCESS);
        assert_eq!(r.bitfields, 0x52);
    }

    #[test]
    fn buf_ioreq_matches_abi_txt_sample() {
        // abi.txt: COPY write, size code 2, addr 0xa0123, data 0xdeadbeef = 01 38 12 a0 ef be ad de.
        let mut b = buf_ioreq_t {
            type_: IOREQ_TYPE_COPY,
            data: 0xdead_beef,
            ..Default::default()
        };
        b.set_dir(IOREQ_WRITE);
        b.set_size_code(2);
        b.set_addr(0xa0123);
        assert_eq!((b.type_, b.bitfields), (1, [0x38, 0x12, 0xa0]));
        assert_eq!(
            (b.dir(), b.size_bytes(), b.addr(), b.pad()),
            (0, 4, 0xa0123, 0)
        );
        b.set_addr(0xfff_ffff);
        assert_eq!(b.addr(), 0xfffff);
    }

    #[test]
    fn slot_geometry() {
        assert_eq!(IOREQS_PER_PAGE, 128);
        assert_eq!(shared_iopage_slot_offset(3), 96);
    }
}
