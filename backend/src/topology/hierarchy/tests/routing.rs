//! The routing tables are updated for what a write changed, not rebuilt: after any sequence of
//! guest writes, the snapshot routes kept current from the recorded buses, the bus -> port table
//! and the BAR map equal a recomputation from scratch.

use proptest::prelude::*;

use super::follow::{follow_routes, routes_follow, table_answers_routes};
use super::*;
use crate::topology::DevFn;

/// Ports of the topology under test: the default four (00:02.0-00:02.3), one with a card.
const PORTS: [u8; 4] = [0x10, 0x11, 0x12, 0x13];

/// One guest write to a root port's register (offset, width) with a value.
#[derive(Clone, Debug)]
pub(super) enum Write {
    /// Primary, secondary, subordinate bus numbers (PCI-to-PCI Bridge 1.2 §3.2.5.3).
    Buses { port: usize, sec: u8, sub: u8 },
    /// Subordinate alone, as firmware closes a range after scanning below it.
    Subordinate { port: usize, sub: u8 },
    /// BAR0 (the MSI-X table BAR) to an address in a small range, so BARs overlap at times.
    Bar { port: usize, slot: u8 },
    /// Command register: memory space enable on or off.
    Command { port: usize, memory: bool },
    /// Slot Control (PCIe Base 6.0 §7.5.3.10): Power Controller Control on or off.
    SlotPower { port: usize, on: bool },
}

pub(super) fn write() -> impl Strategy<Value = Write> {
    let port = 0..PORTS.len();
    prop_oneof![
        (port.clone(), 0..8u8, 0..8u8).prop_map(|(port, sec, sub)| Write::Buses { port, sec, sub }),
        (port.clone(), prop_oneof![0..8u8, Just(0xff)])
            .prop_map(|(port, sub)| Write::Subordinate { port, sub }),
        (port.clone(), 0..4u8).prop_map(|(port, slot)| Write::Bar { port, slot }),
        (port.clone(), any::<bool>()).prop_map(|(port, memory)| Write::Command { port, memory }),
        (port, any::<bool>()).prop_map(|(port, on)| Write::SlotPower { port, on }),
    ]
}

pub(super) fn apply(h: &mut Hierarchy, w: &Write) {
    let cfg = |port: usize| PORTS[port];
    let r = match *w {
        Write::Buses { port, sec, sub } => h.config_write(
            0,
            cfg(port),
            0x18,
            4,
            u32::from(sec) << 8 | u32::from(sub) << 16,
        ),
        Write::Subordinate { port, sub } => h.config_write(0, cfg(port), 0x1a, 1, sub.into()),
        // 4 KiB BARs 2 KiB apart: neighbours overlap.
        Write::Bar { port, slot } => {
            h.config_write(0, cfg(port), 0x10, 4, 0xfe00_0000 + u32::from(slot) * 0x800)
        }
        Write::Command { port, memory } => {
            h.config_write(0, cfg(port), 0x04, 2, if memory { 0x6 } else { 0x4 })
        }
        Write::SlotPower { port, on } => h.config_write(
            0,
            cfg(port),
            0x6c,
            2,
            // Power Controller Control (bit 10: 1 = off), indicators left alone.
            0x05c0 & !(1 << 10) | if on { 0 } else { 1 << 10 },
        ),
    };
    assert!(r.is_ok(), "{w:?}: {r:?}");
}

pub(super) fn with_card() -> Hierarchy {
    let mut spec = TopologySpec::embedded_default().unwrap();
    spec.endpoints.push(EndpointSpec {
        id: "ep".into(),
        driver: "virtio-net-pci".into(),
        bus: "rp2".into(),
        addr: DevFn(0),
        owner: "qemu".into(),
        multifunction: false,
    });
    Hierarchy::new(spec).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_routing_equals_a_full_recomputation(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        let mut h = with_card();
        let mut table = h.snapshot_routes();
        follow_routes(&mut h, &mut table);
        for w in &writes {
            apply(&mut h, w);
            routes_follow(&mut h, &mut table, w)?;
            let full_bars = h.full_bar_map();
            prop_assert_eq!(&h.bar_map, &full_bars, "after {:?}", w);
            let overlap = full_bars.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0);
            prop_assert_eq!(h.bars_overlap, overlap);
        }
        // And the table answers what a guest's configuration read is routed to.
        table_answers_routes(&h, &table)?;
    }
}

#[test]
fn a_bus_number_write_records_only_the_buses_it_moved() {
    let mut h = with_card();
    h.take_snapshot_changes();
    // rp2 (00:02.1) takes buses 2-3: those two.
    h.config_write(0, 0x11, 0x18, 4, 0x0003_0200).unwrap();
    let (changed, buses) = h.take_snapshot_changes();
    assert_eq!(changed, [2]);
    assert_eq!(buses.iter().collect::<Vec<_>>(), [2, 3]);
    // Subordinate 3 -> 5: buses 4 and 5 only.
    h.config_write(0, 0x11, 0x1a, 1, 5).unwrap();
    assert_eq!(
        h.take_snapshot_changes().1.iter().collect::<Vec<_>>(),
        [4, 5]
    );
    // A window write moves no routing.
    h.config_write(0, 0x11, 0x20, 4, 0xc010_c000).unwrap();
    assert!(h.take_snapshot_changes().1.is_empty());
}
