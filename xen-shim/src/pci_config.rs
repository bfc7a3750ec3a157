//! `IOREQ_TYPE_PCI_CONFIG` -> pcierc [`ConfigAccess`].
//!
//! Xen 4.17 turns a CONFIG_DATA access (port 0xCFC-0xCFF while CONFIG_ADDRESS bit 31 is set) into
//! an ioreq with `addr = SBDF << 32 | reg`, where SBDF is `seg << 16 | bus << 8 | dev << 3 | fn` and
//! `reg = (cf8 & 0xfc) | (port & 3)` (xen/arch/x86/hvm/ioreq.c, `arch_ioreq_server_get_type_addr`;
//! xen/include/public/hvm/ioreq.h). `reg` is therefore unaligned when the guest used an unaligned
//! data port; the protocol requires aligned accesses, so those are split into byte accesses.

use pcierc_protocol::ConfigAccess;
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

/// Translate a PCI_CONFIG ioreq (`addr`, `size`, and for writes `data`) into one aligned access,
/// or several byte accesses when `reg` is not aligned to `size`. Byte `i` of the guest's value
/// is byte `i` of the data; for reads, the caller assembles the replies in the same order.
pub fn translate(addr: u64, size: u32, data: u64) -> Result<Vec<ConfigAccess>, TranslateError> {
    if !matches!(size, 1 | 2 | 4) {
        return Err(TranslateError::BadSize(size));
    }
    let sbdf = (addr >> 32) as u32;
    let reg = addr as u32;
    if reg.checked_add(size).is_none_or(|end| end > 4096) {
        return Err(TranslateError::OutOfRange(reg, size));
    }
    let base = ConfigAccess {
        segment: (sbdf >> 16) as u16,
        bus: (sbdf >> 8) as u8,
        devfn: sbdf as u8,
        ..Default::default()
    };
    let mask = |w: u32| {
        if w == 4 {
            u64::from(u32::MAX)
        } else {
            (1u64 << (8 * w)) - 1
        }
    };
    if reg.is_multiple_of(size) {
        return Ok(vec![ConfigAccess {
            offset: reg as u16,
            width: size as u8,
            data: data & mask(size),
            ..base
        }]);
    }
    Ok((0..size)
        .map(|i| ConfigAccess {
            offset: (reg + i) as u16,
            width: 1,
            data: (data >> (8 * i)) & 0xff,
            ..base
        })
        .collect())
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
}
