//! Figures read from a guest's kernel log (`dmesg` with `printk.time`).

/// Linux's boot-time enumeration of PCI segment 0 as its log shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PciScan {
    /// From "PCI host bridge to bus 0000:00" to the last line of the scan's unbroken run of
    /// `pci`/`pci_bus` lines (every function found, its BARs, capabilities and the bridges'
    /// windows, printed as the scan reads them), in seconds of guest time.
    pub seconds: f64,
    /// The functions the scan found (`pci SBDF: [vvvv:dddd] type ..` lines).
    pub functions: usize,
}

impl PciScan {
    /// Guest time per function found, in microseconds.
    pub fn us_per_function(&self) -> f64 {
        self.seconds * 1e6 / self.functions.max(1) as f64
    }
}

/// The timestamp and message of a `[   12.345678] message` line (anything before the `[`,
/// such as a console prefix, is ignored).
fn stamped(line: &str) -> Option<(f64, &str)> {
    let open = line.find('[')?;
    let rest = &line[open + 1..];
    let close = rest.find(']')?;
    let t = rest[..close].trim().parse().ok()?;
    Some((t, rest[close + 1..].trim_start()))
}

/// The PCI scan of segment 0 in `lines` (a guest's `dmesg`), if the log holds it.
pub fn pci_scan(lines: &[String]) -> Option<PciScan> {
    let mut stamped_lines = lines.iter().filter_map(|l| stamped(l));
    let (start, _) = stamped_lines
        .by_ref()
        .find(|(_, m)| m.starts_with("PCI host bridge to bus 0000:00"))?;
    let (mut end, mut functions) = (start, 0);
    for (t, m) in stamped_lines {
        if !(m.starts_with("pci ") || m.starts_with("pci_bus ")) {
            break;
        }
        end = t;
        // "pci 0000:00:02.0: [1b36:000c] type 01 class 0x060400 PCIe Root Port"
        if m.contains(": [") && m.contains("] type ") {
            functions += 1;
        }
    }
    (functions > 0).then_some(PciScan {
        seconds: end - start,
        functions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn the_scan_runs_from_the_host_bridge_to_the_last_pci_line() {
        let log = lines(
            "[    0.400000] ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00-ff])\n\
             [    0.410000] PCI host bridge to bus 0000:00\n\
             [    0.410100] pci_bus 0000:00: root bus resource [bus 00-ff]\n\
             [    0.420000] pci 0000:00:00.0: [8086:29c0] type 00 class 0x060000\n\
             [    0.430000] pci 0000:00:02.0: [1b36:000c] type 01 class 0x060400\n\
             [    0.431000] pci 0000:00:02.0: reg 0x10: [mem 0xfebd0000-0xfebd0fff]\n\
             [    0.450000] pci 0000:00:02.0: PCI bridge to [bus 01]\n\
             [    0.460000] ACPI: PCI: Interrupt link LNKA configured for IRQ 10\n\
             [    0.900000] pci 0000:00:02.0: BAR 13: assigned [io  0x1000-0x1fff]",
        );
        let scan = pci_scan(&log).expect("a scan");
        assert_eq!(scan.functions, 2);
        assert!((scan.seconds - 0.04).abs() < 1e-9, "{scan:?}");
        assert!((scan.us_per_function() - 20_000.0).abs() < 1e-6);
    }

    #[test]
    fn a_log_without_the_scan_gives_nothing() {
        assert_eq!(
            pci_scan(&lines(
                "[ 0.1] Linux version 6.1\n[ 0.2] pci 0000:00:00.0: [8086:29c0] type 00"
            )),
            None
        );
        assert_eq!(
            pci_scan(&lines(
                "[ 0.1] PCI host bridge to bus 0000:00\n[ 0.2] ACPI: done"
            )),
            None
        );
    }
}
