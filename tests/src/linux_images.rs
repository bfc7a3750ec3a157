//! What the tests that boot Debian's Linux take from the host: its kernel ([`kernel`]), a
//! statically linked busybox ([`static_busybox`]), and busybox initramfs archives built with
//! [`Initramfs::busybox`] ([`busybox_initramfs`]). A missing piece makes the test skip loudly, or
//! fail under `PCIERC_REQUIRE_TOOLS` ([`skip_loudly`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::initramfs::Initramfs;
use crate::process::skip_loudly;

/// The kernel to boot: `PCIERC_LINUX_KERNEL`, else the newest `/boot/vmlinuz-*`. `None`, after
/// a loud skip, when there is none or it is not readable (Debian's are root-only).
pub fn kernel() -> Option<PathBuf> {
    let kernel = match std::env::var_os("PCIERC_LINUX_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect();
            found.sort();
            let Some(k) = found.pop() else {
                skip_loudly("no /boot/vmlinuz-* (apt-get install linux-image-amd64)");
                return None;
            };
            k
        }
    };
    if std::fs::File::open(&kernel).is_err() {
        skip_loudly(&format!(
            "{} is not readable (Debian's are root-only)",
            kernel.display()
        ));
        return None;
    }
    Some(kernel)
}

/// A statically linked busybox (the archives carry no libraries for it): `BUSYBOX`, else
/// `/bin/busybox`; what is wrong when there is none.
pub fn static_busybox() -> Result<PathBuf, String> {
    let busybox = std::env::var_os("BUSYBOX").map_or_else(|| "/bin/busybox".into(), PathBuf::from);
    // `ldd` fails on a static executable ("not a dynamic executable").
    let is_static = Command::new("ldd")
        .arg(&busybox)
        .output()
        .is_ok_and(|o| !o.status.success());
    if busybox.exists() && is_static {
        Ok(busybox)
    } else {
        Err(format!(
            "no static {} (apt-get install busybox-static)",
            busybox.display()
        ))
    }
}

/// Write to `out` the busybox initramfs whose `/init` is the script `init`; `out`, or `None`
/// after a loud skip without a static busybox.
pub fn busybox_initramfs(init: &Path, out: &Path) -> Option<PathBuf> {
    let busybox = match static_busybox() {
        Ok(b) => b,
        Err(what) => {
            skip_loudly(&what);
            return None;
        }
    };
    Initramfs::busybox(&busybox, init)
        .and_then(|a| a.write(out))
        .unwrap_or_else(|e| panic!("building the initramfs {}: {e}", out.display()));
    Some(out.to_owned())
}
