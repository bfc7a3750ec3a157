//! The CMOS real-time clock at ports 0x70/0x71: an MC146818A as QEMU's `mc146818rtc` presents
//! it on q35, showing the host's UTC time (plus whatever offset the guest sets).
//!
//! Without it the ports read all ones, Status Register A then always shows Update-In-Progress,
//! and Linux's `mc146818_get_time` polls it until it gives up ("Unable to read current time from
//! RTC") with a wall clock at 1970. With it the guest reads the date at boot and may set it
//! (the SET bit stops updates while it writes the time registers, as on the chip).
//!
//! Not modelled: interrupts (periodic, alarm, update-ended; IRQ 8 is never raised and Status
//! Register C reads 0), alarms, daylight saving, the divider chain. Linux does not need them
//! without an ACPI `PNP0B00` device, which the VMM's DSDT does not declare.

use std::time::{SystemTime, UNIX_EPOCH};

/// The index port (bit 7 of a write is the NMI mask, as on the ICH9).
pub const CMOS_INDEX: u16 = 0x70;
/// The data port.
pub const CMOS_DATA: u16 = 0x71;

// MC146818A registers (Motorola MC146818A data sheet, "Address Map"; the century byte at 0x32
// as the PC/AT and ACPI's FADT CENTURY field name it).
const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
/// Where QEMU's q35 keeps the century (its FADT names 0x32).
pub const CENTURY: u8 = 0x32;

/// Register A: Update-In-Progress (never set here: the time is read whole from the host).
const A_UIP: u8 = 0x80;
/// Register A at power-on as QEMU sets it: 32.768 kHz time base (DV = 010), 1.024 kHz periodic
/// rate (RS = 0110).
const A_RESET: u8 = 0x26;
/// Register B: SET (updates stop while the guest writes the time).
const B_SET: u8 = 0x80;
/// Register B: the interrupt enables (periodic, alarm, update-ended), not modelled.
const B_INTERRUPTS: u8 = 0x70;
/// Register B: Data Mode, binary instead of BCD.
const B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Register D: Valid RAM and Time (the battery is good).
const D_VRT: u8 = 0x80;
/// The PM bit of the hours register in 12-hour mode.
const HOURS_PM: u8 = 0x80;

/// The clock and its 128 bytes of CMOS RAM.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    /// Seconds the guest's clock is ahead of the host's UTC.
    offset: i64,
    /// Whether the guest was told that interrupts are not modelled.
    warned: bool,
}

impl Default for Cmos {
    fn default() -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(STATUS_A)] = A_RESET;
        ram[usize::from(STATUS_B)] = B_24H;
        ram[usize::from(STATUS_D)] = D_VRT;
        Cmos {
            index: 0,
            ram,
            offset: 0,
            warned: false,
        }
    }
}

impl Cmos {
    /// An `in` of one byte from `port` (0x70 or 0x71), at host time `now` (seconds since the
    /// epoch, UTC).
    pub fn read(&mut self, port: u16, now: i64) -> u8 {
        if port != CMOS_DATA {
            // QEMU's cmos_ioport_read: the index port is write-only and reads 0xff.
            return 0xff;
        }
        match self.index {
            STATUS_A => self.ram[usize::from(STATUS_A)] & !A_UIP,
            STATUS_C => 0,
            i if is_time(i) && self.ram[usize::from(STATUS_B)] & B_SET == 0 => {
                self.clock_register(i, now + self.offset)
            }
            i => self.ram[usize::from(i)],
        }
    }

    /// An `out` of one byte to `port` (0x70 or 0x71), at host time `now`.
    pub fn write(&mut self, port: u16, value: u8, now: i64) {
        if port == CMOS_INDEX {
            self.index = value & 0x7f;
            return;
        }
        if port != CMOS_DATA {
            return;
        }
        match self.index {
            STATUS_B => self.write_status_b(value, now),
            STATUS_C | STATUS_D => {} // read-only
            i if is_time(i) => {
                if self.ram[usize::from(STATUS_B)] & B_SET == 0 {
                    // Outside SET the chip would take the byte and carry on counting: keep the
                    // other fields running and move the clock by the change.
                    self.latch_time(now);
                    self.ram[usize::from(i)] = value;
                    self.take_time(now);
                } else {
                    self.ram[usize::from(i)] = value;
                }
            }
            i => self.ram[usize::from(i)] = value,
        }
    }

    fn write_status_b(&mut self, value: u8, now: i64) {
        let old = self.ram[usize::from(STATUS_B)];
        if value & B_INTERRUPTS != 0 && !self.warned {
            self.warned = true;
            log::info!("CMOS: the guest enabled RTC interrupts (Status B {value:#04x}); they are not modelled");
        }
        if value & B_SET != 0 && old & B_SET == 0 {
            // Updates stop: the time registers hold the time at this moment.
            self.latch_time(now);
        }
        self.ram[usize::from(STATUS_B)] = value;
        if value & B_SET == 0 && old & B_SET != 0 {
            // Updates resume from what the guest wrote.
            self.take_time(now);
        }
    }

    /// Write the running clock into the time registers, in the current data mode.
    fn latch_time(&mut self, now: i64) {
        for i in [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ] {
            self.ram[usize::from(i)] = self.clock_register(i, now + self.offset);
        }
    }

    /// Set the clock from the time registers (the guest's date, in its data mode); a date that
    /// does not parse leaves the clock as it was.
    fn take_time(&mut self, now: i64) {
        let b = self.ram[usize::from(STATUS_B)];
        let field = |i: u8| from_mode(self.ram[usize::from(i)], b);
        let raw_hours = self.ram[usize::from(HOURS)];
        let mut hours = from_mode(raw_hours & !HOURS_PM, b);
        if b & B_24H == 0 {
            // 12-hour mode: 12 AM is 0, 12 PM is 12.
            hours %= 12;
            if raw_hours & HOURS_PM != 0 {
                hours += 12;
            }
        }
        let year = i64::from(field(CENTURY)) * 100 + i64::from(field(YEAR));
        let (month, day) = (field(MONTH), field(DAY_OF_MONTH));
        let (minutes, seconds) = (field(MINUTES), field(SECONDS));
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hours > 23
            || minutes > 59
            || seconds > 59
        {
            log::info!("CMOS: the guest set an invalid date; the clock keeps running unchanged");
            return;
        }
        let t = days_from_civil(year, month, day) * 86_400
            + i64::from(hours) * 3600
            + i64::from(minutes) * 60
            + i64::from(seconds);
        self.offset = t - now;
    }

    /// Register `i` of the clock at time `t`, in the data mode Status Register B selects.
    fn clock_register(&self, i: u8, t: i64) -> u8 {
        let b = self.ram[usize::from(STATUS_B)];
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let hours = (secs / 3600) as u8;
        match i {
            SECONDS => to_mode((secs % 60) as u8, b),
            MINUTES => to_mode((secs / 60 % 60) as u8, b),
            HOURS if b & B_24H != 0 => to_mode(hours, b),
            HOURS => {
                let h12 = if hours.is_multiple_of(12) {
                    12
                } else {
                    hours % 12
                };
                to_mode(h12, b) | if hours >= 12 { HOURS_PM } else { 0 }
            }
            // 1 = Sunday; 1970-01-01 was a Thursday.
            DAY_OF_WEEK => to_mode(((days + 4).rem_euclid(7) + 1) as u8, b),
            DAY_OF_MONTH => to_mode(day, b),
            MONTH => to_mode(month, b),
            YEAR => to_mode(year.rem_euclid(100) as u8, b),
            CENTURY => to_mode(year.div_euclid(100).clamp(0, 99) as u8, b),
            _ => self.ram[usize::from(i)],
        }
    }
}

/// The host's time, seconds since the epoch (UTC).
pub fn host_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn is_time(i: u8) -> bool {
    matches!(
        i,
        SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
    )
}

fn to_mode(v: u8, b: u8) -> u8 {
    if b & B_DM_BINARY != 0 {
        v
    } else {
        ((v / 10) << 4) | (v % 10)
    }
}

fn from_mode(v: u8, b: u8) -> u8 {
    if b & B_DM_BINARY != 0 {
        v
    } else {
        (v >> 4).wrapping_mul(10).wrapping_add(v & 0xf)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06 01:02:03 UTC, a Sunday.
    const T: i64 = 1_796_518_923;

    fn reg(c: &mut Cmos, i: u8, now: i64) -> u8 {
        c.write(CMOS_INDEX, i, now);
        c.read(CMOS_DATA, now)
    }

    #[test]
    fn the_clock_reads_the_host_time_in_bcd_24_hour_mode() {
        let mut c = Cmos::default();
        let got: Vec<u8> = [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ]
        .iter()
        .map(|&i| reg(&mut c, i, T))
        .collect();
        assert_eq!(got, [0x03, 0x02, 0x01, 0x01, 0x06, 0x12, 0x26, 0x20]);
        assert_eq!(reg(&mut c, STATUS_A, T) & A_UIP, 0, "never in an update");
        assert_eq!(reg(&mut c, STATUS_A, T), A_RESET);
        assert_eq!(reg(&mut c, STATUS_B, T), B_24H);
        assert_eq!(reg(&mut c, STATUS_D, T), D_VRT);
        assert_eq!(c.read(CMOS_INDEX, T), 0xff, "the index port reads all ones");
    }

    #[test]
    fn binary_and_12_hour_modes_follow_status_b() {
        let mut c = Cmos::default();
        c.write(CMOS_INDEX, STATUS_B, T);
        c.write(CMOS_DATA, B_DM_BINARY, T); // 12-hour, binary
        let afternoon = T + 13 * 3600; // 14:02:03
        assert_eq!(reg(&mut c, HOURS, afternoon), 2 | HOURS_PM);
        assert_eq!(reg(&mut c, YEAR, afternoon), 26);
        assert_eq!(reg(&mut c, HOURS, T - 3600), 12, "00:02 is 12 AM");
    }

    #[test]
    fn a_date_set_by_the_guest_keeps_running_from_there() {
        let mut c = Cmos::default();
        c.write(CMOS_INDEX, STATUS_B, T);
        c.write(CMOS_DATA, B_SET | B_24H, T);
        for (i, v) in [
            (YEAR, 0x99),
            (CENTURY, 0x19),
            (MONTH, 0x12),
            (DAY_OF_MONTH, 0x31),
        ] {
            c.write(CMOS_INDEX, i, T);
            c.write(CMOS_DATA, v, T);
        }
        for (i, v) in [(HOURS, 0x23), (MINUTES, 0x59), (SECONDS, 0x58)] {
            c.write(CMOS_INDEX, i, T);
            c.write(CMOS_DATA, v, T);
        }
        assert_eq!(reg(&mut c, SECONDS, T + 100), 0x58, "held while SET");
        c.write(CMOS_INDEX, STATUS_B, T + 100);
        c.write(CMOS_DATA, B_24H, T + 100);
        // Three seconds later it is 2000-01-01 00:00:01.
        let later = T + 103;
        let got: Vec<u8> = [SECONDS, MINUTES, HOURS, DAY_OF_MONTH, MONTH, YEAR, CENTURY]
            .iter()
            .map(|&i| reg(&mut c, i, later))
            .collect();
        assert_eq!(got, [0x01, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]);
    }

    #[test]
    fn an_invalid_date_leaves_the_clock_alone_and_ram_is_kept() {
        let mut c = Cmos::default();
        c.write(CMOS_INDEX, STATUS_B, T);
        c.write(CMOS_DATA, B_SET | B_24H, T);
        c.write(CMOS_INDEX, MONTH, T);
        c.write(CMOS_DATA, 0x13, T);
        c.write(CMOS_INDEX, STATUS_B, T);
        c.write(CMOS_DATA, B_24H, T);
        assert_eq!(reg(&mut c, MONTH, T), 0x12);
        c.write(CMOS_INDEX, 0x80 | 0x40, T); // NMI mask bit, RAM byte 0x40
        c.write(CMOS_DATA, 0x5a, T);
        assert_eq!(reg(&mut c, 0x40, T), 0x5a);
        c.write(CMOS_INDEX, STATUS_C, T);
        c.write(CMOS_DATA, 0xff, T);
        assert_eq!(
            c.read(CMOS_DATA, T),
            0,
            "Status C is read-only, no interrupt flags"
        );
    }

    #[test]
    fn dates_round_trip_over_four_centuries() {
        for days in (-200_000..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(T / 86_400), (2026, 12, 6));
    }
}
