//! A PCI Express switch in the hierarchy: routing through its ports, renumbering, resets and
//! slot power below a root port or a downstream port, hot-plug and PMEs below a downstream port,
//! and the incremental routing tables against a full recomputation on a tree.

use pcierc_protocol::ResetReason;
use proptest::prelude::*;

use super::follow::{layout_follows_writes, routes_follow_writes};
use super::*;
use crate::pci::caps::slot::{SLTSTA_PDC, SLTSTA_PDS};
use crate::pci::Interrupt;
use crate::topology::{DevFn, TopologyError};

/// The default four root ports (rp1-rp4 at 00:02.0-00:02.3, ports 0-3), a switch behind rp1
/// (up1 = port 4, dp1 = port 5 at device 0, dp2 = port 6 at device 1 of its bus) and a function
/// another emulator serves behind dp1.
const SWITCH: [&str; 4] = [
    "x3130-upstream,id=up1,bus=rp1",
    "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1",
    "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=2",
    "virtio-net-pci,id=n1,bus=dp1,owner=qemu",
];
const RP1: u8 = 0x10;
const UP1: usize = 4;
const DP1: usize = 5;
const DP2: usize = 6;

fn switch() -> Hierarchy {
    hierarchy(&SWITCH)
}

/// Firmware's numbering: rp1 1-4, up1 2-4, dp1 3, dp2 4.
fn number(h: &mut Hierarchy) {
    for (bus, devfn, v) in [
        (0, RP1, 0x04_0100),
        (1, 0, 0x04_0201),
        (2, 0, 0x03_0302),
        (2, 8, 0x04_0402),
    ] {
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
fn switch_ports_are_placed_in_the_tree() {
    let h = switch();
    let ids: Vec<_> = h.spec().root_ports[4..]
        .iter()
        .map(|p| (p.config.id.as_str(), p.bus.as_str(), p.addr))
        .collect();
    assert_eq!(
        ids,
        [
            ("up1", "rp1", DevFn(0)),
            ("dp1", "up1", DevFn(0)),
            ("dp2", "up1", DevFn(8))
        ],
        "without addr a switch port takes the first free device, as QEMU"
    );
    assert_eq!(h.ports_below(0), [UP1, DP1, DP2]);
    assert_eq!(h.root_port_of(DP2), 0);
    // QEMU's pcie_sync_bridge_lnk(): rp1's Link Status shows the switch's 2.5 GT/s x1 link,
    // with Data Link Layer Link Active (the slot is occupied).
    assert_eq!(h.ports()[0].config_read(0x66, 2), 0x2011);
    assert_ne!(h.ports()[0].slot_status() & SLTSTA_PDS, 0);
    assert_ne!(
        h.ports()[DP1].slot_status() & SLTSTA_PDS,
        0,
        "n1 is in dp1's slot"
    );
    assert_eq!(h.ports()[DP2].slot_status() & SLTSTA_PDS, 0);
    assert!(h.tree().contains("xio3130-downstream"), "{}", h.tree());
}

#[test]
fn configuration_cycles_walk_the_tree() {
    let mut h = switch();
    assert_eq!(h.route(1, 0), Routed::Absent, "rp1 not numbered yet");
    h.config_write(0, RP1, 0x18, 4, 0x04_0100).unwrap();
    assert_eq!(h.route(1, 0), Routed::Local(Slot::Port(UP1 as u16)));
    assert_eq!(h.config_read(1, 0, 0, 4), Ok(0x8232_104c));
    assert_eq!(
        h.route(1, 8),
        Routed::Absent,
        "below a root port, device 0 only"
    );
    assert_eq!(h.route(2, 0), Routed::Absent, "up1 not numbered yet");
    h.config_write(1, 0, 0x18, 4, 0x04_0201).unwrap();
    // The switch's internal bus has every device number.
    assert_eq!(h.route(2, 0), Routed::Local(Slot::Port(DP1 as u16)));
    assert_eq!(h.route(2, 8), Routed::Local(Slot::Port(DP2 as u16)));
    assert_eq!(h.route(2, 0x10), Routed::Absent);
    assert_eq!(h.config_read(2, 8, 0, 4), Ok(0x8233_104c));
    h.config_write(2, 0, 0x18, 4, 0x03_0302).unwrap();
    h.config_write(2, 8, 0x18, 4, 0x04_0402).unwrap();
    assert_eq!(h.route(3, 0), Routed::Remote(0));
    assert_eq!(h.config_read(3, 0, 0, 4), Err(Status::Remote));
    assert_eq!(h.route(3, 8), Routed::Absent, "below dp1, device 0 only");
    assert_eq!(h.route(4, 0), Routed::Absent, "dp2's slot is empty");
    // Renumbered: rp1 1-6, up1 2-6, dp1 5, dp2 6.
    h.config_write(0, RP1, 0x18, 4, 0x06_0100).unwrap();
    h.config_write(1, 0, 0x18, 4, 0x06_0201).unwrap();
    h.config_write(2, 0, 0x18, 4, 0x05_0502).unwrap();
    h.config_write(2, 8, 0x18, 4, 0x06_0602).unwrap();
    assert_eq!(h.route(3, 0), Routed::Absent);
    assert_eq!(h.route(5, 0), Routed::Remote(0));
    assert_eq!(h.endpoint_at(5, 0).map(|e| e.id.as_str()), Some("n1"));
    // A bus up1 forwards but no downstream port claims.
    h.config_write(2, 8, 0x18, 4, 0).unwrap();
    assert_eq!(h.route(6, 0), Routed::Absent);
    // Of two root ports claiming the same buses the first in topology order wins, as a scan
    // finds it: rp2 claiming 5-6 changes nothing; rp1 giving them up hands them to rp2.
    h.config_write(0, 0x11, 0x18, 4, 0x06_0500).unwrap();
    assert_eq!(h.route(5, 0), Routed::Remote(0), "rp1 comes first");
    h.config_write(0, RP1, 0x18, 4, 0x04_0100).unwrap();
    assert_eq!(h.route(5, 0), Routed::Absent, "rp2's empty bus 5");
    h.config_write(0, 0x11, 0x18, 4, 0).unwrap();
}

#[test]
fn a_secondary_bus_reset_of_the_root_port_resets_the_switch() {
    let mut h = switch();
    number(&mut h);
    h.config_write(2, 0, 0x20, 4, 0xfe10_fe00).unwrap();
    h.take_events();
    let fx = h.config_write(0, RP1, 0x3e, 2, 0x0040).unwrap();
    assert!(fx.contains(Effects::SECONDARY_BUS_RESET | Effects::BUS_NUMBERS));
    assert_eq!(
        resets(&mut h),
        [("n1".to_string(), ResetReason::SecondaryBusReset)]
    );
    // up1 is on rp1's secondary bus, which takes Type 0 cycles while the reset is held.
    assert_eq!(h.config_read(1, 0, 0x18, 4), Ok(0));
    for p in [UP1, DP1, DP2] {
        assert_eq!(h.ports()[p].secondary_bus(), 0, "port {p}");
    }
    assert_eq!(h.ports()[DP1].config_read(0x20, 4), 0, "windows reset to 0");
    assert_ne!(
        h.ports()[DP1].slot_status() & SLTSTA_PDS,
        0,
        "n1 stays in dp1's slot"
    );
    assert!(h.ports()[DP1].slot_powered());
    // Numbered again while rp1 holds the reset: nothing beyond its secondary bus answers
    // (QEMU's pci_secondary_bus_in_range()); released, the switch answers again.
    number(&mut h);
    assert_eq!(h.route(2, 0), Routed::Absent);
    let fx = h.config_write(0, RP1, 0x3e, 2, 0).unwrap();
    assert!(fx.contains(Effects::BUS_NUMBERS), "{fx:?}");
    assert_eq!(h.route(2, 0), Routed::Local(Slot::Port(DP1 as u16)));
    // dp1's numbers were written while it was out of reach: dropped.
    assert_eq!(h.route(3, 0), Routed::Absent);
    number(&mut h);
    assert_eq!(h.route(3, 0), Routed::Remote(0));
}

#[test]
fn function_level_reset_of_a_switch_port_resets_what_is_below() {
    let mut h = switch();
    number(&mut h);
    h.take_events();
    let fx = h.config_write(1, 0, 0x98, 2, 0x8000).unwrap();
    assert!(fx.contains(Effects::FUNCTION_LEVEL_RESET), "{fx:?}");
    assert_eq!(
        resets(&mut h),
        [("n1".to_string(), ResetReason::SecondaryBusReset)]
    );
    assert_eq!(h.ports()[UP1].secondary_bus(), 0);
    assert_eq!(h.ports()[DP1].secondary_bus(), 0);
    assert_eq!(h.route(2, 0), Routed::Absent);
    number(&mut h);
    // dp1's own FLR resets it, not the port above.
    h.config_write(2, 0, 0x98, 2, 0x8000).unwrap();
    assert_eq!(h.ports()[DP1].secondary_bus(), 0);
    assert_eq!(h.ports()[UP1].secondary_bus(), 2);
    assert_ne!(h.ports()[DP1].slot_status() & SLTSTA_PDS, 0);
    assert_eq!(resets(&mut h).len(), 1);
}

#[test]
fn slot_power_off_below_a_downstream_port() {
    let mut h = switch();
    number(&mut h);
    h.take_events();
    // dp1's Slot Control: power off (PCC), power indicator on, attention indicator off.
    let fx = h.config_write(2, 0, 0xa8, 2, 0x05c0).unwrap();
    assert!(fx.contains(Effects::SLOT_POWER_OFF), "{fx:?}");
    assert_eq!(
        resets(&mut h),
        [("n1".to_string(), ResetReason::SlotPowerOff)]
    );
    assert_eq!(h.route(3, 0), Routed::Absent, "no power, no answer");
    assert_eq!(h.config_read(3, 0, 0, 4), Ok(0xffff_ffff));
    h.config_write(2, 0, 0xa8, 2, 0x01c0).unwrap();
    assert_eq!(h.route(3, 0), Routed::Remote(0));
    // Power and indicator off: n1 leaves the slot.
    h.take_events();
    h.config_write(2, 0, 0xa8, 2, 0x07c0).unwrap();
    let gone: Vec<_> = h
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, HierarchyEvent::FunctionRemoved { .. }))
        .collect();
    assert_eq!(gone.len(), 1);
    assert!(h.endpoint("n1").is_none());
    // rp1's slot powered off hides and resets the whole switch (QEMU's has_power).
    number(&mut h);
    h.config_write(0, RP1, 0x6c, 2, 0x05c0).unwrap();
    assert_eq!(h.route(1, 0), Routed::Absent);
    h.config_write(0, RP1, 0x6c, 2, 0x01c0).unwrap();
    assert_eq!(h.route(1, 0), Routed::Local(Slot::Port(UP1 as u16)));
    assert_eq!(h.ports()[UP1].secondary_bus(), 0, "reset by the power loss");
}

#[test]
fn hot_add_below_a_downstream_port_signals_its_msi() {
    let mut h = switch();
    number(&mut h);
    // dp2 (02:01.0): MSI to 0xfee00000 data 0x41, slot interrupts for presence changes.
    h.config_write(2, 8, 0x74, 4, 0xfee0_0000).unwrap();
    h.config_write(2, 8, 0x7c, 2, 0x41).unwrap();
    h.config_write(2, 8, 0x72, 2, 1).unwrap();
    h.config_write(2, 8, 0xa8, 2, 0x0028).unwrap();
    h.take_events();
    let ep = EndpointSpec {
        id: "n2".into(),
        driver: "e1000e".into(),
        bus: "dp2".into(),
        addr: DevFn(0),
        owner: "qemu".into(),
        multifunction: false,
    };
    let fx = h.hot_add(ep.clone()).unwrap();
    assert!(fx.contains(Effects::SLOT | Effects::INTERRUPT), "{fx:?}");
    let events = h.take_events();
    assert!(events.contains(&HierarchyEvent::FunctionAdded {
        endpoint: ep.clone()
    }));
    assert!(
        events.contains(&HierarchyEvent::Interrupt {
            bus: 2,
            devfn: 8,
            interrupt: Interrupt::Msi {
                vector: 0,
                address: 0xfee0_0000,
                data: 0x41
            }
        }),
        "{events:?}"
    );
    let sta = h.ports()[DP2].slot_status();
    assert_eq!(sta & (SLTSTA_PDS | SLTSTA_PDC), SLTSTA_PDS | SLTSTA_PDC);
    assert_eq!(h.endpoint_at(4, 0).map(|e| e.id.as_str()), Some("n2"));
    // Switch ports are not hot-plugged.
    let mut port = ep.clone();
    port.id = "up9".into();
    port.driver = "x3130-upstream".into();
    assert!(matches!(
        h.hot_add(port),
        Err(HotplugError::Topology(TopologyError::PortAsDevice { .. }))
    ));
    // Nor are pcie-pci-bridges (pcierc emulates them; they are declared when it starts).
    let mut bridge = ep.clone();
    bridge.id = "br9".into();
    bridge.driver = "pcie-pci-bridge".into();
    assert!(matches!(
        h.hot_add(bridge),
        Err(HotplugError::Topology(TopologyError::BridgeAsDevice { .. }))
    ));
    // The upstream port has no slot.
    let mut other = ep;
    other.id = "n3".into();
    other.bus = "up1".into();
    assert_eq!(
        h.hot_add(other),
        Err(HotplugError::NotHotpluggable("up1".into()))
    );
    // Removal through the attention button, then the guest powers the slot off.
    h.request_removal("n2").unwrap();
    h.config_write(2, 8, 0xa8, 2, 0x07c0).unwrap();
    assert!(h.endpoint("n2").is_none());
}

#[test]
fn pmes_and_errors_below_a_switch_reach_the_root_port() {
    let mut h = switch();
    number(&mut h);
    h.raise_pme("n1").unwrap();
    // rp1's Root Status (0x54 + 0x20): PME Status with n1's requester id 03:00.0.
    assert_eq!(h.ports()[0].config_read(0x74, 4), 0x0001_0300);
    h.inject_error("n1", ErrorSeverity::Correctable, 1).unwrap();
    // Error Source Identification (0x100 + 0x34): the correctable source is 03:00.0.
    assert_eq!(h.ports()[0].config_read(0x134, 4) & 0xffff, 0x0300);
    // dp1 (02:00.0) detects an uncorrectable error itself: logged in its AER capability (0x100:
    // Uncorrectable Error Status 0x104, First Error Pointer in 0x118) and Device Status, the
    // message received by rp1 with dp1's id; masked, it is logged only.
    let h_before = h.ports()[0].config_read(0x130, 4);
    h.inject_error_logged("dp1", ErrorSeverity::NonFatal, 1 << 14, [1, 2, 3, 4])
        .unwrap();
    let dp1 = &h.ports()[DP1];
    assert_eq!(dp1.config_read(0x104, 4), 1 << 14);
    assert_eq!(dp1.config_read(0x118, 4) & 0x1f, 14);
    assert_eq!(dp1.config_read(0x11c, 4), 1);
    assert_ne!(dp1.config_read(0x9a, 2) & 2, 0, "Non-Fatal Error Detected");
    assert_eq!(
        dp1.config_read(0x130, 4),
        0,
        "no Root Error Status on a switch port"
    );
    assert_eq!(h.ports()[0].config_read(0x134, 4) >> 16, 0x0200);
    assert_ne!(h.ports()[0].config_read(0x130, 4), h_before);
    // Correctable Error Mask (0x114; the uncorrectable mask is read-only under pc-q35-7.2).
    h.config_write(2, 0, 0x114, 4, 1).unwrap();
    let root = h.ports()[0].config_read(0x130, 4);
    h.inject_error("dp1", ErrorSeverity::Correctable, 1)
        .unwrap();
    assert_eq!(h.ports()[DP1].config_read(0x110, 4), 1, "logged");
    assert_eq!(h.ports()[0].config_read(0x130, 4), root, "masked: not sent");
}

#[test]
fn switch_state_round_trips_by_id() {
    let mut h = switch();
    number(&mut h);
    h.config_write(2, 8, 0x20, 4, 0xfe10_fe00).unwrap();
    let saved = h.save_functions();
    let ids: Vec<_> = saved.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["mch", "rp1", "rp2", "rp3", "rp4", "up1", "dp1", "dp2"]
    );
    let mut g = switch();
    g.restore_functions(0, &saved, h.spec().endpoints.clone(), 1)
        .unwrap();
    assert_eq!(g.route(3, 0), Routed::Remote(0));
    assert_eq!(g.config_read(2, 8, 0x20, 4), Ok(0xfe10_fe00));
}

#[test]
fn placement_is_validated() {
    use TopologyError as E;
    let refused = |extra: &[&str]| {
        let mut spec = TopologySpec::embedded_default().unwrap();
        let mut last = Ok(());
        for d in extra {
            last = spec.add_device_option(d);
            if last.is_err() {
                break;
            }
        }
        last.unwrap_err()
    };
    let e = refused(&["xio3130-downstream,id=d,bus=rp1,chassis=9,slot=1"]);
    assert!(matches!(&e, E::Placement { id, .. } if id == "d"), "{e:?}");
    let e = refused(&["x3130-upstream,id=u,bus=rp1,addr=1.0"]);
    assert!(matches!(&e, E::Placement { .. }), "{e:?}");
    let e = refused(&["x3130-upstream,id=u,bus=pcie.0"]);
    assert!(matches!(&e, E::Placement { .. }), "{e:?}");
    let e = refused(&["x3130-upstream,id=u,bus=rp9"]);
    assert!(
        matches!(&e, E::UnknownBus { bus, .. } if bus == "rp9"),
        "{e:?}"
    );
    let e = refused(&["x3130-upstream,id=u,bus=rp1", "x3130-upstream,id=u2,bus=u"]);
    assert!(matches!(&e, E::Placement { id, .. } if id == "u2"), "{e:?}");
    let e = refused(&["x3130-upstream,id=u,bus=rp1", "virtio-net-pci,id=n,bus=u"]);
    assert!(matches!(&e, E::UnknownBus { id, .. } if id == "n"), "{e:?}");
    let e = refused(&[
        "x3130-upstream,id=u,bus=rp1",
        "xio3130-downstream,id=d,bus=u,chassis=1,slot=1",
    ]);
    assert!(
        matches!(&e, E::ChassisSlotInUse { other, .. } if other == "rp1"),
        "{e:?}"
    );
    let e = refused(&[
        "x3130-upstream,id=u,bus=rp1",
        "xio3130-downstream,id=d,bus=u,chassis=9,slot=1,addr=0.0",
        "xio3130-downstream,id=d2,bus=u,chassis=9,slot=2,addr=0.0",
    ]);
    assert!(matches!(&e, E::PortAddressInUse { .. }), "{e:?}");
    let e = refused(&["x3130-upstream,id=u,bus=rp1,chassis=1"]);
    assert!(
        matches!(&e, E::UnknownProperty { key, driver, .. } if key == "chassis" && driver == "x3130-upstream"),
        "{e:?}"
    );
    let e = refused(&[
        "x3130-upstream,id=u,bus=rp1",
        "xio3130-downstream,id=d,bus=u,disable-acs=on",
    ]);
    assert!(
        matches!(&e, E::UnknownProperty { key, .. } if key == "disable-acs"),
        "{e:?}"
    );
    // A cycle: u's parent is d, d's parent is u (the kinds alone allow it).
    let mut spec = TopologySpec::embedded_default().unwrap();
    spec.add_device_option("x3130-upstream,id=u,bus=rp1")
        .unwrap();
    spec.add_device_option("xio3130-downstream,id=d,bus=u,chassis=9,slot=1")
        .unwrap();
    spec.add_device_option("x3130-upstream,id=u2,bus=d")
        .unwrap();
    spec.add_device_option("xio3130-downstream,id=d2,bus=u2,chassis=9,slot=2")
        .unwrap();
    spec.root_ports[6].bus = "d2".into();
    let e = spec.validate().unwrap_err();
    assert!(matches!(&e, E::Placement { .. }), "{e:?}");
    // And the file syntax: [[switch-port]] tables.
    let f = TopologySpec::from_toml(
        "[[root-port]]\nid='rp'\naddr='3'\nchassis=1\nslot=1\n\
         [[switch-port]]\nid='up'\ndriver='x3130-upstream'\nbus='rp'\n\
         [[switch-port]]\nid='dp'\ndriver='xio3130-downstream'\nbus='up'\nchassis=2\nslot=1\n\
         [[device]]\ndriver='e1000e'\nid='nic'\nbus='dp'\n",
    )
    .unwrap();
    assert_eq!(f.root_ports.len(), 3);
}

/// Ports of the tree under test by index, and a write to one of them, addressed where the
/// port sits now (a write to a port that is not reachable is dropped, as a guest's would be).
#[derive(Clone, Debug)]
enum Write {
    /// Primary, secondary, subordinate bus numbers (PCI-to-PCI Bridge 1.2 §3.2.5.3).
    Buses { port: usize, sec: u8, sub: u8 },
    /// Bridge Control Secondary Bus Reset set or cleared (§3.2.5.18).
    Reset { port: usize, on: bool },
    /// Device Control Initiate Function Level Reset of a switch port.
    Flr { port: usize },
    /// Slot Control Power Controller Control (PCIe Base 6.0 §7.5.3.10).
    SlotPower { port: usize, on: bool },
}

fn write() -> impl Strategy<Value = Write> {
    let port = 0..7usize;
    prop_oneof![
        (port.clone(), 0..8u8, 0..8u8).prop_map(|(port, sec, sub)| Write::Buses { port, sec, sub }),
        (port.clone(), any::<bool>()).prop_map(|(port, on)| Write::Reset { port, on }),
        (4..7usize).prop_map(|port| Write::Flr { port }),
        (port, any::<bool>()).prop_map(|(port, on)| Write::SlotPower { port, on }),
    ]
}

fn apply(h: &mut Hierarchy, w: &Write) {
    let at = |h: &Hierarchy, port: usize| (h.port_bus(port), h.spec().root_ports[port].addr.0);
    let r = match *w {
        Write::Buses { port, sec, sub } => {
            let (bus, devfn) = at(h, port);
            let v = u32::from(sec) << 8 | u32::from(sub) << 16 | u32::from(bus);
            h.config_write(bus, devfn, 0x18, 4, v)
        }
        Write::Reset { port, on } => {
            let (bus, devfn) = at(h, port);
            h.config_write(bus, devfn, 0x3e, 2, if on { 0x40 } else { 0 })
        }
        Write::Flr { port } => {
            let (bus, devfn) = at(h, port);
            h.config_write(bus, devfn, 0x98, 2, 0x8000)
        }
        Write::SlotPower { port, on } => {
            let (bus, devfn) = at(h, port);
            let sltctl = if port < 4 { 0x6c } else { 0xa8 };
            // Power indicator on so the card stays; Power Controller Control 1 = off.
            h.config_write(bus, devfn, sltctl, 2, if on { 0x01c0 } else { 0x05c0 })
        }
    };
    assert!(r.is_ok(), "{w:?}: {r:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_routing_equals_a_full_recomputation_on_a_tree(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        routes_follow_writes(switch(), number, &writes, apply)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The layout deltas on a tree: a write to one port moves the records of the switch ports
    /// and functions below it (their bus, whether cycles reach them), and a sibling claiming a
    /// bus moves the reachability of what sits on it; every delta applied to the topology
    /// before it still gives `describe()`.
    #[test]
    fn layout_deltas_equal_a_full_description_on_a_tree(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        layout_follows_writes(switch(), number, &writes, apply)?;
    }
}
