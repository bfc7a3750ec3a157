//! End to end under this machine's KVM: the example VMM (`examples/src/bin/vmm.rs`) boots the
//! freestanding test guests of `examples/guest/` with a real `pcierc` behind it, and the guest's
//! firmware-style enumeration (CF8/CFC, ECAM, bus numbering) goes through pcierc unchanged.
//!
//! Without `/dev/kvm` these tests skip loudly, also in CI: CI machines may lack (nested) KVM, and
//! everything the VMM forwards is covered without KVM by the socket tests. Set
//! `PCIERC_REQUIRE_KVM=1` to make a missing `/dev/kvm` a failure instead (docs/vmm.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{pcierc_bin, Backend, ScratchDir};
use serde_json::{json, Value};

/// Longest a VMM run may take before the test kills it and fails (a hang is a bug).
const RUN_LIMIT: Duration = Duration::from_secs(25);

fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    assert!(
        std::env::var("PCIERC_REQUIRE_KVM").is_err(),
        "/dev/kvm is required (PCIERC_REQUIRE_KVM is set) but absent"
    );
    eprintln!("\n*** SKIP: /dev/kvm is absent: the VMM tests did not run ***\n");
    false
}

/// The `vmm` binary of this build's profile, brought up to date once (next to `pcierc`).
fn vmm_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let pcierc = pcierc_bin();
            let dir = pcierc.parent().expect("target/<profile>");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "pcierc-examples", "--bin", "vmm"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("running cargo build");
            assert!(st.success(), "building the vmm failed");
            dir.join("vmm")
        })
        .clone()
}

/// Run the VMM to completion (killed after [`RUN_LIMIT`]).
fn run_vmm(args: &[&str]) -> Output {
    let start = Instant::now();
    let mut child = Command::new(vmm_bin())
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the vmm");
    // Drain both pipes on threads so a chatty guest never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for the vmm") {
            break st;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("the vmm {args:?} hung for {RUN_LIMIT:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The probe guest's image in a file, so `--kernel` (linux-loader's ELF path) is what runs.
fn probe_image(dir: &ScratchDir) -> String {
    let path = dir.0.join("pcie-probe.elf");
    let bytes = pcierc_examples::guest::PCIE_PROBE_ELF;
    assert!(
        !bytes.is_empty(),
        "the test guest was not built: install binutils (as, ld) and rebuild pcierc-examples"
    );
    std::fs::write(&path, bytes).expect("writing the guest image");
    path.to_string_lossy().into_owned()
}

/// What the probe guest must print for pcierc's default topology: QEMU's ids for the Q35 MCH and
/// the four `pcie-root-port`s, each numbered with its own secondary bus and read back.
fn check_enumeration(stdout: &str) {
    let expected = [
        "PCIEXBAR b0000001",
        "00:00.0 8086:29c0 class 060000 type 00",
        "00:02.0 1b36:000c class 060400 type 01",
        "00:02.0 buses 00/01/01",
        "00:02.1 1b36:000c class 060400 type 01",
        "00:02.1 buses 00/02/02",
        "00:02.2 1b36:000c class 060400 type 01",
        "00:02.2 buses 00/03/03",
        "00:02.3 1b36:000c class 060400 type 01",
        "00:02.3 buses 00/04/04",
        "pcie-probe: functions 05 last bus 04",
        "pcie-probe: power off",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    for e in expected {
        assert!(
            lines.contains(&e),
            "missing {e:?} in the guest's output:\n{stdout}"
        );
    }
}

/// The guest's exit-latency lines converted with the TSC frequency the VMM printed.
fn latency_report(stdout: &str, stderr: &str) -> String {
    let khz: Option<f64> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: guest TSC "))
        .and_then(|l| l.trim_end_matches(" kHz").parse().ok());
    let mut s = String::new();
    for l in stdout.lines().filter_map(|l| l.strip_prefix("bench: ")) {
        let mut it = l.split_whitespace();
        let (Some(name), Some(cycles)) = (it.next(), it.next().and_then(|c| c.parse::<f64>().ok()))
        else {
            continue;
        };
        match khz {
            Some(k) => s += &format!("  {name:<14} {:>8.2} us\n", cycles / k * 1000.0),
            None => s += &format!("  {name:<14} {cycles:>8} TSC cycles\n"),
        }
    }
    s
}

#[test]
fn probe_guest_enumerates_pcierc_through_the_vmm() {
    if !kvm_available() {
        return;
    }
    let dir = ScratchDir::new("vmm");
    let kernel = probe_image(&dir);
    let pcierc = pcierc_bin();
    let pcierc = pcierc.to_string_lossy();
    // As firmware (ECAM enabled, ACPI tables) with pcierc's shared configuration snapshot (reads
    // without a message); then with neither: the guest enables ECAM through CF8/CFC and every
    // configuration read is a message.
    for (extra, ecam_line) in [
        (&[][..], "ACPI MCFG: ECAM b0000000 buses 00-ff"),
        (
            &["--no-config-snapshot", "--no-acpi"][..],
            "no ACPI MCFG: enabling ECAM through PCIEXBAR",
        ),
    ] {
        let mut args = vec![
            "--spawn-backend",
            "--pcierc",
            &pcierc,
            "--kernel",
            &kernel,
            "--mem",
            "64",
            "--stats",
            "--timeout",
            "20",
        ];
        args.extend_from_slice(extra);
        let out = run_vmm(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "vmm {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        check_enumeration(&stdout);
        assert!(
            stdout.lines().any(|l| l == ecam_line),
            "{ecam_line:?}:\n{stdout}"
        );
        assert!(stderr.contains("vmm: guest powered off"), "{stderr}");
        eprintln!(
            "vmm {extra:?}: guest-measured time per access (trivial exit vs forwarded):\n{}{}",
            latency_report(&stdout, &stderr),
            stderr
                .lines()
                .filter(|l| l.starts_with("vmm: exits"))
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        );
    }
}

#[test]
fn guest_programming_lands_in_a_running_pcierc() {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start(&[]);
    let dir = ScratchDir::new("vmm");
    let kernel = probe_image(&dir);
    let socket = backend.socket.to_string_lossy().into_owned();
    let out = run_vmm(&[
        "--backend-socket",
        &socket,
        "--kernel",
        &kernel,
        "--mem",
        "64",
        "--timeout",
        "20",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    check_enumeration(&stdout);
    // What the guest wrote through CF8/CFC and ECAM is pcierc's state now.
    let mut fe = Frontend::connect(&backend.socket, FrontendOptions::tool("check"))
        .expect("connecting to pcierc");
    assert_eq!(fe.config_read(0, 0, 0, 0x60, 4).unwrap(), 0xb000_0001);
    for (func, bus) in (0..4u8).zip(1u32..) {
        let buses = fe.config_read(0, 0, 2 << 3 | func, 0x18, 4).unwrap();
        assert_eq!(
            buses & 0xff_ffff,
            bus << 16 | bus << 8,
            "rp{bus} bus numbers"
        );
    }
    let topo = fe.topology().unwrap();
    assert_eq!(topo.ecam.len(), 1);
    assert_eq!(topo.ecam[0].base, 0xb000_0000);
}

#[test]
fn guest_failures_end_the_vmm_with_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let pcierc = pcierc_bin();
    let pcierc = pcierc.to_string_lossy();
    for (guest, extra, expect) in [
        (
            "fault-exec-mmio",
            &[][..],
            "emulation failure (KVM could not emulate an instruction)",
        ),
        ("fault-triple", &[][..], "triple fault (KVM_EXIT_SHUTDOWN)"),
        (
            "hang",
            &["--timeout", "1"][..],
            "the guest did not stop within 1s",
        ),
    ] {
        let mut args = vec!["--spawn-backend", "--pcierc", &pcierc, "--guest", guest];
        args.extend_from_slice(extra);
        let start = Instant::now();
        let out = run_vmm(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{guest}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{guest}: expected {expect:?} in:\n{stderr}"
        );
        eprintln!(
            "{guest}: exit 1 after {:?}: {}",
            start.elapsed(),
            stderr
                .lines()
                .find(|l| l.starts_with("vmm: error"))
                .unwrap_or_default()
        );
    }
}

/// A minimal QMP client on pcierc's control socket (docs/control-socket.md).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).expect("connecting to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            events: Vec::new(),
        };
        let greeting = q.read().expect("QMP greeting");
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        q.execute("qmp_capabilities", json!({}));
        q
    }

    fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(serde_json::from_str(&line).expect("QMP sends JSON")),
            _ => None,
        }
    }

    /// Run a command that must succeed; events read meanwhile are kept.
    fn execute(&mut self, cmd: &str, args: Value) -> Value {
        let msg = json!({"execute": cmd, "arguments": args});
        writeln!(self.writer, "{msg}").expect("writing to the control socket");
        loop {
            let v = self.read().unwrap_or_else(|| panic!("no reply to {msg}"));
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "{msg}: {v}");
            self.events.push(v);
        }
    }

    /// The next event called `name` (within the socket's 10 s read timeout).
    fn event(&mut self, name: &str) -> Option<Value> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return Some(self.events.remove(i));
        }
        while let Some(v) = self.read() {
            if v["event"] == name {
                return Some(v);
            }
        }
        None
    }
}

/// A VMM whose stdout arrives line by line, stamped.
struct RunningVmm {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl RunningVmm {
    fn start(args: &[&str]) -> RunningVmm {
        let mut child = Command::new(vmm_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the vmm");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), l));
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        RunningVmm {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Wait for a line starting with `prefix`; when it arrived and the line.
    fn expect_line(&mut self, prefix: &str) -> (Instant, String) {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return (t, l);
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line {prefix:?} from the guest; it printed:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Wait for the exit; its status and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("waiting for the vmm") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the vmm did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, text(&self.stderr.join().unwrap_or_default()))
    }
}

#[test]
fn guest_takes_hot_add_and_removal_through_msix_on_irqfd() {
    hot_add_and_removal(&["--no-config-snapshot"]);
}

/// The same with pcierc's shared configuration snapshot: the guest's interrupt handler reads
/// Slot Status from the snapshot, so pcierc must update it before it signals the interrupt.
/// (Regression: it used to signal first, and the handler saw the Slot Status of before the
/// hot-add, as Linux's pciehp would have.)
#[test]
fn guest_takes_hot_add_and_removal_with_the_config_snapshot() {
    hot_add_and_removal(&[]);
}

fn hot_add_and_removal(extra: &[&str]) {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start_with_control(&[]);
    let control = backend.control.clone().expect("control socket");
    let socket = backend.socket.to_string_lossy().into_owned();
    let mut args = vec![
        "--backend-socket",
        &socket,
        "--guest",
        "pcie-probe",
        "--cmdline",
        "pcie-probe.hotplug",
        "--mem",
        "64",
        "--stats",
        "--timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    let mut vmm = RunningVmm::start(&args);
    vmm.expect_line("pcie-probe: MSI-X on 00:02.0: table at c0000000, vector 40");
    vmm.expect_line("pcie-probe: waiting for hot-add on 00:02.0");

    // Hot-add: pcierc raises the slot's MSI-X vector by writing the VMM's irqfd; KVM injects it.
    let mut qmp = Qmp::connect(&control);
    let sent = Instant::now();
    qmp.execute(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "net0", "bus": "rp1", "owner": "vmm"}),
    );
    let (seen, irq) = vmm.expect_line("pcie-probe: hot-plug interrupt, slot status");
    let status = u16::from_str_radix(irq.rsplit(' ').next().unwrap_or_default(), 16).unwrap();
    assert_eq!(
        status & 0x48,
        0x48,
        "Presence Detect Changed and State: {irq}"
    );
    let latency = seen.duration_since(sent);
    vmm.expect_line("pcie-probe: hot-add: card present in 00:02.0");
    vmm.expect_line("pcie-probe: waiting for hot-remove on 00:02.0");

    // Removal: the attention button interrupt, the guest powers the slot off, pcierc completes.
    qmp.execute("device_del", json!({"id": "net0"}));
    let (_, irq) = vmm.expect_line("pcie-probe: hot-plug interrupt, slot status");
    let status = u16::from_str_radix(irq.rsplit(' ').next().unwrap_or_default(), 16).unwrap();
    assert_eq!(status & 1, 1, "Attention Button Pressed: {irq}");
    vmm.expect_line("pcie-probe: attention button: powering 00:02.0 off");
    vmm.expect_line("pcie-probe: hot-remove: 00:02.0 is empty");
    let deleted = qmp.event("DEVICE_DELETED").expect("DEVICE_DELETED");
    assert_eq!(deleted["data"]["device"], "net0");
    vmm.expect_line("pcie-probe: power off");
    let (status, stderr) = vmm.finish();
    assert!(status.success(), "{stderr}");
    // The interrupts took the irqfd path: routes followed MsiRoute, no Msi message was injected.
    let irq_line = stderr
        .lines()
        .find(|l| l.starts_with("vmm: interrupts:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        irq_line.ends_with(" 0 MSIs signalled from notifications")
            && !irq_line.contains(": 0 MSI routes"),
        "{irq_line}"
    );
    eprintln!(
        "hot-add latency (device_add sent -> the guest's interrupt handler ran and printed): {:.2} ms\n{irq_line}",
        latency.as_secs_f64() * 1000.0
    );
}
