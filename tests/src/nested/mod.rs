//! Live Linux on the example VMM through nested virtualization.
//!
//! This machine's own KVM cannot run a stock Linux kernel in reasonable time, but QEMU under TCG
//! emulates AMD SVM with nested paging: an L1 Linux booted by `qemu-system-x86_64 -accel tcg
//! -cpu EPYC,+svm,+npt` loads Debian's `kvm_amd` and has a working `/dev/kvm`. The harness packs
//! into L1's initramfs the `pcierc`, `vmm` and `pcierc-qmp` binaries of this build (release
//! profile), the kernel's KVM modules, and L2's kernel and probe initramfs; L1's `/init`
//! (`tests/nested/l1-init`) then runs pcierc and the VMM, which boots L2 on pcierc's hierarchy.
//!
//! Both machines take shell commands on their consoles ([`console`]); L1 relays L2's console
//! with a prefix. [`Nested::l1`], [`Nested::l2`] and [`Nested::qmp`] run one command and return
//! its output and status; every wait is bounded and a failure carries the last console lines.
//! [`ProbeVm`] boots the same probe initramfs directly under QEMU's q35, the live reference.
//! With [`NestedOptions::passthrough`], L0 has an IOMMU and PCIe devices that L1 binds to
//! vfio-pci for the VMM ([`passthrough`], [`Nested::vfio`], [`Nested::l0_qmp`]).
//!
//! Prerequisites: `qemu-system-x86_64`, Debian's kernel in /boot with its modules, and
//! busybox-static ([`tools`]); without them tests skip loudly, or fail under
//! `PCIERC_REQUIRE_TOOLS` (CI). `PCIERC_NESTED_QEMU` names another QEMU binary for L0.

pub mod console;
pub mod dmesg;
pub mod passthrough;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::initramfs::{Initramfs, InitramfsError};
use crate::linux_images::static_busybox;
use crate::process::ScratchDir;
use console::{shell_quote, ConsoleError, ConsoleMachine, Output, Source};
use passthrough::{PassthroughDevice, VfioFunction};
use pcierc_testkit::qmp_socket::QmpSocket;

/// How long L1 may take from QEMU's start to its shell (about 5 s measured here).
const L1_BOOT: Duration = Duration::from_secs(120);
/// How long L2 may take from the VMM's start to its shell (about 20 s measured here).
const L2_BOOT: Duration = Duration::from_secs(180);
/// The probe guest's kernel command line: serial console, no kernel messages on it (the tests
/// read `dmesg`), and a panic powers the machine off.
pub const PROBE_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// Why the nested harness could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// An initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// The console interaction failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// Building the release binaries failed.
    #[error("cargo build --release failed: {0}")]
    Build(String),
    /// L1 came up without a usable /dev/kvm.
    #[error("L1 has no working KVM: {0}")]
    NoKvm(String),
    /// L1 stopped answering on its console (QEMU's TCG vCPU stalled).
    #[error("L1 stalled: its shell did not answer within {seconds} s after: {after}")]
    Stalled {
        /// How long it was given.
        seconds: u64,
        /// The error that made the harness check.
        after: Box<NestedError>,
    },
    /// A step ran but failed.
    #[error("{0}")]
    Step(String),
}

/// What the live tests need from the host.
#[derive(Clone, Debug)]
pub struct Tools {
    /// QEMU for L0.
    pub qemu: String,
    /// The kernel (L1's and L2's).
    pub kernel: PathBuf,
    /// Its release (`uname -r`), naming its modules' directory.
    pub release: String,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

/// Skip loudly (or fail under `PCIERC_REQUIRE_TOOLS`) for a missing prerequisite.
fn missing(what: &str) -> Option<Tools> {
    assert!(
        std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none(),
        "{what} (PCIERC_REQUIRE_TOOLS is set)"
    );
    eprintln!("\n*** SKIP: {what}; this test did not run ***\n");
    None
}

/// The prerequisites, or `None` after saying loudly what is missing.
pub fn tools() -> Option<Tools> {
    let qemu = std::env::var("PCIERC_NESTED_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let has_qemu = Command::new(&qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_qemu {
        return missing(&format!(
            "{qemu} not found (apt-get install qemu-system-x86)"
        ));
    }
    let mut kernels: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let release = p
                .file_name()?
                .to_str()?
                .strip_prefix("vmlinuz-")?
                .to_owned();
            Some((release, p))
        })
        .filter(|(r, p)| {
            Path::new("/lib/modules")
                .join(r)
                .join("modules.dep")
                .exists()
                && std::fs::File::open(p).is_ok()
        })
        .collect();
    kernels.sort();
    let Some((release, kernel)) = kernels.pop() else {
        return missing(
            "no readable /boot/vmlinuz-* with its modules (apt-get install linux-image-amd64)",
        );
    };
    let busybox = match static_busybox() {
        Ok(b) => b,
        Err(what) => return missing(&what),
    };
    Some(Tools {
        qemu,
        kernel,
        release,
        busybox,
    })
}

/// The release binaries the machines run.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `pcierc`.
    pub pcierc: PathBuf,
    /// The example VMM.
    pub vmm: PathBuf,
    /// The QMP client.
    pub qmp: PathBuf,
}

/// Build `pcierc`, `vmm` and `pcierc-qmp` in the release profile (once per process): under
/// TCG, L1 runs them a hundred times slower than the host would.
pub fn release_binaries() -> Result<Binaries, NestedError> {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/<test> (a test) or target/<profile>/<bin> (pcierc-bench)
            // -> target/
            let profile = exe
                .parent()
                .map(|d| {
                    if d.ends_with("deps") {
                        d.parent()
                    } else {
                        Some(d)
                    }
                })
                .ok_or("no target directory")?;
            let target = profile
                .and_then(Path::parent)
                .ok_or("no target directory")?
                .to_owned();
            let out = Command::new(env!("CARGO"))
                .args(["build", "--release", "-q"])
                .args(["-p", "pcierc-backend", "--bin", "pcierc"])
                .args(["-p", "pcierc-examples", "--bin", "vmm"])
                .args(["-p", "pcierc-tests", "--bin", "pcierc-qmp"])
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let dir = target.join("release");
            Ok(Binaries {
                pcierc: dir.join("pcierc"),
                vmm: dir.join("vmm"),
                qmp: dir.join("pcierc-qmp"),
            })
        })
        .clone()
        .map_err(NestedError::Build)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("nested")
        .join(name)
}

/// The probe guest's initramfs: busybox, `tests/nested/l2-init`, `probe.sh`, the
/// `uio_pci_generic` module with `uio` under `/lib/modules`, and `e1000e` (listed in
/// `/lib/modules/boot-load`, which `l2-init` loads at boot).
pub fn probe_initramfs(tools: &Tools) -> Result<Initramfs, NestedError> {
    let mut a = Initramfs::busybox(&tools.busybox, &script("l2-init"))?;
    a.copy("lib/probe.sh", &script("probe.sh"), 0o644)?;
    // uio_pci_generic (with uio): a driver that takes a device's INTx, for the INTx tests.
    a.kernel_module(&tools.release, "uio_pci_generic")?;
    // e1000e, loaded at boot when present: the driver of the NIC passed through to L2
    // (NestedOptions::passthrough). A kernel without it only loses the passthrough cases.
    if let Ok(modules) = a.kernel_module(&tools.release, "e1000e") {
        a.file("lib/modules/boot-load", modules.join("\n") + "\n", 0o644);
    }
    Ok(a)
}

/// L1's initramfs: busybox, `tests/nested/l1-init`, KVM's modules, the binaries with their
/// libraries, and L2's kernel and initramfs under `/l2`.
pub fn l1_initramfs(tools: &Tools, bins: &Binaries) -> Result<Initramfs, NestedError> {
    let mut a = Initramfs::busybox(&tools.busybox, &script("l1-init"))?;
    let modules = a.kernel_module(&tools.release, "kvm-amd")?;
    a.file("lib/modules/load-order", modules.join("\n") + "\n", 0o644);
    a.binary("bin/pcierc", &bins.pcierc)?;
    a.binary("bin/vmm", &bins.vmm)?;
    a.binary("bin/pcierc-qmp", &bins.qmp)?;
    a.copy("l2/vmlinuz", &tools.kernel, 0o644)?;
    a.file("l2/initrd", probe_initramfs(tools)?.to_bytes(), 0o644);
    Ok(a)
}

/// The modules L1 needs for passthrough (VFIO with the type1 IOMMU and vfio-pci, with their
/// dependencies, and `aer_inject`, through which a test makes L1's AER driver see an error of
/// a passed-through device) under `lib/modules/`, and `lib/modules/vfio-load-order`: their file names in
/// load order, without those `load-order` (KVM's) already loads.
pub fn vfio_modules(a: &mut Initramfs, tools: &Tools) -> Result<(), NestedError> {
    let kvm = a.kernel_module(&tools.release, "kvm-amd")?;
    let mut order: Vec<String> = Vec::new();
    for m in ["vfio_iommu_type1", "vfio-pci", "aer_inject"] {
        for f in a.kernel_module(&tools.release, m)? {
            if !kvm.contains(&f) && !order.contains(&f) {
                order.push(f);
            }
        }
    }
    a.file(
        "lib/modules/vfio-load-order",
        order.join("\n") + "\n",
        0o644,
    );
    Ok(())
}

/// [`tools`], and what passthrough needs besides: L0's QEMU with `intel-iommu`, `e1000e` and
/// user-mode networking, the kernel's VFIO modules and e1000e; `None` after saying loudly what
/// is missing.
pub fn passthrough_tools() -> Option<Tools> {
    let tools = tools()?;
    let help = |what: &[&str]| {
        Command::new(&tools.qemu)
            .args(what)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let devices = help(&["-M", "q35", "-device", "help"]);
    for d in ["\"intel-iommu\"", "\"e1000e\"", "\"pcie-root-port\""] {
        if !devices.contains(d) {
            return missing(&format!("{} has no -device {d}", tools.qemu));
        }
    }
    if !help(&["-netdev", "help"])
        .lines()
        .any(|l| l.trim() == "user")
    {
        return missing(&format!(
            "{} has no user-mode networking (-netdev user)",
            tools.qemu
        ));
    }
    for m in ["vfio_iommu_type1", "vfio-pci", "e1000e", "aer_inject"] {
        if let Err(e) = Initramfs::new().kernel_module(&tools.release, m) {
            return missing(&e.to_string());
        }
    }
    Some(tools)
}

/// How L1 is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedOptions {
    /// L1's vCPUs. Measured: QEMU 7.2 with one vCPU sometimes never wakes L1's vCPU after
    /// start (3 of 9 runs); with two, every run came up (8 of 8).
    pub l1_cpus: u8,
    /// L1's RAM in MiB.
    pub l1_mem_mib: u32,
    /// PCIe devices L0 gives L1 to pass through ([`passthrough`]): when there are any, L0 has
    /// an IOMMU and L1 boots with it on and binds them to vfio-pci ([`Nested::vfio`]).
    pub passthrough: Vec<PassthroughDevice>,
    /// Put L0's QEMU in L1 as well (`/bin/qemu-system-x86_64` with its libraries, and the
    /// firmware a q35 machine with `-kernel` loads in `/share/qemu`, for `-L /share/qemu`), so
    /// L1 can run a guest under QEMU with its KVM beside the VMM ([`L1_QEMU_DATA`]).
    pub l1_qemu: bool,
    /// More files for L1's initramfs: (path in L1, host file), e.g. a guest image.
    pub l1_files: Vec<(String, PathBuf)>,
}

/// Where [`NestedOptions::l1_qemu`] puts QEMU's firmware in L1 (`-L` takes it).
pub const L1_QEMU_DATA: &str = "/share/qemu";

/// The firmware QEMU's q35 loads with `-kernel` and no other devices: SeaBIOS, the option ROMs
/// of a direct kernel boot (PVH and Linux) and the TPR-patching ROM KVM guests get.
const QEMU_FIRMWARE: &[&str] = &[
    "bios-256k.bin",
    "pvh.bin",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "kvmvapic.bin",
];

/// `program` as a path: itself if it names one, else the first match on `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Put `tools.qemu` and the firmware it loads (SeaBIOS and the direct-boot option ROMs, looked
/// up in the directories `qemu -L help` lists) into `a` ([`NestedOptions::l1_qemu`]).
pub fn l1_qemu(a: &mut Initramfs, tools: &Tools) -> Result<(), NestedError> {
    let qemu = find_program(&tools.qemu)
        .ok_or_else(|| NestedError::Step(format!("{} is not on PATH", tools.qemu)))?;
    a.binary("bin/qemu-system-x86_64", &qemu)?;
    let help = Command::new(&qemu)
        .args(["-L", "help"])
        .output()
        .map_err(|e| NestedError::Step(format!("{} -L help: {e}", qemu.display())))?;
    let dirs: Vec<PathBuf> = String::from_utf8_lossy(&help.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    for f in QEMU_FIRMWARE {
        let from = dirs
            .iter()
            .map(|d| d.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                NestedError::Step(format!("QEMU's firmware {f} is in none of {dirs:?}"))
            })?;
        let real = std::fs::canonicalize(&from).unwrap_or(from);
        a.copy(&format!("{}/{f}", &L1_QEMU_DATA[1..]), &real, 0o644)?;
    }
    Ok(())
}

impl Default for NestedOptions {
    fn default() -> Self {
        NestedOptions {
            l1_cpus: 2,
            l1_mem_mib: 2048,
            passthrough: Vec::new(),
            l1_qemu: false,
            l1_files: Vec::new(),
        }
    }
}

/// A running L1, with or without an L2.
pub struct Nested {
    console: ConsoleMachine,
    dir: ScratchDir,
    l2_running: bool,
    /// Wall-clock time from QEMU's start to L1's shell.
    pub l1_boot: Duration,
    /// The functions L1 bound to vfio-pci, one per function of
    /// [`NestedOptions::passthrough`] (empty without passthrough).
    pub vfio: Vec<VfioFunction>,
}

impl Nested {
    /// Build the images and boot L1 until its shell answers and `/dev/kvm` works. One retry
    /// (said loudly) when L1 does not come up: QEMU's TCG vCPU can stall at start.
    pub fn boot(tools: &Tools, options: &NestedOptions) -> Result<Nested, NestedError> {
        let bins = release_binaries()?;
        let dir = ScratchDir::new("nested");
        let initrd = dir.0.join("l1.cpio");
        let mut image = l1_initramfs(tools, &bins)?;
        if !options.passthrough.is_empty() {
            vfio_modules(&mut image, tools)?;
        }
        if options.l1_qemu {
            l1_qemu(&mut image, tools)?;
        }
        for (path, from) in &options.l1_files {
            image.copy(path, from, 0o644)?;
        }
        image.write(&initrd)?;
        match Self::start(tools, options, dir.0.clone(), &initrd) {
            Ok((console, l1_boot, vfio)) => Ok(Nested {
                console,
                dir,
                l2_running: false,
                l1_boot,
                vfio,
            }),
            Err(NestedError::Console(e @ ConsoleError::Timeout { .. })) => {
                eprintln!(
                    "\n*** nested: L1 did not come up ({e}); QEMU's TCG vCPU stalled at start, \
                     retrying once ***\n"
                );
                let (console, l1_boot, vfio) = Self::start(tools, options, dir.0.clone(), &initrd)?;
                Ok(Nested {
                    console,
                    dir,
                    l2_running: false,
                    l1_boot,
                    vfio,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn start(
        tools: &Tools,
        options: &NestedOptions,
        dir: PathBuf,
        initrd: &Path,
    ) -> Result<(ConsoleMachine, Duration, Vec<VfioFunction>), NestedError> {
        let qmp = passthrough::l0_qmp_socket(&dir);
        let _ = std::fs::remove_file(&qmp);
        let cmdline = format!(
            "console=ttyS0 quiet panic=-1 {}",
            passthrough::l1_cmdline(&options.passthrough)
        );
        let mut cmd = Command::new(&tools.qemu);
        cmd.args(["-M", "q35", "-accel", "tcg", "-cpu", "EPYC,+svm,+npt"])
            .arg("-smp")
            .arg(options.l1_cpus.to_string())
            .arg("-m")
            .arg(options.l1_mem_mib.to_string())
            .args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&tools.kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(cmdline.trim_end())
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(passthrough::qemu_args(&options.passthrough));
        let start = Instant::now();
        let mut console = ConsoleMachine::spawn(cmd, true, &dir.join("qemu-l1.stderr"))?;
        let kvm = console.wait_for(Source::Outer, 0, L1_BOOT, "L1's KVM check", |l| {
            l.starts_with("nested-l1: ")
        })?;
        let kvm_line = console.log()[kvm].text.clone();
        if !kvm_line.starts_with("nested-l1: kvm") {
            return Err(NestedError::NoKvm(console.tail(30)));
        }
        let ready = console.wait_for(Source::Outer, kvm, L1_BOOT, "L1's shell", |l| {
            l == "@@ready"
        })?;
        let elapsed = start.elapsed();
        let mut vfio = Vec::new();
        if !options.passthrough.is_empty() {
            let lines: Vec<&str> = console.log()[kvm..ready]
                .iter()
                .filter(|l| l.source == Source::Outer)
                .map(|l| l.text.as_str())
                .collect();
            vfio = passthrough::parse_vfio_lines(&lines, &options.passthrough).map_err(|e| {
                NestedError::Step(format!(
                    "L1 did not bind the passthrough devices to vfio-pci ({e}):\n{}",
                    console.tail(40)
                ))
            })?;
        }
        Ok((console, elapsed, vfio))
    }

    /// The console, for waits and its log.
    pub fn console(&mut self) -> &mut ConsoleMachine {
        &mut self.console
    }

    /// A QMP connection to L0's QEMU (e.g. `query-pci`, or `human-monitor-command` with
    /// `pcie_aer_inject_error ID POISON_TLP` into a passthrough device), negotiated within
    /// `timeout`.
    pub fn l0_qmp(&self, timeout: Duration) -> Result<QmpSocket, NestedError> {
        QmpSocket::connect(&passthrough::l0_qmp_socket(self.dir()), timeout)
            .map_err(|e| NestedError::Step(format!("L0's QMP: {e}")))
    }

    /// The scratch directory (QEMU's stderr is in `qemu-l1.stderr`, L0's QMP socket is
    /// `qmp-l0.sock`).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// When a wait timed out, tell a stalled L1 from a slow step: L1 must answer a trivial
    /// command within 30 s.
    fn diagnose(&mut self, e: NestedError) -> NestedError {
        if !matches!(e, NestedError::Console(ConsoleError::Timeout { .. })) {
            return e;
        }
        match self.console.run("true", Duration::from_secs(30)) {
            Ok(_) => e,
            Err(_) => NestedError::Stalled {
                seconds: 30,
                after: Box::new(e),
            },
        }
    }

    /// Run a command in L1's shell.
    pub fn l1(&mut self, cmd: &str, timeout: Duration) -> Result<Output, NestedError> {
        match self.console.run(cmd, timeout) {
            Ok(o) => Ok(o),
            Err(e) => Err(self.diagnose(e.into())),
        }
    }

    /// Run a command in L1's shell; an error unless it exits 0.
    pub fn l1_ok(&mut self, cmd: &str, timeout: Duration) -> Result<Output, NestedError> {
        let o = self.l1(cmd, timeout)?;
        if o.status != 0 {
            return Err(NestedError::Step(format!(
                "L1 `{cmd}` exited {}:\n{}",
                o.status,
                o.text()
            )));
        }
        Ok(o)
    }

    /// Start pcierc (with `rc_args`) and the VMM (with `vmm_args`) in L1 and wait for L2's
    /// shell; L2's own uptime at that point (its boot time in guest seconds) and the wall time.
    pub fn start_l2(
        &mut self,
        rc_args: &[&str],
        vmm_args: &[&str],
    ) -> Result<(f64, Duration), NestedError> {
        self.start_l2_with("", rc_args, vmm_args)
    }

    /// [`Nested::start_l2`] with `extra` added to L2's kernel command line.
    pub fn start_l2_with(
        &mut self,
        extra: &str,
        rc_args: &[&str],
        vmm_args: &[&str],
    ) -> Result<(f64, Duration), NestedError> {
        self.l1_ok(
            &format!("L2_EXTRA={}", shell_quote(extra)),
            Duration::from_secs(30),
        )?;
        if self.l2_running {
            self.stop_l2()?;
        }
        let words = |a: &[&str]| {
            a.iter()
                .map(|s| shell_quote(s))
                .collect::<Vec<_>>()
                .join(" ")
        };
        self.l1_ok(
            &format!("rc_start {}", words(rc_args)),
            Duration::from_secs(30),
        )?;
        let since = self.console.mark();
        let start = Instant::now();
        self.l1_ok(
            &format!("vmm_start {}", words(vmm_args)),
            Duration::from_secs(30),
        )?;
        self.l2_running = true;
        let ready = self
            .console
            .wait_for(Source::Inner, since, L2_BOOT, "L2's shell", |l| {
                l.starts_with("@@ready") || l.starts_with("@@vmm-exit")
            })
            .map_err(|e| self.diagnose(e.into()))?;
        let line = self.console.log()[ready].text.clone();
        if line.starts_with("@@vmm-exit") {
            self.l2_running = false;
            return Err(NestedError::Step(format!(
                "the VMM stopped before L2 came up ({line}):\n{}",
                self.console.tail(40)
            )));
        }
        let uptime = line["@@ready".len()..].trim().parse().unwrap_or(f64::NAN);
        Ok((uptime, start.elapsed()))
    }

    /// Have L2 run `cmd`, which resets it (e.g. `reboot -f`), and wait until the VMM has
    /// rebooted it and its shell is back; its uptime then and the wall time.
    pub fn reboot_l2(&mut self, cmd: &str) -> Result<(f64, Duration), NestedError> {
        let since = self.console.mark();
        let start = Instant::now();
        self.l1_ok(&format!("l2 {}", shell_quote(cmd)), Duration::from_secs(30))?;
        let reset = self
            .console
            .wait_for(Source::Inner, since, L2_BOOT, "the VMM's reboot", |l| {
                l.starts_with("vmm: guest reset; rebooting") || l.starts_with("@@vmm-exit")
            })
            .map_err(|e| self.diagnose(e.into()))?;
        let ready = self
            .console
            .wait_for(
                Source::Inner,
                reset,
                L2_BOOT,
                "L2's shell after the reboot",
                |l| l.starts_with("@@ready") || l.starts_with("@@vmm-exit"),
            )
            .map_err(|e| self.diagnose(e.into()))?;
        let line = self.console.log()[ready].text.clone();
        if line.starts_with("@@vmm-exit") {
            self.l2_running = false;
            return Err(NestedError::Step(format!(
                "the VMM stopped instead of rebooting L2 ({line}):\n{}",
                self.console.tail(40)
            )));
        }
        let uptime = line["@@ready".len()..].trim().parse().unwrap_or(f64::NAN);
        Ok((uptime, start.elapsed()))
    }

    /// Run a command in L2's shell (through L1, which writes it to the VMM's console input).
    pub fn l2(&mut self, cmd: &str, timeout: Duration) -> Result<Output, NestedError> {
        let (id, line) = self.console.wrap(cmd);
        let line = line.replace('\n', "; ");
        let since = self.console.mark();
        self.l1_ok(
            &format!("l2 {}", shell_quote(&line)),
            Duration::from_secs(30),
        )?;
        self.console
            .collect(Source::Inner, since, id, timeout, &format!("L2 `{cmd}`"))
            .map_err(|e| self.diagnose(e.into()))
    }

    /// Run a command in L2's shell; an error unless it exits 0.
    pub fn l2_ok(&mut self, cmd: &str, timeout: Duration) -> Result<Output, NestedError> {
        let o = self.l2(cmd, timeout)?;
        if o.status != 0 {
            return Err(NestedError::Step(format!(
                "L2 `{cmd}` exited {}:\n{}",
                o.status,
                o.text()
            )));
        }
        Ok(o)
    }

    /// `pcierc-qmp` in L1 against pcierc's control socket: `args` are its arguments (JSON
    /// commands, `--wait EVENT`, `--timeout S`); its output lines are QMP's.
    pub fn qmp(&mut self, args: &[&str], timeout: Duration) -> Result<Output, NestedError> {
        let words = args.iter().map(|s| shell_quote(s)).collect::<Vec<_>>();
        self.l1(&format!("qmp {}", words.join(" ")), timeout)
    }

    /// Power L2 off, wait for the VMM to exit and stop pcierc. A VMM that exits with another
    /// status than 0 is an error carrying what L2 and the VMM printed since the power-off (the
    /// VMM's `vmm: error: ...` lines among them) and the end of pcierc's log.
    pub fn stop_l2(&mut self) -> Result<(), NestedError> {
        let since = self.console.mark();
        self.l1_ok("l2 'poweroff -f'", Duration::from_secs(30))?;
        self.l2_running = false;
        let exit = self.console.wait_for(
            Source::Inner,
            since,
            Duration::from_secs(60),
            "the VMM's exit",
            |l| l.starts_with("@@vmm-exit"),
        );
        if exit.is_err() {
            // L2 did not power off (a failed case may leave it stuck): end the VMM, so the
            // next case starts clean, and report the failure.
            let _ = self.l1("kill -9 $(pidof vmm)", Duration::from_secs(30));
        }
        let _ = self.l1(
            "kill $(cat /run/pcierc.pid); exec 7>&-",
            Duration::from_secs(30),
        );
        let exit = exit.map_err(|e| self.diagnose(e.into()))?;
        let log = self.console.log();
        let status = log[exit].text["@@vmm-exit".len()..].trim().to_string();
        if status == "0" {
            return Ok(());
        }
        let printed = log[since.max(exit.saturating_sub(40))..=exit]
            .iter()
            .filter(|l| l.source == Source::Inner)
            .map(|l| format!("  L2| {}", l.text))
            .collect::<Vec<_>>()
            .join("\n");
        let pcierc = self.l1("tail -n 20 /tmp/pcierc.log", Duration::from_secs(30));
        let pcierc = pcierc.map(|o| o.text()).unwrap_or_default();
        Err(NestedError::Step(format!(
            "the VMM exited with status {status} after L2's power-off:\n{printed}\n\
             pcierc's log (its end):\n{pcierc}"
        )))
    }

    /// What L2's kernel printed of a crash since console line `since`: each line that starts an
    /// oops, a BUG or a panic, with the 30 lines after it (at most three such reports), for a
    /// failed case's report; empty if there was none. L2 boots with `panic=-1`, so after a panic
    /// the VMM reboots it and the case usually fails much later, on a symptom, with the crash
    /// itself long out of the console's tail.
    pub fn l2_crashes(&self, since: usize) -> String {
        const STARTS: [&str; 5] = [
            "Kernel panic",
            "BUG:",
            "Oops:",
            "general protection fault",
            "WARNING: CPU:",
        ];
        let log = self.console.log();
        let inner: Vec<&str> = log[since.min(log.len())..]
            .iter()
            .filter(|l| l.source == Source::Inner)
            .map(|l| l.text.as_str())
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        let mut reports = 0;
        while i < inner.len() && reports < 3 {
            if STARTS.iter().any(|s| inner[i].contains(s)) {
                let end = (i + 31).min(inner.len());
                out.extend(inner[i..end].iter().map(|l| format!("  L2| {l}")));
                out.push("  ...".to_string());
                reports += 1;
                i = end;
            } else {
                i += 1;
            }
        }
        out.join("\n")
    }

    /// pcierc's log in L1.
    pub fn pcierc_log(&mut self) -> String {
        self.l1("cat /tmp/pcierc.log", Duration::from_secs(30))
            .map(|o| o.text())
            .unwrap_or_default()
    }
}

/// The probe guest booted directly under QEMU's q35 (TCG): the live reference.
pub struct ProbeVm {
    console: ConsoleMachine,
    _dir: ScratchDir,
    /// The probe's uptime when its shell came up.
    pub boot_uptime: f64,
    /// Wall-clock time from QEMU's start to the shell.
    pub boot_wall: Duration,
    /// The QMP socket QEMU serves.
    pub qmp_socket: PathBuf,
}

impl ProbeVm {
    /// Boot under `qemu -M q35` with `devices` (`-device` values) and native PCIe hot-plug.
    pub fn boot(tools: &Tools, devices: &[String]) -> Result<ProbeVm, NestedError> {
        let dir = ScratchDir::new("probe-qemu");
        let initrd = dir.0.join("probe.cpio");
        probe_initramfs(tools)?.write(&initrd)?;
        let qmp_socket = dir.0.join("qmp.sock");
        let mut cmd = Command::new(&tools.qemu);
        cmd.args(["-M", "q35", "-accel", "tcg", "-m", "512", "-nodefaults"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-no-reboot")
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
            // Native PCIe hot-plug, as pcierc's slots offer (QEMU 6.1+ defaults to ACPI's).
            .args([
                "-global",
                "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
            ]);
        for d in devices {
            cmd.arg("-device").arg(d);
        }
        cmd.arg("-kernel")
            .arg(&tools.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", PROBE_CMDLINE]);
        let start = Instant::now();
        let mut console = ConsoleMachine::spawn(cmd, false, &dir.0.join("qemu.stderr"))?;
        let ready = console.wait_for(Source::Outer, 0, L2_BOOT, "the probe's shell", |l| {
            l.starts_with("@@ready")
        })?;
        let boot_uptime = console.log()[ready].text["@@ready".len()..]
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        Ok(ProbeVm {
            console,
            _dir: dir,
            boot_uptime,
            boot_wall: start.elapsed(),
            qmp_socket,
        })
    }

    /// Run a command in the probe's shell.
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> Result<Output, NestedError> {
        Ok(self.console.run(cmd, timeout)?)
    }

    /// The console.
    pub fn console(&mut self) -> &mut ConsoleMachine {
        &mut self.console
    }
}
