//! Several PCI segments (beyond QEMU) over the real `pcierc` process: a firmware-style scan of
//! segment 1 through its fixed ECAM window, requests addressed to segment 1, and a hot-add
//! behind a segment-1 port through the QMP control socket.

use std::time::Duration;

use pcierc_examples::firmware::{enumerate_segments, Layout};
use pcierc_examples::socket_bus::SocketBus;
use pcierc_protocol::{function_flags, FrontendOptions, FunctionKind, Status};
use pcierc_tests::process::{Backend, ScratchDir};
use pcierc_tests::qmp_socket::QmpSocket;
use serde_json::json;

const SEG1_ECAM: u64 = 0x1_4000_0000;

/// Segment 0 with rp1, segment 1 (ECAM at [`SEG1_ECAM`]) with rp5.
const TOPOLOGY: &str = include_str!("../../docs/examples/two-segments.toml");

fn start(dir: &ScratchDir) -> Backend {
    let path = dir.0.join("segments.toml");
    std::fs::write(&path, TOPOLOGY).unwrap();
    Backend::start_with_control(&["--topology", path.to_str().unwrap()])
}

#[test]
fn firmware_scans_segment_1_and_a_hot_add_reaches_its_port() {
    let dir = ScratchDir::new("segments");
    let b = start(&dir);
    let mut fe = pcierc_protocol::Frontend::connect(&b.socket, FrontendOptions::vmm("t-seg"))
        .expect("handshake");
    let t = fe.topology().unwrap();
    let windows: Vec<_> = t.ecam.iter().map(|w| (w.segment, w.base)).collect();
    assert_eq!(windows, [(1, SEG1_ECAM)], "segment 0's waits for PCIEXBAR");
    assert_eq!(
        fe.config_read(2, 0, 0, 0, 4).unwrap_err().status(),
        Some(Status::NoDevice),
        "no segment 2"
    );
    let mut bus = SocketBus(fe);
    let segments = enumerate_segments(&mut bus, Layout::default(), &t.ecam).expect("scan");
    assert_eq!(segments.len(), 2);
    let (n, seg1) = &segments[1];
    assert_eq!(*n, 1);
    let ids: Vec<_> = seg1
        .functions
        .iter()
        .map(|f| (f.bus, f.devfn, f.vendor, f.device))
        .collect();
    assert_eq!(
        ids,
        [(0, 0, 0x8086, 0x0d57), (0, 3 << 3, 0x1b36, 0x000c)],
        "its host bridge and rp5"
    );
    assert_eq!(seg1.functions[1].buses, Some((0, 1, 1)));
    assert_eq!(seg1.functions[1].bars.len(), 1, "rp5's MSI-X BAR");
    // Segment 0's scan is unchanged by segment 1.
    assert_eq!(segments[0].1.functions.len(), 2, "the MCH and rp1");

    let mut qmp =
        QmpSocket::connect(b.control.as_ref().unwrap(), Duration::from_secs(10)).expect("QMP");
    qmp.ok(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "net1", "bus": "rp5", "owner": "vmm"}),
    )
    .expect("hot-add behind rp5");
    let SocketBus(mut fe) = bus;
    let t = fe.topology().unwrap();
    let net1 = t
        .functions
        .iter()
        .find(|f| f.kind == FunctionKind::Endpoint as u8)
        .expect("net1's record");
    assert_eq!((net1.segment, net1.bus), (1, 1));
    assert_ne!(net1.flags & function_flags::PRESENT, 0);
    let parent = &t.functions[usize::from(net1.parent)];
    assert_eq!((parent.segment, parent.devfn), (1, 3 << 3), "behind rp5");
    // rp5 reports the card in its slot: Slot Status Presence Detect State (PCIe Base 6.0
    // §7.5.3.11), read through segment 1's ECAM window.
    let slot_status = fe.mmio_read(SEG1_ECAM + (3 << 15) + 0x6e, 2).unwrap();
    assert_ne!(slot_status & 0x40, 0, "presence detected: {slot_status:#x}");
    let pci = qmp.ok("query-pci", json!({})).unwrap();
    assert_eq!(pci[1]["x-pcierc-segment"], 1);
    assert_eq!(
        pci[1]["devices"][1]["pci_bridge"]["devices"][0]["qdev_id"],
        "net1"
    );
}

/// `pcierc dump --connect` names extra segments' functions with lspci's domain, and lspci
/// decodes them (when installed).
#[test]
fn dump_names_segment_1_as_an_lspci_domain() {
    use pcierc_tests::process::{pcierc_bin, tool_available};
    let dir = ScratchDir::new("segments-dump");
    let b = start(&dir);
    let out = std::process::Command::new(pcierc_bin())
        .args(["dump", "--connect"])
        .arg(&b.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // Function lines ("BB:DD.F name"), not register lines ("OFF: bytes") or blank ones.
    let heads: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.contains(": "))
        .collect();
    assert_eq!(
        heads,
        [
            "00:00.0 mch",
            "00:02.0 rp1",
            "0001:00:00.0 seg1",
            "0001:00:03.0 rp5"
        ]
    );
    if !tool_available("lspci") {
        return;
    }
    let file = dir.0.join("dump");
    std::fs::write(&file, &text).unwrap();
    let lspci = std::process::Command::new("lspci")
        .arg("-F")
        .arg(&file)
        .arg("-n")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&lspci.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("0001:00:03.0 0604: 1b36:000c")),
        "{listed}"
    );
}
