//! `plan` on hand-made layouts.

use super::*;
use pcierc_protocol::{
    encode_name, AddressRange, AddressSpace, FunctionKind, FunctionRecord, NO_PARENT,
};

fn f(bus: u8, devfn: u8, owner: &str, present: bool) -> FunctionRecord {
    FunctionRecord {
        bus,
        devfn,
        kind: if owner == PCIERC_OWNER {
            FunctionKind::RootPort as u8
        } else {
            FunctionKind::Endpoint as u8
        },
        flags: if present { function_flags::PRESENT } else { 0 },
        parent: NO_PARENT,
        id: encode_name("x").unwrap(),
        owner: encode_name(owner).unwrap(),
        ..Default::default()
    }
}

fn layout() -> Topology {
    Topology {
        generation: 7,
        functions: vec![
            f(0, 0, PCIERC_OWNER, true),
            f(0, 0x10, PCIERC_OWNER, true),
            f(1, 0, "qemu", true),
            f(0, 0, "qemu", false),
            f(2, 0, "gpu-dm", true),
        ],
        ecam: vec![EcamWindow {
            base: 0xb000_0000,
            size: 256 << 20,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
            reserved: 0,
        }],
        ranges: vec![AddressRange {
            base: 0xfe00_0000,
            size: 0x1000,
            space: AddressSpace::Mmio as u8,
            kind: RangeKind::Bar as u8,
            devfn: 0x10,
            ..Default::default()
        }],
    }
}

fn cfg(ecam: EcamRouting) -> RoutingConfig {
    RoutingConfig {
        own: 1,
        peers: [("qemu".to_string(), 0)].into(),
        ecam,
        config_ports: false,
    }
}

fn pci(bus: u8, devfn: u8) -> IoRange {
    IoRange::Pci(PciSbdf {
        segment: 0,
        bus,
        devfn,
    })
}

fn mem(first: u64, len: u64) -> IoRange {
    IoRange::Memory {
        first,
        last: first + len - 1,
    }
}

/// `p` maps (bus, devfn) to the shim (server 1): by SBDF and by its 4 KiB ECAM slice (the
/// window at 0xb0000000).
#[track_caller]
fn assert_shim_serves(p: &Plan, bus: u8, devfn: u8) {
    assert!(
        p.ranges.contains(&(1, pci(bus, devfn))),
        "{bus:02x}:{devfn:02x}"
    );
    let slice = 0xb000_0000 + (u64::from(bus) << 20) + (u64::from(devfn) << 12);
    assert!(
        p.ranges.contains(&(1, mem(slice, 0x1000))),
        "ECAM {slice:#x}"
    );
}

#[test]
fn stock_xen_plan() {
    let p = plan(&layout(), &cfg(EcamRouting::ShimDecodes));
    let want: BTreeSet<_> = [
        (1, pci(0, 0)),
        (1, pci(0, 0x10)),
        (0, pci(1, 0)),
        (1, mem(0xb000_0000, 0x1000)),
        (1, mem(0xb001_0000, 0x1000)),
        (1, mem(0xfe00_0000, 0x1000)),
    ]
    .into();
    assert_eq!(
        p.ranges, want,
        "no slice for QEMU; gpu-dm unknown; absent skipped"
    );
    assert_eq!(p.mmcfg, None);
}

#[test]
fn extension_plan_and_config_ports() {
    let c = RoutingConfig {
        config_ports: true,
        ..cfg(EcamRouting::XenDecodes)
    };
    let p = plan(&layout(), &c);
    assert!(!p.ranges.iter().any(|(_, r)| matches!(r, IoRange::Memory { first, .. } if *first >= 0xb000_0000 && *first < 0xc000_0000)));
    assert!(p.ranges.contains(&(
        1,
        IoRange::Port {
            first: 0xcf8,
            last: 0xcff
        }
    )));
    assert_eq!(p.mmcfg.map(|w| w.base), Some(0xb000_0000));
}

/// A switch behind a root port: its ports are pcierc's port records on the buses they sit on
/// (`parent` set), mapped to the shim by SBDF and ECAM slice while present; the function behind
/// a downstream port goes to its emulator at its bus. A switch port the guest cannot reach yet
/// (its parent's bus unnumbered) is not mapped.
#[test]
fn switch_ports_behind_a_root_port_are_routed_to_the_shim() {
    let mut t = layout();
    let mut up1 = f(1, 0, PCIERC_OWNER, true);
    up1.parent = 1;
    let mut dp1 = f(2, 0, PCIERC_OWNER, true);
    dp1.parent = 5;
    let mut dp2 = f(2, 8, PCIERC_OWNER, false);
    dp2.parent = 5;
    let mut net = f(3, 0, "qemu", true);
    net.parent = 6;
    // Replace the endpoint at 01:00.0 by the switch.
    t.functions.remove(2);
    t.functions.insert(2, f(9, 0, "qemu", false));
    t.functions.extend([up1, dp1, dp2, net]);
    t.validate().expect("a valid layout for version-1 peers");
    let p = plan(&t, &cfg(EcamRouting::ShimDecodes));
    for (bus, devfn) in [(1, 0), (2, 0)] {
        assert_shim_serves(&p, bus, devfn);
    }
    assert!(!p.ranges.contains(&(1, pci(2, 8))), "dp2 not reachable");
    assert!(p.ranges.contains(&(0, pci(3, 0))), "net behind dp1 to qemu");
}

/// A `pxb-pcie` expander (a host bridge record on the root bus) and the root port on its root
/// bus 0x80 (no parent, at the expander's bus number): both pcierc's, mapped to the shim by
/// SBDF and ECAM slice; the function in that port's slot (bus 0x81) goes to its emulator.
#[test]
fn an_expanders_root_bus_is_routed_by_its_bus_number() {
    let mut t = layout();
    let mut pxb = f(0, 0x28, PCIERC_OWNER, true);
    pxb.kind = FunctionKind::HostBridge as u8;
    pxb.secondary_bus = 0x80;
    pxb.subordinate_bus = 0x81;
    let mut rp9 = f(0x80, 0, PCIERC_OWNER, true);
    rp9.secondary_bus = 0x81;
    rp9.subordinate_bus = 0x81;
    let rp9_index = t.functions.len() as u16 + 1;
    let mut net = f(0x81, 0, "qemu", true);
    net.parent = rp9_index;
    t.functions.extend([pxb, rp9, net]);
    t.validate().expect("a valid layout");
    let p = plan(&t, &cfg(EcamRouting::ShimDecodes));
    for (bus, devfn) in [(0, 0x28), (0x80, 0)] {
        assert_shim_serves(&p, bus, devfn);
    }
    assert!(
        p.ranges.contains(&(0, pci(0x81, 0))),
        "net behind rp9 to qemu"
    );
}
