//! Can `qemu-system-x86_64 -kernel` boot a guest image? QEMU's x86 loader (hw/i386/x86.c,
//! hw/i386/multiboot.c) starts a non-bzImage kernel in 32-bit protected mode either through a PVH
//! entry (an ELF note `Xen`/`XEN_ELFNOTE_PHYS32_ENTRY` in a `PT_NOTE` segment, found by
//! `load_elf`) or through a Multiboot (version 1) header in the first 8 KiB; an ELF64 image needs
//! the header's address fields (flag 16), since QEMU loads only ELF32 multiboot kernels itself.
//! The probe guest has a PVH note (the example VMM enters it at `_start` in 64-bit mode instead).

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h): the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Multiboot 0.6.96 §3.1.1: the header magic, in the first 8192 bytes, 32-bit aligned.
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// Multiboot header flag 16: the address fields are valid (the image is loaded as a flat binary).
const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;
/// `PT_NOTE` (ELF gABI).
const PT_NOTE: u32 = 4;

/// A way QEMU can enter the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuEntry {
    /// A PVH entry point (32-bit, paging off, `ebx` = `hvm_start_info`).
    Pvh(u32),
    /// A Multiboot header QEMU accepts for this image.
    Multiboot,
}

/// Why QEMU cannot boot the image, or how it can.
pub fn qemu_entry(image: &[u8]) -> Result<QemuEntry, String> {
    if image.is_empty() {
        return Err("the guest image is empty (binutils were missing when it was built)".into());
    }
    if let Some(entry) = pvh_entry(image) {
        return Ok(QemuEntry::Pvh(entry));
    }
    match multiboot_flags(image) {
        Some(flags) if flags & MULTIBOOT_AOUT_KLUDGE != 0 || !is_elf64(image) => {
            Ok(QemuEntry::Multiboot)
        }
        Some(_) => Err(
            "the guest has a Multiboot header without address fields, and QEMU loads no ELF64 \
             multiboot image; no PVH entry either"
                .into(),
        ),
        None => Err(
            "the guest has no PVH entry (no XEN_ELFNOTE_PHYS32_ENTRY note) and no \
                     Multiboot header"
                .into(),
        ),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// An ELF64 little-endian image.
fn is_elf64(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF\x02\x01")
}

/// The PVH entry of an ELF64 image: a `Xen` note of type 18 in a `PT_NOTE` segment.
fn pvh_entry(b: &[u8]) -> Option<u32> {
    if !is_elf64(b) {
        return None;
    }
    let phoff = usize::try_from(u64_at(b, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(b, 0x36)?);
    let phnum = usize::from(u16_at(b, 0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(b, ph)? != PT_NOTE {
            return None;
        }
        let start = usize::try_from(u64_at(b, ph + 0x08)?).ok()?;
        let size = usize::try_from(u64_at(b, ph + 0x20)?).ok()?;
        notes_pvh(b.get(start..start.checked_add(size)?)?)
    })
}

/// Walk ELF notes (namesz, descsz, type, name, desc; 4-byte padding) for the PVH entry.
fn notes_pvh(mut notes: &[u8]) -> Option<u32> {
    let pad = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let namesz = usize::try_from(u32_at(notes, 0)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, 4)?).ok()?;
        let kind = u32_at(notes, 8)?;
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            // The entry is 32-bit; Linux and QEMU accept a 4- or 8-byte descriptor.
            return u32_at(notes, name_end);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

/// The flags of a valid Multiboot header (magic + flags + checksum == 0) in the first 8 KiB.
fn multiboot_flags(b: &[u8]) -> Option<u32> {
    let end = b.len().min(8192);
    (0..end.saturating_sub(11)).step_by(4).find_map(|at| {
        let magic = u32_at(b, at)?;
        let flags = u32_at(b, at + 4)?;
        let sum = u32_at(b, at + 8)?;
        (magic == MULTIBOOT_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0)
            .then_some(flags)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header at 64 and its notes at 120.
    fn elf_with_note(note: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 120];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&PT_NOTE.to_le_bytes());
        b[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        b[64 + 0x20..64 + 0x28].copy_from_slice(&(note.len() as u64).to_le_bytes());
        b.extend_from_slice(note);
        b
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn finds_a_pvh_note_after_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x10_0040u32.to_le_bytes(),
        ));
        assert_eq!(
            qemu_entry(&elf_with_note(&notes)),
            Ok(QemuEntry::Pvh(0x10_0040))
        );
        let other = note(b"Xen\0", 1, &[0; 8]);
        assert!(qemu_entry(&elf_with_note(&other))
            .unwrap_err()
            .contains("no PVH entry"));
    }

    #[test]
    fn multiboot_in_elf64_needs_address_fields() {
        let header = |flags: u32| {
            let mut h = MULTIBOOT_MAGIC.to_le_bytes().to_vec();
            h.extend_from_slice(&flags.to_le_bytes());
            h.extend_from_slice(&0u32.wrapping_sub(MULTIBOOT_MAGIC + flags).to_le_bytes());
            elf_with_note(&h)
        };
        assert_eq!(qemu_entry(&header(0x1_0003)), Ok(QemuEntry::Multiboot));
        assert!(qemu_entry(&header(3)).unwrap_err().contains("ELF64"));
        assert!(qemu_entry(&[]).unwrap_err().contains("empty"));
    }

    #[test]
    fn the_probe_guest_today() {
        let image = pcierc_examples::guest::PCIE_PROBE_ELF;
        if image.is_empty() {
            return;
        }
        // An ELF64 image (what the loader walks); whatever it finds, it must not panic.
        assert!(is_elf64(image));
        let _ = qemu_entry(image);
    }
}
