//! What the property tests of every topology (flat, switches, pcie-pci-bridges, expanders)
//! check after each guest write: the routing table and the layout a frontend keeps up to date from what
//! the hierarchy reports changed equal a full recomputation.

use proptest::prelude::*;

use super::*;

/// Bring `table` up to date the way the service does: only the buses the hierarchy recorded.
pub(super) fn follow_routes(h: &mut Hierarchy, table: &mut [u16; 65536]) {
    let (_, buses) = h.take_snapshot_changes();
    for bus in buses.iter() {
        table[usize::from(bus) << 8..][..256].copy_from_slice(&h.snapshot_route_row(bus));
    }
}

/// [`follow_routes`], then the table against a full recomputation (`after`: the write, for
/// the failure message).
pub(super) fn routes_follow(
    h: &mut Hierarchy,
    table: &mut [u16; 65536],
    after: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    follow_routes(h, table);
    let full = h.snapshot_routes();
    let first_diff = (0..65536).find(|&i| table[i] != full[i]);
    prop_assert_eq!(first_diff, None, "after {:?}", after);
    Ok(())
}

/// Every entry of `table` names what a guest's configuration cycle to its (bus, devfn) is
/// routed to: 1 the MCH, 2.. the ports, then the pcie-pci-bridges, then the pxb-pcie
/// expanders, 0xffff another emulator's function, 0 nothing.
pub(super) fn table_answers_routes(
    h: &Hierarchy,
    table: &[u16; 65536],
) -> Result<(), TestCaseError> {
    let ports = h.spec().root_ports.len() as u16;
    let bridges = h.spec().bridges.len() as u16;
    for (i, &entry) in table.iter().enumerate() {
        let (bus, devfn) = ((i >> 8) as u8, i as u8);
        let want = match h.route(bus, devfn) {
            Routed::Local(Slot::Mch) => 1,
            Routed::Local(Slot::Port(p)) => p + 2,
            Routed::Local(Slot::Bridge(j)) => ports + 2 + j,
            Routed::Local(Slot::Expander(x)) => ports + bridges + 2 + x,
            Routed::Remote(_) => 0xffff,
            Routed::Absent | Routed::Local(_) => 0,
        };
        prop_assert_eq!(entry, want, "{:02x}:{:02x}", bus, devfn);
    }
    Ok(())
}

/// Every function `table` routes a (bus, devfn) to (entries 1-0xfffe: snapshot function
/// `entry - 1`) answers the guest's reads there with its snapshot image.
pub(super) fn images_answer_reads(h: &Hierarchy, table: &[u16; 65536]) {
    for (i, &entry) in table.iter().enumerate() {
        if !(1..=0xfffe).contains(&entry) {
            continue;
        }
        let (bus, devfn) = ((i >> 8) as u8, i as u8);
        let image = h.snapshot_image(usize::from(entry) - 1);
        for off in (0..4096u16).step_by(4) {
            let word = u32::from_le_bytes(image[usize::from(off)..][..4].try_into().unwrap());
            assert_eq!(
                Ok(word),
                h.config_read(bus, devfn, off, 4),
                "{bus:02x}:{devfn:02x} {off:#x}"
            );
        }
    }
}

/// Apply `h`'s next layout delta to `held` and check it against a full description.
pub(super) fn follow_layout(
    h: &mut Hierarchy,
    held: &mut pcierc_protocol::Topology,
    after: &dyn std::fmt::Debug,
) -> Result<(), TestCaseError> {
    let d = h.layout_delta();
    prop_assert!(d.apply(held).is_ok(), "{:?}", d);
    prop_assert_eq!(&*held, &h.describe(), "after {:?}", after);
    Ok(())
}

/// The property test of a topology's routing: `h` numbered by `number`, then `writes` applied
/// by `apply`, each followed by [`routes_follow`]; at the end the table answers
/// [`Hierarchy::route`] ([`table_answers_routes`]).
pub(super) fn routes_follow_writes<W: std::fmt::Debug>(
    mut h: Hierarchy,
    number: fn(&mut Hierarchy),
    writes: &[W],
    apply: fn(&mut Hierarchy, &W),
) -> Result<(), TestCaseError> {
    number(&mut h);
    let mut table = h.snapshot_routes();
    h.take_snapshot_changes();
    for w in writes {
        apply(&mut h, w);
        routes_follow(&mut h, &mut table, w)?;
    }
    table_answers_routes(&h, &table)
}

/// The property test of a topology's layout deltas: from `h`'s description at power-on,
/// [`follow_layout`] after `number` and after each of `writes` applied by `apply`.
pub(super) fn layout_follows_writes<W: std::fmt::Debug>(
    mut h: Hierarchy,
    number: fn(&mut Hierarchy),
    writes: &[W],
    apply: fn(&mut Hierarchy, &W),
) -> Result<(), TestCaseError> {
    h.layout_delta();
    let mut held = h.describe();
    for w in std::iter::once(None).chain(writes.iter().map(Some)) {
        match w {
            None => number(&mut h),
            Some(w) => apply(&mut h, w),
        }
        follow_layout(&mut h, &mut held, &w)?;
    }
    Ok(())
}
