//! End to end over the real `pcierc` process and its unix socket: handshake, topology, a
//! firmware-style enumeration through forwarded CF8/ECAM accesses, layout notifications, state,
//! and hostile peers that must not disturb well-behaved ones.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pcierc_examples::firmware::{enumerate, Layout};
use pcierc_examples::socket_bus::SocketBus;
use pcierc_protocol::{
    function_flags, ConfigAccess, FrontendOptions, FrontendReq, FunctionKind, LayoutChanges,
    MsgHeader, Notification, RangeKind, Status, HEADER_SIZE,
};
use pcierc_tests::process::Backend;
use vm_memory::ByteValued;

fn connect(b: &Backend, name: &str) -> pcierc_protocol::Frontend {
    pcierc_protocol::Frontend::connect(&b.socket, FrontendOptions::vmm(name)).expect("handshake")
}

#[test]
fn topology_of_the_embedded_default() {
    let b = Backend::start(&[]);
    let mut fe = connect(&b, "t-topology");
    let t = fe.topology().unwrap();
    let kinds: Vec<_> = t
        .functions
        .iter()
        .map(|f| (f.kind, f.devfn, f.vendor_id, f.device_id))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (FunctionKind::HostBridge as u8, 0x00, 0x8086, 0x29c0),
            (FunctionKind::RootPort as u8, 0x10, 0x1b36, 0x000c),
            (FunctionKind::RootPort as u8, 0x11, 0x1b36, 0x000c),
            (FunctionKind::RootPort as u8, 0x12, 0x1b36, 0x000c),
            (FunctionKind::RootPort as u8, 0x13, 0x1b36, 0x000c),
        ]
    );
    assert!(t
        .functions
        .iter()
        .all(|f| f.flags & function_flags::EMULATED != 0));
    assert!(t.ecam.is_empty(), "PCIEXBAR is disabled at reset");
    let claimed: Vec<_> = t.ranges.iter().map(|r| (r.kind, r.base, r.size)).collect();
    assert!(claimed.contains(&(RangeKind::ConfigAddress as u8, 0xcf8, 4)));
    assert!(claimed.contains(&(RangeKind::ConfigData as u8, 0xcfc, 4)));
}

#[test]
fn firmware_enumeration_through_forwarded_accesses() {
    let b = Backend::start(&["--device", "virtio-net-pci,id=net0,bus=rp2,owner=qemu"]);
    // A second frontend listens for layout events, as a hypervisor shim would.
    let mut watcher =
        pcierc_protocol::Frontend::connect(&b.socket, FrontendOptions::vmm("watcher"))
            .expect("watcher handshake");
    let mut events = watcher.take_backend_channel().expect("backend channel");
    let fe = connect(&b, "t-firmware");
    let mut bus = SocketBus(fe);
    let e = enumerate(&mut bus, Layout::default()).expect("enumeration");
    // Host bridge + four root ports, buses 1-4, and the NIC behind rp2 served by QEMU.
    assert_eq!(e.functions.len(), 5, "{e:?}");
    let ports: Vec<_> = e.functions.iter().filter(|f| f.header_type == 1).collect();
    assert_eq!(ports.len(), 4);
    for (i, p) in ports.iter().enumerate() {
        let sec = i as u8 + 1;
        assert_eq!(p.buses, Some((0, sec, sec)), "port {i}");
        assert_eq!(p.ext_caps, vec![0x0001, 0x000d], "AER then ACS");
        assert!(
            p.caps.contains(&0x10) && p.caps.contains(&0x11),
            "PCIe and MSI-X caps: {:x?}",
            p.caps
        );
        let [io, mem, pref] = p.windows.expect("windows");
        assert!(
            io.0 < io.1 && mem.0 < mem.1 && pref.0 < pref.1,
            "{:x?}",
            p.windows
        );
        assert_eq!(p.bars.len(), 1, "the MSI-X BAR");
        assert_eq!(p.bars[0].2, 4096);
    }
    assert_eq!(
        e.remote,
        vec![(2, 0)],
        "net0 behind rp2 (bus 2) belongs to qemu"
    );
    // The watcher saw the ECAM window appear and the buses get numbers.
    let mut seen = LayoutChanges::empty();
    let mut last = None;
    while let Some(n) = events.recv_timeout(Duration::from_millis(500)).unwrap() {
        if let Notification::LayoutChanged { changes, topology } = n {
            seen |= changes;
            last = Some(topology);
        }
    }
    assert!(
        seen.contains(LayoutChanges::ECAM | LayoutChanges::BUS_NUMBERS | LayoutChanges::WINDOWS),
        "{seen:?}"
    );
    let t = last.expect("a layout event");
    assert_eq!(t.ecam.len(), 1);
    assert_eq!(
        (t.ecam[0].base, t.ecam[0].size, t.ecam[0].end_bus),
        (0xb000_0000, 256 << 20, 255)
    );
    let net = t
        .functions
        .iter()
        .find(|f| f.kind == FunctionKind::Endpoint as u8)
        .unwrap();
    assert_eq!(
        (net.bus, net.flags & function_flags::PRESENT),
        (2, function_flags::PRESENT)
    );
    // And the same through a fresh GetTopology.
    assert_eq!(watcher.topology().unwrap().generation, t.generation);
}

#[test]
fn config_access_validation_and_errors() {
    let b = Backend::start(&[]);
    let mut fe = connect(&b, "t-errors");
    // Vendor/device of the MCH by (segment, bus, devfn, offset).
    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert_eq!(
        fe.config_read(0, 0, 0x08, 0, 2).unwrap(),
        0xffff,
        "absent function reads all ones"
    );
    let status = |r: Result<u32, pcierc_protocol::Error>| r.unwrap_err().status();
    assert_eq!(
        status(fe.config_read(0, 0, 0, 2, 4)),
        Some(Status::Invalid),
        "misaligned"
    );
    assert_eq!(
        status(fe.config_read(0, 0, 0, 0, 3)),
        Some(Status::Invalid),
        "bad width"
    );
    assert_eq!(
        status(fe.config_read(0, 0, 0, 4096, 1)),
        Some(Status::OutOfRange),
        "out of range"
    );
    // Unknown request code: an error reply, and the connection goes on.
    let (st, _) = fe.request(0x7777, &[], &[]).unwrap();
    assert_eq!(st, Status::NotSupported);
    // Wrong payload size for a known code.
    let (st, _) = fe
        .request(FrontendReq::ConfigRead as u32, &[0u8; 3], &[])
        .unwrap();
    assert_eq!(st, Status::Invalid);
    // Reserved field set.
    let bad = ConfigAccess {
        width: 4,
        reserved: 1,
        ..Default::default()
    };
    let (st, _) = fe
        .request(FrontendReq::ConfigRead as u32, bad.as_slice(), &[])
        .unwrap();
    assert_eq!(st, Status::Invalid);
    assert_eq!(
        fe.config_read(0, 0, 0, 0, 4).unwrap(),
        0x29c0_8086,
        "still serving"
    );
}

#[test]
fn garbage_peers_are_dropped_and_others_keep_working() {
    let mut b = Backend::start(&[]);
    let mut good = connect(&b, "t-good");
    good.config_write(0, 0, 0x10, 0x1c, 1, 0x40).unwrap(); // rp1 I/O base
    let before = good.config_read(0, 0, 0x10, 0x1c, 4).unwrap();

    // 1. Bad version and reserved flag bits in the header: the backend closes that connection.
    let mut raw = UnixStream::connect(&b.socket).unwrap();
    let h = MsgHeader {
        request: FrontendReq::GetFeatures as u32,
        flags: 0xf0 | 2,
        size: 0,
        status: 0,
        id: 1,
    };
    raw.write_all(h.as_slice()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        raw.read(&mut buf).unwrap_or(0),
        0,
        "malformed header must close the connection"
    );

    // 2. A header announcing a huge payload: closed too, without allocating it.
    let mut raw = UnixStream::connect(&b.socket).unwrap();
    let h = MsgHeader {
        request: FrontendReq::LoadState as u32,
        flags: 1,
        size: u32::MAX,
        status: 0,
        id: 2,
    };
    raw.write_all(h.as_slice()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        raw.read(&mut buf).unwrap_or(0),
        0,
        "oversized payload must close the connection"
    );

    // 3. Half a header, then silence: must not stall anyone else.
    let mut stalled = UnixStream::connect(&b.socket).unwrap();
    stalled.write_all(&[1, 0, 0, 0, 1]).unwrap();

    // 4. Random bytes.
    let mut noise = UnixStream::connect(&b.socket).unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = noise.write_all(&junk);

    for _ in 0..100 {
        assert_eq!(good.config_read(0, 0, 0x10, 0x1c, 4).unwrap(), before);
    }
    assert!(b.alive());
    drop(stalled);
    assert_eq!(HEADER_SIZE, 24);
}

#[test]
fn save_reset_load_round_trip() {
    let b = Backend::start(&[]);
    let mut fe = connect(&b, "t-state");
    fe.config_write(0, 0, 0, 0x60, 4, 0xb000_0001).unwrap(); // PCIEXBAR on
    fe.config_write(0, 0, 0x11, 0x18, 4, 0x0005_0500).unwrap(); // rp2 buses 0/5/5
    fe.config_write(0, 0, 0, 0x90, 1, 0x30).unwrap(); // PAM0
    let blob = fe.save_state().unwrap();
    let snapshot: Vec<u32> = (0..1024)
        .map(|i| fe.config_read(0, 0, 0x11, i * 4, 4).unwrap())
        .collect();
    fe.reset().unwrap();
    assert_eq!(
        fe.config_read(0, 0, 0x11, 0x18, 4).unwrap(),
        0,
        "reset clears bus numbers"
    );
    assert!(fe.topology().unwrap().ecam.is_empty());
    fe.load_state(&blob).unwrap();
    let restored: Vec<u32> = (0..1024)
        .map(|i| fe.config_read(0, 0, 0x11, i * 4, 4).unwrap())
        .collect();
    assert_eq!(snapshot, restored);
    assert_eq!(fe.chipset_memory().unwrap().pam[0], 0x30);
    assert_eq!(fe.topology().unwrap().ecam.len(), 1);
    // Garbage and a future version are refused and change nothing.
    assert_eq!(
        fe.load_state(b"not a blob").unwrap_err().status(),
        Some(Status::BadMessage)
    );
    let future = String::from_utf8(blob.clone())
        .unwrap()
        .replace("\"version\":1", "\"version\":99");
    assert_eq!(
        fe.load_state(future.as_bytes()).unwrap_err().status(),
        Some(Status::BadMessage)
    );
    assert_eq!(fe.config_read(0, 0, 0x11, 0x18, 4).unwrap(), 0x0005_0500);
}

/// The example firmware through a switch: root port rp1 -> x3130-upstream -> two
/// xio3130-downstream, a function another emulator serves behind dp1. The firmware numbers
/// buses depth first through the switch and nests each bridge's windows in its parent's; the
/// topology lists the switch ports behind rp1 at the buses they sit on.
#[test]
fn firmware_enumerates_a_switch() {
    let b = Backend::start(&[
        "--device",
        "x3130-upstream,id=up1,bus=rp1",
        "--device",
        "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1",
        "--device",
        "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=2",
        "--device",
        "virtio-net-pci,id=net0,bus=dp1,owner=qemu",
    ]);
    let mut fe = connect(&b, "t-switch");
    let mut bus = SocketBus(connect(&b, "t-switch-fw"));
    let e = enumerate(&mut bus, Layout::default()).expect("enumeration");
    let mut found: Vec<_> = e
        .functions
        .iter()
        .filter(|f| f.header_type == 1)
        .map(|f| (f.bus, f.devfn, f.vendor, f.device, f.buses))
        .collect();
    found.sort_unstable();
    assert_eq!(
        found,
        [
            (0, 0x10, 0x1b36, 0x000c, Some((0, 1, 4))),
            (0, 0x11, 0x1b36, 0x000c, Some((0, 5, 5))),
            (0, 0x12, 0x1b36, 0x000c, Some((0, 6, 6))),
            (0, 0x13, 0x1b36, 0x000c, Some((0, 7, 7))),
            (1, 0x00, 0x104c, 0x8232, Some((1, 2, 4))),
            (2, 0x00, 0x104c, 0x8233, Some((2, 3, 3))),
            (2, 0x08, 0x104c, 0x8233, Some((2, 4, 4))),
        ]
    );
    assert_eq!(e.remote, vec![(3, 0)], "net0 behind dp1");
    // Every bridge's windows lie inside its parent's.
    let window = |bus: u8, devfn: u8| {
        e.functions
            .iter()
            .find(|f| (f.bus, f.devfn) == (bus, devfn))
            .and_then(|f| f.windows)
            .expect("windows")
    };
    for (child, parent) in [((1, 0), (0, 0x10)), ((2, 0), (1, 0)), ((2, 8), (1, 0))] {
        let (c, p) = (window(child.0, child.1), window(parent.0, parent.1));
        for (cw, pw) in c.iter().zip(&p) {
            assert!(
                pw.0 <= cw.0 && cw.1 <= pw.1,
                "{child:?} {cw:x?} outside {parent:?} {pw:x?}"
            );
        }
    }
    // The topology: switch ports as ports behind rp1 (record 1), at the buses they sit on.
    let t = fe.topology().unwrap();
    let port = |id: &str| {
        t.functions
            .iter()
            .position(|f| pcierc_protocol::decode_name(&f.id) == Some(id))
            .expect(id)
    };
    let rec = |id: &str| t.functions[port(id)];
    let (up1, dp1) = (rec("up1"), rec("dp1"));
    assert_eq!(
        (up1.kind, up1.bus, up1.devfn, usize::from(up1.parent)),
        (FunctionKind::RootPort as u8, 1, 0, port("rp1"))
    );
    assert_eq!((dp1.bus, usize::from(dp1.parent)), (2, port("up1")));
    assert_eq!(
        (dp1.secondary_bus, dp1.flags & function_flags::PRESENT),
        (3, function_flags::PRESENT)
    );
    let net0 = rec("net0");
    assert_eq!((net0.bus, usize::from(net0.parent)), (3, port("dp1")));
    assert_ne!(net0.flags & function_flags::PRESENT, 0);
}

/// The real pcierc started with a `pcie-pci-bridge` in rp1's slot and one on the root bus:
/// firmware numbers the buses through them (a depth-first scan in devfn order) and finds the
/// function another emulator serves below br1 at device 1 of br1's secondary bus; the topology
/// record places the bridges as kind 2 records and the function below br1 names it.
#[test]
fn firmware_enumerates_pcie_pci_bridges() {
    let b = Backend::start(&[
        "--device",
        "pcie-pci-bridge,id=br1,bus=rp1",
        "--device",
        "pcie-pci-bridge,id=br0,addr=5",
        "--device",
        "e1000,id=nic,bus=br1,addr=1,owner=qemu",
    ]);
    let mut fe = connect(&b, "t-bridge");
    let mut bus = SocketBus(connect(&b, "t-bridge-fw"));
    let e = enumerate(&mut bus, Layout::default()).expect("enumeration");
    let mut found: Vec<_> = e
        .functions
        .iter()
        .filter(|f| f.header_type & 0x7f == 1)
        .map(|f| (f.bus, f.devfn, f.vendor, f.device, f.buses))
        .collect();
    found.sort_unstable();
    assert_eq!(
        found,
        [
            (0, 0x10, 0x1b36, 0x000c, Some((0, 1, 2))),
            (0, 0x11, 0x1b36, 0x000c, Some((0, 3, 3))),
            (0, 0x12, 0x1b36, 0x000c, Some((0, 4, 4))),
            (0, 0x13, 0x1b36, 0x000c, Some((0, 5, 5))),
            (0, 0x28, 0x1b36, 0x000e, Some((0, 6, 6))),
            (1, 0x00, 0x1b36, 0x000e, Some((1, 2, 2))),
        ]
    );
    assert_eq!(e.remote, vec![(2, 0x08)], "nic below br1");
    let t = fe.topology().unwrap();
    let index = |id: &str| {
        t.functions
            .iter()
            .position(|f| pcierc_protocol::decode_name(&f.id) == Some(id))
            .expect(id)
    };
    let rec = |id: &str| t.functions[index(id)];
    let (br1, br0, nic) = (rec("br1"), rec("br0"), rec("nic"));
    assert_eq!(
        (br1.kind, br1.bus, br1.devfn, usize::from(br1.parent)),
        (FunctionKind::RootPort as u8, 1, 0, index("rp1"))
    );
    assert_eq!((br1.secondary_bus, br1.subordinate_bus), (2, 2));
    assert_ne!(br1.flags & function_flags::PRESENT, 0);
    assert_eq!((br0.bus, br0.devfn, br0.parent), (0, 0x28, 0xffff));
    assert_eq!(
        (nic.bus, nic.devfn, usize::from(nic.parent)),
        (2, 0x08, index("br1"))
    );
    assert_ne!(nic.flags & function_flags::PRESENT, 0);
    // The SHPC BARs firmware placed are claimed ranges of the bridges.
    let bars = t
        .ranges
        .iter()
        .filter(|r| r.kind == RangeKind::Bar as u8 && (r.bus, r.devfn) == (1, 0))
        .count();
    assert_eq!(bars, 1, "br1's SHPC BAR");
}

/// The names of pcierc's threads that serve a frontend (`frontend-N`).
fn frontend_threads(b: &Backend) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", b.pid())) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("frontend-"))
        .count()
}

/// Wait up to 5 s for `want` frontend threads; the count seen last.
fn wait_for_threads(b: &Backend, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = frontend_threads(b);
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn negotiated_frontends_get_a_thread_each_and_handshakes_none() {
    let mut b = Backend::start(&[]);
    // A peer that has not negotiated (half a header, then silence) stays on the event loop.
    let mut stalled = UnixStream::connect(&b.socket).unwrap();
    stalled.write_all(&[1, 0, 0, 0, 1]).unwrap();
    let mut first = connect(&b, "t-thread-1");
    assert_eq!(
        wait_for_threads(&b, 1),
        1,
        "one negotiated frontend, one thread"
    );
    let mut second = connect(&b, "t-thread-2");
    assert_eq!(wait_for_threads(&b, 2), 2);
    // Both are served, from their threads, in any order.
    second.config_write(0, 0, 0x10, 0x1c, 1, 0x40).unwrap();
    assert_eq!(first.config_read(0, 0, 0x10, 0x1c, 1).unwrap(), 0x40);
    drop(second);
    assert_eq!(
        wait_for_threads(&b, 1),
        1,
        "a frontend that left has its thread joined"
    );
    assert_eq!(first.config_read(0, 0, 0x10, 0x1c, 1).unwrap(), 0x40);
    drop(first);
    assert_eq!(wait_for_threads(&b, 0), 0);
    assert!(b.alive());
    drop(stalled);
}
