//! What one synchronous ioreq asks for, in port / guest-physical address / PCIe terms
//! (FLOW.md §2.5, §4, §6).

use crate::abi::dm_op::PciSbdf;
use crate::abi::ioreq::{
    ioreq_t, IOREQ_READ, IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PCI_CONFIG,
    IOREQ_TYPE_PIO, IOREQ_TYPE_TIMEOFFSET,
};
use thiserror::Error;

/// The direction of an access, with the value for a write (masked to the access size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The guest reads; the handler returns the value.
    Read,
    /// The guest writes this value.
    Write(u64),
}

/// A request the service hands to an [`IoHandler`](super::IoHandler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoRequest {
    /// `IOREQ_TYPE_PIO`: an `in`/`out` on a port this server claimed.
    Pio {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
        /// Read, or write with its value.
        access: Access,
    },
    /// `IOREQ_TYPE_COPY`: an MMIO access in a MEMORY range this server claimed (an ECAM window
    /// access arrives this way: Xen 4.17 does not decode MMCONFIG for HVM guests, FLOW.md §5).
    Mmio {
        /// Guest-physical address of the first byte.
        gpa: u64,
        /// 1, 2, 4 or 8 bytes.
        size: u8,
        /// Read, or write with its value.
        access: Access,
    },
    /// `IOREQ_TYPE_PCI_CONFIG`: a CF8/CFC access Xen decoded for a function this server
    /// claimed; `addr = sbdf << 32 | reg`.
    PciConfig {
        /// The function.
        sbdf: PciSbdf,
        /// Register offset, `(cf8 & 0xfc) | (port & 3)`: not necessarily aligned to `size`.
        reg: u32,
        /// 1, 2 or 4 bytes.
        size: u8,
        /// Read, or write with its value.
        access: Access,
    },
    /// `IOREQ_TYPE_INVALIDATE`: drop any cached mappings of guest memory.
    Invalidate,
    /// `IOREQ_TYPE_TIMEOFFSET`: the guest changed its RTC offset (normally buffered only).
    TimeOffset,
}

/// Why a request is refused. A refused request is still answered (reads return all-ones) so
/// that the vCPU, which waits for every synchronous request, can go on.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// `data_is_ptr`: string I/O through a guest RAM buffer, which needs foreign mappings.
    #[error("ioreq type {ty} with data_is_ptr (string I/O through guest memory) is not supported")]
    DataIsPtr {
        /// The `IOREQ_TYPE_*`.
        ty: u8,
    },
    /// `count != 1`: a rep-prefixed access.
    #[error("ioreq type {ty} with count {count} (rep prefix) is not supported")]
    Repeated {
        /// The `IOREQ_TYPE_*`.
        ty: u8,
        /// The repeat count.
        count: u32,
    },
    /// A size the type does not allow (PIO and PCI_CONFIG: 1/2/4, COPY: 1/2/4/8).
    #[error("ioreq type {ty} with size {size}")]
    BadSize {
        /// The `IOREQ_TYPE_*`.
        ty: u8,
        /// The size field.
        size: u32,
    },
    /// A PIO request whose `addr` is not a 16-bit port.
    #[error("PIO ioreq for port {0:#x}")]
    PortOutOfRange(u64),
    /// An `IOREQ_TYPE_*` this shim does not know.
    #[error("unknown ioreq type {0}")]
    UnknownType(u8),
}

/// The low `size` bytes set (all 64 bits for 8 or more).
pub(crate) const fn size_mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// Classifies a snapshot of a READY slot. Nothing read from the page is trusted: every field
/// the request depends on is validated here.
pub fn classify(req: &ioreq_t) -> Result<IoRequest, Refusal> {
    let ty = req.ioreq_type();
    let allowed: &[u32] = match ty {
        IOREQ_TYPE_INVALIDATE => return Ok(IoRequest::Invalidate),
        IOREQ_TYPE_TIMEOFFSET => return Ok(IoRequest::TimeOffset),
        IOREQ_TYPE_PIO | IOREQ_TYPE_PCI_CONFIG => &[1, 2, 4],
        IOREQ_TYPE_COPY => &[1, 2, 4, 8],
        other => return Err(Refusal::UnknownType(other)),
    };
    if req.data_is_ptr() {
        return Err(Refusal::DataIsPtr { ty });
    }
    if req.count != 1 {
        return Err(Refusal::Repeated {
            ty,
            count: req.count,
        });
    }
    if !allowed.contains(&req.size) {
        return Err(Refusal::BadSize { ty, size: req.size });
    }
    let size = req.size as u8;
    let access = if req.dir() == IOREQ_READ {
        Access::Read
    } else {
        Access::Write(req.data & size_mask(req.size))
    };
    Ok(match ty {
        IOREQ_TYPE_PIO => IoRequest::Pio {
            port: u16::try_from(req.addr).map_err(|_| Refusal::PortOutOfRange(req.addr))?,
            size,
            access,
        },
        IOREQ_TYPE_COPY => IoRequest::Mmio {
            gpa: req.addr,
            size,
            access,
        },
        _ => IoRequest::PciConfig {
            sbdf: PciSbdf::from_raw((req.addr >> 32) as u32),
            reg: req.addr as u32,
            size,
            access,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::ioreq::IOREQ_WRITE;

    fn req(ty: u8, addr: u64, size: u32, dir: u8, data: u64) -> ioreq_t {
        let mut r = ioreq_t {
            addr,
            data,
            count: 1,
            size,
            type_: ty,
            ..Default::default()
        };
        r.set_dir(dir);
        r
    }

    #[test]
    fn pci_config_addr_is_sbdf_and_reg() {
        // FLOW.md §4: CF8=0x80001804 and a word read at 0xcfe give addr 0x0000001800000006.
        let r = req(
            IOREQ_TYPE_PCI_CONFIG,
            0x0000_0018_0000_0006,
            2,
            IOREQ_READ,
            0,
        );
        let sbdf = PciSbdf {
            segment: 0,
            bus: 0,
            devfn: 0x18,
        };
        assert_eq!(
            classify(&r),
            Ok(IoRequest::PciConfig {
                sbdf,
                reg: 6,
                size: 2,
                access: Access::Read
            })
        );
    }

    #[test]
    fn writes_are_masked_to_size() {
        let r = req(IOREQ_TYPE_PIO, 0xcfc, 1, IOREQ_WRITE, 0x1234);
        assert_eq!(
            classify(&r),
            Ok(IoRequest::Pio {
                port: 0xcfc,
                size: 1,
                access: Access::Write(0x34)
            })
        );
        let r = req(IOREQ_TYPE_COPY, 0xe000_0000, 8, IOREQ_WRITE, u64::MAX);
        assert_eq!(
            classify(&r),
            Ok(IoRequest::Mmio {
                gpa: 0xe000_0000,
                size: 8,
                access: Access::Write(u64::MAX)
            })
        );
    }

    #[test]
    fn refusals() {
        let mut r = req(IOREQ_TYPE_COPY, 0, 4, IOREQ_READ, 0);
        r.set_data_is_ptr(true);
        assert_eq!(
            classify(&r),
            Err(Refusal::DataIsPtr {
                ty: IOREQ_TYPE_COPY
            })
        );
        let r = ioreq_t {
            count: 3,
            ..req(IOREQ_TYPE_PIO, 0x60, 1, IOREQ_READ, 0)
        };
        assert_eq!(
            classify(&r),
            Err(Refusal::Repeated {
                ty: IOREQ_TYPE_PIO,
                count: 3
            })
        );
        let r = ioreq_t {
            count: 0,
            ..req(IOREQ_TYPE_PIO, 0x60, 1, IOREQ_READ, 0)
        };
        assert_eq!(
            classify(&r),
            Err(Refusal::Repeated {
                ty: IOREQ_TYPE_PIO,
                count: 0
            })
        );
        let r = req(IOREQ_TYPE_PCI_CONFIG, 0, 8, IOREQ_READ, 0);
        assert_eq!(
            classify(&r),
            Err(Refusal::BadSize {
                ty: IOREQ_TYPE_PCI_CONFIG,
                size: 8
            })
        );
        let r = req(IOREQ_TYPE_COPY, 0, 3, IOREQ_READ, 0);
        assert_eq!(
            classify(&r),
            Err(Refusal::BadSize {
                ty: IOREQ_TYPE_COPY,
                size: 3
            })
        );
        let r = req(IOREQ_TYPE_PIO, 0x1_0000, 1, IOREQ_READ, 0);
        assert_eq!(classify(&r), Err(Refusal::PortOutOfRange(0x1_0000)));
        assert_eq!(
            classify(&req(5, 0, 1, IOREQ_READ, 0)),
            Err(Refusal::UnknownType(5))
        );
    }

    #[test]
    fn invalidate_and_timeoffset_ignore_the_other_fields() {
        let mut r = ioreq_t {
            count: 0,
            size: 0,
            type_: IOREQ_TYPE_INVALIDATE,
            ..Default::default()
        };
        r.set_data_is_ptr(true);
        assert_eq!(classify(&r), Ok(IoRequest::Invalidate));
        r.type_ = IOREQ_TYPE_TIMEOFFSET;
        assert_eq!(classify(&r), Ok(IoRequest::TimeOffset));
    }
}
