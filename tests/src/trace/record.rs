//! Recording: QEMU 7.2 `-M q35 -accel tcg` boots a kernel with the busybox initramfs of
//! `tests/linux/` (its `/init` takes commands on the serial console), with every
//! `memory_region_ops_*` event traced into a log, while this drives the host side through QMP:
//! a native hot-add into rp1, its removal, and AER injections on the other ports, each in a
//! `stop`/`cont` window (see the module above for why), then a configuration dump through sysfs
//! and a power-off.
//!
//! Native hot-plug needs `ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off`: with QEMU 7.2's
//! default (ACPI hot-plug of bridges), the firmware's `_OSC` keeps PCIe hot-plug from Linux and
//! pciehp never binds.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{parse_qemu_log, port_devfn, Control, Recording, RemoteFunction, TRACE_EVENTS};
use crate::qmp_socket::QmpSocket;
use crate::qtest::QEMU;

/// What to boot and where to put the files.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The kernel (bzImage), e.g. `/boot/vmlinuz-6.1.0-*-amd64`.
    pub kernel: PathBuf,
    /// The busybox initramfs with `tests/linux/init` (`pcierc_tests::linux_images::busybox_initramfs`).
    pub initrd: PathBuf,
    /// A scratch directory: trace log, QMP socket, QEMU's stderr.
    pub work_dir: PathBuf,
    /// QEMU `-device` options of the root ports (pcierc's default topology).
    pub root_ports: Vec<String>,
    /// The host actions, each followed by what the guest waits for; see [`default_scenario`].
    pub scenario: Vec<(Control, String)>,
}

/// A finished recording and how it went.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The stream.
    pub recording: Recording,
    /// From `cont` (QEMU started with `-S`) to the initramfs saying it is ready.
    pub boot: Duration,
    /// QEMU's whole run.
    pub total: Duration,
    /// Lines in QEMU's trace log.
    pub trace_lines: usize,
    /// The serial console.
    pub console: String,
}

/// The root ports of pcierc's embedded default topology (`backend/src/topology/default.toml`) as
/// QEMU `-device` options.
pub fn default_root_ports() -> Vec<String> {
    (0..4)
        .map(|i| {
            let mf = if i == 0 { ",multifunction=on" } else { "" };
            format!(
                "pcie-root-port,id=rp{n},bus=pcie.0,addr=0x2.{i}{mf},chassis={n},slot={n},port={:#x}",
                0x10 + i,
                n = i + 1
            )
        })
        .collect()
}

/// Hot-add an e1000e into rp1 and remove it, then an uncorrectable non-fatal error on rp2 and a
/// fatal one on rp3; the guest command after each waits until Linux has handled it. (No
/// correctable error: QEMU 7.2 never forwards one to the Root Error Status, see
/// docs/qemu-compat.md.)
pub fn default_scenario() -> Vec<(Control, String)> {
    let aer = |port: &str, bdf: &str, error: &str, kind: &str| {
        (
            Control::AerInject {
                id: port.into(),
                error: error.into(),
            },
            format!("wait-aer {bdf} {kind}"),
        )
    };
    vec![
        (
            Control::DeviceAdd {
                driver: "e1000e".into(),
                id: "nic0".into(),
                bus: "rp1".into(),
            },
            "wait-present 0000:00:02.0".into(),
        ),
        (
            Control::DeviceDel { id: "nic0".into() },
            "wait-absent 0000:00:02.0".into(),
        ),
        aer("rp2", "0000:00:02.1", "UNSUP", "nonfatal"),
        aer("rp3", "0000:00:02.2", "DLP", "fatal"),
    ]
}

/// The serial console: lines from the guest on a channel, commands to it on QEMU's stdin.
struct Console {
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
}

/// Marker the initramfs puts before every answer.
const SAY: &str = "pcierc-trace: ";

impl Console {
    fn send(&mut self, cmd: &str) -> io::Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()
    }

    /// The text after the next `pcierc-trace: ` marker, within `timeout`.
    fn expect(&mut self, what: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some((_, said)) = l.split_once(SAY) {
                        return Ok(said.trim().to_string());
                    }
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the guest did not answer '{what}' within {timeout:?}"),
                    ))
                }
            }
        }
    }

    /// Send `cmd` and require `done CMD ...`.
    fn run(&mut self, cmd: &str, timeout: Duration) -> io::Result<()> {
        self.send(cmd)?;
        let said = self.expect(cmd, timeout)?;
        let verb = cmd.split_whitespace().next().unwrap_or_default();
        if said.starts_with(&format!("done {verb}")) {
            Ok(())
        } else {
            Err(io::Error::other(format!("guest: '{said}' to '{cmd}'")))
        }
    }
}

/// Kills QEMU if recording fails half-way.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boot, run `opts.scenario`, power off, and parse the trace. Errors carry the console's tail.
pub fn record(opts: &RecordOptions) -> io::Result<Recorded> {
    let trace_log = opts.work_dir.join("qemu-trace.log");
    let qmp_path = opts.work_dir.join("qmp.sock");
    let stderr_path = opts.work_dir.join("qemu-stderr.log");
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "q35", "-accel", "tcg", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-no-shutdown",
            "-S",
        ])
        .args([
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&opts.kernel)
        .arg("-initrd")
        .arg(&opts.initrd)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .arg("-D")
        .arg(&trace_log);
    for ev in TRACE_EVENTS {
        cmd.args(["-trace", ev]);
    }
    for d in &opts.root_ports {
        cmd.args(["-device", d]);
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("QEMU without pipes"));
    };
    let mut qemu = Qemu(child);
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = Console { stdin, lines, log };
    let result = drive(opts, &mut console, &qmp_path);
    let console_text = console.log.lock().map(|l| l.clone()).unwrap_or_default();
    let fail = |e: io::Error| {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = console_text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        io::Error::new(
            e.kind(),
            format!(
                "{e}\n--- QEMU stderr ---\n{stderr}\n--- console (last 40 lines) ---\n{}",
                tail.join("\n")
            ),
        )
    };
    let (remote, boot, controls) = result.map_err(fail)?;
    let status = qemu.0.wait()?;
    let total = started.elapsed();
    if !status.success() {
        return Err(fail(io::Error::other(format!("QEMU exited with {status}"))));
    }
    let text = std::fs::read_to_string(&trace_log)?;
    let ports: Vec<u8> = opts
        .root_ports
        .iter()
        .filter_map(|d| port_devfn(d))
        .collect();
    let steps = parse_qemu_log(&text, &ports, &controls).map_err(io::Error::other)?;
    let kernel = console_text
        .lines()
        .find_map(|l| l.split_once(&format!("{SAY}ready ")).map(|(_, k)| k.trim()))
        .unwrap_or("?")
        .to_string();
    Ok(Recorded {
        recording: Recording {
            kernel,
            root_ports: opts.root_ports.clone(),
            remote,
            steps,
        },
        boot,
        total,
        trace_lines: text.lines().count(),
        console: console_text,
    })
}

type Driven = (Vec<RemoteFunction>, Duration, Vec<Option<Control>>);

/// The QMP and console side of [`record`]; returns the remote functions, the boot time and the
/// action of every `stop`, in order.
fn drive(opts: &RecordOptions, console: &mut Console, qmp_path: &Path) -> io::Result<Driven> {
    let mut qmp = QmpSocket::connect(qmp_path, Duration::from_secs(20))?;
    let remote = remote_functions(&qmp.ok("query-pci", Value::Null)?, &opts.root_ports);
    let cont = Instant::now();
    qmp.ok("cont", Value::Null)?;
    let ready = console.expect("ready", Duration::from_secs(90))?;
    if !ready.starts_with("ready") {
        return Err(io::Error::other(format!("guest: '{ready}'")));
    }
    let boot = cont.elapsed();
    let mut controls = Vec::new();
    for (action, wait) in &opts.scenario {
        let mut tries = 0;
        while !host_action(&mut qmp, action, &mut controls)? {
            // QEMU refuses `device_del` while the guest's pciehp is still busy with the slot
            // (power indicator blinking) and changes nothing then: try again a little later.
            tries += 1;
            if tries > 100 {
                return Err(io::Error::other(format!("QEMU kept refusing {action}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        console.run(wait, Duration::from_secs(30))?;
        if let Control::DeviceDel { id } = action {
            if qmp
                .event("DEVICE_DELETED", Duration::from_secs(10))?
                .is_none()
            {
                return Err(io::Error::other(format!("no DEVICE_DELETED for {id}")));
            }
        }
    }
    console.run("dump", Duration::from_secs(30))?;
    console.run("dmesg", Duration::from_secs(30))?;
    console.send("poweroff")?;
    if qmp.event("SHUTDOWN", Duration::from_secs(30))?.is_none() {
        return Err(io::Error::other("the guest did not power off"));
    }
    qmp.ok("quit", Value::Null)?;
    Ok((remote, boot, controls))
}

/// `action` with the VM stopped (every stop is pushed to `controls`: the action, or `None` when
/// QEMU refused it as busy). `Ok(false)` for that refusal.
fn host_action(
    qmp: &mut QmpSocket,
    action: &Control,
    controls: &mut Vec<Option<Control>>,
) -> io::Result<bool> {
    qmp.ok("stop", Value::Null)?;
    let r = match action {
        Control::DeviceAdd { driver, id, bus } => qmp
            .execute(
                "device_add",
                json!({"driver": driver, "id": id, "bus": bus}),
            )?
            .map(drop),
        Control::DeviceDel { id } => qmp.execute("device_del", json!({ "id": id }))?.map(drop),
        Control::AerInject { id, error } => {
            let out = qmp.hmp(&format!("pcie_aer_inject_error {id} {error}"))?;
            // QEMU 7.2 answers "OK id: rp2 root bus: 0000:00, bus: 0 devfn: 2.1".
            if out.starts_with("OK id:") {
                Ok(())
            } else {
                Err(Value::String(out))
            }
        }
    };
    let busy = matches!(&r, Err(e) if e.to_string().contains("guest is busy"));
    controls.push((!busy && r.is_ok()).then(|| action.clone()));
    qmp.ok("cont", Value::Null)?;
    match r {
        Ok(()) => Ok(true),
        Err(_) if busy => Ok(false),
        Err(e) => Err(io::Error::other(format!("{action}: {e}"))),
    }
}

/// Bus-0 functions in QEMU's `query-pci` that are neither the host bridge nor a root port.
fn remote_functions(query_pci: &Value, root_ports: &[String]) -> Vec<RemoteFunction> {
    let ports: Vec<u8> = root_ports.iter().filter_map(|d| port_devfn(d)).collect();
    let mut devfns: Vec<u8> = query_pci
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["bus"] == 0)
        .flat_map(|b| b["devices"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            let slot = d["slot"].as_u64()?;
            let func = d["function"].as_u64()?;
            Some((slot << 3 | func) as u8)
        })
        .filter(|devfn| *devfn != 0 && !ports.contains(devfn))
        .collect();
    devfns.sort_unstable();
    devfns
        .iter()
        .map(|&devfn| RemoteFunction {
            devfn,
            multifunction: devfn & 7 == 0
                && devfns.iter().any(|&o| o >> 3 == devfn >> 3 && o != devfn),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_pcierc_default_topology() {
        let ports = default_root_ports();
        assert_eq!(
            ports[0],
            "pcie-root-port,id=rp1,bus=pcie.0,addr=0x2.0,multifunction=on,chassis=1,slot=1,port=0x10"
        );
        assert_eq!(
            ports[3],
            "pcie-root-port,id=rp4,bus=pcie.0,addr=0x2.3,chassis=4,slot=4,port=0x13"
        );
        let q = json!([{"bus": 0, "devices": [
            {"slot": 0, "function": 0}, {"slot": 2, "function": 0}, {"slot": 31, "function": 0},
            {"slot": 31, "function": 2}, {"slot": 31, "function": 3}]}]);
        let r = remote_functions(&q, &ports);
        assert_eq!(
            r.iter()
                .map(|f| (f.devfn, f.multifunction))
                .collect::<Vec<_>>(),
            [(0xf8, true), (0xfa, false), (0xfb, false)]
        );
    }
}
