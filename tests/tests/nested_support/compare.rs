//! The live comparison's rules: which bits of Linux's view of the hierarchy may differ between
//! QEMU's q35 and the VMM over pcierc, and the comparison itself.

use super::cfg_space;

/// What may differ between Linux's view under QEMU and on the VMM: (functions, first offset,
/// bytes, bit mask, why). Everything else of every common function's 4 KiB must be equal.
const EXCLUDED: &[(&[&str], usize, usize, u8, &str)] = &[
    // Firmware: QEMU boots SeaBIOS first, the VMM boots Linux directly.
    (
        MCH,
        0x04,
        2,
        0xff,
        "Command: SeaBIOS's pci_bios_init_device sets I/O, Memory and SERR# on every function",
    ),
    (
        PORTS,
        0x05,
        1,
        0x01,
        "Command SERR# Enable: set by SeaBIOS (as above)",
    ),
    (
        MCH,
        0x90,
        7,
        0xff,
        "PAM0-PAM6: SeaBIOS shadows its ROM in RAM",
    ),
    (MCH, 0x9d, 1, 0xff, "SMRAM: SeaBIOS sets G_SMRAME"),
    (
        PORTS,
        0x3c,
        1,
        0xff,
        "Interrupt Line: SeaBIOS's legacy IRQ; the VMM gives no INTx routing yet",
    ),
    // Address space: the VMM's PCI hole is not QEMU's, so Linux places BARs and windows elsewhere.
    (
        PORTS,
        0x10,
        4,
        0xff,
        "BAR0 (the ports' MSI-X table): address in the PCI hole",
    ),
    (
        PORTS,
        0x20,
        16,
        0xff,
        "memory and prefetchable windows (and upper 32 bits)",
    ),
    // Deliberate deviations (docs/qemu-compat.md): enables QEMU 7.2 does not implement.
    (
        PORTS,
        0x6d,
        1,
        0x10,
        "Slot Control DLL State Changed Enable",
    ),
    (PORTS, 0x70, 1, 0x08, "Root Control PME Interrupt Enable"),
];
const MCH: &[&str] = &["0000:00:00.0"];
const PORTS: &[&str] = &[
    "0000:00:02.0",
    "0000:00:02.1",
    "0000:00:02.2",
    "0000:00:02.3",
];

/// The bits of `function`'s byte at `offset` that must be equal.
fn compared_bits(function: &str, offset: usize) -> u8 {
    EXCLUDED
        .iter()
        .filter(|(fs, first, len, _, _)| {
            fs.contains(&function) && (*first..first + len).contains(&offset)
        })
        .fold(0xff, |m, (_, _, _, bits, _)| m & !bits)
}

/// Differences between Linux's views under QEMU (`reference`) and on the VMM (`ours`).
pub fn compare_views(reference: &[String], ours: &[String]) -> Vec<String> {
    let functions = |lines: &[String]| -> Vec<String> {
        let mut f: Vec<String> = lines
            .iter()
            .filter_map(|l| Some(l.strip_prefix("cfg ")?.split(' ').next()?.to_owned()))
            .collect();
        f.dedup();
        f
    };
    let mut diffs = Vec::new();
    let theirs = functions(reference);
    let mine = functions(ours);
    // QEMU's q35 also has the ICH9 functions at 00:1f (LPC, SATA, SMBus), which pcierc leaves
    // to the VMM; the VMM has nothing QEMU lacks.
    for f in &theirs {
        if !mine.contains(f) && !f.starts_with("0000:00:1f.") {
            diffs.push(format!("{f}: only under QEMU"));
        }
    }
    for f in &mine {
        if !theirs.contains(f) {
            diffs.push(format!("{f}: not under QEMU"));
            continue;
        }
        let (a, b) = (
            cfg_space(reference, f).unwrap_or_default(),
            cfg_space(ours, f).unwrap_or_default(),
        );
        if a.len() != b.len() || a.is_empty() {
            diffs.push(format!("{f}: sysfs gave {} and {} bytes", a.len(), b.len()));
            continue;
        }
        for off in 0..a.len() {
            let mask = compared_bits(f, off);
            if a[off] & mask != b[off] & mask {
                diffs.push(format!(
                    "{f} {off:03x}: QEMU {:02x} pcierc {:02x}",
                    a[off], b[off]
                ));
            }
        }
    }
    let facts = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("service ") || l.starts_with("slot "))
            .cloned()
            .collect()
    };
    if facts(reference) != facts(ours) {
        diffs.push(format!(
            "services/slots: QEMU {:?} pcierc {:?}",
            facts(reference),
            facts(ours)
        ));
    }
    diffs
}

#[test]
fn the_comparison_has_teeth() {
    let view = |slot_ctl: u8| -> Vec<String> {
        let mut lines = vec!["service 0000:00:02.0:pcie004 driver pciehp".to_string()];
        for off in (0..4096).step_by(32) {
            let bytes: Vec<String> = (0..32)
                .map(|i| {
                    if off + i == 0x6d {
                        format!("{slot_ctl:02x}")
                    } else {
                        "00".into()
                    }
                })
                .collect();
            lines.push(format!("cfg 0000:00:02.0 {off:03x} {}", bytes.join(" ")));
        }
        lines
    };
    // DLLSCE (0x10) is excused, Attention Button Pressed Enable's neighbour bits are not.
    assert!(compare_views(&view(0x07), &view(0x17)).is_empty());
    assert_eq!(compare_views(&view(0x07), &view(0x05)).len(), 1);
    let mut short = view(0x07);
    short.pop();
    assert_eq!(compare_views(&view(0x07), &short).len(), 1);
    // The probe's sparse form (zero lines left out, the size given) reads the same.
    let mut sparse: Vec<String> = view(0x17)
        .into_iter()
        .filter(|l| {
            let mut w = l.split_whitespace().skip(2);
            w.next() == Some("000") || w.any(|b| b != "00")
        })
        .collect();
    sparse.push("cfgsize 0000:00:02.0 1000".into());
    assert!(sparse.len() < 10, "{sparse:?}");
    assert!(compare_views(&view(0x07), &sparse).is_empty());
    assert_eq!(compare_views(&view(0x05), &sparse).len(), 1);
}
