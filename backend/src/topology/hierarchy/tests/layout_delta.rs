//! The layout deltas are built from the functions whose registers changed, not from a whole
//! description: after any sequence of guest writes (and a platform reset, and a hot-add),
//! every delta applied to the topology before it gives `describe()`.

use proptest::prelude::*;

use super::follow::follow_layout;
use super::routing::{apply, with_card, write};
use super::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn layout_deltas_equal_a_full_description(
        writes in proptest::collection::vec(write(), 1..40)
    ) {
        let mut h = with_card();
        h.layout_delta();
        let mut held = h.describe();
        enable_ecam(&mut h, 0xb000_0000);
        follow_layout(&mut h, &mut held, &"")?;
        for w in &writes {
            apply(&mut h, w);
            follow_layout(&mut h, &mut held, w)?;
        }
        h.reset();
        follow_layout(&mut h, &mut held, &"")?;
        // A card hot-added behind rp3: a new record at the end.
        let r = h.cold_plug(EndpointSpec {
            id: "hot".into(),
            driver: "virtio-net-pci".into(),
            bus: "rp3".into(),
            addr: crate::topology::DevFn(0),
            owner: "qemu".into(),
            multifunction: false,
        });
        prop_assert!(r.is_ok(), "{:?}", r);
        follow_layout(&mut h, &mut held, &"")?;
        prop_assert_eq!(held.functions.len(), 7);
    }
}

#[test]
fn a_write_that_moves_one_port_describes_one_record() {
    let mut h = with_card();
    h.layout_delta();
    // rp2 (00:02.1) takes buses 2-3: its record, and the card behind it (now present).
    h.config_write(0, 0x11, 0x18, 4, 0x0003_0200).unwrap();
    let d = h.layout_delta();
    let idx: Vec<u32> = d.updates.iter().map(|u| u.index).collect();
    assert_eq!(idx, [2, 5]);
    assert!(d.ranges.is_empty());
    // A write that changes no layout register gives an empty delta.
    h.config_write(0, 0x11, 0x3c, 1, 0x0b).unwrap();
    let d = h.layout_delta();
    assert!(d.updates.is_empty() && d.ranges.is_empty(), "{d:?}");
}
