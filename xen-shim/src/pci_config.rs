//! `IOREQ_TYPE_PCI_CONFIG` -> pcierc [`ConfigAccess`].
//!
//! Xen 4.17 turns a CONFIG_DATA access (port 0xCFC-0xCFF while CONFIG_ADDRESS bit 31 is set) into
//! an ioreq with `addr = SBDF << 32 | reg`, where SBDF is `seg << 16 | bus << 8 | dev << 3 | fn` and
//! `reg = (cf8 & 0xfc) | (port & 3)` (xen/arch/x86/hvm/ioreq.c, `arch_ioreq_server_get_type_addr`;
//! xen/include/public/hvm/ioreq.h). `reg` is therefore unaligned when the guest used an unaligned
//! data port; the protocol requires aligned accesses, so those are split into byte accesses.

use pcierc_protocol::{width_mask, AccessKind, ConfigAccess};
use thiserror::Error;

/// Why an ioreq cannot be translated.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TranslateError {
    /// `size` is not 1, 2 or 4.
    #[error("PCI_CONFIG ioreq size {0} is not 1, 2 or 4")]
    BadSize(u32),
    /// The register offset is beyond the 4 KiB configuration space.
    #[error("PCI_CONFIG ioreq register {0:#x} (size {1}) is outside configuration space")]
    OutOfRange(u32, u32),
}

/// The protocol's width rule ([`AccessKind::check_width`]) for an ioreq of `size` bytes.
fn check_size(size: u32, kind: AccessKind) -> Result<(), TranslateError> {
    u8::try_from(size)
        .ok()
        .filter(|&w| kind.check_width(w).is_ok())
        .map(drop)
        .ok_or(TranslateError::BadSize(size))
}

/// Translate a PCI_CONFIG ioreq (`addr`, `size`, and for writes `data`) into one aligned access,
/// or several byte accesses when `reg` is not aligned to `size`. Byte `i` of the guest's value
/// is byte `i` of the data; for reads, the caller assembles the replies in the same order
/// ([`assemble`]).
pub fn translate(addr: u64, size: u32, data: u64) -> Result<Vec<ConfigAccess>, TranslateError> {
    check_size(size, AccessKind::Config)?;
    let sbdf = (addr >> 32) as u32;
    split(
        (sbdf >> 16) as u16,
        (sbdf >> 8) as u8,
        sbdf as u8,
        addr as u32,
        size,
        data,
    )
}

/// The protocol accesses for a `size`-byte access (1, 2, 4 or 8, e.g. from ECAM) at register
/// `reg` of function `segment:bus:devfn`: one aligned access for 1, 2 or 4 bytes, two dwords for
/// an 8-byte access at a dword boundary (as QEMU's memory core splits it), bytes otherwise.
pub fn split(
    segment: u16,
    bus: u8,
    devfn: u8,
    reg: u32,
    size: u32,
    data: u64,
) -> Result<Vec<ConfigAccess>, TranslateError> {
    // ECAM is memory: 8-byte accesses are MMIO's.
    check_size(size, AccessKind::Mmio)?;
    if reg.checked_add(size).is_none_or(|end| end > 4096) {
        return Err(TranslateError::OutOfRange(reg, size));
    }
    let base = ConfigAccess {
        segment,
        bus,
        devfn,
        ..Default::default()
    };
    let piece = |off: u32, width: u32| ConfigAccess {
        offset: (reg + off) as u16,
        width: width as u8,
        data: (data >> (8 * off)) & width_mask(width as u8),
        ..base
    };
    Ok(if size <= 4 && reg.is_multiple_of(size) {
        vec![piece(0, size)]
    } else if size == 8 && reg.is_multiple_of(4) {
        vec![piece(0, 4), piece(4, 4)]
    } else {
        (0..size).map(|i| piece(i, 1)).collect()
    })
}

/// The guest's value from the replies to the accesses [`split`] made, in the same order.
pub fn assemble(accesses: &[ConfigAccess], replies: &[u32]) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    for (a, r) in accesses.iter().zip(replies) {
        let width = u32::from(a.width);
        value |= (u64::from(*r) & (u64::MAX >> (64 - 8 * width))) << shift;
        shift += 8 * width;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::message::VhostUserMsgValidator;

    #[test]
    fn flow_md_example() {
        // FLOW.md §4: CF8=0x80001804 and a word read at 0xcfe give addr 0x0000001800000006.
        let a = translate(0x0000_0018_0000_0006, 2, 0).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].bus, a[0].devfn, a[0].offset, a[0].width),
            (0, 0x18, 6, 2)
        );
        assert!(a[0].is_valid());
    }

    #[test]
    fn unaligned_is_split_into_bytes() {
        let a = translate(0x0001_00e0_0000_0001, 2, 0xbeef).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].segment, a[0].bus, a[0].devfn), (1, 0, 0xe0));
        assert_eq!((a[0].offset, a[0].data), (1, 0xef));
        assert_eq!((a[1].offset, a[1].data), (2, 0xbe));
        assert!(a.iter().all(|x| x.is_valid()));
    }

    #[test]
    fn rejects_bad_sizes_and_offsets() {
        assert_eq!(translate(0, 3, 0), Err(TranslateError::BadSize(3)));
        assert_eq!(translate(0, 8, 0), Err(TranslateError::BadSize(8)));
        assert_eq!(
            translate(0xffe, 4, 0),
            Err(TranslateError::OutOfRange(0xffe, 4))
        );
        assert_eq!(
            translate(0xffff_ffff, 1, 0),
            Err(TranslateError::OutOfRange(0xffff_ffff, 1))
        );
        assert_eq!(translate(0xffc, 4, 0x1_0000_0001).unwrap()[0].data, 1);
    }

    #[test]
    fn eight_bytes_become_two_dwords_and_assemble_back() {
        let a = split(0, 3, 0x10, 0x10, 8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].offset, a[0].width, a[0].data), (0x10, 4, 0x5566_7788));
        assert_eq!((a[1].offset, a[1].width, a[1].data), (0x14, 4, 0x1122_3344));
        assert_eq!(
            assemble(&a, &[0xdead_beef, 0x0bad_f00d]),
            0x0bad_f00d_dead_beef
        );
        let b = split(0, 0, 0, 0x3, 2, 0).unwrap();
        assert_eq!(assemble(&b, &[0x1ff, 0x2ff]), 0xffff);
        assert_eq!(
            split(0, 0, 0, 0xffc, 8, 0),
            Err(TranslateError::OutOfRange(0xffc, 8))
        );
    }
}
