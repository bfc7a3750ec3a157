//! The initramfs builder of every test that boots Linux: an uncompressed newc cpio archive (the
//! format Linux unpacks into its rootfs, `Documentation/driver-api/early-userspace/buffer-format.rst`),
//! built in memory from files, host binaries with the shared libraries they load, and kernel
//! modules with their dependencies. No root rights and no external tool are needed (`objcopy`,
//! when present, strips debug information from the binaries to keep the archive small).
//! [`Initramfs::busybox`] is the common start: busybox-static and a shell script as `/init`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an archive could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A host file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The archive could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `ldd` could not list a binary's libraries.
    #[error("ldd {path}: {detail}")]
    Ldd {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A kernel module is not in the running kernel's `modules.dep`.
    #[error("kernel module {name} not found in {dep}")]
    NoModule {
        /// The module.
        name: String,
        /// The `modules.dep` searched.
        dep: PathBuf,
    },
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// The archive being built: paths (without a leading `/`) to entries; parents are added as
/// directories.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    std::fs::read(path).map_err(|source| InitramfsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Initramfs {
    /// An archive with the usual mount points (`/dev /proc /sys /tmp /run`).
    pub fn new() -> Self {
        let mut a = Initramfs::default();
        for d in ["dev", "proc", "sys", "tmp", "run"] {
            a.dir(d);
        }
        a
    }

    /// An archive that runs the shell script `init` under busybox: the mount points of
    /// [`Initramfs::new`], the statically linked `busybox` at `/bin/busybox` with `/bin/sh` linked
    /// to it, and `init` at `/init`.
    pub fn busybox(busybox: &Path, init: &Path) -> Result<Self, InitramfsError> {
        let mut a = Initramfs::new();
        a.copy("bin/busybox", busybox, 0o755)?;
        a.symlink("bin/sh", "busybox");
        a.copy("init", init, 0o755)?;
        Ok(a)
    }

    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            self.entries.entry(dir.to_owned()).or_insert(Entry::Dir);
            at += i + 1;
        }
    }

    /// A directory.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries.insert(path.to_owned(), Entry::Dir);
    }

    /// A file with these contents and permission bits.
    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::File {
                data: data.into(),
                mode: mode & 0o7777,
            },
        );
    }

    /// A copy of the host file `from`.
    pub fn copy(&mut self, path: &str, from: &Path, mode: u32) -> Result<(), InitramfsError> {
        let data = read(from)?;
        self.file(path, data, mode);
        Ok(())
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entries
            .insert(path.to_owned(), Entry::Symlink(target.to_owned()));
    }

    /// The host executable `from` at `path`, with debug information stripped when `objcopy` is
    /// there, and every shared library `ldd` says it loads, at the same paths as on the host.
    pub fn binary(&mut self, path: &str, from: &Path) -> Result<(), InitramfsError> {
        let data = stripped(from)?;
        self.file(path, data, 0o755);
        for lib in shared_libraries(from)? {
            let name = lib.to_string_lossy().into_owned();
            if !self.entries.contains_key(name.trim_start_matches('/')) {
                // Through symlinks (e.g. /lib64/ld-linux-x86-64.so.2): the file itself.
                let real = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.clone());
                self.copy(&name, &real, 0o755)?;
            }
        }
        Ok(())
    }

    /// The kernel module `name` (e.g. `kvm-amd`) of kernel `release` and the modules it needs,
    /// under `lib/modules/`; their file names in load order (dependencies first).
    pub fn kernel_module(
        &mut self,
        release: &str,
        name: &str,
    ) -> Result<Vec<String>, InitramfsError> {
        let base = Path::new("/lib/modules").join(release);
        let dep = base.join("modules.dep");
        let text = std::fs::read_to_string(&dep).map_err(|source| InitramfsError::Read {
            path: dep.clone(),
            source,
        })?;
        let want = format!("/{name}.ko");
        let line = text
            .lines()
            .find(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|m| m.ends_with(&want) || m == &want[1..])
            })
            .ok_or_else(|| InitramfsError::NoModule {
                name: name.to_owned(),
                dep: dep.clone(),
            })?;
        let (module, deps) = line.split_once(':').unwrap_or((line, ""));
        // modules.dep lists the dependencies nearest first; load the farthest first.
        let mut order: Vec<&str> = deps.split_whitespace().rev().collect();
        order.push(module);
        let mut names = Vec::new();
        for m in order {
            let file = Path::new(m)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| m.to_owned());
            self.copy(&format!("lib/modules/{file}"), &base.join(m), 0o644)?;
            names.push(file);
        }
        Ok(names)
    }

    /// The archive's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (0o040_755, &[]),
                Entry::File { data, mode } => (0o100_000 | mode, data),
                Entry::Symlink(t) => (0o120_777, t.as_bytes()),
            };
            push_entry(&mut out, ino as u32 + 1, mode, path, data);
        }
        push_entry(&mut out, 0, 0, "TRAILER!!!", &[]);
        out
    }

    /// Write the archive to `path`.
    pub fn write(&self, path: &Path) -> Result<(), InitramfsError> {
        std::fs::write(path, self.to_bytes()).map_err(|source| InitramfsError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One newc header, name and data (both padded to 4 bytes).
fn push_entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// `from` without debug information (`objcopy --strip-debug`), or as it is without objcopy.
fn stripped(from: &Path) -> Result<Vec<u8>, InitramfsError> {
    let tmp = std::env::temp_dir().join(format!(
        "pcierc-strip-{}-{}",
        std::process::id(),
        from.file_name()
            .map_or("bin".into(), |n| n.to_string_lossy())
    ));
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(from)
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    let data = if ok { read(&tmp) } else { read(from) };
    let _ = std::fs::remove_file(&tmp);
    data
}

/// The absolute paths of the shared libraries `binary` loads (`ldd`), the loader included; none
/// for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| InitramfsError::Ldd {
            path: binary.to_owned(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => {
                return Err(InitramfsError::Ldd {
                    path: binary.to_owned(),
                    detail: format!("a library is missing: {}", line.trim()),
                })
            }
            _ => {}
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_what_the_kernel_parses() {
        let mut a = Initramfs::default();
        a.file("bin/x", b"abcde".to_vec(), 0o755);
        a.symlink("bin/sh", "x");
        let bytes = a.to_bytes();
        // "bin" (dir), "bin/sh", "bin/x", trailer; each header 110 bytes, 4-byte aligned.
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("070701").count(), 4);
        assert!(bytes.starts_with(b"070701"));
        let first_name = &bytes[110..114];
        assert_eq!(first_name, b"bin\0");
        // The directory's mode field (second field) is 040755.
        assert_eq!(&bytes[14..22], b"000041ed");
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("abcde"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
        assert_eq!(bytes.len() % 4, 0);
    }
}
