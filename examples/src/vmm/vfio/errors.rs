//! Errors a passed-through device reports: the host kernel's AER driver hands them to vfio-pci,
//! which signals the error eventfd the VMM registered (`VFIO_PCI_ERR_IRQ_INDEX`). QEMU's vfio-pci
//! stops the VM there; this VMM reads the device's own AER registers and sends pcierc
//! `ReportError`, so the guest's root port above the function logs and signals it (Root Error
//! Status, Error Source Identification, the AER interrupt) and the guest's AER driver recovers
//! the device as it would on hardware.

use pcierc_protocol::{ErrorReport, ErrorSeverityCode};

use super::function::{DeviceIo, Passthrough};

// PCIe Base 6.0 §7.8.4 Advanced Error Reporting Extended Capability.
const EXT_CAP_START: u16 = 0x100;
const EXT_CAP_ID_AER: u32 = 0x0001;
const UNCOR_STATUS: u16 = 0x04;
const UNCOR_MASK: u16 = 0x08;
const UNCOR_SEVERITY: u16 = 0x0c;
const COR_STATUS: u16 = 0x10;
const COR_MASK: u16 = 0x14;
const HEADER_LOG: u16 = 0x1c;
/// Uncorrectable Internal Error (§7.8.4.2, bit 22): what is reported when the host's AER driver
/// cleared the device's status before the VMM read it.
pub const UNCORRECTABLE_INTERNAL: u32 = 1 << 22;

/// The offset of the device's AER capability, walking the extended capability list (§7.6.3).
pub fn find_aer<D: DeviceIo>(view: &Passthrough<D>) -> Option<u16> {
    let mut at = EXT_CAP_START;
    for _ in 0..(4096 / 4) {
        let header = view.config_read(at, 4);
        if header == 0 || header == u32::MAX {
            return None;
        }
        if header & 0xffff == EXT_CAP_ID_AER {
            return Some(at);
        }
        let next = (header >> 20) as u16 & !3;
        if next < EXT_CAP_START || next <= at {
            return None;
        }
        at = next;
    }
    None
}

/// What the device's AER registers say now, as a report for the function at
/// (`segment`, `bus`, `devfn`) in the guest's hierarchy: the unmasked uncorrectable errors
/// (fatal when one of them is, per the device's Severity register), else the unmasked
/// correctable ones, else an Uncorrectable Internal Error (the status was cleared on the host).
pub fn report<D: DeviceIo>(view: &Passthrough<D>, segment: u16, bus: u8, devfn: u8) -> ErrorReport {
    let mut r = ErrorReport {
        segment,
        bus,
        devfn,
        severity: ErrorSeverityCode::NonFatal as u8,
        status: UNCORRECTABLE_INTERNAL,
        ..Default::default()
    };
    let Some(aer) = find_aer(view) else {
        return r;
    };
    let read = |off: u16| view.config_read(aer + off, 4);
    let uncorrectable = read(UNCOR_STATUS) & !read(UNCOR_MASK);
    let correctable = read(COR_STATUS) & !read(COR_MASK);
    if uncorrectable != 0 {
        r.status = uncorrectable;
        if uncorrectable & read(UNCOR_SEVERITY) != 0 {
            r.severity = ErrorSeverityCode::Fatal as u8;
        }
        for (i, h) in r.header_log.iter_mut().enumerate() {
            *h = read(HEADER_LOG + 4 * i as u16);
        }
    } else if correctable != 0 {
        r.status = correctable;
        r.severity = ErrorSeverityCode::Correctable as u8;
    }
    r
}
