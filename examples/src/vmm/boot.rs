//! Loading the kernel with linux-loader (ELF, e.g. `vmlinux` or the test guests, or bzImage) and
//! writing Linux's zero page: command line, initrd, E820 map (Documentation/arch/x86/boot.rst).

use std::io::Cursor;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use super::Error;

/// E820 entry types (ACPI 6.5 §15.1, Table 15.1).
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The boot protocol's magic numbers (boot.rst, "The Real-Mode Kernel Header").
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// bzImage: the 64-bit entry point is 0x200 past the protected-mode code's start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// What the guest is booted with.
pub struct BootImage<'a> {
    /// The kernel (ELF or bzImage).
    pub kernel: &'a [u8],
    /// An initrd, placed at the top of low memory.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Ranges to mark reserved in the E820 map (e.g. the ECAM window, as firmware does so that
    /// Linux trusts MCFG).
    pub reserved: &'a [(u64, u64)],
    /// Where the ACPI RSDP is, if tables were written.
    pub rsdp: Option<GuestAddress>,
}

/// Load the kernel and initrd, write the command line and the zero page; returns the 64-bit
/// entry point.
pub fn load(mem: &GuestMemoryMmap, img: &BootImage<'_>) -> Result<GuestAddress, Error> {
    let kernel_err = |e: linux_loader::loader::Error| Error::Kernel(e.to_string());
    let is_elf = img.kernel.starts_with(b"\x7fELF");
    let loaded = if is_elf {
        Elf::load(
            mem,
            None,
            &mut Cursor::new(img.kernel),
            Some(layout::HIMEM_START),
        )
        .map_err(kernel_err)?
    } else {
        BzImage::load(
            mem,
            None,
            &mut Cursor::new(img.kernel),
            Some(layout::HIMEM_START),
        )
        .map_err(kernel_err)?
    };
    let entry = match loaded.setup_header {
        Some(_) => loaded
            .kernel_load
            .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
            .ok_or_else(|| Error::Kernel("entry point overflows".into()))?,
        None => loaded.kernel_load,
    };

    if img.cmdline.len() >= layout::CMDLINE_MAX {
        return Err(Error::Config(format!(
            "the command line is {} bytes, at most {} fit",
            img.cmdline.len(),
            layout::CMDLINE_MAX - 1
        )));
    }
    if img.cmdline.contains('\0') {
        return Err(Error::Config("the command line contains a NUL".into()));
    }
    let mut cmdline = img.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, layout::CMDLINE)
        .map_err(|e| Error::Memory(format!("writing the command line: {e}")))?;

    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = layout::CMDLINE.0 as u32;
    params.hdr.cmdline_size = img.cmdline.len() as u32;
    if let Some(rsdp) = img.rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }

    let low_end = img.mem_size.min(layout::MMIO_HOLE_START);
    if let Some(initrd) = img.initrd {
        let max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff, // boot.rst: the default for protocol < 2.03
            m => u64::from(m),
        };
        let top = low_end.min(max + 1);
        let size = initrd.len() as u64;
        let addr = top
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= loaded.kernel_end)
            .ok_or_else(|| {
                Error::Config(format!(
                    "the initrd ({size} bytes) does not fit between the kernel and {top:#x}"
                ))
            })?;
        mem.write_slice(initrd, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("writing the initrd: {e}")))?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let mut e820 = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::HIMEM_START.0,
            low_end - layout::HIMEM_START.0,
            E820_RAM,
        ),
    ];
    if img.mem_size > low_end {
        e820.push((layout::HIGH_RAM_START, img.mem_size - low_end, E820_RAM));
    }
    e820.extend(img.reserved.iter().map(|&(b, s)| (b, s, E820_RESERVED)));
    if e820.len() > params.e820_table.len() {
        return Err(Error::Config("too many E820 entries".into()));
    }
    for (slot, &(addr, size, r#type)) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry { addr, size, r#type };
    }
    params.e820_entries = e820.len() as u8;

    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, layout::ZERO_PAGE), mem)
        .map_err(|e| Error::Memory(format!("writing the zero page: {e}")))?;
    Ok(entry)
}
