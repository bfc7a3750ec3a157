//! Assembles the test guests in `guest/` (with the `*.inc` files they include) with GNU binutils
//! (`as`, `ld`; `$AS` and `$LD` override them; `guest/pvh_note.ld` keeps the probe guest's PVH ELF
//! note inside its image) into `$OUT_DIR`, where `src/guest.rs` embeds them. Without binutils the
//! crate still builds: the embedded images are empty, a cargo warning says why, and the VMM
//! refuses to run them (the end-to-end tests then fail and say why). A guest that does not
//! assemble or link fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest images: (source in `guest/`, output name in `$OUT_DIR`).
const GUESTS: &[(&str, &str)] = &[
    ("pcie_probe.S", "pcie-probe.elf"),
    ("fault_exec_mmio.S", "fault-exec-mmio.elf"),
    ("fault_triple.S", "fault-triple.elf"),
    ("hang.S", "hang.elf"),
    ("reboot_state.S", "reboot-state.elf"),
];

/// Load address of the guests (1 MiB, above the VMM's boot structures).
const LOAD_ADDRESS: &str = "0x100000";

/// Run a tool: `Err` only when it cannot be started (binutils missing). A tool that runs and
/// fails is a bug in `guest/` and fails the build with its messages.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn build(src: &Path, obj: &Path, elf: &Path) -> Result<(), String> {
    let as_ = std::env::var("AS").unwrap_or_else(|_| "as".into());
    let ld = std::env::var("LD").unwrap_or_else(|_| "ld".into());
    let include_dir = src.parent().unwrap_or(Path::new("."));
    run(Command::new(&as_)
        .arg("--64")
        .arg("-I")
        .arg(include_dir)
        .arg("-o")
        .arg(obj)
        .arg(src))?;
    run(Command::new(&ld)
        .args(["-m", "elf_x86_64", "-nostdlib", "-static", "-N"])
        .arg(format!("-Ttext={LOAD_ADDRESS}"))
        .args(["-e", "_start", "--build-id=none", "-o"])
        .arg(elf)
        .arg(obj)
        // With INSERT, `-T` adds to ld's default script instead of replacing it.
        .arg("-T")
        .arg(include_dir.join("pvh_note.ld")))
}

fn main() {
    println!("cargo:rerun-if-env-changed=AS");
    println!("cargo:rerun-if-env-changed=LD");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The whole directory: the guests `.include` files of their own (`*.inc`).
    println!("cargo:rerun-if-changed=guest");
    for (src, name) in GUESTS {
        let src = Path::new("guest").join(src);
        let elf = out_dir.join(name);
        let obj = elf.with_extension("o");
        if let Err(e) = build(&src, &obj, &elf) {
            println!(
                "cargo:warning=test guest {name} not built (install binutils: `as`, `ld`): {e}"
            );
            std::fs::write(&elf, []).expect("writing an empty guest image");
        }
    }
}
