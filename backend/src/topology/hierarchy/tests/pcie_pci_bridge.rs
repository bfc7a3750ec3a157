//! `pcie-pci-bridge`s in the hierarchy: one filling a root port's slot (the functions below it
//! at devices 1-31 of its conventional bus) and one on the root bus; routing, the SHPC BAR,
//! the snapshot, the topology record and its deltas, resets and saved state.

use pcierc_protocol::{FunctionKind, ResetReason, NO_PARENT};
use proptest::prelude::*;

use super::follow::{
    images_answer_reads, layout_follows_writes, routes_follow_writes, table_answers_routes,
};
use super::*;

/// The default four root ports (rp1-rp4 at 00:02.0-00:02.3, ports 0-3); br1 in rp1's slot
/// (bridge 0) with two functions other emulators serve below it, br0 on the root bus at
/// 00:05.0 (bridge 1) with one.
const BRIDGES: [&str; 5] = [
    "pcie-pci-bridge,id=br1,bus=rp1",
    "e1000,id=n1,bus=br1,addr=1,owner=qemu",
    "e1000,id=n2,bus=br1,addr=2.0,owner=qemu",
    "pcie-pci-bridge,id=br0,addr=5",
    "e1000,id=n3,bus=br0,addr=3,owner=qemu",
];
const RP1: u8 = 0x10;
const BR0: u8 = 0x28;

fn bridges() -> Hierarchy {
    hierarchy(&BRIDGES)
}

/// Firmware's numbering: rp1 1-2, br1 (at 01:00.0) 2, br0 3.
fn number(h: &mut Hierarchy) {
    for (bus, devfn, v) in [(0, RP1, 0x02_0100), (1, 0, 0x02_0201), (0, BR0, 0x03_0300)] {
        h.config_write(bus, devfn, 0x18, 4, v).unwrap();
    }
}

fn resets(h: &mut Hierarchy) -> Vec<(String, ResetReason)> {
    h.take_events()
        .into_iter()
        .filter_map(|e| match e {
            HierarchyEvent::FunctionReset { endpoint, reason } => Some((endpoint.id, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn bridges_and_the_functions_below_them_are_routed() {
    let mut h = bridges();
    assert_eq!(h.bridges().len(), 2);
    // The start-up banner shows both, with the functions below them.
    let tree = h.tree();
    for line in ["br1", "br0", "n1", "n3", "[1b36:000e] pcie-pci-bridge"] {
        assert!(tree.contains(line), "{line}: {tree}");
    }
    assert_eq!(h.route(0, BR0), Routed::Local(Slot::Bridge(1)));
    // br1 is reachable once rp1 has a secondary bus; its slot is occupied (rp1 powers it).
    assert_eq!(h.route(1, 0), Routed::Absent);
    number(&mut h);
    assert_eq!(h.route(1, 0), Routed::Local(Slot::Bridge(0)));
    // The identity QEMU's pcie-pci-bridge has: Red Hat 1b36:000e, a PCI-to-PCI bridge.
    assert_eq!(h.config_read(1, 0, 0, 4), Ok(0x000e_1b36));
    assert_eq!(h.config_read(1, 0, 0x0a, 2), Ok(0x0604));
    assert_eq!(h.config_read(1, 0, 0x18, 4), Ok(0x02_0201));
    // Only device 0 on rp1's secondary bus (PCIe Base 6.0 §7.3.1).
    assert_eq!(h.route(1, 8), Routed::Absent);
    // Below br1: Type 0 to devices 1-31, device 0 absent; nothing past the secondary bus.
    let n1 = h
        .spec()
        .endpoints
        .iter()
        .position(|e| e.id == "n1")
        .unwrap() as u16;
    let n2 = h
        .spec()
        .endpoints
        .iter()
        .position(|e| e.id == "n2")
        .unwrap() as u16;
    let n3 = h
        .spec()
        .endpoints
        .iter()
        .position(|e| e.id == "n3")
        .unwrap() as u16;
    assert_eq!(h.route(2, 0x08), Routed::Remote(n1));
    assert_eq!(h.route(2, 0x10), Routed::Remote(n2));
    assert_eq!(h.route(2, 0x00), Routed::Absent);
    assert_eq!(h.route(2, 0x18), Routed::Absent);
    assert_eq!(h.route(3, 0x18), Routed::Remote(n3));
    assert_eq!(h.config_read(2, 0x08, 0, 4), Err(Status::Remote));
    assert_eq!(h.config_read(2, 0, 0, 4), Ok(0xffff_ffff));
    // A subordinate range past the secondary bus: the buses beyond read as absent.
    h.config_write(1, 0, 0x18, 4, 0x05_0201).unwrap();
    h.config_write(0, RP1, 0x18, 4, 0x05_0100).unwrap();
    assert_eq!(h.route(4, 0x08), Routed::Absent);
    assert_eq!(h.route(2, 0x08), Routed::Remote(n1));
    // rp1's slot powered off: the bridge (a card in it) does not answer.
    h.config_write(0, RP1, 0x6c, 2, 0x05c0).unwrap();
    assert_eq!(h.route(1, 0), Routed::Absent);
}

#[test]
fn the_shpc_bar_is_in_the_bar_map() {
    let mut h = bridges();
    number(&mut h);
    // BAR0 (64-bit memory) at 0xfe800000, memory decoding on.
    h.config_write(1, 0, 0x10, 4, 0xfe80_0000).unwrap();
    h.config_write(1, 0, 0x14, 4, 0).unwrap();
    let fx = h.config_write(1, 0, 0x04, 2, 0x0002).unwrap();
    assert!(fx.contains(Effects::BARS), "{fx:?}");
    let mut model = h.bridges()[0].clone();
    for off in [0u64, 4, 8, 0x10] {
        assert_eq!(
            h.mmio_read(0xfe80_0000 + off, 4),
            Ok(model.bar_read(0, off, 4)),
            "SHPC register {off:#x}"
        );
    }
    assert_eq!(h.mmio_read(0xfe80_0100, 4), Err(Status::NoDevice));
    // Memory decoding off: gone from the map.
    h.config_write(1, 0, 0x04, 2, 0).unwrap();
    assert_eq!(h.mmio_read(0xfe80_0000, 4), Err(Status::NoDevice));
}

#[test]
fn snapshot_images_and_routes_agree_with_guest_reads() {
    let mut h = bridges();
    number(&mut h);
    assert_eq!(h.snapshot_functions(), 1 + 4 + 2);
    let routes = h.snapshot_routes();
    table_answers_routes(&h, &routes).unwrap();
    images_answer_reads(&h, &routes);
}

#[test]
fn the_topology_record_places_the_bridges() {
    let mut h = bridges();
    number(&mut h);
    let t = h.describe();
    // MCH, 4 root ports, 2 bridges, 3 endpoints.
    assert_eq!(t.functions.len(), 1 + 4 + 2 + 3);
    let br1 = &t.functions[5];
    assert_eq!(br1.kind, FunctionKind::RootPort as u8);
    assert_eq!((br1.bus, br1.devfn, br1.parent), (1, 0, 1));
    assert_eq!((br1.secondary_bus, br1.subordinate_bus), (2, 2));
    assert_ne!(br1.flags & pcierc_protocol::function_flags::PRESENT, 0);
    let br0 = &t.functions[6];
    assert_eq!((br0.bus, br0.devfn, br0.parent), (0, BR0, NO_PARENT));
    for (k, e) in h.spec().endpoints.iter().enumerate() {
        let r = &t.functions[7 + k];
        let (bus, parent) = if e.bus == "br1" { (2, 5) } else { (3, 6) };
        assert_eq!(
            (r.bus, r.devfn, r.parent),
            (bus, e.addr.0, parent),
            "{}",
            e.id
        );
        assert_ne!(r.flags & pcierc_protocol::function_flags::PRESENT, 0);
    }
}

#[test]
fn resets_reach_the_bridge_and_the_functions_below_it() {
    let mut h = bridges();
    number(&mut h);
    h.take_events();
    // Secondary Bus Reset of the bridge: the functions below it are reset.
    let fx = h.config_write(1, 0, 0x3e, 2, 0x0040).unwrap();
    assert!(fx.contains(Effects::SECONDARY_BUS_RESET));
    let mut got = resets(&mut h);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("n1".to_string(), ResetReason::SecondaryBusReset),
            ("n2".to_string(), ResetReason::SecondaryBusReset)
        ]
    );
    // Held: its secondary bus still takes Type 0 cycles.
    assert_eq!(h.route(2, 0x08), h.locate(2, 0x08));
    assert!(matches!(h.route(2, 0x08), Routed::Remote(_)));
    h.config_write(1, 0, 0x3e, 2, 0).unwrap();
    h.take_events();
    // Secondary Bus Reset of rp1: the bridge is reset (its bus numbers with it) and so are
    // the functions below it.
    h.config_write(0, RP1, 0x3e, 2, 0x0040).unwrap();
    let mut got = resets(&mut h);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("n1".to_string(), ResetReason::SecondaryBusReset),
            ("n2".to_string(), ResetReason::SecondaryBusReset)
        ]
    );
    assert_eq!(h.bridges()[0].secondary_bus(), 0);
    assert_eq!(h.route(2, 0x08), Routed::Absent);
    h.config_write(0, RP1, 0x3e, 2, 0).unwrap();
    // A platform reset: both bridges to power-on state, every function reset.
    number(&mut h);
    h.take_events();
    h.reset();
    assert_eq!(resets(&mut h).len(), 3);
    assert_eq!(h.bridges()[1].secondary_bus(), 0);
    assert_eq!(h.config_read(0, BR0, 0x18, 4), Ok(0));
}

#[test]
fn bridge_state_round_trips_by_id() {
    let mut h = bridges();
    number(&mut h);
    h.config_write(0, BR0, 0x10, 4, 0xfe90_0000).unwrap();
    let saved = h.save_functions();
    let ids: Vec<_> = saved.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["mch", "rp1", "rp2", "rp3", "rp4", "br1", "br0"]);
    let mut since = SavedModels::default();
    let changed: Vec<usize> = h
        .save_changed_functions(&mut since, 8)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(changed, (0..7).collect::<Vec<_>>());
    h.config_write(1, 0, 0x3c, 1, 0x0b).unwrap();
    let changed: Vec<usize> = h
        .save_changed_functions(&mut since, 8)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(changed, [5]);
    let mut g = bridges();
    g.restore_functions(0, &saved, h.spec().endpoints.clone(), 1)
        .unwrap();
    assert_eq!(g.route(2, 0x08), h.route(2, 0x08));
    assert_eq!(
        g.config_read(0, BR0, 0x10, 4),
        Ok(0xfe90_0004),
        "64-bit memory BAR"
    );
    assert_eq!(g.config_read(1, 0, 0x18, 4), Ok(0x02_0201));
    // A state without the bridges is refused.
    let short: Vec<_> = saved[..5].to_vec();
    assert!(g
        .restore_functions(0, &short, h.spec().endpoints.clone(), 1)
        .is_err());
}

/// A write to rp1 or to one of the bridges, addressed where it sits now.
#[derive(Clone, Debug)]
enum Write {
    /// Secondary and subordinate bus numbers (PCI-to-PCI Bridge 1.2 §3.2.5.3).
    Buses { f: usize, sec: u8, sub: u8 },
    /// Bridge Control Secondary Bus Reset (§3.2.5.18).
    Reset { f: usize, on: bool },
    /// rp1's Slot Control Power Controller Control (PCIe Base 6.0 §7.5.3.10).
    SlotPower { on: bool },
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (0..3usize, 0..6u8, 0..6u8).prop_map(|(f, sec, sub)| Write::Buses { f, sec, sub }),
        (0..3usize, any::<bool>()).prop_map(|(f, on)| Write::Reset { f, on }),
        any::<bool>().prop_map(|on| Write::SlotPower { on }),
    ]
}

/// Function 0 is rp1, 1 br1, 2 br0.
fn apply(h: &mut Hierarchy, w: &Write) {
    let at = |h: &Hierarchy, f: usize| match f {
        0 => (0, RP1),
        1 => (h.bridge_bus(0), 0),
        _ => (0, BR0),
    };
    let r = match *w {
        Write::Buses { f, sec, sub } => {
            let (bus, devfn) = at(h, f);
            let v = u32::from(sec) << 8 | u32::from(sub) << 16 | u32::from(bus);
            h.config_write(bus, devfn, 0x18, 4, v)
        }
        Write::Reset { f, on } => {
            let (bus, devfn) = at(h, f);
            h.config_write(bus, devfn, 0x3e, 2, if on { 0x40 } else { 0 })
        }
        Write::SlotPower { on } => {
            h.config_write(0, RP1, 0x6c, 2, if on { 0x01c0 } else { 0x05c0 })
        }
    };
    assert!(r.is_ok(), "{w:?}: {r:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_routing_equals_a_full_recomputation_with_bridges(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        routes_follow_writes(bridges(), number, &writes, apply)?;
    }

    /// Every delta applied to the topology before it gives `describe()`.
    #[test]
    fn layout_deltas_equal_a_full_description_with_bridges(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        layout_follows_writes(bridges(), number, &writes, apply)?;
    }
}

#[test]
fn declared_functions_are_cold_plugged_and_leave_when_the_guest_disables_their_slot() {
    let mut h = bridges();
    // Present from power-on in the SHPC's slots (QEMU's cold plug), and after a reset.
    for (j, device) in [(0, 1), (0, 2), (1, 3)] {
        assert!(
            h.bridges()[j].slot_occupied(device),
            "bridge {j} device {device}"
        );
    }
    assert!(!h.bridges()[0].slot_occupied(3));
    h.reset();
    assert!(h.bridges()[0].slot_occupied(1));
    number(&mut h);
    h.config_write(1, 0, 0x10, 4, 0xfe80_0000).unwrap();
    h.config_write(1, 0, 0x04, 2, 0x0002).unwrap();
    h.take_events();
    h.layout_delta();
    let mut held = h.describe();
    let generation = h.generation();
    // SHPC command 0x0f to device 1: power indicator off, slot disabled; QEMU unplugs n1.
    h.mmio_write(0xfe80_0014, 2, 0x010f).unwrap();
    let removed: Vec<String> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            HierarchyEvent::FunctionRemoved { endpoint, surprise } => {
                assert!(!surprise);
                Some(endpoint.id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["n1"]);
    assert!(h.generation() > generation);
    assert_eq!(h.route(2, 0x08), Routed::Absent);
    assert!(matches!(h.route(2, 0x10), Routed::Remote(_)));
    assert!(!h.bridges()[0].slot_occupied(1));
    let d = h.layout_delta();
    assert!(d.apply(&mut held).is_ok(), "{d:?}");
    assert_eq!(held, h.describe());
    assert_eq!(held.functions.len(), 1 + 4 + 2 + 2);
}

#[test]
fn the_bridges_msi_is_found_by_address() {
    let mut h = bridges();
    // MSI at 0x8c: address 0xfee01000, data 0x4041, enabled.
    h.config_write(0, BR0, 0x90, 4, 0xfee0_1000).unwrap();
    h.config_write(0, BR0, 0x94, 4, 0).unwrap();
    h.config_write(0, BR0, 0x98, 2, 0x4041).unwrap();
    h.config_write(0, BR0, 0x8e, 2, 0x0001).unwrap();
    assert_eq!(
        h.msi_route(0, BR0, 0),
        h.bridges()[1].msi_route(),
        "the model's own answer"
    );
    assert!(h.msi_route(0, BR0, 0).is_some());
    assert_eq!(h.msi_route(0, BR0, 1), None);
}

fn e1000(id: &str, bus: &str, addr: u8) -> EndpointSpec {
    EndpointSpec {
        id: id.into(),
        driver: "e1000".into(),
        bus: bus.into(),
        addr: DevFn(addr),
        owner: "vmm".into(),
        multifunction: false,
    }
}

fn added_and_removed(h: &mut Hierarchy) -> (Vec<String>, Vec<(String, bool)>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for e in h.take_events() {
        match e {
            HierarchyEvent::FunctionAdded { endpoint } => added.push(endpoint.id),
            HierarchyEvent::FunctionRemoved { endpoint, surprise } => {
                removed.push((endpoint.id, surprise))
            }
            _ => {}
        }
    }
    (added, removed)
}

/// SHPC Logical Slot Register of device `d` through the BAR at 0xfe800000.
fn slot_reg(h: &mut Hierarchy, d: u64) -> u32 {
    h.mmio_read(0xfe80_0024 + 4 * (d - 1), 4).unwrap() as u32
}

#[test]
fn functions_are_hot_plugged_below_a_bridge_through_its_shpc() {
    let mut h = bridges();
    number(&mut h);
    h.config_write(1, 0, 0x10, 4, 0xfe80_0000).unwrap();
    h.config_write(1, 0, 0x04, 2, 0x0002).unwrap();
    // The guest unmasks the controller and device 5's events; MSI off, so INTx.
    h.mmio_write(0xfe80_0020, 4, 0).unwrap();
    h.mmio_write(0xfe80_0024 + 4 * 4 + 3, 1, 0).unwrap();
    h.take_events();
    let generation = h.generation();
    // Device 0 has no SHPC slot; an address in use is refused by QEMU's PCI core first.
    let e = h.hot_add(e1000("h0", "br1", 0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );
    let e = h.hot_add(e1000("h1", "br1", 0x08)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PCI: slot 1 function 0 not available for e1000, in use by e1000,id=n1"
    );
    let e = h.hot_add(e1000("h5", "br1", 0x29)).unwrap_err();
    assert!(matches!(e, HotplugError::FunctionZeroFirst { .. }), "{e}");
    assert_eq!(
        h.hot_add(e1000("n1", "br1", 0x28)),
        Err(HotplugError::Duplicate("n1".into()))
    );
    assert_eq!(h.generation(), generation, "nothing changed");
    assert!(h.take_events().is_empty());

    // Device 5: MRL closed, a card present, button/MRL/presence latched, INTx asserted.
    let fx = h.hot_add(e1000("h5", "br1", 0x28)).unwrap();
    assert!(fx.contains(Effects::INTERRUPT), "{fx:?}");
    assert_eq!(
        slot_reg(&mut h, 5),
        0x000d_000f,
        "disabled, LED off, MRL closed, 7.5 W"
    );
    let events = h.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            HierarchyEvent::Interrupt {
                bus: 1,
                devfn: 0,
                interrupt: Interrupt::Intx { asserted: true }
            }
        )),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, HierarchyEvent::FunctionAdded { endpoint } if endpoint.id == "h5")));
    assert!(h.generation() > generation);
    assert!(matches!(h.route(2, 0x28), Routed::Remote(_)));
    assert!(h
        .endpoint_at(2, 0x28)
        .is_some_and(|e| e.id == "h5" && e.owner == "vmm"));

    // device_del of a slot still disabled with its indicator off: gone at once (MRL open).
    h.mmio_write(0xfe80_0026 + 16, 1, 0x1f).unwrap();
    h.request_removal("h5").unwrap();
    assert_eq!(added_and_removed(&mut h).1, [("h5".to_string(), false)]);
    assert_eq!(h.route(2, 0x28), Routed::Absent);
    assert!(!h.bridges()[0].slot_occupied(5));

    // Again, and the guest enables the slot: device_del presses the button; the card goes when
    // the guest disables the slot with its power indicator off.
    h.hot_add(e1000("h5", "br1", 0x28)).unwrap();
    h.mmio_write(0xfe80_0014, 2, 0x0506).unwrap();
    assert_eq!(
        slot_reg(&mut h, 5) & 0xf,
        0x6,
        "enabled, power indicator on"
    );
    h.take_events();
    h.request_removal("h5").unwrap();
    assert!(h.endpoint("h5").is_some(), "pending the guest");
    assert_ne!(
        slot_reg(&mut h, 5) & 0x04_0000,
        0,
        "Attention Button Pressed latched"
    );
    h.request_removal("h5").unwrap();
    h.mmio_write(0xfe80_0014, 2, 0x050f).unwrap();
    assert_eq!(added_and_removed(&mut h).1, [("h5".to_string(), false)]);

    // Surprise removal of a cold-plugged card: MRL open, empty; the slot refuses it twice.
    h.surprise_remove("n2").unwrap();
    assert_eq!(added_and_removed(&mut h).1, [("n2".to_string(), true)]);
    assert_eq!(slot_reg(&mut h, 2) & 0xd00, 0xd00, "MRL open, empty");
    assert_eq!(h.route(2, 0x10), Routed::Absent);
    assert_eq!(
        h.surprise_remove("n2"),
        Err(HotplugError::UnknownId("n2".into()))
    );
}

/// The ECAM pages a frontend maps from the snapshot (`snapshot::pages`): on a bridge's
/// conventional secondary bus every absent device traps (an SHPC slot may get a card by
/// hot-plug before the frontend hears of it), not device 0 only as below a PCI Express port;
/// a function hot-added at device 9 is then another emulator's (trapped) too.
#[test]
fn mapped_ecam_pages_trap_every_absent_device_below_a_bridge() {
    use pcierc_protocol::snapshot::pages::EcamPage;
    use pcierc_protocol::snapshot::{SnapshotReader, SnapshotWriter};

    let mut h = bridges();
    number(&mut h);
    // ECAM at 0xb0000000, 256 buses (PCIEXBAR at 0x60, enable bit 0).
    h.config_write(0, 0, 0x60, 4, 0xb000_0001).unwrap();
    let n = h.snapshot_functions();
    let (r, file) = SnapshotReader::create(n).unwrap();
    let w = SnapshotWriter::new(file, n).unwrap();
    let write = |h: &Hierarchy| {
        w.begin();
        for i in 0..n {
            w.set_image(i, &h.snapshot_image(i));
        }
        w.set_routes(&h.snapshot_routes());
        w.set_header(&h.snapshot_header());
        w.end();
    };
    write(&h);
    let page = |r: &SnapshotReader, bus: usize, devfn: usize| {
        r.ecam_layout().expect("a layout").pages[bus << 8 | devfn]
    };
    // rp1's secondary bus 1: br1 at device 0, devices 1-31 absent (all ones).
    assert!(matches!(page(&r, 1, 0), EcamPage::Image(_)));
    assert_eq!(page(&r, 1, 0x08), EcamPage::AllOnes);
    // br1's bus 2 and br0's bus 3: every absent device traps; the functions there are remote.
    for (bus, devfn) in [
        (2, 0),
        (2, 0x18),
        (2, 0x48),
        (2, 0xff),
        (3, 0x08),
        (3, 0x20),
    ] {
        assert_eq!(
            page(&r, bus, devfn),
            EcamPage::Trap,
            "{bus:02x}:{devfn:02x}"
        );
    }
    // Bus 4 is nobody's.
    assert_eq!(page(&r, 4, 0x48), EcamPage::AllOnes);
    h.hot_add(e1000("h9", "br1", 0x48)).unwrap();
    write(&h);
    assert_eq!(page(&r, 2, 0x48), EcamPage::Trap);
    assert!(matches!(h.route(2, 0x48), Routed::Remote(_)));
}

/// A function hot-added below a bridge is in the saved state (the spec's functions and the
/// SHPC's slot) and comes back with it; after a platform reset its slot is enabled with its
/// power indicator on, as QEMU's `shpc_reset()` leaves an occupied slot.
#[test]
fn hot_added_functions_below_a_bridge_survive_a_restore_and_a_reset() {
    let mut h = bridges();
    number(&mut h);
    h.hot_add(e1000("h9", "br1", 0x48)).unwrap();
    let status = h.bridges()[0].slot_status(9);
    let saved = h.save_functions();
    let mut g = bridges();
    assert!(!g.bridges()[0].slot_occupied(9));
    g.restore_functions(0, &saved, h.spec().endpoints.clone(), 1)
        .unwrap();
    assert!(g.bridges()[0].slot_occupied(9));
    assert_eq!(g.bridges()[0].slot_status(9), status);
    assert_eq!(g.route(2, 0x48), h.route(2, 0x48));
    assert!(g.endpoint_at(2, 0x48).is_some_and(|e| e.id == "h9"));
    // The slot was hot-added (disabled, MRL closed); a platform reset enables it.
    assert_eq!(status.map(|s| s & 0x10f), Some(0x00f));
    g.reset();
    assert_eq!(g.bridges()[0].slot_status(9).map(|s| s & 0xf), Some(0x6));
    assert!(g.endpoint("h9").is_some(), "the card stays in its slot");
    // And the removal request then presses the button: the card stays until the guest lets go.
    g.request_removal("h9").unwrap();
    assert!(g.endpoint("h9").is_some());
}

/// Errors a bridge detects itself (QEMU's HMP `pcie_aer_inject_error br1 ...`): its Device
/// Status and AER capability log them (PCIe Base 6.0 §7.5.3.5, §7.8.4), and an unmasked one is
/// received by the root port above with the bridge's requester id (§6.2.6); a bridge on the
/// root bus has no root port above it.
#[test]
fn errors_a_bridge_detects_are_logged_and_reach_the_root_port_above() {
    let mut h = bridges();
    number(&mut h);
    // br1 at 01:00.0 with Command SERR# Enable: a non-fatal Completion Timeout (bit 14).
    h.config_write(1, 0, 0x04, 2, 0x0100).unwrap();
    h.inject_error("br1", ErrorSeverity::NonFatal, 1 << 14)
        .unwrap();
    // Uncorrectable Error Status (AER 0x100 + 0x04), First Error Pointer (0x118).
    assert_eq!(h.config_read(1, 0, 0x104, 4), Ok(1 << 14));
    assert_eq!(h.config_read(1, 0, 0x118, 4).map(|v| v & 0x1f), Ok(14));
    // Device Status (PCI Express capability 0x48 + 0x0a): Non-Fatal Error Detected.
    assert_eq!(h.config_read(1, 0, 0x52, 2), Ok(2));
    // Status Signaled System Error (SERR# Enable set, an uncorrectable error sent).
    assert_ne!(h.config_read(1, 0, 0x06, 2).unwrap() & 1 << 14, 0);
    // rp1's Root Error Status (0x130): ERR_FATAL/NONFATAL Received and Non-Fatal Error
    // Messages Received; Error Source Identification (0x134) bits 31:16 the bridge, 01:00.0.
    assert_eq!(h.config_read(0, RP1, 0x130, 4).map(|v| v & 0x7f), Ok(0x24));
    assert_eq!(h.config_read(0, RP1, 0x134, 4).map(|v| v >> 16), Ok(0x0100));
    // A correctable error masked by default (Advisory Non-Fatal, Correctable Error Mask
    // 0xe000): logged and in Device Status, not sent.
    h.inject_error("br1", ErrorSeverity::Correctable, 1 << 13)
        .unwrap();
    assert_eq!(h.config_read(1, 0, 0x110, 4), Ok(1 << 13));
    assert_eq!(h.config_read(1, 0, 0x52, 2), Ok(3));
    assert_eq!(h.config_read(0, RP1, 0x130, 4).map(|v| v & 1), Ok(0));
    // Unmasked, a correctable error reaches rp1 (Correctable Error Received, source 01:00.0).
    h.inject_error("br1", ErrorSeverity::Correctable, 1)
        .unwrap();
    assert_eq!(h.config_read(0, RP1, 0x130, 4).map(|v| v & 1), Ok(1));
    assert_eq!(
        h.config_read(0, RP1, 0x134, 4).map(|v| v & 0xffff),
        Ok(0x0100)
    );
    // An error with no supported bit is refused.
    assert!(h.inject_error("br1", ErrorSeverity::NonFatal, 1).is_err());
    // br0 on the root bus: Surprise Down (bit 5, fatal by default) is logged only.
    let root = h.config_read(0, RP1, 0x130, 4);
    h.inject_error("br0", ErrorSeverity::Fatal, 1 << 5).unwrap();
    assert_eq!(h.config_read(0, BR0, 0x104, 4), Ok(1 << 5));
    assert_eq!(
        h.config_read(0, BR0, 0x52, 2),
        Ok(4),
        "Fatal Error Detected"
    );
    assert_eq!(h.config_read(0, RP1, 0x130, 4), root);
}
