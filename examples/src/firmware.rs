//! A firmware-style enumerator: enable ECAM through the MCH's PCIEXBAR with configuration
//! mechanism #1, scan every bus through ECAM, number the buses behind bridges depth first (honouring
//! QEMU's resource-reserve capability, as SeaBIOS and OVMF do), assign BARs and bridge windows,
//! enable decode, then read everything back. Extra PCI segments (beyond QEMU) are scanned the same
//! way through their fixed ECAM windows, from the MCFG-like list of pcierc's topology
//! ([`enumerate_segments`]), sharing the address pools with segment 0.

use std::collections::BTreeMap;
use std::fmt;

/// A trapped-access path into the platform, as a VMM has it.
pub trait GuestBus {
    /// Port-I/O read.
    fn pio_read(&mut self, port: u16, width: u8) -> Result<u32, BusError>;
    /// Port-I/O write.
    fn pio_write(&mut self, port: u16, width: u8, value: u32) -> Result<(), BusError>;
    /// MMIO read.
    fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64, BusError>;
    /// MMIO write.
    fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<(), BusError>;
}

/// A failed access or an inconsistency found while enumerating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// The function is served by another emulator (the VMM would forward the access there).
    Remote,
    /// Any other failure, described.
    Failed(String),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Remote => write!(f, "function is served by another emulator"),
            BusError::Failed(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for BusError {}

/// Where the firmware puts things (the defaults match QEMU's q35 with SeaBIOS).
#[derive(Clone, Debug)]
pub struct Layout {
    /// ECAM base written to PCIEXBAR (256 buses).
    pub ecam_base: u64,
    /// First address of the 32-bit MMIO pool (BARs and non-prefetchable windows).
    pub mem32_base: u64,
    /// First address of the 64-bit prefetchable pool.
    pub mem64_base: u64,
    /// First I/O port of the I/O pool.
    pub io_base: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            ecam_base: 0xb000_0000,
            mem32_base: 0xc000_0000,
            mem64_base: 0x80_0000_0000,
            io_base: 0x1000,
        }
    }
}

/// A function the scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Bus number.
    pub bus: u8,
    /// Device/function.
    pub devfn: u8,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (24 bits).
    pub class: u32,
    /// Header type (without the multifunction bit).
    pub header_type: u8,
    /// For bridges: (primary, secondary, subordinate) as programmed and read back.
    pub buses: Option<(u8, u8, u8)>,
    /// For bridges: programmed windows (io, mem, pref) as `(base, limit)` read back.
    pub windows: Option<[(u64, u64); 3]>,
    /// Memory BARs assigned: (index, address, size).
    pub bars: Vec<(u8, u64, u64)>,
    /// Extended capability IDs found from 0x100 (PCIe Base 6.0 §7.6).
    pub ext_caps: Vec<u16>,
    /// Standard capability IDs found from the capabilities pointer.
    pub caps: Vec<u8>,
}

/// The result of an enumeration.
#[derive(Clone, Debug, Default)]
pub struct Enumeration {
    /// Every function pcierc answered for, in scan order.
    pub functions: Vec<Found>,
    /// Functions that exist but are served by another emulator: (bus, devfn).
    pub remote: Vec<(u8, u8)>,
    /// Highest bus number assigned.
    pub last_bus: u8,
    /// Config reads and writes performed.
    pub accesses: u64,
}

struct Walker<'a> {
    bus: &'a mut dyn GuestBus,
    layout: Layout,
    next_bus: u8,
    mem32: u64,
    mem64: u64,
    io: u32,
    out: Enumeration,
}

struct CapScan {
    caps: Vec<u8>,
    ext: Vec<u16>,
    reserve: Option<u16>,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Walker<'_> {
    fn addr(&self, bus: u8, devfn: u8, off: u16) -> u64 {
        // PCIe Base 6.0 §7.2.2 (a window need only be 1 MiB aligned: add, not or).
        self.layout.ecam_base + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(off))
    }
    fn rd(&mut self, bus: u8, devfn: u8, off: u16, w: u8) -> Result<u32, BusError> {
        self.out.accesses += 1;
        Ok(self.bus.mmio_read(self.addr(bus, devfn, off), w)? as u32)
    }
    fn wr(&mut self, bus: u8, devfn: u8, off: u16, w: u8, v: u32) -> Result<(), BusError> {
        self.out.accesses += 1;
        self.bus
            .mmio_write(self.addr(bus, devfn, off), w, u64::from(v))
    }

    fn scan_bus(&mut self, bus: u8) -> Result<(), BusError> {
        for dev in 0..32u8 {
            for func in 0..8u8 {
                let devfn = dev << 3 | func;
                let id = match self.rd(bus, devfn, 0, 4) {
                    Ok(v) => v,
                    Err(BusError::Remote) => {
                        self.out.remote.push((bus, devfn));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if id as u16 == 0xffff {
                    if func == 0 {
                        break;
                    }
                    continue;
                }
                let header = (self.rd(bus, devfn, 0xc, 4)? >> 16) as u8;
                self.function(bus, devfn, id, header)?;
                if func == 0 && header & 0x80 == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Standard capability IDs, extended capability IDs, and the offset of QEMU's
    /// resource-reserve capability if present.
    fn caps(&mut self, bus: u8, devfn: u8) -> Result<CapScan, BusError> {
        let mut caps = Vec::new();
        let mut reserve = None;
        let status = self.rd(bus, devfn, 6, 2)?;
        if status & 0x10 != 0 {
            let mut ptr = self.rd(bus, devfn, 0x34, 1)? as u16 & 0xfc;
            while ptr >= 0x40 && caps.len() < 48 {
                let hdr = self.rd(bus, devfn, ptr, 4)?;
                caps.push(hdr as u8);
                // QEMU's resource-reserve capability: vendor cap (9), Red Hat type 1.
                if hdr as u8 == 9 && (hdr >> 24) as u8 == 1 {
                    reserve = Some(ptr);
                }
                ptr = (hdr >> 8) as u16 & 0xfc;
            }
        }
        let mut ext = Vec::new();
        let mut ptr = 0x100u16;
        while ptr >= 0x100 && ext.len() < 64 {
            let hdr = self.rd(bus, devfn, ptr, 4)?;
            if hdr == 0 || hdr == u32::MAX {
                break;
            }
            ext.push(hdr as u16);
            ptr = (hdr >> 20) as u16 & 0xffc;
        }
        Ok(CapScan { caps, ext, reserve })
    }

    fn function(&mut self, bus: u8, devfn: u8, id: u32, header: u8) -> Result<(), BusError> {
        let class = self.rd(bus, devfn, 8, 4)? >> 8;
        let CapScan {
            caps,
            ext: ext_caps,
            reserve,
        } = self.caps(bus, devfn)?;
        let mut found = Found {
            bus,
            devfn,
            vendor: id as u16,
            device: (id >> 16) as u16,
            class,
            header_type: header & 0x7f,
            buses: None,
            windows: None,
            bars: Vec::new(),
            ext_caps,
            caps,
        };
        let nbars = if header & 0x7f == 1 {
            2
        } else if header & 0x7f == 0 {
            6
        } else {
            0
        };
        // Skip BARs of the host bridge (it has none) and size the others: PCI Local Bus 3.0 §6.2.5.1.
        let mut i = 0;
        while i < nbars {
            let off = 0x10 + 4 * u16::from(i);
            let orig = self.rd(bus, devfn, off, 4)?;
            self.wr(bus, devfn, off, 4, u32::MAX)?;
            let sized = self.rd(bus, devfn, off, 4)?;
            self.wr(bus, devfn, off, 4, orig)?;
            if sized == 0 || sized & 1 == 1 {
                i += 1;
                continue;
            }
            let is64 = sized & 0x6 == 0x4;
            let size = u64::from(!(sized & !0xf)) + 1;
            let addr = align_up(self.mem32, size);
            self.mem32 = addr + size;
            self.wr(bus, devfn, off, 4, addr as u32 | (sized & 0xf))?;
            if is64 {
                self.wr(bus, devfn, off + 4, 4, 0)?;
            }
            found.bars.push((i, addr, size));
            i += if is64 { 2 } else { 1 };
        }
        if header & 0x7f == 1 {
            self.bridge(bus, devfn, reserve, &mut found)?;
        }
        // Memory + I/O decode and bus mastering, as firmware leaves devices it configured.
        let cmd = self.rd(bus, devfn, 4, 2)?;
        self.wr(bus, devfn, 4, 2, cmd | 0x7)?;
        self.out.functions.push(found);
        Ok(())
    }

    fn bridge(
        &mut self,
        bus: u8,
        devfn: u8,
        reserve: Option<u16>,
        found: &mut Found,
    ) -> Result<(), BusError> {
        // PCI-to-PCI Bridge 1.2 §3.2.5.3: primary, secondary, subordinate bus numbers.
        let secondary = self
            .next_bus
            .checked_add(1)
            .ok_or_else(|| BusError::Failed("out of bus numbers".into()))?;
        self.next_bus = secondary;
        self.wr(
            bus,
            devfn,
            0x18,
            4,
            u32::from(bus) | u32::from(secondary) << 8 | 0xff << 16,
        )?;
        // Windows: what the functions below need, at least 4 KiB of I/O, 2 MiB of memory and
        // 2 MiB of 64-bit prefetchable memory per bridge. A bridge forwards only its windows
        // (PCI-to-PCI Bridge 1.2 §4.1-§4.3), so the BARs and windows of everything below it
        // (a switch's ports, their devices) are allocated inside them: the pools are aligned
        // before the scan and the windows span what the scan took.
        let io = align_up(u64::from(self.io), 0x1000) as u32;
        self.io = io;
        let mem = align_up(self.mem32, 1 << 20);
        self.mem32 = mem;
        let pref = align_up(self.mem64, 1 << 20);
        self.mem64 = pref;
        self.scan_bus(secondary)?;
        let bus_reserve = match reserve {
            Some(cap) => self.rd(bus, devfn, cap + 4, 4)?,
            None => u32::MAX,
        };
        if bus_reserve != u32::MAX {
            let want = u32::from(secondary) + bus_reserve;
            self.next_bus = self.next_bus.max(want.min(255) as u8);
        }
        let subordinate = self.next_bus;
        self.wr(bus, devfn, 0x1a, 1, u32::from(subordinate))?;
        let io_end = align_up(u64::from(self.io.max(io + 0x1000)), 0x1000) as u32;
        self.io = io_end;
        self.wr(
            bus,
            devfn,
            0x1c,
            2,
            (io >> 8 & 0xf0) | ((io_end - 1) & 0xf000),
        )?;
        let mem_end = align_up(self.mem32.max(mem + (2 << 20)), 1 << 20);
        self.mem32 = mem_end;
        self.wr(
            bus,
            devfn,
            0x20,
            4,
            (mem >> 16) as u32 & 0xfff0 | ((mem_end - 1) as u32 & 0xfff0_0000),
        )?;
        let pref_end = align_up(self.mem64.max(pref + (2 << 20)), 1 << 20) - 1;
        self.mem64 = pref_end + 1;
        self.wr(
            bus,
            devfn,
            0x24,
            4,
            ((pref >> 16) as u32 & 0xfff0) | 1 | ((pref_end as u32) & 0xfff0_0000) | 1 << 16,
        )?;
        self.wr(bus, devfn, 0x28, 4, (pref >> 32) as u32)?;
        self.wr(bus, devfn, 0x2c, 4, (pref_end >> 32) as u32)?;
        // Read back what the bridge decodes now.
        let b = self.rd(bus, devfn, 0x18, 4)?;
        found.buses = Some((b as u8, (b >> 8) as u8, (b >> 16) as u8));
        let iob = self.rd(bus, devfn, 0x1c, 2)?;
        let memw = self.rd(bus, devfn, 0x20, 4)?;
        let prefw = self.rd(bus, devfn, 0x24, 4)?;
        let pu = u64::from(self.rd(bus, devfn, 0x28, 4)?);
        let pl = u64::from(self.rd(bus, devfn, 0x2c, 4)?);
        found.windows = Some([
            (u64::from(iob & 0xf0) << 8, u64::from(iob & 0xf000) | 0xfff),
            (
                u64::from(memw & 0xfff0) << 16,
                u64::from(memw & 0xfff0_0000) | 0xf_ffff,
            ),
            (
                pu << 32 | u64::from(prefw & 0xfff0) << 16,
                pl << 32 | u64::from(prefw & 0xfff0_0000) | 0xf_ffff,
            ),
        ]);
        Ok(())
    }
}

/// Enable ECAM at `layout.ecam_base` through PCIEXBAR (MCH 00:00.0 offset 0x60) using
/// configuration mechanism #1, then enumerate and configure the whole hierarchy.
pub fn enumerate(bus: &mut dyn GuestBus, layout: Layout) -> Result<Enumeration, BusError> {
    enable_and_walk(bus, layout, &[]).map(|(e, _)| e)
}

/// The root buses of segment 0 besides bus 0: those `pxb-pcie` expanders open, from pcierc's
/// topology (host bridge records of segment 0 at a devfn other than 00.0, `secondary_bus` their
/// bus number; docs/protocol.md section 10), in increasing order. SeaBIOS learns them from
/// QEMU's `etc/extra-pci-roots`.
pub fn extra_root_buses(topology: &pcierc_protocol::Topology) -> Vec<u8> {
    let mut v: Vec<u8> = topology
        .functions
        .iter()
        .filter(|f| {
            f.kind == pcierc_protocol::FunctionKind::HostBridge as u8
                && f.segment == 0
                && f.devfn != 0
                && f.secondary_bus != 0
        })
        .map(|f| f.secondary_bus)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// [`enumerate`], and the pools as it left them (past everything it assigned); then the extra
/// root buses `roots` (increasing), each scanned with the buses below it numbered from its own
/// number + 1, as SeaBIOS numbers an expander's buses.
fn enable_and_walk(
    bus: &mut dyn GuestBus,
    layout: Layout,
    roots: &[u8],
) -> Result<(Enumeration, Layout), BusError> {
    // Q35 PCIEXBAR: base | length 256 MiB (bits 2:1 = 00) | enable (bit 0).
    bus.pio_write(0xcf8, 4, 0x8000_0060)?;
    bus.pio_write(0xcfc, 4, layout.ecam_base as u32 | 1)?;
    bus.pio_write(0xcf8, 4, 0x8000_0064)?;
    bus.pio_write(0xcfc, 4, (layout.ecam_base >> 32) as u32)?;
    bus.pio_write(0xcf8, 4, 0x8000_0060)?;
    let back = bus.pio_read(0xcfc, 4)?;
    if back != layout.ecam_base as u32 | 1 {
        return Err(BusError::Failed(format!("PCIEXBAR reads back {back:#x}")));
    }
    let mut w = Walker {
        bus,
        next_bus: 0,
        mem32: layout.mem32_base,
        mem64: layout.mem64_base,
        io: layout.io_base,
        layout,
        out: Enumeration::default(),
    };
    w.scan_bus(0)?;
    for &root in roots {
        if root <= w.next_bus {
            return Err(BusError::Failed(format!(
                "the buses below pcie.0 reach {:02x}, an expander's root bus",
                w.next_bus
            )));
        }
        w.next_bus = root;
        w.scan_bus(root)?;
    }
    w.out.last_bus = w.next_bus;
    Ok(w.finish())
}

impl Walker<'_> {
    /// What was found, and the layout with the pools where this walk left them.
    fn finish(self) -> (Enumeration, Layout) {
        let pools = Layout {
            mem32_base: self.mem32,
            mem64_base: self.mem64,
            io_base: self.io,
            ..self.layout
        };
        (self.out, pools)
    }
}

/// Segment 0 as [`enumerate`] does, then every other segment of `windows` (pcierc's topology's
/// ECAM windows, as MCFG lists them) through its fixed window: each has its own bus numbers
/// from its window's first bus; BARs and bridge windows come from the pools segment 0 left.
/// Returns (segment, what was found) per segment, segment 0's first.
pub fn enumerate_segments(
    bus: &mut dyn GuestBus,
    layout: Layout,
    windows: &[pcierc_protocol::EcamWindow],
) -> Result<Vec<(u16, Enumeration)>, BusError> {
    enumerate_topology(bus, layout, windows, &[])
}

/// [`enumerate_segments`] with segment 0's extra root buses `roots` ([`extra_root_buses`])
/// scanned after bus 0.
pub fn enumerate_topology(
    bus: &mut dyn GuestBus,
    layout: Layout,
    windows: &[pcierc_protocol::EcamWindow],
    roots: &[u8],
) -> Result<Vec<(u16, Enumeration)>, BusError> {
    let (first, mut pools) = enable_and_walk(&mut *bus, layout, roots)?;
    let mut out = vec![(0, first)];
    for win in windows.iter().filter(|w| w.segment != 0) {
        let mut w = Walker {
            bus: &mut *bus,
            next_bus: win.start_bus,
            mem32: pools.mem32_base,
            mem64: pools.mem64_base,
            io: pools.io_base,
            layout: Layout {
                ecam_base: win.base,
                ..pools
            },
            out: Enumeration::default(),
        };
        w.scan_bus(win.start_bus)?;
        w.out.last_bus = w.next_bus;
        let (found, left) = w.finish();
        pools = left;
        out.push((win.segment, found));
    }
    Ok(out)
}

/// Print an enumeration as `lspci`-like lines.
pub fn summary(e: &Enumeration) -> String {
    let mut by_bus: BTreeMap<u8, Vec<&Found>> = BTreeMap::new();
    for f in &e.functions {
        by_bus.entry(f.bus).or_default().push(f);
    }
    let mut s = String::new();
    for f in by_bus.values().flatten() {
        s += &format!(
            "{:02x}:{:02x}.{} [{:04x}:{:04x}] class {:06x}",
            f.bus,
            f.devfn >> 3,
            f.devfn & 7,
            f.vendor,
            f.device,
            f.class
        );
        if let Some((p, sec, sub)) = f.buses {
            s += &format!(" buses {p:02x}/{sec:02x}/{sub:02x}");
        }
        if let Some([io, mem, pref]) = f.windows {
            s += &format!(
                " io {:#x}-{:#x} mem {:#x}-{:#x} pref {:#x}-{:#x}",
                io.0, io.1, mem.0, mem.1, pref.0, pref.1
            );
        }
        for (i, a, sz) in &f.bars {
            s += &format!(" BAR{i} {a:#x}+{sz:#x}");
        }
        if !f.ext_caps.is_empty() {
            s += &format!(" ext-caps {:x?}", f.ext_caps);
        }
        s.push('\n');
    }
    for (b, d) in &e.remote {
        s += &format!(
            "{b:02x}:{:02x}.{} served by another emulator\n",
            d >> 3,
            d & 7
        );
    }
    s
}
