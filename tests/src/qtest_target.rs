//! [`QtestTarget`]: the differential engine's [`ConfigTarget`] over a qtest peer (QEMU, or
//! `pcierc qtest` in front of a running backend).

use std::io;
use std::time::Instant;

use crate::differential::{
    config_address, ecam_address, ConfigTarget, Op, Reg, CONFIG_ADDRESS, CONFIG_DATA, ECAM_BASE,
    RESET_CONTROL,
};
use crate::qtest::{self, Qtest};

/// A [`ConfigTarget`] over a qtest peer: configuration through ECAM at [`ECAM_BASE`] (enabled
/// through PCIEXBAR by [`QtestTarget::new`]), mechanism #1 through `outl 0xcf8`/`in 0xcfc`.
pub struct QtestTarget {
    qt: Qtest,
}

impl QtestTarget {
    /// Enable ECAM (PCIEXBAR = 0xb0000000, 256 MiB) through configuration mechanism #1.
    pub fn new(qt: Qtest) -> io::Result<Self> {
        let mut t = QtestTarget { qt };
        t.enable_ecam()?;
        Ok(t)
    }

    fn enable_ecam(&mut self) -> io::Result<()> {
        self.qt
            .io_write(CONFIG_ADDRESS, 4, config_address(0, 0, 0x64))?;
        self.qt.io_write(CONFIG_DATA, 4, 0)?;
        self.qt
            .io_write(CONFIG_ADDRESS, 4, config_address(0, 0, 0x60))?;
        self.qt.io_write(CONFIG_DATA, 4, ECAM_BASE as u32 | 1)
    }

    fn lines(op: &Op) -> Vec<String> {
        let ecam = |r: Reg| ecam_address(r.bus, r.devfn, r.offset);
        let cf8 =
            |r: Reg| qtest::io_write(CONFIG_ADDRESS, 4, config_address(r.bus, r.devfn, r.offset));
        match *op {
            Op::Read(r) => vec![qtest::mem_read(ecam(r), r.width)],
            Op::Write(r, v) => vec![qtest::mem_write(ecam(r), r.width, v.into())],
            Op::Cf8Read(r) => vec![
                cf8(r),
                qtest::io_read(CONFIG_DATA + (r.offset & 3), r.width),
            ],
            Op::Cf8Write(r, v) => vec![
                cf8(r),
                qtest::io_write(CONFIG_DATA + (r.offset & 3), r.width, v),
            ],
            Op::MemRead(addr, width) => vec![qtest::mem_read(addr, width)],
            Op::MemWrite(addr, width, value) => vec![qtest::mem_write(addr, width, value)],
        }
    }
}

/// The qtest peer failing is a test failure.
fn must<T>(r: io::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("qtest: {e}"))
}

impl ConfigTarget for QtestTarget {
    fn read(&mut self, bus: u8, devfn: u8, offset: u16, width: u8) -> u32 {
        self.run(&[Op::Read(Reg::new(bus, devfn, offset, width))])[0] as u32
    }
    fn write(&mut self, bus: u8, devfn: u8, offset: u16, width: u8, value: u32) {
        self.run(&[Op::Write(Reg::new(bus, devfn, offset, width), value)]);
    }
    fn cf8_read(&mut self, bus: u8, devfn: u8, offset: u16, width: u8) -> u32 {
        self.run(&[Op::Cf8Read(Reg::new(bus, devfn, offset, width))])[0] as u32
    }
    fn cf8_write(&mut self, bus: u8, devfn: u8, offset: u16, width: u8, value: u32) {
        self.run(&[Op::Cf8Write(Reg::new(bus, devfn, offset, width), value)]);
    }
    fn mem_read(&mut self, addr: u64, width: u8) -> u64 {
        self.run(&[Op::MemRead(addr, width)])[0]
    }
    fn mem_write(&mut self, addr: u64, width: u8, value: u64) {
        self.run(&[Op::MemWrite(addr, width, value)]);
    }

    /// ICH9 hard reset through 0xCF9, waiting until PCIEXBAR is back to its disabled default
    /// (the reset runs asynchronously in QEMU's main loop; the CPU stays stopped under `-S`).
    fn platform_reset(&mut self) {
        must(self.qt.io_write(RESET_CONTROL, 1, 0x06));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if must(self.qt.read(ECAM_BASE, 4)) != 0x29c0_8086 {
                break;
            }
            assert!(Instant::now() < deadline, "QEMU did not reset");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        must(self.enable_ecam());
    }

    fn run(&mut self, ops: &[Op]) -> Vec<u64> {
        let mut lines = Vec::with_capacity(ops.len());
        let mut wanted = Vec::with_capacity(ops.len());
        for op in ops {
            let l = Self::lines(op);
            if op.is_read() {
                wanted.push(lines.len() + l.len() - 1);
            }
            lines.extend(l);
        }
        let answers = must(self.qt.batch(&lines));
        wanted
            .into_iter()
            .map(|i| {
                qtest::parse_value(&answers[i])
                    .unwrap_or_else(|| panic!("'{}' answered '{}'", lines[i], answers[i]))
            })
            .collect()
    }
}
