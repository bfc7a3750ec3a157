//! The ACPI PM1a event block at [`super::machine::PM1A_EVT`] (the FADT's `PM1a_EVT_BLK`, 4
//! bytes): PM1 Status (2 bytes) and PM1 Enable (2 bytes), as QEMU's ICH9 power management keeps
//! them (`acpi_pm1_evt_write_sts()`, `acpi_pm1_evt_write_en()`).
//!
//! Before this block existed both registers read 0: Linux's ACPICA wrote an enable bit, read it
//! back, found it clear and logged "ACPI Error: Could not enable GlobalLock event" and "No
//! response from Global Lock hardware, disabling lock" at boot, and "Could not enable
//! RealTimeClock event" once `rtc_cmos` came up. Now an enable bit reads back as written.
//!
//! No event of this block happens here: the VMM has no PM timer, no power or sleep button
//! (the FADT declares both as control-method devices), no RTC alarm and no firmware to take the
//! Global Lock, so no status bit is ever set and no SCI is raised for them.

/// PM1 Status (ACPI 6.5 §4.8.3.1.1, Table 4.12): write-1-to-clear bits.
const STATUS: usize = 0;
/// PM1 Enable (§4.8.3.1.2, Table 4.13): read/write.
const ENABLE: usize = 2;

/// The status bits an event of this block would set (TMR_STS, BM_STS, GBL_STS, PWRBTN_STS,
/// SLPBTN_STS, RTC_STS, PCIEXP_WAKE_STS, WAK_STS); bits 1-3 and 11-13 are reserved.
const STATUS_BITS: u16 = 1 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 14 | 1 << 15;
/// The enable bits (TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN, PCIEXP_WAKE_DIS); the others
/// are reserved and read 0.
const ENABLE_BITS: u16 = 1 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 14;

/// The PM1a event block's registers.
#[derive(Debug, Default)]
pub struct Pm1Event {
    status: u16,
    enable: u16,
}

impl Pm1Event {
    /// The byte at `offset` (0-3) of the block; 0xff past its end.
    pub fn read(&self, offset: usize) -> u8 {
        let (reg, shift) = match offset {
            STATUS | 1 => (self.status, 8 * offset),
            ENABLE | 3 => (self.enable, 8 * (offset - ENABLE)),
            _ => return 0xff,
        };
        (reg >> shift) as u8
    }

    /// A write of `value` to the byte at `offset` (0-3): status bits written with 1 clear
    /// (ACPI 6.5 §4.8.3.1.1), enable bits take the value; reserved bits stay 0; past the block's
    /// end nothing happens.
    pub fn write(&mut self, offset: usize, value: u8) {
        match offset {
            STATUS | 1 => self.status &= !(u16::from(value) << (8 * offset)),
            ENABLE | 3 => {
                let shift = 8 * (offset - ENABLE);
                let mask = 0xffu16 << shift;
                self.enable =
                    (self.enable & !mask | u16::from(value) << shift & mask) & ENABLE_BITS;
            }
            _ => {}
        }
    }

    /// The power-on state (a platform reset): no status, nothing enabled (ACPI 6.5 §4.8.3.1).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Set status `bits` (an event happened). Unused by the VMM today (see the module
    /// documentation); there for the rules' tests and for a future event source.
    pub fn raise(&mut self, bits: u16) {
        self.status |= bits & STATUS_BITS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read16(p: &Pm1Event, at: usize) -> u16 {
        u16::from_le_bytes([p.read(at), p.read(at + 1)])
    }

    fn write16(p: &mut Pm1Event, at: usize, v: u16) {
        let [lo, hi] = v.to_le_bytes();
        p.write(at, lo);
        p.write(at + 1, hi);
    }

    /// What ACPICA does for the Global Lock and the RTC event: set the enable bit, read it back.
    #[test]
    fn enable_bits_read_back_and_reserved_ones_stay_clear() {
        let mut p = Pm1Event::default();
        assert_eq!(read16(&p, ENABLE), 0);
        write16(&mut p, ENABLE, 1 << 5); // GBL_EN
        let enabled = read16(&p, ENABLE);
        write16(&mut p, ENABLE, enabled | 1 << 10); // RTC_EN
        assert_eq!(read16(&p, ENABLE), 1 << 5 | 1 << 10);
        write16(&mut p, ENABLE, 0xffff);
        assert_eq!(read16(&p, ENABLE), ENABLE_BITS);
        write16(&mut p, ENABLE, 0);
        assert_eq!(read16(&p, ENABLE), 0);
        // Status is not disturbed by enable writes, nor the other way round.
        p.raise(1 << 10);
        write16(&mut p, ENABLE, 1 << 10);
        assert_eq!((read16(&p, STATUS), read16(&p, ENABLE)), (1 << 10, 1 << 10));
    }

    #[test]
    fn status_bits_are_write_one_to_clear() {
        let mut p = Pm1Event::default();
        p.raise(0xffff);
        assert_eq!(read16(&p, STATUS), STATUS_BITS);
        write16(&mut p, STATUS, 0); // writing 0 changes nothing
        assert_eq!(read16(&p, STATUS), STATUS_BITS);
        write16(&mut p, STATUS, 1 << 5 | 1 << 15);
        assert_eq!(read16(&p, STATUS), STATUS_BITS & !(1 << 5 | 1 << 15));
        // A byte write clears in its own byte only.
        p.write(1, 0xff);
        assert_eq!(read16(&p, STATUS), STATUS_BITS & 0xff & !(1 << 5));
    }

    #[test]
    fn reset_clears_both_and_past_the_block_reads_all_ones() {
        let mut p = Pm1Event::default();
        p.raise(1);
        write16(&mut p, ENABLE, 1);
        p.reset();
        assert_eq!((read16(&p, STATUS), read16(&p, ENABLE)), (0, 0));
        p.write(4, 0xff);
        assert_eq!(p.read(4), 0xff);
        assert_eq!((read16(&p, STATUS), read16(&p, ENABLE)), (0, 0));
    }
}
