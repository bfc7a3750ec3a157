//! A passed-through function's configuration space and BARs as the guest sees them: the
//! device's own, except for what a VMM must virtualise, as QEMU's vfio-pci and
//! cloud-hypervisor's `VfioPciDevice` do. Virtualised, in a shadow [`ConfigSpace`] of pcierc's
//! configuration-space engine:
//! - the BARs (PCI Local Bus 3.0 §6.2.5.1): the guest places them at guest addresses and sizes
//!   them with all ones; the device keeps the host's addresses;
//! - the Expansion ROM BAR (§6.2.5.2): reads 0, no ROM is exposed (docs/passthrough.md);
//! - Interrupt Line (§6.2.4): the guest's scratch register;
//! - the MSI-X capability's Message Control, and the table and PBA in their BAR (PCIe Base 6.0
//!   §7.7.2): the guest programs messages for guest interrupts, the VMM gives the host kernel
//!   an eventfd per vector (`VFIO_DEVICE_SET_IRQS`) and KVM turns each into the guest's message;
//! - the MSI capability is taken out of the capability list (the pointer to it skips it): the
//!   guest uses MSI-X, or INTx when the device has no MSI-X.
//!
//! Everything else, the extended capabilities (AER, Device Serial Number, ...) included, reads
//! and writes the device through VFIO's configuration region.
//!
//! The model talks to the device through [`DeviceIo`], so it is tested against a made-up device.

use pcierc_config_space::header::{self, BAR_MEM_PREFETCH, BAR_MEM_TYPE_64};
use pcierc_config_space::{ConfigSpace, Delivery, Message, Msix, MsixLayout};

/// Reads and writes of the real device: its configuration space and its BARs.
pub trait DeviceIo: Send {
    /// Read `buf.len()` bytes of configuration space at `offset` (all ones if the device
    /// cannot be read: it is gone).
    fn config_read(&self, offset: u16, buf: &mut [u8]);
    /// Write configuration space at `offset`.
    fn config_write(&self, offset: u16, data: &[u8]);
    /// Read BAR `bar` at `offset`.
    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]);
    /// Write BAR `bar` at `offset`.
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]);
}

impl DeviceIo for vfio_ioctls::VfioDevice {
    fn config_read(&self, offset: u16, buf: &mut [u8]) {
        buf.fill(0xff);
        self.region_read(
            vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX,
            buf,
            u64::from(offset),
        );
    }
    fn config_write(&self, offset: u16, data: &[u8]) {
        self.region_write(
            vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX,
            data,
            u64::from(offset),
        );
    }
    fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) {
        buf.fill(0xff);
        self.region_read(u32::from(bar), buf, offset);
    }
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        self.region_write(u32::from(bar), data, offset);
    }
}

const COMMAND: u16 = 0x04;
const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const STATUS_CAP_LIST: u16 = 1 << 4;
const BAR0: u16 = 0x10;
const ROM: u16 = 0x30;
const CAP_POINTER: u16 = 0x34;
const INTERRUPT_LINE: u16 = 0x3c;
/// Capability IDs (PCI Code and ID Assignment Specification): MSI, MSI-X.
const CAP_ID_MSI: u8 = 0x05;
const CAP_ID_MSIX: u8 = 0x11;
/// The size of configuration space (PCIe Base 6.0 §7.2.2).
pub const CONFIG_SIZE: u16 = 0x1000;

/// One BAR the device implements.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0-5; a 64-bit BAR also uses `index + 1`).
    pub index: u8,
    /// Size (a power of two).
    pub size: u64,
    /// I/O space rather than memory.
    pub io: bool,
    /// 64-bit memory BAR.
    pub is64: bool,
    /// Prefetchable memory.
    pub prefetch: bool,
}

/// Where the device's MSI-X table and PBA are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MsixPlace {
    /// The capability's offset.
    pub cap: u16,
    /// Vectors.
    pub vectors: u16,
    /// BAR and offset of the table.
    pub table: (u8, u64),
    /// BAR and offset of the PBA.
    pub pba: (u8, u64),
}

/// What a guest write changed that the VMM must apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// BAR addresses or Memory/I/O Space Enable changed: re-map the BARs.
    pub bars: bool,
    /// MSI-X was enabled (`Some(true)`) or disabled (`Some(false)`).
    pub msix_enabled: Option<bool>,
    /// Vectors whose route changed (now its message when it may fire, `None` when masked).
    pub routes: Vec<(u16, Option<Message>)>,
    /// Vectors whose pending message must be sent now (unmasked while pending).
    pub send: Vec<(u16, Message)>,
}

/// The guest's view of one passed-through function.
pub struct Passthrough<D: DeviceIo> {
    io: D,
    bars: Vec<Bar>,
    shadow: ConfigSpace,
    /// Bytes served from `shadow` rather than the device.
    virtual_bytes: Vec<bool>,
    msix: Option<(Msix, MsixPlace)>,
    /// The MSI capability's offset, when the device has one (taken out of the list).
    msi: Option<u16>,
}

impl<D: DeviceIo> Passthrough<D> {
    /// Describe the device: `bar_sizes[i]` is VFIO's size of region `i` (0 where none). Reads
    /// its BAR types and walks its capability list.
    pub fn new(io: D, bar_sizes: [u64; 6]) -> Passthrough<D> {
        let mut shadow = ConfigSpace::new(CONFIG_SIZE);
        let mut virtual_bytes = vec![false; usize::from(CONFIG_SIZE)];
        let mut virtualise = |from: u16, len: u16| {
            for b in from..from + len {
                virtual_bytes[usize::from(b)] = true;
            }
        };
        virtualise(BAR0, 24);
        virtualise(ROM, 4);
        virtualise(INTERRUPT_LINE, 1);
        shadow.set_wmask(INTERRUPT_LINE, 1, 0xff);

        let read32 = |io: &D, off: u16| {
            let mut b = [0u8; 4];
            io.config_read(off, &mut b);
            u32::from_le_bytes(b)
        };
        let mut bars = Vec::new();
        let mut i = 0u8;
        while i < 6 {
            let raw = read32(&io, BAR0 + 4 * u16::from(i));
            let size = bar_sizes[usize::from(i)];
            let io_bar = raw & 1 == 1;
            let is64 = !io_bar && raw & 0b110 == BAR_MEM_TYPE_64;
            if size.is_power_of_two() && raw != u32::MAX {
                let bar = Bar {
                    index: i,
                    size,
                    io: io_bar,
                    is64: is64 && i < 5,
                    prefetch: !io_bar && raw & BAR_MEM_PREFETCH != 0,
                };
                register_bar(&mut shadow, bar);
                bars.push(bar);
            }
            i += if is64 { 2 } else { 1 };
        }

        // Walk the capability list (PCI Local Bus 3.0 §6.7), bounded against loops.
        let mut msi = None;
        let mut msix = None;
        let mut pointer_to_msi = None;
        let status = read32(&io, COMMAND) >> 16;
        let mut at_ptr = CAP_POINTER;
        let mut next = if status as u16 & STATUS_CAP_LIST != 0 {
            (read32(&io, CAP_POINTER) & 0xfc) as u16
        } else {
            0
        };
        for _ in 0..48 {
            if !(0x40..=0xfc).contains(&next) {
                break;
            }
            let head = read32(&io, next);
            match head as u8 {
                CAP_ID_MSI => {
                    msi = Some(next);
                    pointer_to_msi = Some((at_ptr, (head >> 8) as u8 & 0xfc));
                }
                CAP_ID_MSIX => {
                    let table = read32(&io, next + 4);
                    let pba = read32(&io, next + 8);
                    msix = Some(MsixPlace {
                        cap: next,
                        vectors: ((head >> 16) as u16 & 0x7ff) + 1,
                        table: ((table & 7) as u8, u64::from(table & !7)),
                        pba: ((pba & 7) as u8, u64::from(pba & !7)),
                    });
                }
                _ => {}
            }
            at_ptr = next + 1;
            next = ((head >> 8) & 0xfc) as u16;
        }
        let msix = msix.and_then(|place| {
            let layout = MsixLayout {
                cap: u8::try_from(place.cap).ok(),
                entries: place.vectors,
                table_bar: place.table.0,
                table_offset: u32::try_from(place.table.1).ok()?,
                pba_bar: place.pba.0,
                pba_offset: u32::try_from(place.pba.1).ok()?,
                entry_bits: Default::default(),
            };
            let m = Msix::new(&mut shadow, layout).ok()?;
            // Message Control, Table and PBA Offset/BIR from the shadow; the ID and next
            // pointer stay the device's.
            virtualise(place.cap + 2, 10);
            Some((m, place))
        });
        // After the MSI-X capability: adding it to the shadow wrote the shadow's own list head.
        if let Some((ptr, skip_to)) = pointer_to_msi {
            virtualise(ptr, 1);
            shadow.set_byte(ptr, skip_to);
        }
        Passthrough {
            io,
            bars,
            shadow,
            virtual_bytes,
            msix,
            msi,
        }
    }

    /// The BARs the device implements.
    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    /// Where the MSI-X table and PBA are, if the device has MSI-X.
    pub fn msix_place(&self) -> Option<MsixPlace> {
        self.msix.as_ref().map(|(_, p)| *p)
    }

    /// The MSI capability's offset, hidden from the guest.
    pub fn hidden_msi(&self) -> Option<u16> {
        self.msi
    }

    /// The device's I/O.
    pub fn io(&self) -> &D {
        &self.io
    }

    /// A configuration read (`width` 1, 2 or 4, aligned: the caller checked).
    pub fn config_read(&self, offset: u16, width: u8) -> u32 {
        let mut buf = [0u8; 4];
        let n = usize::from(width.min(4));
        self.io.config_read(offset, &mut buf[..n]);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = offset + i as u16;
            if self.virtual_bytes.get(usize::from(at)) == Some(&true) {
                *b = self.shadow.byte(at);
            }
        }
        u32::from_le_bytes(buf)
    }

    /// A configuration write; what the VMM must apply.
    pub fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Changes {
        let n = u16::from(width.min(4));
        let bytes = value.to_le_bytes();
        let mut changes = Changes::default();
        // Routes change only with MSI-X Enable or Function Mask (the capability's Message
        // Control): other writes need not compare every vector's route.
        let control = self
            .msix
            .as_ref()
            .is_some_and(|(_, p)| header::overlaps(offset, width, p.cap + 2, 2));
        let msix_before = if control {
            self.msix_routes()
        } else {
            Vec::new()
        };
        let enabled_before = self
            .msix
            .as_ref()
            .is_some_and(|(m, _)| m.enabled(&self.shadow));
        let is_virtual = |at: u16| self.virtual_bytes.get(usize::from(at)) == Some(&true);
        if (offset..offset + n).all(|at| !is_virtual(at) && !self.in_hidden_msi(at)) {
            // All the device's: one write of the whole access, as the guest made it.
            self.io.config_write(offset, &bytes[..usize::from(n)]);
        } else {
            self.write_mixed(offset, &bytes[..usize::from(n)], &mut changes);
        }
        changes.bars |= header::overlaps(offset, width, COMMAND, 1);
        if let Some((m, _)) = &mut self.msix {
            let (_, fired) = m.write_config(&self.shadow, offset, width);
            let enabled = m.enabled(&self.shadow);
            if enabled != enabled_before {
                changes.msix_enabled = Some(enabled);
            }
            for d in fired {
                if let Delivery::Sent(v) = d {
                    if let Some(msg) = m.message(v) {
                        changes.send.push((v, msg));
                    }
                }
            }
        }
        if control {
            changes.routes = diff_routes(&msix_before, &self.msix_routes());
        }
        changes
    }

    /// A write that touches virtualised bytes: byte by byte, each to the shadow or the device
    /// (bytes of the hidden MSI capability go nowhere).
    fn write_mixed(&mut self, offset: u16, bytes: &[u8], changes: &mut Changes) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset + i as u16;
            if self.virtual_bytes.get(usize::from(at)) == Some(&true) {
                self.shadow.write(at, 1, u32::from(b));
                changes.bars |= (BAR0..BAR0 + 24).contains(&at);
            } else if !self.in_hidden_msi(at) {
                self.io.config_write(at, &[b]);
            }
        }
    }

    fn in_hidden_msi(&self, at: u16) -> bool {
        // The MSI capability is at most 24 bytes (PCIe Base 6.0 §7.7.1).
        self.msi.is_some_and(|m| at >= m && at < m + 24)
    }

    /// Each vector's message when it may fire, `None` when masked or MSI-X is off.
    fn msix_routes(&self) -> Vec<Option<Message>> {
        let Some((m, _)) = &self.msix else {
            return Vec::new();
        };
        (0..m.entries())
            .map(|v| {
                let may_fire = m.enabled(&self.shadow) && !m.is_masked(v);
                may_fire.then(|| m.message(v)).flatten()
            })
            .collect()
    }

    /// Which memory or I/O BARs decode now: (BAR, guest address). Memory BARs need Memory Space
    /// Enable, I/O BARs I/O Space Enable, in the device's Command register.
    pub fn decoded(&self) -> Vec<(Bar, u64)> {
        let command = self.config_read(COMMAND, 2) as u16;
        self.bars
            .iter()
            .filter_map(|&bar| {
                let reg = BAR0 + 4 * u16::from(bar.index);
                let enabled = command & if bar.io { COMMAND_IO } else { COMMAND_MEMORY } != 0;
                let low = u64::from(self.shadow.dword(reg));
                let base = if bar.is64 {
                    low | u64::from(self.shadow.dword(reg + 4)) << 32
                } else {
                    low
                } & !(bar.size - 1)
                    & if bar.io { !3 } else { !0xf };
                (enabled && base != 0).then_some((bar, base))
            })
            .collect()
    }

    /// Read `buf.len()` bytes at `offset` of BAR `bar`: the MSI-X table and PBA from the model,
    /// the rest from the device.
    pub fn bar_read(&self, bar: u8, offset: u64, buf: &mut [u8]) {
        if let Some((m, place)) = &self.msix {
            if let Some(part) = msix_access(place, bar, offset, buf.len()) {
                // Dword by dword (a qword access is two), each byte from its dword.
                for (i, b) in buf.iter_mut().enumerate() {
                    let value = match part {
                        MsixPart::Table(o) => m.table_read32(o + i as u32),
                        MsixPart::Pba(o) => m.pba_read32(o + i as u32),
                    };
                    *b = (value >> (8 * ((offset + i as u64) % 4))) as u8;
                }
                return;
            }
        }
        self.io.bar_read(bar, offset, buf);
    }

    /// Write at `offset` of BAR `bar`: the MSI-X table to the model (the PBA is read-only),
    /// the rest to the device.
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Changes {
        let mut changes = Changes::default();
        let in_msix = self
            .msix
            .as_ref()
            .is_some_and(|(_, place)| msix_access(place, bar, offset, data.len()).is_some());
        if !in_msix {
            // The device's own registers: the hot path, straight to the device.
            self.io.bar_write(bar, offset, data);
            return changes;
        }
        let before = self.msix_routes();
        if let Some((m, place)) = &mut self.msix {
            if let Some(part) = msix_access(place, bar, offset, data.len()) {
                // Dword or qword writes to the table (PCIe Base 6.0 §6.1.4.2: software uses
                // aligned full dword or qword accesses); the PBA is read-only.
                if let (MsixPart::Table(o), 4 | 8) = (part, data.len()) {
                    for (i, d) in data.chunks_exact(4).enumerate() {
                        let value = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                        let at = o + 4 * i as u32;
                        if let Delivery::Sent(v) = m.table_write32(&self.shadow, at, value) {
                            if let Some(msg) = m.message(v) {
                                changes.send.push((v, msg));
                            }
                        }
                    }
                }
                changes.routes = diff_routes(&before, &self.msix_routes());
                return changes;
            }
        }
        self.io.bar_write(bar, offset, data);
        changes
    }

    /// A vector fired while masked (its eventfd was read by the VMM): set its pending bit, or
    /// the message to send if it may fire now.
    pub fn vector_fired(&mut self, vector: u16) -> Option<Message> {
        let (m, _) = self.msix.as_mut()?;
        match m.notify(&self.shadow, vector) {
            Delivery::Sent(v) => m.message(v),
            _ => None,
        }
    }

    /// Back to the state after a function reset: the guest's BARs, Interrupt Line and MSI-X
    /// state cleared (the device itself is reset by the caller through VFIO); the routes and
    /// MSI-X enable that changed.
    pub fn reset(&mut self) -> Changes {
        let before = self.msix_routes();
        let enabled_before = self
            .msix
            .as_ref()
            .is_some_and(|(m, _)| m.enabled(&self.shadow));
        let indices: Vec<u8> = self.bars.iter().map(|b| b.index).collect();
        for &i in &indices {
            self.shadow.set_dword(BAR0 + 4 * u16::from(i), 0);
        }
        for bar in self.bars.clone() {
            register_bar(&mut self.shadow, bar);
        }
        self.shadow.set_byte(INTERRUPT_LINE, 0);
        if let Some((m, _)) = &mut self.msix {
            m.reset(&mut self.shadow);
        }
        Changes {
            bars: true,
            msix_enabled: enabled_before.then_some(false),
            routes: diff_routes(&before, &self.msix_routes()),
            send: Vec::new(),
        }
    }
}

/// Register `bar` in the shadow: writable address bits above its size, read-only type bits.
fn register_bar(shadow: &mut ConfigSpace, bar: Bar) {
    let reg = BAR0 + 4 * u16::from(bar.index);
    if bar.io {
        shadow.set_wmask(reg, 4, u64::from(!(bar.size.max(4) as u32 - 1)));
        shadow.set_dword(reg, 1);
    } else if bar.is64 {
        header::register_memory_bar64(shadow, bar.index, bar.size, bar.prefetch);
    } else {
        header::register_memory_bar32(shadow, bar.index, bar.size.min(1 << 31) as u32);
        if bar.prefetch {
            shadow.set_dword(reg, BAR_MEM_PREFETCH);
        }
    }
}

/// A dword of the MSI-X table or PBA that a BAR access falls in (offset relative to it).
#[derive(Copy, Clone)]
enum MsixPart {
    Table(u32),
    Pba(u32),
}

fn msix_access(place: &MsixPlace, bar: u8, offset: u64, len: usize) -> Option<MsixPart> {
    let table_len = u64::from(place.vectors) * 16;
    let pba_len = u64::from(place.vectors).div_ceil(64) * 8;
    let end = offset + len as u64;
    let inside = |(b, o): (u8, u64), n: u64| b == bar && offset >= o && end <= o + n;
    if inside(place.table, table_len) {
        return u32::try_from(offset - place.table.1)
            .ok()
            .map(MsixPart::Table);
    }
    if inside(place.pba, pba_len) {
        return u32::try_from(offset - place.pba.1).ok().map(MsixPart::Pba);
    }
    None
}

fn diff_routes(
    before: &[Option<Message>],
    after: &[Option<Message>],
) -> Vec<(u16, Option<Message>)> {
    after
        .iter()
        .enumerate()
        .filter(|(i, r)| before.get(*i) != Some(r))
        .map(|(i, r)| (i as u16, *r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A made-up e1000e-like function: BAR0 32-bit memory 128 KiB, BAR2 I/O 32 bytes, BAR3
    /// 32-bit memory 16 KiB with the MSI-X table (5 vectors) at 0 and the PBA at 0x2000;
    /// capabilities PM (0xc8) -> MSI (0xd0) -> PCIe (0xe0) -> MSI-X (0xa0); AER at 0x100.
    struct Fake {
        cfg: Mutex<Vec<u8>>,
        writes: Mutex<Vec<(u16, u8)>>,
        bar_writes: Mutex<Vec<(u8, u64, Vec<u8>)>>,
    }

    fn fake() -> Fake {
        let mut c = vec![0u8; 4096];
        let mut put = |off: usize, v: u32, n: usize| {
            c[off..off + n].copy_from_slice(&v.to_le_bytes()[..n]);
        };
        put(0x00, 0x10d3_8086, 4);
        put(0x06, 0x0010, 2); // Status: Capabilities List
        put(0x08, 0x0200_0000, 4);
        put(0x10, 0xfebc_0000, 4); // BAR0: host address, 32-bit memory
        put(0x18, 0xc001, 4); // BAR2: I/O
        put(0x1c, 0xfebf_0000, 4); // BAR3
        put(0x30, 0xfeb8_0000, 4); // ROM
        put(0x34, 0xc8, 1);
        put(0x3d, 0x01, 1);
        put(0xc8, 0x0002_d001, 4); // PM -> 0xd0
        put(0xd0, 0x0080_e005, 4); // MSI -> 0xe0
        put(0xe0, 0x0002_a010, 4); // PCIe -> 0xa0
        put(0xa0, 0x0004_0011, 4); // MSI-X, 5 vectors, -> end
        put(0xa4, 0x0000_0003, 4); // table BAR3 offset 0
        put(0xa8, 0x0000_2003, 4); // PBA BAR3 offset 0x2000
        put(0x100, 0x1401_0001, 4); // AER v1 -> 0x140
        Fake {
            cfg: Mutex::new(c),
            writes: Mutex::new(Vec::new()),
            bar_writes: Mutex::new(Vec::new()),
        }
    }

    impl DeviceIo for Fake {
        fn config_read(&self, offset: u16, buf: &mut [u8]) {
            let c = self.cfg.lock().unwrap();
            let o = usize::from(offset);
            buf.copy_from_slice(&c[o..o + buf.len()]);
        }
        fn config_write(&self, offset: u16, data: &[u8]) {
            let mut c = self.cfg.lock().unwrap();
            for (i, &b) in data.iter().enumerate() {
                let at = offset + i as u16;
                c[usize::from(at)] = b;
                self.writes.lock().unwrap().push((at, b));
            }
        }
        fn bar_read(&self, _bar: u8, _offset: u64, buf: &mut [u8]) {
            buf.fill(0x5a);
        }
        fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
            self.bar_writes
                .lock()
                .unwrap()
                .push((bar, offset, data.to_vec()));
        }
    }

    fn device() -> Passthrough<Fake> {
        Passthrough::new(fake(), [128 << 10, 0, 32, 16 << 10, 0, 0])
    }

    #[test]
    fn bars_are_sized_and_placed_by_the_guest_not_the_device() {
        let mut d = device();
        assert_eq!(
            d.bars().iter().map(|b| (b.index, b.io)).collect::<Vec<_>>(),
            vec![(0, false), (2, true), (3, false)]
        );
        // The guest sees no host address; sizing with all ones reads the size back.
        assert_eq!(d.config_read(0x10, 4), 0);
        d.config_write(0x10, 4, u32::MAX);
        assert_eq!(d.config_read(0x10, 4), !(128 << 10) + 1);
        assert_eq!(d.config_read(0x18, 4) & 3, 1, "I/O BAR type bit");
        d.config_write(0x18, 4, u32::MAX);
        assert_eq!(d.config_read(0x18, 4), !31 | 1);
        assert_eq!(d.config_read(0x14, 4), 0, "no BAR1");
        assert_eq!(d.config_read(0x30, 4), 0, "no ROM exposed");
        assert!(
            d.io()
                .writes
                .lock()
                .unwrap()
                .iter()
                .all(|(o, _)| !(0x10..0x34).contains(o)),
            "BAR writes never reach the device"
        );
        // Placed and decoded once Memory/I/O Space Enable reach the device.
        d.config_write(0x10, 4, 0xc000_0000);
        d.config_write(0x18, 4, 0x1000);
        d.config_write(0x1c, 4, 0xc002_0000);
        assert!(d.decoded().is_empty());
        let c = d.config_write(0x04, 2, 0x0003);
        assert!(c.bars);
        assert_eq!(
            d.io().cfg.lock().unwrap()[4] & 3,
            3,
            "Command reaches the device"
        );
        let decoded: Vec<(u8, u64)> = d.decoded().iter().map(|(b, a)| (b.index, *a)).collect();
        assert_eq!(
            decoded,
            vec![(0, 0xc000_0000), (2, 0x1000), (3, 0xc002_0000)]
        );
    }

    #[test]
    fn msi_is_left_out_of_the_capability_list_and_the_rest_is_the_devices() {
        let mut d = device();
        assert_eq!(d.hidden_msi(), Some(0xd0));
        let mut chain = Vec::new();
        let mut next = d.config_read(0x34, 1) as u16;
        while next != 0 {
            chain.push((next, d.config_read(next, 1) as u8));
            next = d.config_read(next + 1, 1) as u16;
        }
        assert_eq!(chain, vec![(0xc8, 0x01), (0xe0, 0x10), (0xa0, 0x11)]);
        // Extended capabilities and other registers are the device's, both ways.
        assert_eq!(d.config_read(0x100, 4), 0x1401_0001);
        d.config_write(0xe8, 2, 0x2810);
        assert_eq!(d.config_read(0xe8, 2), 0x2810);
        assert!(d.io().writes.lock().unwrap().contains(&(0xe8, 0x10)));
        // Writes to the hidden MSI capability go nowhere.
        let before = d.io().writes.lock().unwrap().len();
        d.config_write(0xd2, 2, 0x0001);
        assert_eq!(d.io().writes.lock().unwrap().len(), before);
        // Interrupt Line is the guest's; Interrupt Pin the device's.
        d.config_write(0x3c, 1, 0x0b);
        assert_eq!(d.config_read(0x3c, 2), 0x010b);
    }

    #[test]
    fn msi_first_in_the_list_is_skipped_from_the_capabilities_pointer() {
        let f = fake();
        {
            let mut c = f.cfg.lock().unwrap();
            c[0x34] = 0xd0; // MSI first: MSI -> PCIe -> MSI-X
        }
        let d = Passthrough::new(f, [128 << 10, 0, 32, 16 << 10, 0, 0]);
        assert_eq!(d.config_read(0x34, 1), 0xe0);
        assert_eq!(d.config_read(0xe1, 1), 0xa0);
    }

    #[test]
    fn msix_vectors_route_when_enabled_and_unmasked_and_pend_while_masked() {
        let mut d = device();
        let place = d.msix_place().unwrap();
        assert_eq!(
            (place.vectors, place.table, place.pba),
            (5, (3, 0), (3, 0x2000))
        );
        assert_eq!(
            d.config_read(0xa2, 2) & 0x7ff,
            4,
            "Table Size from the device"
        );
        // Program vector 1 (masked at reset), then enable MSI-X.
        let write =
            |d: &mut Passthrough<Fake>, off: u64, v: u32| d.bar_write(3, off, &v.to_le_bytes());
        write(&mut d, 0x10, 0xfee0_0000);
        write(&mut d, 0x14, 0);
        write(&mut d, 0x18, 0x4041);
        let c = d.config_write(0xa2, 2, 0x8000);
        assert_eq!(c.msix_enabled, Some(true));
        assert!(c.routes.is_empty(), "still masked: {c:?}");
        // Unmask: vector 1 routes to its message.
        let c = write(&mut d, 0x1c, 0);
        let msg = Message {
            address: 0xfee0_0000,
            data: 0x4041,
        };
        assert_eq!(c.routes, vec![(1, Some(msg))]);
        assert!(
            d.io().bar_writes.lock().unwrap().is_empty(),
            "the table is the VMM's"
        );
        // Masked, it pends (PBA bit 1) and is sent when unmasked.
        assert_eq!(write(&mut d, 0x1c, 1).routes, vec![(1, None)]);
        assert_eq!(d.vector_fired(1), None);
        let mut pba = [0u8; 8];
        d.bar_read(3, 0x2000, &mut pba);
        assert_eq!(pba[0], 0b10);
        let c = write(&mut d, 0x1c, 0);
        assert_eq!((c.routes, c.send), (vec![(1, Some(msg))], vec![(1, msg)]));
        // Function Mask masks every vector; other BAR3 offsets are the device's.
        assert_eq!(d.config_write(0xa2, 2, 0xc000).routes, vec![(1, None)]);
        let mut other = [0u8; 4];
        d.bar_read(3, 0x3000, &mut other);
        assert_eq!(other, [0x5a; 4]);
        let c = d.config_write(0xa2, 2, 0x8000);
        assert_eq!(c.routes, vec![(1, Some(msg))]);
        let c = d.reset();
        assert_eq!((c.msix_enabled, c.routes), (Some(false), vec![(1, None)]));
        assert_eq!(d.config_read(0xa2, 2), 4);
        let mut entry = [0u8; 4];
        d.bar_read(3, 0x1c, &mut entry);
        assert_eq!(entry[0] & 1, 1, "masked after reset");
    }
}
