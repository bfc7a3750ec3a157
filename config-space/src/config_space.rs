//! One function's configuration space as data, QEMU's model: register values, a write mask and a
//! write-1-to-clear mask per byte, a size (reads past it return all ones, writes are dropped), and
//! capability lists that build their own chains.
//!
//! A configuration write changes each byte as
//! `value = (value & !wmask) | (data & wmask); value &= !(data & w1cmask)`,
//! which is exactly `pci_default_write_config()` in QEMU's `hw/pci/pci.c`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Size of a conventional PCI configuration space (PCI Local Bus 3.0 §6.1).
pub const PCI_CONFIG_SPACE_SIZE: u16 = 0x100;
/// Size of a PCI Express configuration space (PCIe Base 6.0 §7.2.2).
pub const PCIE_CONFIG_SPACE_SIZE: u16 = 0x1000;
/// End of the predefined header; capabilities and device-specific registers follow
/// (PCI Local Bus 3.0 §6.1).
pub const CONFIG_HEADER_SIZE: u16 = 0x40;

// PCI Local Bus 3.0 §6.7 Capabilities List: the Capabilities Pointer register.
/// Offset of the Capabilities Pointer.
pub const CAPABILITY_LIST: u16 = 0x34;
// PCI Local Bus 3.0 §6.2.3 Status register, bit 4 Capabilities List.
const STATUS: u16 = 0x06;
const STATUS_CAP_LIST: u64 = 1 << 4;
// PCI Local Bus 3.0 §6.7: each capability is (ID, next pointer, ...).
const CAP_NEXT: u16 = 1;
// PCIe Base 6.0 §7.6.3 PCI Express Extended Capability Header: ID 15:0, version 19:16, next 31:20.
const EXT_CAP_NEXT_SHIFT: u32 = 20;
const EXT_CAP_VERSION_SHIFT: u32 = 16;

/// Why a capability could not be added (a bug in a model's layout, never guest input).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapabilityError {
    /// The requested bytes overlap the header or another capability, or leave the space.
    #[error(
        "capability {id:#x} at {offset:#x}+{size:#x} overlaps or leaves the configuration space"
    )]
    Overlap {
        /// Capability ID.
        id: u16,
        /// Requested offset.
        offset: u16,
        /// Requested size.
        size: u16,
    },
    /// No free gap of the requested size in 0x40-0xff.
    #[error("no room for a {size:#x}-byte capability {id:#x}")]
    NoSpace {
        /// Capability ID.
        id: u8,
        /// Requested size.
        size: u8,
    },
}

/// Why a saved image or state could not be loaded (the state is unchanged).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The image is of a space of another size.
    #[error("configuration space size {found:#x}, expected {expected:#x}")]
    Size {
        /// Size in the image.
        found: u16,
        /// Size of this space.
        expected: u16,
    },
    /// A per-byte plane is not lowercase hex of the space's size.
    #[error("bad '{0}' plane")]
    Plane(&'static str),
    /// The MSI-X table is not hex of the table's size.
    #[error("bad MSI-X table")]
    MsixTable,
    /// The MSI-X Pending Bit Array is not hex of its size.
    #[error("bad MSI-X PBA")]
    MsixPba,
}

/// One register as data: where it is, how wide, its value after reset, the bits software may
/// write and the bits a write of 1 clears (RW1C). [`ConfigSpace::declare`] installs a list of them;
/// bits in neither mask are read-only (RO, or RsvdP/RsvdZ reading as the reset value).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// Offset in configuration space.
    pub offset: u16,
    /// 1, 2 or 4 bytes.
    pub width: u8,
    /// Value after reset.
    pub reset: u32,
    /// Read-write bits.
    pub writable: u32,
    /// Write-1-to-clear bits.
    pub w1c: u32,
}

impl Register {
    /// A read-only register holding `value`.
    pub const fn ro(offset: u16, width: u8, value: u32) -> Register {
        Register {
            offset,
            width,
            reset: value,
            writable: 0,
            w1c: 0,
        }
    }

    /// A register whose bits `writable` software may write.
    pub const fn rw(offset: u16, width: u8, reset: u32, writable: u32) -> Register {
        Register {
            offset,
            width,
            reset,
            writable,
            w1c: 0,
        }
    }

    /// A status register whose bits `w1c` a write of 1 clears.
    pub const fn w1c(offset: u16, width: u8, reset: u32, w1c: u32) -> Register {
        Register {
            offset,
            width,
            reset,
            writable: 0,
            w1c,
        }
    }
}

/// One function's configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    size: u16,
    value: Vec<u8>,
    wmask: Vec<u8>,
    w1cmask: Vec<u8>,
    /// Bytes of 0x40-0xff claimed by standard capabilities (QEMU's `used`).
    used: Vec<bool>,
}

/// Which per-byte array an accessor works on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Plane {
    Value,
    Write,
    W1c,
}

impl ConfigSpace {
    /// An all-zero space of `size` bytes ([`PCI_CONFIG_SPACE_SIZE`] or [`PCIE_CONFIG_SPACE_SIZE`];
    /// anything else is clamped into that range). Nothing is writable yet.
    pub fn new(size: u16) -> Self {
        let size = size.clamp(PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE);
        let n = usize::from(PCIE_CONFIG_SPACE_SIZE);
        ConfigSpace {
            size,
            value: vec![0; n],
            wmask: vec![0; n],
            w1cmask: vec![0; n],
            used: vec![false; usize::from(PCI_CONFIG_SPACE_SIZE)],
        }
    }

    /// The size guests see: 256 (conventional PCI) or 4096 (PCI Express).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// A guest read of `width` (1, 2 or 4) bytes at `offset`; bytes past the size read as 0xff.
    pub fn read(&self, offset: u16, width: u8) -> u32 {
        let n = usize::from(width.min(4));
        if usize::from(offset) + n <= usize::from(self.size) {
            return self.get(Plane::Value, offset, n) as u32;
        }
        (0..u32::from(width.min(4))).fold(0, |acc, i| {
            let byte = usize::from(offset)
                .checked_add(i as usize)
                .filter(|&o| o < usize::from(self.size))
                .map_or(0xff, |o| self.value[o]);
            acc | u32::from(byte) << (8 * i)
        })
    }

    /// The whole 4 KiB configuration space as guest reads see it: the register bytes, then
    /// all-ones past the size (a conventional function's extended space).
    pub fn image_4k(&self) -> Vec<u8> {
        let n = usize::from(self.size).min(self.value.len());
        let mut v = self.value[..n].to_vec();
        v.resize(4096, 0xff);
        v
    }

    /// A guest write of `width` (1, 2 or 4) bytes at `offset`, through the write and W1C masks.
    /// Bytes past the size are dropped.
    pub fn write(&mut self, offset: u16, width: u8, data: u32) {
        let n = usize::from(width.min(4));
        if usize::from(offset) + n <= usize::from(self.size) {
            // The bytes at once: writable bits take the data, W1C bits written 1 clear.
            let d = u64::from(data);
            let w = self.get(Plane::Write, offset, n);
            let c = self.get(Plane::W1c, offset, n);
            let old = self.get(Plane::Value, offset, n);
            self.put(Plane::Value, offset, n, ((old & !w) | (d & w)) & !(d & c));
            return;
        }
        for i in 0..usize::from(width.min(4)) {
            let Some(o) = usize::from(offset)
                .checked_add(i)
                .filter(|&o| o < usize::from(self.size))
            else {
                break;
            };
            let d = (data >> (8 * i)) as u8;
            let w = self.wmask[o];
            self.value[o] = (self.value[o] & !w) | (d & w);
            self.value[o] &= !(d & self.w1cmask[o]);
        }
    }

    fn plane(&self, p: Plane) -> &[u8] {
        match p {
            Plane::Value => &self.value,
            Plane::Write => &self.wmask,
            Plane::W1c => &self.w1cmask,
        }
    }

    fn plane_mut(&mut self, p: Plane) -> &mut [u8] {
        match p {
            Plane::Value => &mut self.value,
            Plane::Write => &mut self.wmask,
            Plane::W1c => &mut self.w1cmask,
        }
    }

    /// Little-endian `n` bytes (1-8) at `offset`; bytes outside 4 KiB read as zero.
    #[inline]
    fn get(&self, p: Plane, offset: u16, n: usize) -> u64 {
        let bytes = self.plane(p);
        let (o, n) = (usize::from(offset), n.min(8));
        // Every register the models name lies inside the space: one load, no per-byte checks.
        if let Some(s) = bytes.get(o..o + n) {
            match *s {
                [a] => return u64::from(a),
                [a, b] => return u64::from(u16::from_le_bytes([a, b])),
                [a, b, c, d] => return u64::from(u32::from_le_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] => return u64::from_le_bytes([a, b, c, d, e, f, g, h]),
                _ => {}
            }
        }
        (0..n).fold(0, |acc, i| {
            let b = bytes.get(o + i).copied().unwrap_or(0);
            acc | u64::from(b) << (8 * i)
        })
    }

    /// Store `n` bytes (1-8) little-endian at `offset`; bytes outside 4 KiB are dropped.
    #[inline]
    fn put(&mut self, p: Plane, offset: u16, n: usize, v: u64) {
        let bytes = self.plane_mut(p);
        let (o, n) = (usize::from(offset), n.min(8));
        let le = v.to_le_bytes();
        if let Some(s) = bytes.get_mut(o..o + n) {
            match s.len() {
                1 => s.copy_from_slice(&le[..1]),
                2 => s.copy_from_slice(&le[..2]),
                4 => s.copy_from_slice(&le[..4]),
                8 => s.copy_from_slice(&le),
                _ => s.copy_from_slice(&le[..n]),
            }
            return;
        }
        for i in 0..n {
            if let Some(b) = bytes.get_mut(o + i) {
                *b = (v >> (8 * i)) as u8;
            }
        }
    }

    /// Install `registers`: each one's reset value, write mask and W1C mask (the whole width of
    /// each; bytes no register names keep theirs). Declare a capability's registers after adding
    /// the capability, which makes its bytes read-only.
    pub fn declare(&mut self, registers: &[Register]) {
        for r in registers {
            let n = usize::from(r.width.min(4));
            self.put(Plane::Value, r.offset, n, r.reset.into());
            self.put(Plane::Write, r.offset, n, r.writable.into());
            self.put(Plane::W1c, r.offset, n, r.w1c.into());
        }
    }

    /// Register byte at `offset` (no masks, no size check: the model's own view).
    #[inline]
    pub fn byte(&self, offset: u16) -> u8 {
        self.get(Plane::Value, offset, 1) as u8
    }
    /// Register word at `offset`.
    #[inline]
    pub fn word(&self, offset: u16) -> u16 {
        self.get(Plane::Value, offset, 2) as u16
    }
    /// Register dword at `offset`.
    #[inline]
    pub fn dword(&self, offset: u16) -> u32 {
        self.get(Plane::Value, offset, 4) as u32
    }
    /// Register qword at `offset`.
    #[inline]
    pub fn qword(&self, offset: u16) -> u64 {
        self.get(Plane::Value, offset, 8)
    }
    /// Set a register byte, bypassing the masks (hardware-side update).
    #[inline]
    pub fn set_byte(&mut self, offset: u16, v: u8) {
        self.put(Plane::Value, offset, 1, u64::from(v));
    }
    /// Set a register word, bypassing the masks.
    #[inline]
    pub fn set_word(&mut self, offset: u16, v: u16) {
        self.put(Plane::Value, offset, 2, u64::from(v));
    }
    /// Set a register dword, bypassing the masks.
    #[inline]
    pub fn set_dword(&mut self, offset: u16, v: u32) {
        self.put(Plane::Value, offset, 4, u64::from(v));
    }
    /// Set a register qword, bypassing the masks.
    #[inline]
    pub fn set_qword(&mut self, offset: u16, v: u64) {
        self.put(Plane::Value, offset, 8, v);
    }
    /// Set `bits` in the `n`-byte register at `offset`; returns the old value & `bits`
    /// (QEMU's `pci_*_test_and_set_mask`).
    pub fn set_bits(&mut self, offset: u16, n: usize, bits: u64) -> u64 {
        let old = self.get(Plane::Value, offset, n);
        self.put(Plane::Value, offset, n, old | bits);
        old & bits
    }
    /// Clear `bits` in the `n`-byte register at `offset`; returns the old value & `bits`
    /// (QEMU's `pci_*_test_and_clear_mask`).
    pub fn clear_bits(&mut self, offset: u16, n: usize, bits: u64) -> u64 {
        let old = self.get(Plane::Value, offset, n);
        self.put(Plane::Value, offset, n, old & !bits);
        old & bits
    }

    /// The write mask of the `n`-byte register at `offset`.
    pub fn wmask(&self, offset: u16, n: usize) -> u64 {
        self.get(Plane::Write, offset, n)
    }
    /// Replace the write mask of the `n`-byte register at `offset`.
    pub fn set_wmask(&mut self, offset: u16, n: usize, mask: u64) {
        self.put(Plane::Write, offset, n, mask);
    }
    /// Make `bits` of the `n`-byte register at `offset` writable.
    pub fn or_wmask(&mut self, offset: u16, n: usize, bits: u64) {
        let m = self.wmask(offset, n);
        self.set_wmask(offset, n, m | bits);
    }
    /// Make `bits` of the `n`-byte register at `offset` read-only.
    pub fn clear_wmask(&mut self, offset: u16, n: usize, bits: u64) {
        let m = self.wmask(offset, n);
        self.set_wmask(offset, n, m & !bits);
    }
    /// The write-1-to-clear mask of the `n`-byte register at `offset`.
    pub fn w1cmask(&self, offset: u16, n: usize) -> u64 {
        self.get(Plane::W1c, offset, n)
    }
    /// Replace the write-1-to-clear mask of the `n`-byte register at `offset`.
    pub fn set_w1cmask(&mut self, offset: u16, n: usize, mask: u64) {
        self.put(Plane::W1c, offset, n, mask);
    }
    /// Make `bits` of the `n`-byte register at `offset` write-1-to-clear.
    pub fn or_w1cmask(&mut self, offset: u16, n: usize, bits: u64) {
        let m = self.w1cmask(offset, n);
        self.set_w1cmask(offset, n, m | bits);
    }
    /// Make every byte in `range` fully writable (QEMU's `memset(wmask + ..., 0xff, ...)`).
    pub fn fill_wmask(&mut self, range: std::ops::Range<u16>) {
        for o in range {
            self.put(Plane::Write, o, 1, 0xff);
        }
    }

    /// Add a standard capability (PCI Local Bus 3.0 §6.7) of `size` bytes at `offset`, or in the
    /// first free gap from 0x40 when `offset` is `None`, as QEMU's `pci_add_capability()` does:
    /// the new capability becomes the head of the list, its bytes are read-only until the caller
    /// declares writable bits, and Status.Capabilities List is set. Returns the offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        offset: Option<u8>,
        size: u8,
    ) -> Result<u8, CapabilityError> {
        let at = match offset {
            Some(o) => {
                let (start, end) = (usize::from(o), usize::from(o) + usize::from(size));
                let free = start >= usize::from(CONFIG_HEADER_SIZE)
                    && end <= usize::from(PCI_CONFIG_SPACE_SIZE)
                    && !self.used[start..end].iter().any(|&u| u);
                if !free {
                    return Err(CapabilityError::Overlap {
                        id: id.into(),
                        offset: o.into(),
                        size: size.into(),
                    });
                }
                o
            }
            None => self
                .find_space(size)
                .ok_or(CapabilityError::NoSpace { id, size })?,
        };
        let (start, end) = (u16::from(at), u16::from(at) + u16::from(size));
        for o in start..end {
            self.used[usize::from(o)] = true;
            self.put(Plane::Write, o, 1, 0);
            self.put(Plane::W1c, o, 1, 0);
        }
        self.set_byte(start, id);
        let head = self.byte(CAPABILITY_LIST);
        self.set_byte(start + CAP_NEXT, head);
        self.set_byte(CAPABILITY_LIST, at);
        self.set_bits(STATUS, 2, STATUS_CAP_LIST);
        Ok(at)
    }

    /// QEMU's `pci_find_space()`: the first gap of `size` free bytes at or after 0x40.
    fn find_space(&self, size: u8) -> Option<u8> {
        let mut start = usize::from(CONFIG_HEADER_SIZE);
        for i in usize::from(CONFIG_HEADER_SIZE)..usize::from(PCI_CONFIG_SPACE_SIZE) {
            if self.used[i] {
                start = i + 1;
            } else if i + 1 - start == usize::from(size) {
                return u8::try_from(start).ok();
            }
        }
        None
    }

    /// Add an extended capability (PCIe Base 6.0 §7.6.3) at `offset` (dword aligned, at or after
    /// 0x100) and append it to the chain that starts at 0x100, as QEMU's `pcie_add_capability()`:
    /// the header is written for you and the capability's bytes are read-only until declared.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        offset: u16,
        size: u16,
    ) -> Result<u16, CapabilityError> {
        let end = usize::from(offset) + usize::from(size);
        let overlaps = self
            .ext_capabilities()
            .iter()
            .any(|&(_, _, o)| offset < o + 8 && o < offset + size);
        if offset < PCI_CONFIG_SPACE_SIZE
            || !offset.is_multiple_of(4)
            || size < 8
            || end > usize::from(self.size)
            || overlaps
        {
            return Err(CapabilityError::Overlap { id, offset, size });
        }
        if let Some(&(_, _, last)) = self.ext_capabilities().last() {
            let header = self.dword(last);
            let next = u32::from(offset) << EXT_CAP_NEXT_SHIFT;
            self.set_dword(last, (header & !(0xfff << EXT_CAP_NEXT_SHIFT)) | next);
        }
        self.set_dword(
            offset,
            u32::from(id) | (u32::from(version) & 0xf) << EXT_CAP_VERSION_SHIFT,
        );
        for o in offset..offset + size {
            self.put(Plane::Write, o, 1, 0);
            self.put(Plane::W1c, o, 1, 0);
        }
        Ok(offset)
    }

    /// The standard capability chain as (ID, offset), following the guest-visible pointers
    /// (bounded, so a corrupted chain cannot loop).
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut at = self.byte(CAPABILITY_LIST);
        while at != 0 && out.len() < 48 {
            out.push((self.byte(at.into()), at));
            at = self.byte(u16::from(at) + CAP_NEXT);
        }
        out
    }

    /// The extended capability chain as (ID, version, offset), starting at 0x100.
    pub fn ext_capabilities(&self) -> Vec<(u16, u8, u16)> {
        let mut out = Vec::new();
        if self.size < PCIE_CONFIG_SPACE_SIZE || self.dword(PCI_CONFIG_SPACE_SIZE) == 0 {
            return out;
        }
        let mut at = PCI_CONFIG_SPACE_SIZE;
        while at >= PCI_CONFIG_SPACE_SIZE && out.len() < 1024 {
            let h = self.dword(at);
            out.push((h as u16, (h >> EXT_CAP_VERSION_SHIFT & 0xf) as u8, at));
            at = (h >> EXT_CAP_NEXT_SHIFT) as u16 & 0xffc;
        }
        out
    }

    /// Offset of the first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.capabilities()
            .into_iter()
            .find(|&(i, _)| i == id)
            .map(|(_, o)| o)
    }

    /// The complete state as a serializable image (values and both masks).
    pub fn image(&self) -> SpaceImage {
        let n = usize::from(self.size);
        SpaceImage {
            size: self.size,
            value: hex(&self.value[..n]),
            wmask: hex(&self.wmask[..n]),
            w1cmask: hex(&self.w1cmask[..n]),
        }
    }

    /// How [`ConfigSpace::image`] differs from `old`'s when only register values changed: the
    /// changed bytes of `value` as `(offset, new bytes)`, runs closer than `gap` equal bytes
    /// merged into one; empty when the images are equal. `None` when the size or a mask
    /// differs (take a whole image then). Cheaper than comparing two images: a persisted write
    /// (`--state-file`) asks this after every change.
    pub fn value_changes(&self, old: &ConfigSpace, gap: usize) -> Option<Vec<(usize, &[u8])>> {
        let n = usize::from(self.size);
        if self.size != old.size
            || self.wmask[..n] != old.wmask[..n]
            || self.w1cmask[..n] != old.w1cmask[..n]
        {
            return None;
        }
        // Equal blocks are skipped with one compare each: a write changes a few registers.
        const BLOCK: usize = 32;
        let (new, old) = (&self.value[..n], &old.value[..n]);
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (b, (o, v)) in old.chunks(BLOCK).zip(new.chunks(BLOCK)).enumerate() {
            if o == v {
                continue;
            }
            for i in (0..v.len())
                .filter(|&i| o[i] != v[i])
                .map(|i| b * BLOCK + i)
            {
                match runs.last_mut() {
                    Some((_, end)) if i - *end <= gap => *end = i + 1,
                    _ => runs.push((i, i + 1)),
                }
            }
        }
        Some(runs.into_iter().map(|(s, e)| (s, &new[s..e])).collect())
    }

    /// Overwrite register values with `runs` as [`ConfigSpace::value_changes`] gave them
    /// (offset, bytes), masks untouched; bytes past the size are dropped. Brings a copy up to
    /// date with the space the runs came from without cloning it whole.
    pub fn set_values(&mut self, runs: &[(usize, &[u8])]) {
        let n = usize::from(self.size);
        for &(at, bytes) in runs {
            let end = at.saturating_add(bytes.len()).min(n);
            if at < end {
                self.value[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
    }

    /// Load an image made by [`ConfigSpace::image`] of a space with the same size. On error
    /// nothing changes. The capability allocation map is the model's and is kept.
    pub fn load_image(&mut self, image: &SpaceImage) -> Result<(), StateError> {
        if image.size != self.size {
            return Err(StateError::Size {
                found: image.size,
                expected: self.size,
            });
        }
        let n = usize::from(self.size);
        let value = unhex(&image.value, n).ok_or(StateError::Plane("value"))?;
        let wmask = unhex(&image.wmask, n).ok_or(StateError::Plane("wmask"))?;
        let w1cmask = unhex(&image.w1cmask, n).ok_or(StateError::Plane("w1cmask"))?;
        self.value[..n].copy_from_slice(&value);
        self.wmask[..n].copy_from_slice(&wmask);
        self.w1cmask[..n].copy_from_slice(&w1cmask);
        Ok(())
    }
}

/// Serialized [`ConfigSpace`]: the size and each per-byte array as lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceImage {
    /// 256 or 4096.
    pub size: u16,
    /// Register values.
    pub value: String,
    /// Write mask.
    pub wmask: String,
    /// Write-1-to-clear mask.
    pub w1cmask: String,
}

/// `bytes` as lowercase hex (the saved form of per-byte state).
pub fn hex(bytes: &[u8]) -> String {
    // A table into a byte buffer, not `format!` or `String::push` per byte: saved on every
    // persisted write (`--state-file`), 12 KiB of registers and masks per port.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = vec![0u8; 2 * bytes.len()];
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    // Only ASCII digits were written: this never fails.
    String::from_utf8(out).unwrap_or_default()
}

/// `n` bytes from the hex made by [`hex`]; `None` unless `s` is exactly that.
pub(crate) fn unhex(s: &str, n: usize) -> Option<Vec<u8>> {
    if s.len() != 2 * n || !s.is_ascii() {
        return None;
    }
    (0..n)
        .map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accessors read and write whole registers at once where they fit; the byte-by-byte
    /// rules (masks per byte, bytes past the size dropped or floating) must hold all the same,
    /// at every offset and width, the edges of a 256-byte and a 4 KiB space included.
    #[test]
    fn whole_register_accesses_follow_the_byte_rules() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for size in [PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE] {
            let mut cs = ConfigSpace::new(size);
            let n = usize::from(PCIE_CONFIG_SPACE_SIZE);
            let (mut value, mut wmask, mut w1c) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
            for o in 0..n {
                let (v, w, c) = (rand() as u8, rand() as u8, rand() as u8);
                let c = c & !w;
                (value[o], wmask[o], w1c[o]) = (v, w, c);
                let at = o as u16;
                cs.set_byte(at, v);
                cs.set_wmask(at, 1, w.into());
                cs.set_w1cmask(at, 1, c.into());
            }
            let edges = [
                0u16, 1, 2, 3, 0x3e, 0xfc, 0xfd, 0xfe, 0xff, 0x100, 0x101, 0xffc, 0xffd,
            ];
            let random: Vec<u16> = (0..200).map(|_| (rand() % 4096) as u16).collect();
            for offset in edges.into_iter().chain(random) {
                for width in [1u8, 2, 4] {
                    let data = rand() as u32;
                    cs.write(offset, width, data);
                    for i in 0..usize::from(width) {
                        let o = usize::from(offset) + i;
                        if o >= usize::from(size) {
                            break;
                        }
                        let d = (data >> (8 * i)) as u8;
                        value[o] = ((value[o] & !wmask[o]) | (d & wmask[o])) & !(d & w1c[o]);
                    }
                    let want = (0..usize::from(width)).fold(0u32, |acc, i| {
                        let o = usize::from(offset) + i;
                        let b = if o < usize::from(size) {
                            value[o]
                        } else {
                            0xff
                        };
                        acc | u32::from(b) << (8 * i)
                    });
                    assert_eq!(cs.read(offset, width), want, "{size}: {offset:#x}/{width}");
                    // The model's own view: no size check, zero past 4 KiB.
                    let raw = (0..8usize).fold(0u64, |acc, i| {
                        let b = value.get(usize::from(offset) + i).copied().unwrap_or(0);
                        acc | u64::from(b) << (8 * i)
                    });
                    assert_eq!(cs.qword(offset), raw, "{offset:#x}");
                    assert_eq!(cs.dword(offset), raw as u32, "{offset:#x}");
                    assert_eq!(cs.word(offset), raw as u16, "{offset:#x}");
                }
            }
        }
    }

    #[test]
    fn masks_and_w1c_per_byte() {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        cs.set_wmask(0x40, 2, 0x0ff0);
        cs.set_dword(0x44, 0x00ff_00ff);
        cs.set_w1cmask(0x44, 4, 0x0000_00f0);
        cs.write(0x40, 4, 0xffff_ffff);
        assert_eq!(cs.read(0x40, 4), 0x0000_0ff0);
        cs.write(0x41, 1, 0x00);
        assert_eq!(cs.read(0x40, 2), 0x00f0);
        // W1C: only bits that are set in both the data and the mask clear.
        cs.write(0x44, 4, 0x0000_0030);
        assert_eq!(cs.read(0x44, 4), 0x00ff_00cf);
        cs.write(0x44, 2, 0xffff);
        assert_eq!(cs.read(0x44, 4), 0x00ff_000f);
        assert_eq!(cs.read(0x46, 1), 0xff);
    }

    #[test]
    fn declared_registers_take_value_and_both_masks() {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        cs.declare(&[
            Register::ro(0x00, 4, 0x0005_1b36),
            Register::rw(0x04, 2, 0, 0x0006),
            Register::w1c(0x06, 2, 0x8010, 0xf900),
        ]);
        cs.write(0, 4, 0);
        assert_eq!(cs.read(0, 4), 0x0005_1b36, "read-only");
        cs.write(4, 2, 0xffff);
        assert_eq!(cs.read(4, 2), 0x0006);
        cs.write(6, 2, 0x8000);
        assert_eq!(cs.read(6, 2), 0x0010, "RW1C cleared, RO kept");
        cs.write(4, 1, 0x02);
        assert_eq!(cs.read(4, 4), 0x0010_0002, "byte writes touch one byte");
        assert_eq!((cs.wmask(6, 2), cs.w1cmask(6, 2)), (0, 0xf900));
    }

    #[test]
    fn reads_past_the_size_are_all_ones_and_writes_are_dropped() {
        let mut cs = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        cs.fill_wmask(0x40..0x100);
        assert_eq!(cs.read(0xfc, 4), 0);
        assert_eq!(cs.read(0x100, 4), 0xffff_ffff);
        assert_eq!(cs.read(0xffe, 2), 0xffff);
        assert_eq!(cs.read(0xfff, 1), 0xff);
        cs.write(0x100, 4, 0x1234_5678);
        assert_eq!(cs.dword(0x100), 0);
        // Defensive: nothing panics even for offsets the caller should have rejected.
        assert_eq!(cs.read(u16::MAX, 4), 0xffff_ffff);
        cs.write(u16::MAX, 4, 0);
    }

    #[test]
    fn standard_capabilities_chain_from_0x34_newest_first() {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        cs.fill_wmask(0x40..0x1000);
        assert_eq!(cs.add_capability(0x0d, Some(0x40), 8), Ok(0x40));
        assert_eq!(cs.add_capability(0x11, None, 12), Ok(0x48));
        assert_eq!(cs.add_capability(0x10, Some(0x54), 0x3c), Ok(0x54));
        assert_eq!(cs.add_capability(0x09, None, 0x20), Ok(0x90));
        assert_eq!(
            cs.capabilities(),
            vec![(0x09, 0x90), (0x10, 0x54), (0x11, 0x48), (0x0d, 0x40)]
        );
        assert_eq!(cs.word(STATUS) & 0x10, 0x10);
        assert_eq!(cs.wmask(0x48, 4), 0, "capability bytes start read-only");
        assert_eq!(
            cs.wmask(0xb0, 1),
            0xff,
            "bytes after the last capability stay writable"
        );
        assert!(cs.add_capability(0x05, Some(0x50), 8).is_err());
        assert!(cs.add_capability(0x05, Some(0x3c), 8).is_err());
        assert!(cs.add_capability(0x05, Some(0xfc), 8).is_err());
        assert_eq!(cs.find_capability(0x11), Some(0x48));
        assert_eq!(cs.find_capability(0x05), None);
    }

    #[test]
    fn extended_capabilities_append_to_the_chain_at_0x100() {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        assert_eq!(cs.ext_capabilities(), vec![]);
        assert_eq!(cs.add_ext_capability(0x0001, 2, 0x100, 0x48), Ok(0x100));
        assert_eq!(cs.add_ext_capability(0x000d, 1, 0x148, 8), Ok(0x148));
        assert_eq!(cs.dword(0x100), 0x1482_0001);
        assert_eq!(cs.dword(0x148), 0x0001_000d);
        assert_eq!(cs.ext_capabilities(), vec![(1, 2, 0x100), (0xd, 1, 0x148)]);
        assert!(cs.add_ext_capability(0x0002, 1, 0x14c, 8).is_err());
        assert!(cs.add_ext_capability(0x0002, 1, 0x0fc, 8).is_err());
        assert!(cs.add_ext_capability(0x0002, 1, 0xffc, 8).is_err());
        let conventional = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        assert_eq!(conventional.ext_capabilities(), vec![]);
    }

    #[test]
    fn image_round_trips_and_rejects_garbage() {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        cs.fill_wmask(0x40..0x80);
        cs.set_w1cmask(0x06, 2, 0xf900);
        cs.write(0x40, 4, 0xdead_beef);
        let img = cs.image();
        let mut other = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        other.load_image(&img).unwrap();
        assert_eq!(other, cs);
        let mut bad = img.clone();
        bad.value.replace_range(0..2, "zz");
        assert!(other.load_image(&bad).is_err());
        assert!(ConfigSpace::new(PCI_CONFIG_SPACE_SIZE)
            .load_image(&img)
            .is_err());
        bad = img;
        bad.wmask.pop();
        assert_eq!(other.load_image(&bad), Err(StateError::Plane("wmask")));
    }

    #[test]
    fn value_changes_are_the_bytes_that_differ_in_the_image() {
        let mut old = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        old.fill_wmask(0x40..0x1000);
        let mut cs = old.clone();
        assert_eq!(cs.value_changes(&old, 4), Some(vec![]));
        // Two bytes 4 apart merge; one byte 5 past the end of that run does not; a change
        // across the 32-byte block boundary and the last byte are found.
        cs.write(0x40, 1, 0x11);
        cs.write(0x45, 1, 0x22);
        cs.write(0x4b, 1, 0x33);
        cs.write(0x5f, 2, 0x4455);
        cs.write(0xfff, 1, 0x66);
        let runs = cs.value_changes(&old, 4).expect("values only");
        assert_eq!(
            runs,
            vec![
                (0x40, &[0x11, 0, 0, 0, 0, 0x22][..]),
                (0x4b, &[0x33][..]),
                (0x5f, &[0x55, 0x44][..]),
                (0xfff, &[0x66][..]),
            ]
        );
        // Applied to the old image's hex, the runs give the new image.
        let mut value = old.image().value.into_bytes();
        for (at, bytes) in &runs {
            value[2 * at..2 * (at + bytes.len())].copy_from_slice(hex(bytes).as_bytes());
        }
        assert_eq!(String::from_utf8(value).unwrap(), cs.image().value);
        // ... and set on a copy of the old space, they make it equal.
        let mut copy = old.clone();
        copy.set_values(&runs);
        assert_eq!(copy, cs);
        // A mask or the size changing is not a values-only change.
        let mut masked = cs.clone();
        masked.set_w1cmask(0x06, 2, 0xf900);
        assert_eq!(masked.value_changes(&old, 4), None);
        assert_eq!(
            ConfigSpace::new(PCI_CONFIG_SPACE_SIZE).value_changes(&old, 4),
            None
        );
    }

    #[test]
    fn hex_is_lowercase_and_unhex_inverts_it() {
        let bytes: Vec<u8> = (0..=255).collect();
        let h = hex(&bytes);
        assert_eq!(&h[..8], "00010203");
        assert_eq!(&h[h.len() - 4..], "feff");
        assert_eq!(unhex(&h, 256), Some(bytes));
    }
}
