//! Topologies of many root ports, and a firmware-style full scan of 256 buses x 32 devices x 8
//! functions with `ConfigRead`.

use pcierc_protocol::{Frontend, Status};

use crate::error::{Context, Error, Result};

/// Root ports that fit on bus 0: devices 1-31, eight functions each (00.0 is the host bridge, and
/// 00.1-00.7 would need a multifunction function 0, which the MCH is not).
pub const MAX_ROOT_PORTS: usize = 31 * 8;

/// pcierc options for a topology of `n` root ports and nothing else: `-n` (no default ports), then
/// `rp1`..`rpN` at 01.0, 01.1, .., 01.7, 02.0, .., chassis N, slot N, function 0 of each slot
/// multifunction when the slot holds more than one port.
pub fn root_port_args(n: usize) -> Result<Vec<String>> {
    if n == 0 || n > MAX_ROOT_PORTS {
        return Err(Error::Other(format!(
            "{n} root ports: between 1 and {MAX_ROOT_PORTS} fit on bus 0"
        )));
    }
    let mut args = vec!["-n".to_string()];
    for i in 0..n {
        let (dev, func) = (1 + i / 8, i % 8);
        let multi = func == 0 && i + 1 < n;
        let id = i + 1;
        args.push("--device".into());
        args.push(format!(
            "pcie-root-port,id=rp{id},chassis={id},slot={id},addr={dev:#x}.{func}{}",
            if multi { ",multifunction=on" } else { "" }
        ));
    }
    Ok(args)
}

/// What a full scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCount {
    /// Config reads sent.
    pub reads: u64,
    /// Functions that answered (including ones served by another emulator).
    pub functions: u64,
}

/// Does a function answer at (bus, devfn)?
enum Probe {
    Absent,
    Present,
    /// Served by another emulator: present, but its header is not ours to read.
    Remote,
}

fn read(
    fe: &mut Frontend,
    n: &mut ScanCount,
    bus: u8,
    devfn: u8,
    offset: u16,
    width: u8,
) -> Result<std::result::Result<u32, Status>> {
    n.reads += 1;
    match fe.config_read(0, bus, devfn, offset, width) {
        Ok(v) => Ok(Ok(v)),
        Err(e) if e.status() == Some(Status::Remote) => Ok(Err(Status::Remote)),
        Err(e) => Err(e).context(format!(
            "ConfigRead {bus:02x}:{:02x}.{} offset {offset:#x}",
            devfn >> 3,
            devfn & 7
        )),
    }
}

/// Vendor ID (PCI Local Bus 3.0 §6.2.1: 0xffff when no function answers).
fn probe(fe: &mut Frontend, n: &mut ScanCount, bus: u8, devfn: u8) -> Result<Probe> {
    Ok(match read(fe, n, bus, devfn, 0x00, 2)? {
        Ok(0xffff) => Probe::Absent,
        Ok(_) => Probe::Present,
        Err(_) => Probe::Remote,
    })
}

/// Header Type bit 7: a multi-function device (PCI Local Bus 3.0 §6.2.1).
fn multifunction(fe: &mut Frontend, n: &mut ScanCount, bus: u8, devfn: u8) -> Result<bool> {
    Ok(matches!(read(fe, n, bus, devfn, 0x0e, 1)?, Ok(h) if h & 0x80 != 0))
}

/// Scan every bus, device and function as firmware does: Vendor ID of function 0; nothing there
/// skips the device; otherwise Header Type, and functions 1-7 only for a multi-function device
/// (each present one's Header Type read too, as firmware does to tell bridges from endpoints).
pub fn full_scan(fe: &mut Frontend) -> Result<ScanCount> {
    let mut n = ScanCount::default();
    for bus in 0..=255u8 {
        for dev in 0..32u8 {
            let f0 = dev << 3;
            match probe(fe, &mut n, bus, f0)? {
                Probe::Absent => continue,
                Probe::Remote => {
                    n.functions += 1;
                    continue;
                }
                Probe::Present => n.functions += 1,
            }
            if !multifunction(fe, &mut n, bus, f0)? {
                continue;
            }
            for devfn in (1..8u8).map(|func| f0 | func) {
                match probe(fe, &mut n, bus, devfn)? {
                    Probe::Absent => {}
                    Probe::Remote => n.functions += 1,
                    Probe::Present => {
                        n.functions += 1;
                        multifunction(fe, &mut n, bus, devfn)?;
                    }
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies() {
        let a = root_port_args(9).expect("9 ports fit");
        assert_eq!(a.len(), 1 + 2 * 9);
        assert_eq!(
            a[2],
            "pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x1.0,multifunction=on"
        );
        assert_eq!(a[16], "pcie-root-port,id=rp8,chassis=8,slot=8,addr=0x1.7");
        assert_eq!(
            a[18], "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x2.0",
            "alone in its slot"
        );
        let all = root_port_args(MAX_ROOT_PORTS).expect("the maximum fits");
        assert!(all[all.len() - 1].ends_with("addr=0x1f.7"));
        assert!(root_port_args(MAX_ROOT_PORTS + 1).is_err());
    }
}
