//! A scripted guest on a [`Vcpu`]: configuration accesses the way firmware and Linux make
//! them (CONFIG_ADDRESS dword write then CONFIG_DATA access; ECAM loads and stores), and a
//! bus walk that follows bridges.

use super::{Routed, SimError, Vcpu};

/// CONFIG_ADDRESS for `bus:devfn` register `reg` (PCI Local Bus 3.0 §3.2.2.3.2).
pub fn config_address(bus: u8, devfn: u8, reg: u16) -> u32 {
    (1 << 31) | (u32::from(bus) << 16) | (u32::from(devfn) << 8) | (u32::from(reg) & 0xfc)
}

/// How the guest reaches configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Configuration mechanism #1: CF8/CFC (256 bytes per function).
    Cf8,
    /// ECAM at this base (bus 0 at `base`).
    Ecam(u64),
}

/// A function the walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Bus.
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Header type (bit 7: multi-function).
    pub header_type: u8,
    /// Which server answered the vendor/device read.
    pub served_by: Routed,
}

/// The guest.
#[derive(Clone, Debug)]
pub struct Guest {
    /// The vCPU it runs on.
    pub vcpu: Vcpu,
}

impl Guest {
    /// A guest running on `vcpu`.
    pub fn new(vcpu: Vcpu) -> Self {
        Guest { vcpu }
    }

    /// A configuration read of `size` bytes, and the server that answered.
    pub fn config_read(
        &self,
        how: Mechanism,
        bus: u8,
        devfn: u8,
        reg: u16,
        size: u8,
    ) -> Result<(u64, Routed), SimError> {
        match how {
            Mechanism::Cf8 => {
                self.vcpu
                    .pio_write(0xcf8, 4, config_address(bus, devfn, reg).into())?;
                self.vcpu.pio_read(0xcfc + (reg & 3), size)
            }
            Mechanism::Ecam(base) => self.vcpu.mmio_read(ecam(base, bus, devfn, reg), size),
        }
    }

    /// A configuration write of `size` bytes; the server that took it.
    pub fn config_write(
        &self,
        how: Mechanism,
        bus: u8,
        devfn: u8,
        reg: u16,
        size: u8,
        value: u64,
    ) -> Result<Routed, SimError> {
        match how {
            Mechanism::Cf8 => {
                self.vcpu
                    .pio_write(0xcf8, 4, config_address(bus, devfn, reg).into())?;
                self.vcpu.pio_write(0xcfc + (reg & 3), size, value)
            }
            Mechanism::Ecam(base) => self
                .vcpu
                .mmio_write(ecam(base, bus, devfn, reg), size, value),
        }
    }

    /// A dword read (value only).
    pub fn read32(&self, how: Mechanism, bus: u8, devfn: u8, reg: u16) -> Result<u32, SimError> {
        Ok(self.config_read(how, bus, devfn, reg, 4)?.0 as u32)
    }

    /// Walk from bus 0: every function that answers a vendor ID, following type 1 headers'
    /// secondary buses (as programmed; the walk does not program them).
    pub fn enumerate(&self, how: Mechanism) -> Result<Vec<Found>, SimError> {
        let mut found = Vec::new();
        let mut buses = vec![0u8];
        let mut seen = [false; 256];
        while let Some(bus) = buses.pop() {
            if std::mem::replace(&mut seen[usize::from(bus)], true) {
                continue;
            }
            for dev in 0..32u8 {
                for func in 0..8u8 {
                    let devfn = dev << 3 | func;
                    let (id, served_by) = self.config_read(how, bus, devfn, 0, 4)?;
                    if id as u16 == 0xffff {
                        if func == 0 {
                            break;
                        }
                        continue;
                    }
                    let header_type = (self.read32(how, bus, devfn, 0xc)? >> 16) as u8;
                    found.push(Found {
                        bus,
                        devfn,
                        vendor: id as u16,
                        device: (id >> 16) as u16,
                        header_type,
                        served_by,
                    });
                    if header_type & 0x7f == 1 {
                        let sec = (self.read32(how, bus, devfn, 0x18)? >> 8) as u8;
                        if sec > bus {
                            buses.push(sec);
                        }
                    }
                    if func == 0 && header_type & 0x80 == 0 {
                        break;
                    }
                }
            }
        }
        found.sort_by_key(|f| (f.bus, f.devfn));
        Ok(found)
    }

    /// Program a bridge's primary, secondary and subordinate bus numbers.
    pub fn set_bus_numbers(
        &self,
        how: Mechanism,
        bus: u8,
        devfn: u8,
        secondary: u8,
        subordinate: u8,
    ) -> Result<(), SimError> {
        let v = u32::from(bus) | u32::from(secondary) << 8 | u32::from(subordinate) << 16;
        self.config_write(how, bus, devfn, 0x18, 4, v.into())
            .map(drop)
    }

    /// Program the Q35 MCH's PCIEXBAR (00:00.0 0x60/0x64): `base` with a 256 MiB window
    /// enabled, or disabled with `None`.
    pub fn set_pciexbar(&self, how: Mechanism, base: Option<u64>) -> Result<(), SimError> {
        let v = base.map_or(0, |b| b | 1);
        self.config_write(how, 0, 0, 0x64, 4, v >> 32)?;
        self.config_write(how, 0, 0, 0x60, 4, v & 0xffff_ffff)
            .map(drop)
    }
}

/// The guest-physical address of `bus:devfn` register `reg` in an ECAM window at `base`.
pub fn ecam(base: u64, bus: u8, devfn: u8, reg: u16) -> u64 {
    base + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(reg))
}
