//! `pxb-pcie` expanders in the hierarchy: two on the root bus, root ports (one with a switch
//! below it) on the first one's root bus 0x80; routing by mechanism #1 and ECAM, bus numbering
//! below the expander, the snapshot, the topology record, query-pci, hot-plug below an
//! expander's root port, resets and saved state.

use pcierc_protocol::{FunctionKind, NO_PARENT};
use proptest::prelude::*;

use super::follow::{
    images_answer_reads, layout_follows_writes, routes_follow_writes, table_answers_routes,
};
use super::*;

/// The default four root ports (rp1-rp4 at 00:02.0-00:02.3, ports 0-3); pxb1 at 00:05.0 with
/// bus 0x80 (expander 0) holding rp9 at 80:00.0 (port 4, a switch up1 -> dp1 below it, ports 6
/// and 7, a function n1 below dp1) and rp10 at 80:01.0 (port 5, n2 in its slot) and rp11 at
/// 80:02.0 (port 8, empty); pxb2 at 00:06.0 with bus 0x40 and nothing on it (expander 1).
const EXPANDERS: [&str; 10] = [
    "pxb-pcie,id=pxb1,bus_nr=0x80,addr=5,numa_node=1,bus=pcie.0",
    "pcie-root-port,id=rp9,bus=pxb1,chassis=9,slot=9,addr=0",
    "ioh3420,id=rp10,bus=pxb1,chassis=10,slot=10,addr=1",
    "x3130-upstream,id=up1,bus=rp9",
    "xio3130-downstream,id=dp1,bus=up1,chassis=11,slot=1",
    "e1000,id=n1,bus=dp1,owner=qemu",
    "e1000,id=n2,bus=rp10,owner=qemu",
    "pcie-root-port,id=rp11,bus=pxb1,chassis=12,slot=12,addr=2",
    "pxb-pcie,id=pxb2,bus_nr=64,addr=6",
    "pcie-root-port,id=rp12,chassis=13,slot=13,addr=7",
];
const PXB1: u8 = 0x28;
const PXB2: u8 = 0x30;
/// Ports: rp1-rp4 0-3, rp9 4, rp10 5, up1 6, dp1 7, rp11 8, rp12 9.
const PORTS: usize = 10;

fn expanders() -> Hierarchy {
    hierarchy(&EXPANDERS)
}

/// Firmware's numbering below pxb1: rp9 81-83 (up1 82-83, dp1 83), rp10 84, rp11 85.
fn number(h: &mut Hierarchy) {
    for (bus, devfn, v) in [
        (0x80, 0x00, 0x83_8180),
        (0x81, 0x00, 0x83_8281),
        (0x82, 0x00, 0x83_8382),
        (0x80, 0x08, 0x84_8480),
        (0x80, 0x10, 0x85_8580),
    ] {
        h.config_write(bus, devfn, 0x18, 4, v).unwrap();
    }
}

fn endpoint(h: &Hierarchy, id: &str) -> u16 {
    h.spec().endpoints.iter().position(|e| e.id == id).unwrap() as u16
}

#[test]
fn the_expanders_root_bus_and_what_is_below_it_are_routed() {
    let mut h = expanders();
    assert_eq!(h.expanders().len(), 2);
    assert_eq!(h.route(0, PXB1), Routed::Local(Slot::Expander(0)));
    assert_eq!(h.route(0, PXB2), Routed::Local(Slot::Expander(1)));
    // The expander's function: Red Hat 1b36:000b, a host bridge, as QEMU 7.2 shows it.
    h.pio_write(0xcf8, 4, cf8(0, PXB1, 0)).unwrap();
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0x000b_1b36));
    assert_eq!(h.config_read(0, PXB1, 0x08, 4), Ok(0x0600_0000));
    assert_eq!(h.config_read(0, PXB1, 0x04, 4), Ok(0x00a0_0000));
    // Its root bus answers from power-on: no bridge register numbers it.
    h.pio_write(0xcf8, 4, cf8(0x80, 0, 0)).unwrap();
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0x000c_1b36), "rp9 at 80:00.0");
    assert_eq!(h.route(0x80, 0x00), Routed::Local(Slot::Port(4)));
    assert_eq!(h.route(0x80, 0x08), Routed::Local(Slot::Port(5)));
    assert_eq!(h.route(0x80, 0x10), Routed::Local(Slot::Port(8)));
    assert_eq!(
        h.route(0x80, 0x18),
        Routed::Absent,
        "a root bus: empty devices absent"
    );
    assert_eq!(
        h.route(0x40, 0x00),
        Routed::Absent,
        "pxb2 has nothing on its bus"
    );
    assert_eq!(h.port_bus(4), 0x80);
    assert_eq!(h.port_bus(9), 0, "rp12 is on pcie.0");
    // Below rp9 nothing before the guest numbers the buses.
    assert_eq!(h.route(0x81, 0x00), Routed::Absent);
    number(&mut h);
    assert_eq!(h.route(0x81, 0x00), Routed::Local(Slot::Port(6)));
    assert_eq!(h.route(0x82, 0x00), Routed::Local(Slot::Port(7)));
    assert_eq!(h.route(0x83, 0x00), Routed::Remote(endpoint(&h, "n1")));
    assert_eq!(h.route(0x84, 0x00), Routed::Remote(endpoint(&h, "n2")));
    assert_eq!(
        h.route(0x84, 0x08),
        Routed::Absent,
        "device 0 only below a port"
    );
    assert_eq!(h.config_read(0x83, 0, 0, 4), Err(Status::Remote));
    // ECAM reaches the same functions.
    enable_ecam(&mut h, 0xb000_0000);
    let ecam = |bus: u64, devfn: u64| 0xb000_0000 + (bus << 20 | devfn << 12);
    assert_eq!(h.mmio_read(ecam(0x81, 0), 4), Ok(0x8232_104c), "up1");
    assert_eq!(h.mmio_read(ecam(0, u64::from(PXB2)), 4), Ok(0x000b_1b36));
    assert_eq!(h.mmio_read(ecam(0x80, 0x08) + 0x18, 4), Ok(0x84_8480));
    // A root port on pcie.0 claiming the expander's bus (a guest bug) wins, as it is a
    // sibling QEMU meets first; numbered back, the expander's bus is reached again.
    h.config_write(0, 0x38, 0x18, 4, 0x80_8000).unwrap();
    assert_eq!(
        h.route(0x80, 0x00),
        Routed::Absent,
        "rp12's empty secondary bus"
    );
    h.config_write(0, 0x38, 0x18, 4, 0).unwrap();
    assert_eq!(h.route(0x80, 0x00), Routed::Local(Slot::Port(4)));
    // A Secondary Bus Reset of rp9 resets the switch below it (its bus numbers with it). While
    // it is held even rp9's secondary bus is out of reach: QEMU looks into an expander's bus
    // only through a bridge on it that is not in reset (a root port on pcie.0 keeps its
    // secondary bus, see the switch tests).
    h.config_write(0x81, 0, 0x18, 4, 0x83_8281).unwrap();
    h.config_write(0x80, 0, 0x3e, 2, 0x40).unwrap();
    assert_eq!(h.route(0x81, 0x00), Routed::Absent);
    assert_eq!(
        h.route(0x80, 0x08),
        Routed::Local(Slot::Port(5)),
        "rp10 unaffected"
    );
    h.config_write(0x80, 0, 0x3e, 2, 0).unwrap();
    assert_eq!(h.route(0x81, 0x00), Routed::Local(Slot::Port(6)));
    assert_eq!(h.ports()[6].secondary_bus(), 0);
    assert_eq!(h.route(0x83, 0x00), Routed::Absent);
    // A platform reset: the expanders keep their buses, the ports lose their numbers.
    h.config_write(0, PXB1, 0x04, 2, 0x0507).unwrap();
    h.reset();
    assert_eq!(h.config_read(0, PXB1, 0x04, 4), Ok(0x00a0_0000));
    assert_eq!(h.route(0x80, 0x08), Routed::Local(Slot::Port(5)));
    assert_eq!(h.route(0x84, 0x00), Routed::Absent);
}

#[test]
fn snapshot_images_and_routes_agree_with_guest_reads() {
    let mut h = expanders();
    number(&mut h);
    assert_eq!(h.snapshot_functions(), 1 + PORTS + 2);
    let routes = h.snapshot_routes();
    table_answers_routes(&h, &routes).unwrap();
    images_answer_reads(&h, &routes);
}

#[test]
fn the_topology_record_query_pci_and_tree_show_the_expanders() {
    let mut h = expanders();
    number(&mut h);
    let t = h.describe();
    // MCH, 10 ports, 2 expanders, 2 endpoints.
    assert_eq!(t.functions.len(), 1 + PORTS + 2 + 2);
    let pxb1 = &t.functions[1 + PORTS];
    assert_eq!(pxb1.kind, FunctionKind::HostBridge as u8);
    assert_eq!((pxb1.bus, pxb1.devfn, pxb1.parent), (0, PXB1, NO_PARENT));
    assert_eq!((pxb1.vendor_id, pxb1.device_id), (0x1b36, 0x000b));
    assert_eq!((pxb1.secondary_bus, pxb1.subordinate_bus), (0x80, 0x85));
    let pxb2 = &t.functions[2 + PORTS];
    assert_eq!((pxb2.secondary_bus, pxb2.subordinate_bus), (0x40, 0x40));
    let rp10 = &t.functions[1 + 5];
    assert_eq!((rp10.bus, rp10.devfn, rp10.parent), (0x80, 0x08, NO_PARENT));
    assert_ne!(rp10.flags & pcierc_protocol::function_flags::PRESENT, 0);
    let n2 = &t.functions[3 + PORTS + usize::from(endpoint(&h, "n2"))];
    assert_eq!((n2.bus, n2.parent), (0x84, 6));
    // The delta after a renumbering below pxb1 updates the expander's bus range.
    let _ = h.layout_delta();
    h.config_write(0x80, 0x10, 0x18, 4, 0x86_8580).unwrap();
    let d = h.layout_delta();
    let updated: Vec<u32> = d.updates.iter().map(|u| u.index).collect();
    assert!(updated.contains(&(1 + PORTS as u32)), "{updated:?}");
    // query-pci: the expanders' root buses first, newest first, then pcie.0 (QEMU 7.2).
    let q = crate::control::query_pci::from_hierarchy(&h);
    let buses: Vec<u8> = q.iter().map(|b| b.bus).collect();
    assert_eq!(buses, [0x40, 0x80, 0]);
    let on_80: Vec<(u8, u8)> = q[1].devices.iter().map(|d| (d.bus, d.slot)).collect();
    assert_eq!(on_80, [(0x80, 0), (0x80, 1), (0x80, 2)]);
    let pxb = q[2].devices.iter().find(|d| d.slot == 5).unwrap();
    assert_eq!(pxb.qdev_id, "pxb1");
    assert_eq!(pxb.class_info.desc, Some("Host bridge"));
    // The banner.
    let tree = h.tree();
    for line in [
        "pxb1",
        "[1b36:000b] pxb-pcie root bus 80 numa_node 1",
        "80:00.0 rp9",
        "pxb2",
    ] {
        assert!(tree.contains(line), "{line}: {tree}");
    }
}

#[test]
fn hot_plug_below_an_expanders_root_port() {
    let mut h = expanders();
    number(&mut h);
    h.take_events();
    let e = EndpointSpec {
        id: "n3".into(),
        driver: "e1000".into(),
        bus: "rp11".into(),
        addr: DevFn(0),
        owner: "qemu".into(),
        multifunction: false,
    };
    // The guest enables presence-detect interrupts (INTx: no MSI-X) and powers the empty
    // slot of rp11 at 80:02.0, as the hot-plug tests on pcie.0 do.
    h.config_write(0x80, 0x10, 0x6c, 2, 0x0028).unwrap();
    h.take_events();
    h.hot_add(e).unwrap();
    let events = h.take_events();
    assert!(
        events.contains(&HierarchyEvent::Interrupt {
            bus: 0x80,
            devfn: 0x10,
            interrupt: crate::pci::Interrupt::Intx { asserted: true },
        }),
        "the interrupt names the expander's bus: {events:?}"
    );
    assert_eq!(h.route(0x85, 0), Routed::Remote(endpoint(&h, "n3")));
    h.request_removal("n3").unwrap();
}

#[test]
fn expander_state_round_trips_by_id() {
    let mut h = expanders();
    number(&mut h);
    h.config_write(0, PXB1, 0x3c, 1, 0x0b).unwrap();
    let saved = h.save_functions();
    let ids: Vec<_> = saved.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "mch", "rp1", "rp2", "rp3", "rp4", "rp9", "rp10", "up1", "dp1", "rp11", "rp12", "pxb1",
            "pxb2"
        ]
    );
    let mut since = SavedModels::default();
    assert_eq!(h.save_changed_functions(&mut since, 8).len(), ids.len());
    h.config_write(0, PXB2, 0x0c, 1, 0x10).unwrap();
    let changed: Vec<usize> = h
        .save_changed_functions(&mut since, 8)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(changed, [ids.len() - 1]);
    let mut g = expanders();
    g.restore_functions(0, &saved, h.spec().endpoints.clone(), 1)
        .unwrap();
    assert_eq!(g.config_read(0, PXB1, 0x3c, 1), Ok(0x0b));
    assert_eq!(g.route(0x83, 0), h.route(0x83, 0));
    let short: Vec<_> = saved[..saved.len() - 1].to_vec();
    assert!(g
        .restore_functions(0, &short, h.spec().endpoints.clone(), 1)
        .is_err());
}

#[test]
fn the_topology_refuses_what_qemu_refuses() {
    use crate::topology::TopologyError as E;
    let refused = |extra: &str| {
        let mut spec = TopologySpec::embedded_default().unwrap();
        for d in EXPANDERS {
            spec.add_device_option(d).unwrap();
        }
        spec.add_device_option(extra).unwrap_err()
    };
    let e = refused("pxb-pcie,id=pxb3,bus_nr=128,addr=8");
    assert!(
        matches!(&e, E::ExpanderBusInUse { id, bus_nr: 0x80, other } if id == "pxb3" && other == "pxb1"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "pxb3: Bus 128 is already in use (by pxb1)");
    let e = refused("e1000,id=n9,bus=pxb1,addr=3");
    assert_eq!(
        e.to_string(),
        "n9: PCI: Only PCI/PCIe bridges can be plugged into pxb-pcie"
    );
    let e = refused("pxb-pcie,id=pxb3,bus_nr=9,bus=rp1,addr=3");
    assert_eq!(
        e.to_string(),
        "pxb3: PXB devices can be attached only to root bus"
    );
    let e = refused("pxb-pcie,id=pxb3,bus_nr=9,bus=pxb1,addr=3");
    assert!(matches!(e, E::OnlyBridgesOnExpander { .. }), "{e:?}");
    let e = refused("pxb-pcie,id=pxb3,bus_nr=9,addr=5");
    assert!(matches!(e, E::PortAddressInUse { .. }), "{e:?}");
    let e = refused("pxb-pcie,id=pxb3,bus_nr=9");
    assert!(
        matches!(
            e,
            E::MissingProperty {
                property: "addr",
                ..
            }
        ),
        "{e:?}"
    );
    let e = refused("pxb-pcie,id=pxb3,bus_nr=9,addr=8,chassis=1");
    assert!(
        matches!(&e, E::UnknownProperty { key, driver, .. } if key == "chassis" && driver == "pxb-pcie"),
        "{e:?}"
    );
    let e = refused("pcie-root-port,id=rp13,bus=pxb1,chassis=20,slot=20,addr=0");
    assert!(matches!(e, E::PortAddressInUse { .. }), "{e:?}");
    let e = refused("xio3130-downstream,id=dp9,bus=pxb1,chassis=21,slot=1");
    assert!(matches!(e, E::Placement { .. }), "{e:?}");
    let e = refused("pcie-pci-bridge,id=br9,bus=pxb1");
    assert!(matches!(e, E::Placement { .. }), "{e:?}");
    let e = refused("pcie-root-port,id=rp13,bus=pxb9,chassis=20,slot=20,addr=0");
    assert!(matches!(e, E::PortBus { .. }), "{e:?}");
    let mut spec = TopologySpec::embedded_default().unwrap();
    let e = spec.add_device_option("pxb-pcie,id=p,addr=9").unwrap_err();
    assert!(e.to_string().contains("bus_nr=0"), "{e}");
    // The topology file: [[expander]] tables, root ports naming them.
    let f = TopologySpec::from_toml(
        "[[expander]]\nid='pxb1'\naddr='5'\nbus_nr=0x80\nnuma_node=0\n\
         [[root-port]]\nid='rp9'\nbus='pxb1'\naddr='0'\nchassis=9\n",
    )
    .unwrap();
    assert_eq!(f.expanders[0].config.bus_nr, 0x80);
    assert_eq!(f.expanders[0].config.numa_node(), Some(0));
    assert_eq!(f.port("rp9").map(|p| p.bus.as_str()), Some("pxb1"));
    let e = TopologySpec::from_toml("[[expander]]\nid='x'\naddr='5'\nbus_nr=1\ncolour=1\n")
        .unwrap_err();
    assert!(
        matches!(&e, E::UnknownProperty { key, .. } if key == "colour"),
        "{e:?}"
    );
    let e = TopologySpec::from_toml("[[device]]\nid='x'\ndriver='pxb-pcie'\nbus='pcie.0'\n")
        .unwrap_err();
    assert!(matches!(e, E::ExpanderAsDevice { .. }), "{e:?}");
}

/// A write to a port below pxb1 (rp9, up1, dp1, rp10) or to rp12 on pcie.0, addressed where
/// the port sits now.
#[derive(Clone, Debug)]
enum Write {
    /// Secondary and subordinate bus numbers (PCI-to-PCI Bridge 1.2 §3.2.5.3).
    Buses { f: usize, sec: u8, sub: u8 },
    /// Bridge Control Secondary Bus Reset (§3.2.5.18).
    Reset { f: usize, on: bool },
}

fn write() -> impl Strategy<Value = Write> {
    let bus = prop_oneof![Just(0u8), 0x3e..0x44u8, 0x7e..0x88u8];
    prop_oneof![
        (0..5usize, bus.clone(), bus).prop_map(|(f, sec, sub)| Write::Buses { f, sec, sub }),
        (0..5usize, any::<bool>()).prop_map(|(f, on)| Write::Reset { f, on }),
    ]
}

fn apply(h: &mut Hierarchy, w: &Write) {
    let port = |f: usize| [4usize, 6, 7, 5, 9][f];
    let at = |h: &Hierarchy, f: usize| {
        let i = port(f);
        (h.port_bus(i), h.spec().root_ports[i].addr.0)
    };
    let (f, reg, v) = match *w {
        Write::Buses { f, sec, sub } => (f, 0x18, u32::from(sec) << 8 | u32::from(sub) << 16),
        Write::Reset { f, on } => (f, 0x3e, if on { 0x40 } else { 0 }),
    };
    let (bus, devfn) = at(h, f);
    let width = if reg == 0x18 { 4 } else { 2 };
    let v = v | if reg == 0x18 { u32::from(bus) } else { 0 };
    // A port the guest's numbering made unreachable (or shadowed by another emulator's
    // function) does not take the write: that is part of what is tested.
    let r = h.config_write(bus, devfn, reg, width, v);
    assert!(matches!(r, Ok(_) | Err(Status::Remote)), "{w:?}: {r:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn incremental_routing_equals_a_full_recomputation_with_expanders(
        writes in proptest::collection::vec(write(), 1..30)
    ) {
        routes_follow_writes(expanders(), number, &writes, apply)?;
    }

    /// Every delta applied to the topology before it gives `describe()`.
    #[test]
    fn layout_deltas_equal_a_full_description_with_expanders(
        writes in proptest::collection::vec(write(), 1..30)
    ) {
        layout_follows_writes(expanders(), number, &writes, apply)?;
    }
}
