//! Configuration mechanism #1 latched by the frontend (`CONFIG_ADDRESS_LATCH`,
//! docs/protocol.md §7): a dword write to CONFIG_ADDRESS (0xCF8) only sets a register here, and
//! an access to CONFIG_DATA (0xCFC-0xCFF) becomes the addressed `ConfigRead` / `ConfigWrite` it
//! selects, so reads are served from the configuration snapshot like ECAM reads and the
//! CONFIG_ADDRESS write costs no round trip. What the guest sees is exactly what the backend's
//! own register gives (PCI Local Bus 3.0 §3.2.2.3.2, as QEMU 7.2's q35 behaves): only dword
//! accesses to 0xCF8 touch the register (other widths and 0xCF9-0xCFB still go to the backend,
//! which answers `ENODEV`: ICH9's reset control lives there); with bit 31 clear CONFIG_DATA
//! reads all ones and writes are dropped; CONFIG_DATA byte `n` is register `(latch & 0xfc) + n`;
//! bytes past 0xCFF read all ones and are not written; a misaligned access is done byte by byte.

use super::Frontend;
use crate::error::{Error, Result};
use crate::messages::AccessKind;
use crate::wire::FrontendReq;
use crate::ProtocolFeatures;

/// CONFIG_ADDRESS (PCI Local Bus 3.0 §3.2.2.3.2).
const CONFIG_ADDRESS: u64 = 0xcf8;
/// First port of CONFIG_DATA.
const CONFIG_DATA: u64 = 0xcfc;
/// CONFIG_ADDRESS bit 31: configuration cycles enabled.
const ENABLE: u32 = 1 << 31;

/// The latched CONFIG_ADDRESS and the segment of the host bridge it addresses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Latch {
    pub(super) value: u32,
    pub(super) segment: u16,
}

/// All ones in the low `width` bytes (1, 2 or 4).
fn ones(width: u8) -> u64 {
    (1u64 << (8 * u32::from(width))) - 1
}

/// The function and register CONFIG_DATA byte `first` selects: (bus, devfn, offset).
fn decode(latch: u32, first: u16) -> (u8, u8, u16) {
    (
        (latch >> 16) as u8,
        (latch >> 8) as u8,
        (latch & 0xfc) as u16 + first,
    )
}

/// `Error::Status` of a configuration request, re-labelled as the port access it served.
fn as_pio(e: Error, request: FrontendReq) -> Error {
    match e {
        Error::Status { status, .. } => Error::Status {
            request: request as u32,
            status,
        },
        e => e,
    }
}

impl Frontend {
    /// The CONFIG_ADDRESS value this frontend latched, when it negotiated
    /// `CONFIG_ADDRESS_LATCH` (`None`: the backend's register is used). A frontend that
    /// migrates or saves its guest carries this value with its own state, as QEMU's q35 host
    /// bridge carries `config_reg`, and puts it back with
    /// [`Frontend::set_config_address_latch`].
    pub fn config_address_latch(&self) -> Option<u32> {
        self.latch.map(|l| l.value)
    }

    /// Restore the latched CONFIG_ADDRESS (after a migration or a reconnection). Returns
    /// `false`, changing nothing, when `CONFIG_ADDRESS_LATCH` was not negotiated.
    pub fn set_config_address_latch(&mut self, value: u32) -> bool {
        match &mut self.latch {
            Some(l) => {
                l.value = value;
                true
            }
            None => false,
        }
    }

    /// Start latching after the handshake negotiated it: from the backend's register (what a
    /// frontend that did not latch left there, or what a state file restored), in the
    /// segment of the backend's host bridge.
    pub(super) fn start_latching(&mut self, segment: u16) -> Result<()> {
        let value = if self.negotiated.1.contains(ProtocolFeatures::GUEST_ACCESS) {
            match self.guest_read(FrontendReq::PioRead, CONFIG_ADDRESS, 4) {
                Ok(v) => v as u32,
                // A backend without configuration mechanism #1 (`ENODEV`): from power-on.
                Err(Error::Status { .. }) => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        self.latch = Some(Latch { value, segment });
        Ok(())
    }

    /// A port read this frontend answers itself, if it latches CONFIG_ADDRESS: `None` sends
    /// the access to the backend as `PioRead`.
    pub(super) fn latched_pio_read(&mut self, port: u64, width: u8) -> Option<Result<u64>> {
        let latch = self.latch?;
        AccessKind::Pio.check_width(width).ok()?;
        if port == CONFIG_ADDRESS && width == 4 {
            return Some(Ok(u64::from(latch.value)));
        }
        let first = port.checked_sub(CONFIG_DATA).filter(|&b| b < 4)? as u16;
        if latch.value & ENABLE == 0 {
            return Some(Ok(ones(width)));
        }
        // Bytes past 0xCFF are not CONFIG_DATA and float high, as on a PC.
        let n = (4 - first).min(u16::from(width)) as u8;
        let (bus, devfn, offset) = decode(latch.value, first);
        let inner = if n != 3 && offset.is_multiple_of(u16::from(n)) {
            self.config_read(latch.segment, bus, devfn, offset, n)
        } else {
            (0..u16::from(n)).try_fold(0u32, |acc, i| {
                let b = self.config_read(latch.segment, bus, devfn, offset + i, 1)?;
                Ok(acc | b << (8 * i))
            })
        };
        Some(
            inner
                .map(|v| u64::from(v) | (ones(width) & !ones(n)))
                .map_err(|e| as_pio(e, FrontendReq::PioRead)),
        )
    }

    /// A port write this frontend handles itself, if it latches CONFIG_ADDRESS: `None` sends
    /// the access to the backend as `PioWrite`.
    pub(super) fn latched_pio_write(
        &mut self,
        port: u64,
        width: u8,
        value: u64,
    ) -> Option<Result<()>> {
        let latch = self.latch?;
        AccessKind::Pio.check_width(width).ok()?;
        if value & !ones(width) != 0 {
            // Not a valid access (the value does not fit): the backend refuses it (`EINVAL`).
            return None;
        }
        if port == CONFIG_ADDRESS && width == 4 {
            // QEMU keeps all 32 bits; bits 30:24 and 1:0 are ignored when decoding.
            if let Some(l) = &mut self.latch {
                l.value = value as u32;
            }
            return Some(Ok(()));
        }
        let first = port.checked_sub(CONFIG_DATA).filter(|&b| b < 4)? as u16;
        if latch.value & ENABLE == 0 {
            return Some(Ok(()));
        }
        let n = (4 - first).min(u16::from(width)) as u8;
        let v = (value & ones(n)) as u32;
        let (bus, devfn, offset) = decode(latch.value, first);
        let r = if n != 3 && offset.is_multiple_of(u16::from(n)) {
            self.config_write(latch.segment, bus, devfn, offset, n, v)
        } else {
            (0..u16::from(n)).try_for_each(|i| {
                let b = (v >> (8 * i)) & 0xff;
                self.config_write(latch.segment, bus, devfn, offset + i, 1, b)
            })
        };
        Some(r.map_err(|e| as_pio(e, FrontendReq::PioWrite)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_data_bytes_select_registers_of_the_latched_function() {
        assert_eq!(decode(0x8001_1004, 0), (1, 0x10, 4));
        assert_eq!(decode(0x8001_1007, 3), (1, 0x10, 7), "bits 1:0 are ignored");
        assert_eq!(decode(0xff02_08fc, 2), (2, 0x08, 0xfe), "bits 30:24 too");
        assert_eq!((ones(1), ones(2), ones(4)), (0xff, 0xffff, 0xffff_ffff));
    }
}
