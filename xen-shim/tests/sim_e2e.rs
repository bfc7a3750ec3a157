//! End to end over the simulated Xen 4.17 with the real `pcierc` process: a QEMU stand-in
//! (ioreq server 0) owns an endpoint behind pcierc's root port rp1; the shim (server 1) serves
//! pcierc's host bridge and root ports; a scripted guest enumerates, renumbers buses, moves
//! PCIEXBAR, and every access must reach the right server.

mod common;

use common::qemu::{Qemu, ENDPOINT_ID};
use common::{Pcierc, ShimThread};
use pcierc_xen_shim::shim::ShimConfig;
use pcierc_xen_shim::sim::guest::{Guest, Mechanism};
use pcierc_xen_shim::sim::{Routed, SimConfig, SimXen};

const MCH_ID: u32 = 0x29c0_8086;
const ROOT_PORT_ID: u32 = 0x000c_1b36;
const ECAM: u64 = 0xb000_0000;
const ECAM2: u64 = 0xe000_0000;
const RP1: u8 = 0x10;
const RP2: u8 = 0x11;

struct World {
    sim: SimXen,
    pcierc: Pcierc,
    qemu: Qemu,
    shim: ShimThread,
    guest: Guest,
}

fn peers() -> ShimConfig {
    ShimConfig {
        peers: [("qemu".to_string(), 0)].into(),
        ..Default::default()
    }
}

fn world(sim_cfg: SimConfig, shim_cfg: ShimConfig, pcierc_args: &[&str]) -> World {
    common::capture_log();
    let sim = SimXen::new(sim_cfg);
    let pcierc = Pcierc::start(pcierc_args);
    let qemu = Qemu::start(&sim);
    assert_eq!(qemu.id, 0);
    let shim = ShimThread::start(&sim, &pcierc, shim_cfg);
    assert_eq!(shim.id, 1, "the shim's server is created after QEMU's");
    let guest = Guest::new(sim.vcpu(0));
    World {
        sim,
        pcierc,
        qemu,
        shim,
        guest,
    }
}

fn with_net0() -> [&'static str; 2] {
    ["--device", "virtio-net-pci,id=net0,bus=rp1,owner=qemu"]
}

/// (bus, devfn, vendor/device, server) of what the guest found.
fn summary(found: &[pcierc_xen_shim::sim::guest::Found]) -> Vec<(u8, u8, u32, Routed)> {
    found
        .iter()
        .map(|f| {
            (
                f.bus,
                f.devfn,
                u32::from(f.device) << 16 | u32::from(f.vendor),
                f.served_by,
            )
        })
        .collect()
}

#[test]
fn guest_enumerates_pcierc_and_qemu_functions_through_cf8_and_ecam() {
    let w = world(SimConfig::default(), peers(), &with_net0());
    let g = &w.guest;
    let shim = Routed::Server(1);
    let qemu = Routed::Server(0);
    let ports = [0x10, 0x11, 0x12, 0x13].map(|d| (0, d, ROOT_PORT_ID, shim));

    // Before the guest programs any bus number: the host bridge is pcierc's (the shim's higher
    // id wins over QEMU's own 00:00.0), and nothing is below the root ports.
    let found = summary(&g.enumerate(Mechanism::Cf8).unwrap());
    let mut want = vec![(0, 0, MCH_ID, shim)];
    want.extend(ports);
    assert_eq!(found, want);
    assert!(
        w.qemu.config_seen().is_empty(),
        "QEMU's 00:00.0 is shadowed"
    );

    // Firmware gives each root port a bus; net0 appears behind rp1, served by QEMU.
    for (i, d) in [0x10u8, 0x11, 0x12, 0x13].iter().enumerate() {
        let bus = i as u8 + 1;
        g.set_bus_numbers(Mechanism::Cf8, 0, *d, bus, bus).unwrap();
    }
    let found = summary(&g.enumerate(Mechanism::Cf8).unwrap());
    want.push((1, 0, ENDPOINT_ID, qemu));
    assert_eq!(found, want);
    assert!(w
        .qemu
        .config_seen()
        .iter()
        .all(|&(b, d, _)| (b, d) == (1, 0)));

    // CONFIG_ADDRESS itself is QEMU's: the shim never claims 0xCF8-0xCFF.
    let (cf8, r) = w.guest.vcpu.pio_read(0xcf8, 4).unwrap();
    assert_eq!(r, qemu);
    assert_eq!(cf8 >> 31, 1, "QEMU's latch holds the last CONFIG_ADDRESS");

    // ECAM: pcierc's functions are reached (the shim decodes its 4 KiB slices), extended
    // configuration space included; QEMU's endpoint is not: stock Xen 4.17 sends ECAM as MMIO
    // by address, and QEMU's Xen machine has no MMCONFIG to decode it.
    g.set_pciexbar(Mechanism::Cf8, Some(ECAM)).unwrap();
    let found = summary(&g.enumerate(Mechanism::Ecam(ECAM)).unwrap());
    let mut ecam_want = vec![(0, 0, MCH_ID, shim)];
    ecam_want.extend(ports);
    assert_eq!(found, ecam_want, "net0 is unreachable through ECAM");
    w.qemu.take_seen();
    let (v, r) = g.config_read(Mechanism::Ecam(ECAM), 1, 0, 0, 4).unwrap();
    assert_eq!((v, r), (0xffff_ffff, Routed::Dropped));
    assert!(w.qemu.take_seen().is_empty());
    let (aer, r) = g
        .config_read(Mechanism::Ecam(ECAM), 0, RP1, 0x100, 4)
        .unwrap();
    assert_eq!(r, shim);
    assert_eq!(aer & 0xffff, 0x0001, "AER extended capability at 0x100");

    // Only the slices of pcierc's functions are mapped to the shim, and no ports.
    let views = w.sim.servers();
    let shim_view = views.iter().find(|s| s.id == 1).unwrap();
    assert!(shim_view.ranges[0].is_empty(), "no ports");
    assert_eq!(
        shim_view.ranges[1],
        [(ECAM, ECAM + 0xfff), (ECAM + 0x10000, ECAM + 0x13fff)]
    );
    assert_eq!(shim_view.ranges[2], [(0, 0), (0x10, 0x13)]);
    let qemu_view = views.iter().find(|s| s.id == 0).unwrap();
    assert_eq!(qemu_view.ranges[2], [(0, 0), (0x100, 0x100)]);

    w.shim.stop().expect("clean stop");
    assert_eq!(w.sim.crashed(), None);
    assert_eq!(w.sim.servers().len(), 1, "the shim destroyed its server");
}

/// Give rp1..rp4 buses 1..4 and enable ECAM at `ECAM`, through CF8/CFC.
fn firmware_setup(g: &Guest) {
    for (i, d) in [0x10u8, 0x11, 0x12, 0x13].iter().enumerate() {
        let bus = i as u8 + 1;
        g.set_bus_numbers(Mechanism::Cf8, 0, *d, bus, bus).unwrap();
    }
    g.set_pciexbar(Mechanism::Cf8, Some(ECAM)).unwrap();
}

#[test]
fn renumbering_and_moving_pciexbar_keep_every_access_on_the_right_server() {
    let w = world(SimConfig::default(), peers(), &with_net0());
    let g = &w.guest;
    firmware_setup(g);
    let shim = Routed::Server(1);
    let qemu = Routed::Server(0);
    assert_eq!(
        g.config_read(Mechanism::Cf8, 1, 0, 0, 4).unwrap(),
        (ENDPOINT_ID.into(), qemu)
    );

    // The guest renumbers rp1 (through ECAM, decoded by the shim): net0 is now on bus 5. The
    // shim re-maps QEMU's SBDF before the write completes, so the very next access is right.
    g.set_bus_numbers(Mechanism::Ecam(ECAM), 0, RP1, 5, 5)
        .unwrap();
    w.qemu.take_seen();
    assert_eq!(
        g.config_read(Mechanism::Cf8, 5, 0, 0, 4).unwrap(),
        (ENDPOINT_ID.into(), qemu)
    );
    assert_eq!(
        w.qemu.config_seen(),
        [(5, 0, 0)],
        "QEMU is asked for 05:00.0"
    );
    assert_eq!(
        g.config_read(Mechanism::Cf8, 1, 0, 0, 4).unwrap(),
        (0xffff_ffff, Routed::Dropped),
        "bus 1 is gone"
    );
    // A bus number handed from rp1 to rp2: rp2 has nothing behind it, so bus 1 stays dropped.
    g.set_bus_numbers(Mechanism::Cf8, 0, RP2, 1, 1).unwrap();
    assert_eq!(
        g.config_read(Mechanism::Cf8, 1, 0, 0, 4).unwrap().1,
        Routed::Dropped
    );

    // PCIEXBAR moves, written through the old window: the write itself reaches the shim at
    // the old slice, and the next access at the new base reaches it too.
    g.set_pciexbar(Mechanism::Ecam(ECAM), Some(ECAM2)).unwrap();
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM2), 0, 0, 0, 4).unwrap(),
        (MCH_ID.into(), shim)
    );
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM2), 0, RP1, 0x18, 4)
            .unwrap(),
        (0x0005_0500, shim)
    );
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM), 0, 0, 0, 4).unwrap(),
        (0xffff_ffff, Routed::Dropped),
        "the old window is unmapped"
    );
    let views = w.sim.servers();
    let shim_view = views.iter().find(|s| s.id == 1).unwrap();
    assert_eq!(
        shim_view.ranges[1],
        [(ECAM2, ECAM2 + 0xfff), (ECAM2 + 0x10000, ECAM2 + 0x13fff)]
    );
    assert_eq!(
        views.iter().find(|s| s.id == 0).unwrap().ranges[2],
        [(0, 0), (0x500, 0x500)]
    );

    // 8-byte ECAM read (two dwords for pcierc) and PCIEXBAR disabled: ECAM is gone entirely.
    let (q, r) = w.guest.vcpu.mmio_read(ECAM2, 8).unwrap();
    assert_eq!(r, shim);
    assert_eq!(q & 0xffff_ffff, u64::from(MCH_ID));
    g.set_pciexbar(Mechanism::Cf8, None).unwrap();
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM2), 0, 0, 0, 4).unwrap().1,
        Routed::Dropped
    );
    let views = w.sim.servers();
    assert!(views.iter().find(|s| s.id == 1).unwrap().ranges[1].is_empty());
    assert_eq!(w.shim.status.generation(), Some(w.pcierc.generation()));
    w.shim.stop().expect("clean stop");
    assert_eq!(w.sim.crashed(), None);
}

#[test]
fn with_the_mmconfig_extension_ecam_reaches_qemus_endpoint() {
    let sim_cfg = SimConfig {
        mmcfg_extension: true,
        ..Default::default()
    };
    let shim_cfg = ShimConfig {
        mmcfg_extension: true,
        ..peers()
    };
    let w = world(sim_cfg, shim_cfg, &with_net0());
    let g = &w.guest;
    firmware_setup(g);
    let shim = Routed::Server(1);
    let qemu = Routed::Server(0);
    let found = summary(&g.enumerate(Mechanism::Ecam(ECAM)).unwrap());
    let mut want = vec![(0, 0, MCH_ID, shim)];
    want.extend([0x10, 0x11, 0x12, 0x13].map(|d| (0, d, ROOT_PORT_ID, shim)));
    want.push((1, 0, ENDPOINT_ID, qemu));
    assert_eq!(found, want, "Xen decodes ECAM and routes by SBDF");
    assert!(w
        .qemu
        .config_seen()
        .iter()
        .all(|&(b, d, _)| (b, d) == (1, 0)));
    // No ECAM slices: Xen decodes the window pcierc reported.
    let views = w.sim.servers();
    assert!(views.iter().find(|s| s.id == 1).unwrap().ranges[1].is_empty());
    // pcierc's extended space still works; QEMU 7.2 serves 256 bytes only.
    let (aer, r) = g
        .config_read(Mechanism::Ecam(ECAM), 0, RP1, 0x100, 4)
        .unwrap();
    assert_eq!((aer & 0xffff, r), (1, shim));
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM), 1, 0, 0x100, 4)
            .unwrap(),
        (0xffff_ffff, qemu)
    );
    // Moving PCIEXBAR moves Xen's window.
    g.set_pciexbar(Mechanism::Ecam(ECAM), Some(ECAM2)).unwrap();
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM2), 1, 0, 0, 4).unwrap(),
        (ENDPOINT_ID.into(), qemu)
    );
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM), 1, 0, 0, 4).unwrap().1,
        Routed::Dropped
    );
    w.shim.stop().expect("clean stop");
    assert_eq!(w.sim.crashed(), None);
}

#[test]
fn without_the_extension_in_xen_the_shim_falls_back_to_decoding_ecam() {
    let shim_cfg = ShimConfig {
        mmcfg_extension: true,
        ..peers()
    };
    let w = world(SimConfig::default(), shim_cfg, &with_net0());
    let g = &w.guest;
    firmware_setup(g);
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM), 0, 0, 0, 4).unwrap(),
        (MCH_ID.into(), Routed::Server(1))
    );
    assert_eq!(
        g.config_read(Mechanism::Ecam(ECAM), 1, 0, 0, 4).unwrap().1,
        Routed::Dropped
    );
    assert!(common::capture_log().contains("no MMCONFIG decode extension"));
}

const SLOT_CONTROL: u16 = 0x6c;
const SLOT_STATUS: u16 = 0x6e;
/// Slot Control: Presence Detect Changed Enable | Hot-Plug Interrupt Enable (PCIe 6.0 §7.5.3.10).
const PDCE_HPIE: u64 = 0x28;

fn wait_interrupt(sim: &SimXen, want: SimInterrupt) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = Vec::new();
    while !got.contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {want:?}; injected: {got:?}"
        );
        got.extend(sim.take_interrupts());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

use pcierc_xen_shim::sim::SimInterrupt;
use serde_json::json;

#[test]
fn hot_add_and_remove_through_the_control_socket_update_routing_and_interrupts() {
    let w = world(SimConfig::default(), peers(), &with_net0());
    let g = &w.guest;
    firmware_setup(g);
    let qemu = Routed::Server(0);
    let cf8 = Mechanism::Cf8;

    // rp2 signals hot-plug with MSI-X: BAR0 (the table) mapped to the shim once programmed.
    let bar = 0xfe00_0000u64;
    g.config_write(cf8, 0, RP2, 0x10, 4, bar).unwrap();
    g.config_write(cf8, 0, RP2, 0x04, 2, 0x0006).unwrap();
    g.config_write(cf8, 0, RP2, 0x4a, 2, 0x8000).unwrap();
    let v = &w.guest.vcpu;
    assert_eq!(
        v.mmio_write(bar, 4, 0xfee0_0000).unwrap(),
        Routed::Server(1)
    );
    v.mmio_write(bar + 4, 4, 0).unwrap();
    v.mmio_write(bar + 8, 4, 0x4041).unwrap();
    v.mmio_write(bar + 12, 4, 0).unwrap();
    assert_eq!(
        v.mmio_read(bar + 8, 4).unwrap(),
        (0x4041, Routed::Server(1))
    );
    g.config_write(cf8, 0, RP2, SLOT_CONTROL, 2, PDCE_HPIE)
        .unwrap();
    // rp3 signals with INTx (MSI-X left disabled).
    g.config_write(cf8, 0, 0x12, SLOT_CONTROL, 2, PDCE_HPIE)
        .unwrap();
    assert_eq!(
        g.config_read(cf8, 2, 0, 0, 4).unwrap(),
        (0xffff_ffff, Routed::Dropped)
    );

    // QEMU's NIC hot-added behind rp2: mapped to QEMU's server, the guest told by MSI.
    let mut qmp = w.pcierc.qmp();
    qmp.ok(
        "device_add",
        json!({"driver": "e1000e", "id": "net1", "bus": "rp2", "owner": "qemu"}),
    )
    .unwrap();
    w.shim.wait_generation(w.pcierc.generation());
    assert_eq!(
        g.config_read(cf8, 2, 0, 0, 4).unwrap(),
        (ENDPOINT_ID.into(), qemu)
    );
    wait_interrupt(
        &w.sim,
        SimInterrupt::Msi {
            addr: 0xfee0_0000,
            data: 0x4041,
        },
    );

    // Another behind rp3: INTA of device 2 on bus 0, asserted, then deasserted when the guest
    // clears Presence Detect Changed.
    qmp.ok(
        "device_add",
        json!({"driver": "e1000e", "id": "net2", "bus": "rp3", "owner": "qemu"}),
    )
    .unwrap();
    w.shim.wait_generation(w.pcierc.generation());
    assert_eq!(g.config_read(cf8, 3, 0, 0, 4).unwrap().1, qemu);
    wait_interrupt(
        &w.sim,
        SimInterrupt::Intx {
            device: 2,
            intx: 0,
            level: true,
        },
    );
    g.config_write(cf8, 0, 0x12, SLOT_STATUS, 2, 0x08).unwrap();
    wait_interrupt(
        &w.sim,
        SimInterrupt::Intx {
            device: 2,
            intx: 0,
            level: false,
        },
    );

    // Surprise removal: unmapped at once.
    qmp.ok("x-pcierc-surprise-remove", json!({"id": "net1"}))
        .unwrap();
    w.shim.wait_generation(w.pcierc.generation());
    assert_eq!(
        g.config_read(cf8, 2, 0, 0, 4).unwrap(),
        (0xffff_ffff, Routed::Dropped)
    );

    // Orderly removal of net0: device_del presses the attention button, the guest powers the
    // slot off (Power Controller Control, indicators off), and the function is gone before
    // that write completes.
    qmp.ok("device_del", json!({"id": "net0"})).unwrap();
    let sltctl = g.config_read(cf8, 0, RP1, SLOT_CONTROL, 2).unwrap().0;
    g.config_write(cf8, 0, RP1, SLOT_CONTROL, 2, sltctl | 0x0400 | 0x0300)
        .unwrap();
    assert_eq!(
        g.config_read(cf8, 1, 0, 0, 4).unwrap(),
        (0xffff_ffff, Routed::Dropped)
    );
    let views = w.sim.servers();
    assert_eq!(
        views.iter().find(|s| s.id == 0).unwrap().ranges[2],
        [(0, 0), (0x300, 0x300)],
        "QEMU keeps 00:00.0 (its own) and net2"
    );
    w.shim.stop().expect("clean stop");
    assert_eq!(w.sim.crashed(), None);
}

fn wait_count(c: &std::sync::atomic::AtomicU64, want: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let have = c.load(std::sync::atomic::Ordering::Relaxed);
        if have == want {
            return;
        }
        assert!(
            have < want && std::time::Instant::now() < deadline,
            "count {have}, want {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn bad_ioreqs_are_answered_and_logged_and_invalidate_is_completed() {
    use pcierc_xen_shim::abi::ioreq::*;
    let w = world(SimConfig::default(), peers(), &with_net0());
    let v1 = w.sim.vcpu(1);
    let req = |ty: u8, addr: u64, size: u32, dir: u8| {
        let mut r = ioreq_t {
            addr,
            size,
            count: 1,
            data: 0x5a5a,
            type_: ty,
            ..Default::default()
        };
        r.set_dir(dir);
        r
    };
    let done = v1
        .send_raw(1, req(IOREQ_TYPE_PCI_CONFIG, 0, 3, IOREQ_READ))
        .unwrap();
    assert_eq!(done.data, 0xff_ffff, "bad size: all ones");
    let done = v1.send_raw(1, req(5, 0, 4, IOREQ_READ)).unwrap();
    assert_eq!(done.data, 0xffff_ffff, "unknown type: all ones");
    let rep = ioreq_t {
        count: 2,
        ..req(IOREQ_TYPE_COPY, ECAM, 4, IOREQ_READ)
    };
    assert_eq!(
        v1.send_raw(1, rep).unwrap().data,
        0xffff_ffff,
        "rep refused"
    );
    let mut ptr = req(IOREQ_TYPE_PIO, 0xcfc, 4, IOREQ_READ);
    ptr.set_data_is_ptr(true);
    assert_eq!(
        v1.send_raw(1, ptr).unwrap().data,
        0x5a5a,
        "pointer refused, guest memory untouched"
    );
    v1.send_raw(1, req(IOREQ_TYPE_PCI_CONFIG, 0, 8, IOREQ_WRITE))
        .unwrap();
    // The shim counts after completing (the guest may run first).
    wait_count(&w.shim.status.refused, 5);
    assert!(common::capture_log().contains("bad ioreq refused"));

    // INVALIDATE goes to every enabled server, synchronously; both complete it.
    assert_eq!(v1.invalidate().unwrap(), [0, 1]);
    wait_count(&w.shim.status.invalidations, 1);
    assert!(w.qemu.take_seen().contains(&common::qemu::Seen::Invalidate));

    // The shim serves on.
    assert_eq!(
        Guest::new(v1)
            .config_read(Mechanism::Cf8, 0, 0, 0, 4)
            .unwrap(),
        (MCH_ID.into(), Routed::Server(1))
    );
    w.shim.stop().expect("clean stop");
    assert_eq!(w.sim.crashed(), None);
}

#[test]
fn vcpus_access_concurrently() {
    let w = world(
        SimConfig {
            vcpus: 4,
            ..Default::default()
        },
        peers(),
        &with_net0(),
    );
    firmware_setup(&w.guest);
    std::thread::scope(|s| {
        for v in 0..4 {
            let g = Guest::new(w.sim.vcpu(v));
            s.spawn(move || {
                for i in 0..50u16 {
                    let dev = [0u8, 0x10, 0x11, 0x12, 0x13][usize::from(i) % 5];
                    let (id, r) = g.config_read(Mechanism::Ecam(ECAM), 0, dev, 0, 4).unwrap();
                    assert_eq!(r, Routed::Server(1));
                    assert_eq!(id as u32, if dev == 0 { MCH_ID } else { ROOT_PORT_ID });
                }
            });
        }
    });
    w.shim.stop().expect("clean stop");
    assert_eq!(w.sim.crashed(), None);
    assert_eq!(
        w.sim.bound_ports(),
        4,
        "only QEMU's four channels stay bound"
    );
}

/// A topology with an extra PCI segment cannot work under Xen (one MCFG entry, segment 0's):
/// the shim refuses it by name before it creates an ioreq server.
#[test]
fn extra_pci_segments_are_refused_before_any_ioreq_server() {
    use pcierc_protocol::{Frontend, FrontendOptions};
    use pcierc_xen_shim::shim::{Shim, ShimError};
    let dir = std::env::temp_dir().join(format!("pcierc-shim-segments-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = dir.join("segments.toml");
    std::fs::write(
        &topology,
        "[[segment]]\nid = 'seg1'\nsegment = 1\necam-base = 0x140000000\n\
         [[root-port]]\nid = 'rp5'\nbus = 'seg1'\naddr = '3.0'\nchassis = 5\n",
    )
    .unwrap();
    let sim = SimXen::new(SimConfig::default());
    let pcierc = Pcierc::start(&["--topology", topology.to_str().unwrap()]);
    let fe = Frontend::connect(&pcierc.socket, FrontendOptions::vmm("xen-shim")).unwrap();
    let Err(e) = Shim::start(sim.device_model(0), fe, ShimConfig::default()) else {
        panic!("a topology with segment 1 was accepted");
    };
    assert!(matches!(e, ShimError::ExtraSegment(1)), "{e}");
    assert!(e.to_string().contains("[[segment]]"), "{e}");
    assert!(sim.servers().is_empty(), "no ioreq server was created");
    let _ = std::fs::remove_dir_all(&dir);
}
