//! Test support: QEMU 7.2's reference dumps (`lspci -xxxx` format) in `fixtures/qemu-7.2/`, and
//! QEMU 10.0's `pc-q35-10.0` ones in `fixtures/qemu-10.0/` (how they were made:
//! `fixtures/README.md`).

use std::path::PathBuf;

/// The 4 KiB a QEMU 7.2 dump file holds. Panics (this is test code) if the file is missing or
/// malformed.
pub fn load_dump(name: &str) -> Vec<u8> {
    load_dump_from("qemu-7.2", name)
}

/// The 4 KiB dump `name` in `fixtures/DIR` holds (`qemu-7.2` or `qemu-10.0`).
pub fn load_dump_from(dir: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(dir)
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bytes = vec![0u8; 4096];
    for line in text.lines().skip(1) {
        let Some((off, rest)) = line.split_once(": ") else {
            continue;
        };
        let off = usize::from_str_radix(off, 16).unwrap_or_else(|e| panic!("{line}: {e}"));
        for (i, b) in rest.split_whitespace().enumerate() {
            bytes[off + i] = u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
    bytes
}

/// Every byte of `f`'s configuration space, read through [`crate::pci::PciFunction::config_read`].
pub fn read_all(f: &dyn crate::pci::PciFunction) -> Vec<u8> {
    (0..4096u16)
        .step_by(4)
        .flat_map(|o| f.config_read(o, 4).to_le_bytes())
        .collect()
}

/// The first differing offset, for readable assertion messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<(usize, u8, u8)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, *x, *y))
}
