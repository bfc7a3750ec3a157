//! ACPI tables, built with the `acpi_tables` crate, as firmware would leave them: RSDP (in the
//! legacy BIOS area guests scan), XSDT, FADT (+FACS), a DSDT with the PCIe host bridge, MADT and
//! an MCFG describing pcierc's ECAM windows (ACPI 6.5 §5.2; PCI Firmware 3.3 §4.1.2 for MCFG).
//!
//! The DSDT's `\_SB.PCI0` is a PCI Express host bridge (`PNP0A08`) whose `_CRS` gives the bus
//! range of the ECAM window, the I/O and memory apertures, and whose `_OSC` grants the OS native
//! control of PCIe hot-plug, SHPC hot-plug, PME, AER and the PCIe capability (PCI Firmware 3.3
//! §4.5.1), since pcierc implements them natively in its root ports. `\_S5` is `{0, 0}`, matching
//! the VMM's PM1a control register (SLP_TYP 0 powers off).
//!
//! Extra PCI segments (beyond QEMU, a `[[segment]]` of pcierc's topology) get what
//! cloud-hypervisor's DSDT gives each of its segments: an MCFG entry (every ECAM window of the
//! topology has one) and a `PNP0A08` host bridge `\_SB.PCIn` with `_SEG`, `_BBN`, `_UID` = n and a
//! `_CRS` of the segment's bus range and its own memory apertures (below 4 GiB
//! [`SEGMENT_MMIO32_SIZE`] taken from the top of the 32-bit window, above it the next
//! 64 GiB after segment 0's), with the same `_OSC` and `_PRT`. No I/O aperture:
//! configuration mechanism #1 and legacy I/O stay segment 0's.
//!
//! A `pxb-pcie` expander of segment 0 (a host bridge record with a root bus of its own, see
//! [`expanders`]) gets what QEMU 7.2's `build_dsdt()` (hw/i386/acpi-build.c) gives one: a
//! `PNP0A08` host bridge `\_SB.PCxx` (xx its bus number in hex) with `_UID` and `_BBN` = its
//! bus number, `_PXM` = its `numa_node` when one is assigned, the same `_OSC` and `_PRT`, and a
//! `_CRS` of what the VMM allots it: the buses from its number to the next root bus's (the
//! guest numbers the buses below its root ports inside that range; `\_SB.PCI0`'s range ends
//! below the first expander's number, as QEMU's `root_bus_limit`), [`EXPANDER_IO_SIZE`] of I/O
//! ports from the top of the I/O space and 32- and 64-bit memory apertures as an extra segment
//! gets them. Expanders and extra segments share the [`MAX_EXTRA_SEGMENTS`] apertures.

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use pcierc_protocol::{EcamWindow, FunctionKind, Topology};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::machine::{PM1A_CNT, PM1A_EVT, RESET_CONTROL, RESET_CONTROL_RESET};
use super::Error;
use super::{irq, layout};

const OEM_ID: [u8; 6] = *b"PCIERC";
const OEM_TABLE_ID: [u8; 8] = *b"PCIERCVM";
const OEM_REVISION: u32 = 1;

/// The SCI's ISA IRQ (as on QEMU's q35).
const SCI_IRQ: u16 = 9;
/// PCI Firmware 3.3 §4.5.1: the `_OSC` UUID of PCI host bridges.
const PCI_HOST_BRIDGE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` control field: native PCIe hot-plug (0), SHPC hot-plug (1), PME (2), AER (3), PCIe
/// capability structure (4).
const OSC_CONTROL_ALL: u32 = 0x1f;
/// 64-bit MMIO aperture for prefetchable BARs (QEMU's q35 puts it high too).
pub const MMIO64_START: u64 = 0x80_0000_0000;
const MMIO64_SIZE: u64 = 64 << 30;
/// 32-bit MMIO aperture of each extra segment, carved from the top of the 32-bit window.
pub const SEGMENT_MMIO32_SIZE: u64 = 32 << 20;
/// Most extra segments (`\_SB.PCI1`-`PCI8`) and expanders, together, the DSDT describes.
pub const MAX_EXTRA_SEGMENTS: usize = 8;
/// I/O ports each expander's root bus gets (taken from the top of the I/O space): one root
/// port's I/O window (4 KiB granularity, PCI-to-PCI Bridge 1.2 §3.2.5.6).
pub const EXPANDER_IO_SIZE: u32 = 0x1000;
/// Bytes of the 64-bit apertures of segment 0 and of every extra segment the DSDT may describe.
pub const MMIO64_SPAN: u64 = (1 + MAX_EXTRA_SEGMENTS as u64) * MMIO64_SIZE;

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// A `pxb-pcie` expander as the DSDT describes it: the number of the root bus it opens and its
/// proximity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expander {
    /// Its root bus number (`bus_nr`).
    pub bus_nr: u8,
    /// Its `numa_node`, when one is assigned.
    pub numa_node: Option<u16>,
}

/// The expanders of segment 0 in pcierc's topology, by bus number: the host bridge records
/// other than the MCH (docs/protocol.md section 10: kind 1 in segment 0 at a devfn other than
/// 00.0, `secondary_bus` its root bus number, `proximity` its `numa_node` + 1).
pub fn expanders(topology: &Topology) -> Vec<Expander> {
    let mut v: Vec<Expander> = topology
        .functions
        .iter()
        .filter(|f| {
            f.kind == FunctionKind::HostBridge as u8
                && f.segment == 0
                && f.devfn != 0
                && f.secondary_bus != 0
        })
        .map(|f| Expander {
            bus_nr: f.secondary_bus,
            numa_node: f.proximity.checked_sub(1),
        })
        .collect();
    v.sort_by_key(|x| x.bus_nr);
    v.dedup_by_key(|x| x.bus_nr);
    v
}

/// The bus range each expander's host bridge gets: from its number to the next root bus's
/// (the last one up to `end_bus`, segment 0's last); `expanders` sorted by bus number.
fn expander_bus_ranges(expanders: &[Expander], end_bus: u16) -> Vec<(u16, u16)> {
    expanders
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let last = expanders
                .get(i + 1)
                .map_or(end_bus, |next| u16::from(next.bus_nr) - 1);
            (u16::from(x.bus_nr), last)
        })
        .collect()
}

/// One line per expander host bridge the DSDT gets (the VMM prints them at start-up).
pub fn expander_summary(ecam: &[EcamWindow], expanders: &[Expander]) -> Vec<String> {
    let end_bus = ecam
        .iter()
        .find(|e| e.segment == 0)
        .map_or(255, |e| u16::from(e.end_bus));
    expanders
        .iter()
        .zip(expander_bus_ranges(expanders, end_bus))
        .map(|(x, (first, last))| {
            let pxm = x
                .numa_node
                .map(|n| format!(" _PXM {n}"))
                .unwrap_or_default();
            format!(
                "\\_SB.PC{:02X} (PNP0A08) _BBN {:#04x} buses {first:02x}-{last:02x}{pxm}",
                x.bus_nr, x.bus_nr
            )
        })
        .collect()
}

/// The DSDT: `\_SB.PCI0` (segment 0), `\_SB.PCxx` per expander, `\_SB.PCIn` per extra
/// segment, and `\_S5`.
fn dsdt(ecam: &[EcamWindow], expanders: &[Expander]) -> Result<Vec<u8>, Error> {
    let extra: Vec<&EcamWindow> = ecam.iter().filter(|e| e.segment != 0).collect();
    if extra.len() + expanders.len() > MAX_EXTRA_SEGMENTS {
        return Err(Error::Config(format!(
            "pcierc has {} extra PCI segments and {} expanders; the VMM's DSDT describes at most \
             {MAX_EXTRA_SEGMENTS} of them",
            extra.len(),
            expanders.len()
        )));
    }
    let (start_bus, end_bus) = ecam
        .iter()
        .find(|e| e.segment == 0)
        .map(|e| (u16::from(e.start_bus), u16::from(e.end_bus)))
        .unwrap_or((0, 255));
    let apertures = (extra.len() + expanders.len()) as u64;
    let mmio32_end = layout::MMIO32_END - apertures * SEGMENT_MMIO32_SIZE;
    // The n-th extra aperture (from 0): expanders first, then the segments.
    let mmio32 = |n: u64| {
        (
            mmio32_end + n * SEGMENT_MMIO32_SIZE,
            mmio32_end + (n + 1) * SEGMENT_MMIO32_SIZE,
        )
    };
    let mmio64 = |n: u64| MMIO64_START + (n + 1) * MMIO64_SIZE;
    // QEMU's root_bus_limit: pcie.0's range ends below the first expander's bus.
    let pci0_last = expanders
        .first()
        .map_or(end_bus, |x| end_bus.min(u16::from(x.bus_nr) - 1));
    let io_top = 0x1_0000 - expanders.len() as u32 * EXPANDER_IO_SIZE;
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let segment0 = HostBridge {
        name: "PCI0".into(),
        segment: 0,
        uid: 0,
        buses: (start_bus, pci0_last),
        mmio32: (layout::MMIO32_START, mmio32_end),
        mmio64: MMIO64_START,
        io: Some((0xd00, io_top - 1)),
        legacy_io: true,
        pxm: None,
    };
    dsdt.append_slice(&segment0.aml());
    let ranges = expander_bus_ranges(expanders, end_bus);
    for (i, (x, buses)) in expanders.iter().zip(ranges).enumerate() {
        let n = i as u64;
        let io = io_top + i as u32 * EXPANDER_IO_SIZE;
        let bridge = HostBridge {
            name: format!("PC{:02X}", x.bus_nr),
            segment: 0,
            uid: u32::from(x.bus_nr),
            buses,
            mmio32: mmio32(n),
            mmio64: mmio64(n),
            io: Some((io, io + EXPANDER_IO_SIZE - 1)),
            legacy_io: false,
            pxm: x.numa_node,
        };
        dsdt.append_slice(&bridge.aml());
    }
    for (i, w) in extra.iter().enumerate() {
        let n = i as u64 + 1;
        let aperture = (expanders.len() + i) as u64;
        let bridge = HostBridge {
            name: format!("PCI{n}"),
            segment: w.segment,
            uid: n as u32,
            buses: (u16::from(w.start_bus), u16::from(w.end_bus)),
            mmio32: mmio32(aperture),
            mmio64: mmio64(aperture),
            io: None,
            legacy_io: false,
            pxm: None,
        };
        dsdt.append_slice(&bridge.aml());
    }
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&aml::ZERO, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    );
    dsdt.append_slice(&bytes(&s5));
    Ok(dsdt.as_slice().to_vec())
}

/// One PCI Express host bridge of the DSDT (`PNP0A08`, PCI Firmware 3.3 §4.1.5 for `_SEG` and
/// `_BBN`), in a `\_SB` scope of its own.
struct HostBridge {
    name: String,
    segment: u16,
    uid: u32,
    /// First and last bus of its ECAM window.
    buses: (u16, u16),
    /// 32-bit aperture: [start, end).
    mmio32: (u64, u64),
    /// Start of its 64-bit aperture ([`MMIO64_SIZE`] bytes).
    mmio64: u64,
    /// Its I/O aperture above the legacy ports: [first, last].
    io: Option<(u32, u32)>,
    /// Configuration mechanism #1 and the legacy I/O space below it (`\_SB.PCI0` only).
    legacy_io: bool,
    /// `_PXM`: its proximity domain (ACPI 6.5 §6.2.14), if it has one.
    pxm: Option<u16>,
}

impl HostBridge {
    fn aml(&self) -> Vec<u8> {
        let (start_bus, end_bus) = self.buses;
        let bus_numbers = aml::AddressSpace::new_bus_number(start_bus, end_bus);
        let config_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
        let io_low = aml::AddressSpace::new_io(0u16, 0xcf7, None);
        let (io_first, io_last) = self.io.unwrap_or((0xd00, 0xffff));
        let io_high = aml::AddressSpace::new_io(io_first as u16, io_last as u16, None);
        let mmio32 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            self.mmio32.0 as u32,
            (self.mmio32.1 - 1) as u32,
            None,
        );
        let mmio64 = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::Cacheable,
            true,
            self.mmio64,
            self.mmio64 + MMIO64_SIZE - 1,
            None,
        );
        let resources: Vec<&dyn Aml> = match (self.legacy_io, self.io.is_some()) {
            (true, _) => vec![
                &bus_numbers,
                &config_ports,
                &io_low,
                &io_high,
                &mmio32,
                &mmio64,
            ],
            (false, true) => vec![&bus_numbers, &io_high, &mmio32, &mmio64],
            (false, false) => vec![&bus_numbers, &mmio32, &mmio64],
        };
        let crs = aml::ResourceTemplate::new(resources);

        // Method (_OSC, 4) { CreateDWordField (Arg3, 0, CDW1)
        //   If (Arg0 == ToUUID (PCI host bridge)) { CreateDWordField (Arg3, 8, CDW3)
        //     CDW3 &= 0x1f }  Else { CDW1 |= 4 (unrecognized UUID) }
        //   Return (Arg3) }
        let cdw1 = aml::Path::new("CDW1");
        let cdw3 = aml::Path::new("CDW3");
        let create_cdw1 = aml::CreateDWordField::new(&cdw1, &aml::Arg(3), &aml::ZERO);
        let create_cdw3 = aml::CreateDWordField::new(&cdw3, &aml::Arg(3), &8u8);
        let grant = aml::And::new(&cdw3, &cdw3, &OSC_CONTROL_ALL);
        let uuid = aml::Uuid::new(PCI_HOST_BRIDGE_OSC_UUID);
        let is_pci = aml::Equal::new(&aml::Arg(0), &uuid);
        let if_pci = aml::If::new(&is_pci, vec![&create_cdw3, &grant]);
        let unrecognized = aml::Or::new(&cdw1, &cdw1, &4u8);
        let else_ = aml::Else::new(vec![&unrecognized]);
        let ret = aml::Return::new(&aml::Arg(3));
        let osc = aml::Method::new(
            "_OSC".into(),
            4,
            false,
            vec![&create_cdw1, &if_pci, &else_, &ret],
        );

        let prt = aml::Name::new("_PRT".into(), &pci_routing_table());

        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
        let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
        let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
        let seg = aml::Name::new("_SEG".into(), &self.segment);
        let uid = aml::Name::new("_UID".into(), &self.uid);
        let bbn = aml::Name::new("_BBN".into(), &start_bus);
        let crs = aml::Name::new("_CRS".into(), &crs);
        let pxm = self
            .pxm
            .map(|n| aml::Name::new("_PXM".into(), &u32::from(n)));
        let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn];
        if let Some(pxm) = &pxm {
            children.push(pxm);
        }
        children.extend([&crs as &dyn Aml, &osc, &prt]);
        let device = aml::Device::new(self.name.as_str().into(), children);
        bytes(&aml::Scope::new("\\_SB_".into(), vec![&device]))
    }
}

/// `_PRT` for bus 0 (ACPI 6.5 §6.2.13): every device's INTA-INTD to the IOAPIC GSI the VMM
/// raises for it ([`irq::intx_gsi`], the conventional swizzle onto GSIs 16-23), as static GSIs
/// (Source 0): level-triggered, active low, as PCI interrupts are. Functions behind the root
/// ports need no entries: the OS swizzles their pins up to the port's slot (PCI-to-PCI Bridge
/// 1.2 §9.1), as the ports forward them.
fn pci_routing_table() -> aml::PackageBuilder {
    let mut table = aml::PackageBuilder::new();
    for slot in 0..32u8 {
        for pin in 0..4u8 {
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = irq::intx_gsi(slot << 3, pin + 1);
            table.add_element(&aml::Package::new(vec![&address, &pin, &aml::ZERO, &gsi]));
        }
    }
    table
}

/// The MADT (ACPI 6.5 §5.2.12): one local APIC per vCPU, the IOAPIC, ISA IRQ 0 on GSI 2 and the
/// SCI level-triggered, LINT1 as NMI. Built by hand: the crate has no x86 override entries.
fn madt(cpus: u8) -> Vec<u8> {
    const PCAT_COMPAT: u32 = 1;
    let mut madt = Sdt::new(*b"APIC", 36, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.append_slice(&(layout::LAPIC as u32).to_le_bytes());
    madt.append_slice(&PCAT_COMPAT.to_le_bytes());
    for id in 0..cpus {
        // Processor Local APIC: type 0, length 8, UID, APIC id, flags (enabled).
        madt.append_slice(&[0, 8, id, id, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, id, reserved, address, GSI base 0.
    let mut ioapic = vec![1, 12, cpus, 0];
    ioapic.extend_from_slice(&(layout::IOAPIC as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);
    // Interrupt Source Overrides: type 2, length 10, bus 0 (ISA), source, GSI, flags.
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (SCI_IRQ as u8, u32::from(SCI_IRQ), 0xd)] {
        let mut iso = vec![2, 10, 0, irq];
        iso.extend_from_slice(&gsi.to_le_bytes());
        iso.extend_from_slice(&flags.to_le_bytes());
        madt.append_slice(&iso);
    }
    // Local APIC NMI: type 4, length 6, every processor (0xff), flags, LINT1.
    madt.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    madt.as_slice().to_vec()
}

/// The FADT (ACPI 6.5 §5.2.9): PM1a event/control blocks where [`super::machine`] serves them,
/// no SMI command port (the platform is always in ACPI mode), the DSDT and FACS.
fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    f.sci_int = SCI_IRQ.into();
    // The reset register, as QEMU's q35 gives it: ICH9's Reset Control at 0xCF9.
    f.reset_reg = acpi_tables::gas::GAS::new(
        acpi_tables::gas::AddressSpace::SystemIo,
        8,
        0,
        acpi_tables::gas::AccessSize::ByteAccess,
        RESET_CONTROL.into(),
    );
    f.reset_value = RESET_CONTROL_RESET;
    f.pm1a_evt_blk = u32::from(PM1A_EVT).into();
    f.pm1_evt_len = 4;
    f.pm1a_cnt_blk = u32::from(PM1A_CNT).into();
    f.pm1_cnt_len = 2;
    // The RTC's century byte, where QEMU's q35 keeps it.
    f.century = super::cmos::CENTURY;
    // IA-PC boot architecture: legacy devices present (COM1), an 8042 (the reset line).
    f.iapc_boot_arch = 0x3u16.into();
    bytes(&f.finalize())
}

fn mcfg(ecam: &[EcamWindow]) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in ecam {
        m.add_ecam(e.base, e.segment, e.start_bus, e.end_bus);
    }
    bytes(&m)
}

/// Lays tables out from [`layout::ACPI_START`] on.
struct Writer<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl Writer<'_> {
    fn put(&mut self, table: &[u8], align: u64) -> Result<u64, Error> {
        let addr = self.next.div_ceil(align) * align;
        let end = addr + table.len() as u64;
        if end > layout::ACPI_END {
            return Err(Error::Config(format!(
                "ACPI tables do not fit below {:#x}",
                layout::ACPI_END
            )));
        }
        self.mem
            .write_slice(table, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("writing ACPI tables: {e}")))?;
        self.next = end;
        Ok(addr)
    }
}

/// Write every table; returns the RSDP's address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    cpus: u8,
    ecam: &[EcamWindow],
    expanders: &[Expander],
) -> Result<GuestAddress, Error> {
    let rsdp_addr = layout::ACPI_START.0;
    let mut w = Writer {
        mem,
        next: rsdp_addr + Rsdp::len() as u64,
    };
    let facs = w.put(&bytes(&FACS::new()), 64)?;
    let dsdt = w.put(&dsdt(ecam, expanders)?, 8)?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(w.put(&fadt(dsdt, facs), 8)?);
    xsdt.add_entry(w.put(&madt(cpus), 8)?);
    if !ecam.is_empty() {
        xsdt.add_entry(w.put(&mcfg(ecam), 8)?);
    }
    let xsdt = w.put(&bytes(&xsdt), 8)?;
    w.next = rsdp_addr;
    w.put(&bytes(&Rsdp::new(OEM_ID, xsdt)), 16)?;
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut t = vec![0; len as usize];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        t
    }

    #[test]
    fn tables_chain_from_the_rsdp_and_checksum() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let ecam = EcamWindow {
            base: 0xb000_0000,
            size: 256 << 20,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
            reserved: 0,
        };
        let rsdp = write_tables(&mem, 2, &[ecam], &[]).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt = table_at(&mem, u64::from_le_bytes(r[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let mut sigs = Vec::new();
        for p in xsdt[36..].chunks_exact(8) {
            let t = table_at(&mem, u64::from_le_bytes(p.try_into().unwrap()));
            assert!(checksum_ok(&t), "{:?}", &t[..4]);
            sigs.push(String::from_utf8_lossy(&t[..4]).into_owned());
            // `ACPI_DUMP_DIR=DIR cargo test -p pcierc-examples acpi`, then `iasl -d DIR/*.dat`.
            if let Some(dir) = std::env::var_os("ACPI_DUMP_DIR") {
                let dir = std::path::PathBuf::from(dir);
                std::fs::write(dir.join(format!("{}.dat", sigs[sigs.len() - 1])), &t).unwrap();
                if &t[..4] == b"FACP" {
                    let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                    std::fs::write(dir.join("DSDT.dat"), table_at(&mem, dsdt)).unwrap();
                }
            }
            if &t[..4] == b"MCFG" {
                // Header, 8 reserved bytes, then one 16-byte allocation.
                assert_eq!(t.len(), 36 + 8 + 16);
                assert_eq!(u64::from_le_bytes(t[44..52].try_into().unwrap()), ecam.base);
                assert_eq!((t[54], t[55]), (0, 255));
            }
            if &t[..4] == b"APIC" {
                // 2 local APICs (8), IOAPIC (12), 2 overrides (10), LAPIC NMI (6).
                assert_eq!(t.len(), 44 + 2 * 8 + 12 + 2 * 10 + 6);
            }
            if &t[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                let d = table_at(&mem, dsdt);
                assert_eq!(&d[..4], b"DSDT");
                assert!(checksum_ok(&d));
                assert!(d.windows(4).any(|w| w == b"_OSC"));
            }
        }
        assert_eq!(sigs, ["FACP", "APIC", "MCFG"]);
    }

    /// The (min, max) of every bus-number Word Address Space descriptor (ACPI 6.5 §6.4.3.5.3:
    /// tag 0x88, length 13, resource type 2) in `aml`, in order.
    fn bus_ranges(aml: &[u8]) -> Vec<(u16, u16)> {
        aml.windows(12)
            .filter(|w| w[..4] == [0x88, 0x0d, 0x00, 0x02])
            .map(|w| {
                (
                    u16::from_le_bytes([w[8], w[9]]),
                    u16::from_le_bytes([w[10], w[11]]),
                )
            })
            .collect()
    }

    /// Two expanders (buses 0x40 and 0x80, the second on NUMA node 1) as pcierc's topology
    /// reports them: `\_SB.PC40` and `\_SB.PC80` with `_BBN` and `_UID` their bus numbers, a
    /// `_PXM` for the one with a node, bus ranges up to the next root bus (PCI0's ending below
    /// the first), and I/O and memory apertures of their own.
    #[test]
    fn expanders_get_host_bridges_as_qemus_dsdt_gives_them() {
        use pcierc_protocol::{encode_name, function_flags, FunctionRecord, NO_PARENT};
        let record = |devfn, bus, proximity| FunctionRecord {
            devfn,
            kind: FunctionKind::HostBridge as u8,
            flags: function_flags::PRESENT | function_flags::EMULATED,
            parent: NO_PARENT,
            secondary_bus: bus,
            subordinate_bus: bus,
            proximity,
            owner: encode_name("pcierc").unwrap(),
            ..Default::default()
        };
        let topology = Topology {
            functions: vec![
                record(0, 0, 0),
                record(0x28, 0x80, 2),
                record(0x30, 0x40, 0),
            ],
            ..Default::default()
        };
        let x = expanders(&topology);
        assert_eq!(
            x,
            [
                Expander {
                    bus_nr: 0x40,
                    numa_node: None
                },
                Expander {
                    bus_nr: 0x80,
                    numa_node: Some(1)
                }
            ]
        );
        let ecam = [EcamWindow {
            base: 0xb000_0000,
            size: 256 << 20,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
            reserved: 0,
        }];
        let d = dsdt(&ecam, &x).unwrap();
        // `ACPI_DUMP_DIR=DIR cargo test -p pcierc-examples acpi`, then `iasl -d DIR/*.dat`.
        if let Some(dir) = std::env::var_os("ACPI_DUMP_DIR") {
            let path = std::path::PathBuf::from(dir).join("DSDT-expanders.dat");
            std::fs::write(path, &d).unwrap();
        }
        for name in [b"PCI0", b"PC40", b"PC80"] {
            assert!(d.windows(4).any(|w| w == name), "{name:?}");
        }
        // Name (_BBN, 0x80) and Name (_UID, 0x80): BytePrefix 0x0a.
        assert!(d.windows(7).any(|w| w == b"\x08_BBN\x0a\x80"));
        assert!(d.windows(7).any(|w| w == b"\x08_UID\x0a\x40"));
        // Name (_PXM, One) once: PC80's (node 1), not PC40's.
        let pxm: Vec<_> = d.windows(5).filter(|w| *w == b"\x08_PXM").collect();
        assert_eq!(pxm.len(), 1);
        assert!(d.windows(6).any(|w| w == b"\x08_PXM\x01"));
        assert_eq!(bus_ranges(&d), [(0, 0x3f), (0x40, 0x7f), (0x80, 0xff)]);
        // I/O: PCI0 up to the expanders' apertures at the top (0xe000-0xffff).
        let io = |first: u16, last: u16| {
            let mut v = vec![0x88, 0x0d, 0x00, 0x01];
            v.extend_from_slice(&[0x0c, 0x03, 0, 0]);
            v.extend_from_slice(&first.to_le_bytes());
            v.extend_from_slice(&last.to_le_bytes());
            v
        };
        for (first, last) in [(0xd00, 0xdfff), (0xe000, 0xefff), (0xf000, 0xffff)] {
            let want = io(first, last);
            assert!(
                d.windows(want.len()).any(|w| w == want),
                "I/O {first:#x}-{last:#x}"
            );
        }
        // With four extra segments, a ninth aperture is too many.
        let five: Vec<Expander> = (1..=5u8)
            .map(|b| Expander {
                bus_nr: b * 0x20,
                numa_node: None,
            })
            .collect();
        let segments: Vec<EcamWindow> = (1..=4u16)
            .map(|seg| EcamWindow {
                segment: seg,
                base: u64::from(seg) << 32,
                ..ecam[0]
            })
            .collect();
        let all: Vec<EcamWindow> = ecam.iter().chain(&segments).copied().collect();
        assert!(dsdt(&all, &five).is_err());
        assert!(dsdt(&all, &five[..4]).is_ok());
    }

    #[test]
    fn an_extra_segment_gets_an_mcfg_entry_and_a_host_bridge() {
        let window = |segment, base| EcamWindow {
            base,
            size: 256 << 20,
            segment,
            start_bus: 0,
            end_bus: 255,
            reserved: 0,
        };
        let ecam = [window(0, 0xb000_0000), window(1, 0x1_4000_0000)];
        let m = mcfg(&ecam);
        assert_eq!(m.len(), 36 + 8 + 2 * 16);
        assert_eq!(
            u64::from_le_bytes(m[60..68].try_into().unwrap()),
            0x1_4000_0000
        );
        assert_eq!(
            u16::from_le_bytes(m[68..70].try_into().unwrap()),
            1,
            "its segment"
        );
        let d = dsdt(&ecam, &[]).unwrap();
        for name in [b"PCI0", b"PCI1"] {
            assert!(
                d.windows(4).any(|w| w == name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // `Name (_SEG, One)` for PCI1 (ACPI 6.5 §20.2.3: OneOp 0x01).
        assert!(d.windows(6).any(|w| w == b"\x08_SEG\x01"));
        let too_many: Vec<_> = (1..=MAX_EXTRA_SEGMENTS as u16 + 1)
            .map(|s| window(s, u64::from(s) << 32))
            .collect();
        assert!(dsdt(&too_many, &[]).is_err());
    }
}
