use super::*;
use crate::topology::tests::sample;
use crate::topology::{AddressSpace, RangeKind};

fn range(base: u64, kind: RangeKind) -> AddressRange {
    AddressRange {
        base,
        size: 0x1000,
        space: AddressSpace::Mmio as u8,
        kind: kind as u8,
        ..Default::default()
    }
}

/// A sequence of topologies as a guest programming ports makes them: bus numbers, windows
/// added in the middle of the range list, a port's record changed, functions added and removed.
fn steps() -> Vec<Topology> {
    let mut t = sample();
    t.ranges.push(range(0xfe00_0000, RangeKind::Bar));
    t.ranges.push(range(0xfe10_0000, RangeKind::Bar));
    let mut out = vec![t.clone()];
    let mut push = |f: &mut dyn FnMut(&mut Topology)| {
        f(&mut t);
        t.generation += 1;
        out.push(t.clone());
    };
    push(&mut |t| t.functions[1].secondary_bus = 2);
    push(&mut |t| t.ranges.insert(2, range(0xc000_0000, RangeKind::MemWindow)));
    push(&mut |t| t.ranges[0].base = 0xcf8);
    push(&mut |t| t.ecam.clear());
    push(&mut |t| {
        let mut ep = t.functions[2];
        ep.devfn = 1;
        t.functions.push(ep);
    });
    push(&mut |t| {
        t.functions.truncate(2);
        t.ranges.truncate(1);
    });
    push(&mut |t| {
        t.ranges
            .extend([range(0x1000, RangeKind::Bar), range(0x1000, RangeKind::Bar)])
    });
    out
}

#[test]
fn header_sizes() {
    assert_eq!(std::mem::size_of::<LayoutDeltaHeader>(), 40);
    assert_eq!(std::mem::size_of::<FunctionUpdate>(), 96);
}

#[test]
fn applied_deltas_equal_the_whole_topology() {
    let steps = steps();
    let mut held = steps[0].clone();
    for new in &steps[1..] {
        let d = LayoutDelta::between(&held, new);
        let wire = d.encode();
        assert_eq!(wire.len(), d.encoded_len());
        let back = LayoutDelta::decode(&wire).unwrap();
        assert_eq!(back, d);
        back.apply(&mut held).unwrap();
        assert_eq!(&held, new);
    }
    // A change of one record carries that record only.
    let d = LayoutDelta::between(&steps[0], &steps[1]);
    assert_eq!(d.updates.len(), 1);
    assert_eq!(d.updates[0].index, 1);
    assert!(d.ranges.is_empty());
    // A range inserted in the middle carries that range only.
    let d = LayoutDelta::between(&steps[1], &steps[2]);
    assert_eq!(
        (d.ranges.len(), d.ranges_kept_front, d.ranges_kept_back),
        (1, 2, 1)
    );
}

#[test]
fn a_delta_for_another_generation_changes_nothing() {
    let steps = steps();
    let d = LayoutDelta::between(&steps[1], &steps[2]);
    let mut held = steps[0].clone();
    assert!(matches!(d.apply(&mut held), Err(Error::InvalidTopology(_))));
    assert_eq!(held, steps[0]);
}

#[test]
fn malformed_deltas_are_refused_without_panic() {
    let steps = steps();
    let base = &steps[4];
    let good = LayoutDelta::between(base, &steps[5]);
    let wire = good.encode();
    // Every truncation and every single-byte corruption decodes to an error or to a delta
    // that applies cleanly or is refused; no panic, and a refused one changes nothing.
    for n in 0..wire.len() {
        assert!(LayoutDelta::decode(&wire[..n]).is_err(), "cut at {n}");
    }
    for i in 0..wire.len() {
        for v in [0u8, 0xff, 0x80, 1] {
            let mut w = wire.clone();
            w[i] = v;
            if let Ok(d) = LayoutDelta::decode(&w) {
                let mut held = base.clone();
                if d.apply(&mut held).is_err() {
                    assert_eq!(&held, base);
                } else {
                    assert!(held.validate().is_ok());
                }
            }
        }
    }
    let hostile = |f: &dyn Fn(&mut LayoutDelta)| {
        let mut d = good.clone();
        f(&mut d);
        let mut held = base.clone();
        let r = LayoutDelta::decode(&d.encode()).and_then(|d| d.apply(&mut held));
        assert!(matches!(r, Err(Error::InvalidTopology(_))), "{d:?}");
        assert_eq!(&held, base);
    };
    // Keeps more ranges than the base has.
    hostile(&|d| d.ranges_kept_back = u32::MAX);
    hostile(&|d| d.ranges_kept_front = base.ranges.len() as u32 + 1);
    // Grows the function list without sending the new records.
    hostile(&|d| d.num_functions += 1);
    // An update past the end, and updates out of order.
    hostile(&|d| {
        d.updates.push(FunctionUpdate {
            index: d.num_functions,
            reserved: 0,
            record: base.functions[0],
        })
    });
    hostile(&|d| {
        let u = FunctionUpdate {
            index: 1,
            reserved: 0,
            record: base.functions[1],
        };
        d.updates = vec![u, u];
    });
    // A parent that is not a port, a reserved field, an invalid record.
    hostile(&|d| {
        let mut r = base.functions[2];
        r.parent = 0;
        d.updates = vec![FunctionUpdate {
            index: 2,
            reserved: 0,
            record: r,
        }];
    });
    hostile(&|d| {
        d.updates = vec![FunctionUpdate {
            index: 0,
            reserved: 1,
            record: base.functions[0],
        }];
    });
    hostile(&|d| {
        let mut r = base.functions[0];
        r.kind = 9;
        d.updates = vec![FunctionUpdate {
            index: 0,
            reserved: 0,
            record: r,
        }];
    });
    // Turning the port its endpoint sits behind into an endpoint.
    hostile(&|d| {
        let mut r = base.functions[1];
        r.kind = FunctionKind::Endpoint as u8;
        r.parent = NO_PARENT;
        d.updates = vec![FunctionUpdate {
            index: 1,
            reserved: 0,
            record: r,
        }];
    });
    // Counts over the limits, or that do not match the size.
    let mut w = wire.clone();
    w[16..20].copy_from_slice(&(MAX_TOPOLOGY_FUNCTIONS + 1).to_le_bytes());
    assert!(LayoutDelta::decode(&w).is_err());
    let mut w = wire;
    w[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(LayoutDelta::decode(&w).is_err());
}
