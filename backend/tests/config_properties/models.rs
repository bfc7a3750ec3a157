//! Properties of the function models under any accesses and events: no panic, reads fit,
//! identity kept, save/restore faithful, tampered state restored whole or refused.

use pcierc_backend::devices::{Mch, RootPort, RootPortConfig};
use pcierc_backend::pci::PciFunction;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::{
    config,
    identity::{assert_read_only, identity_map, snapshot},
    ops::{apply, event, op, port_config},
};

proptest! {
    #![proptest_config(config(128))]

    /// The MCH under any accesses: no panic, reads fit, identity kept, and after save/restore a
    /// fresh MCH reads the same everywhere.
    #[test]
    fn mch_survives_any_access(ops in vec(op(false), 1..64)) {
        let mut mch = Mch::new();
        let map = identity_map(&mch);
        assert_read_only(&mch, &map)?;
        let before = snapshot(&mch, &map);
        for op in &ops {
            apply(&mut mch, op, 0x100)?;
            prop_assert_eq!(&snapshot(&mch, &map), &before, "after {:?}", op);
        }
        let mut copy = Mch::new();
        prop_assert!(copy.restore(&mch.save()).is_ok());
        for o in (0..0x1000).step_by(4) {
            prop_assert_eq!(copy.config_read(o, 4), mch.config_read(o, 4), "{:#x}", o);
        }
    }

    /// A root port with any properties under any accesses and platform events (hot-plug, PME,
    /// AER): no panic, reads fit, identity and capability chains kept, save/restore faithful.
    #[test]
    fn root_port_survives_any_access(cfg in port_config(), ops in vec(op(true), 1..64)) {
        let mut port = RootPort::new(cfg.clone());
        let map = identity_map(&port);
        assert_read_only(&port, &map)?;
        let before = snapshot(&port, &map);
        for op in &ops {
            event(&mut port, op)?;
            prop_assert_eq!(&snapshot(&port, &map), &before, "after {:?}", op);
        }
        let mut copy = RootPort::new(cfg);
        prop_assert!(copy.restore(&port.save()).is_ok());
        for o in (0..0x1000).step_by(4) {
            prop_assert_eq!(copy.config_read(o, 4), port.config_read(o, 4), "{:#x}", o);
        }
        prop_assert_eq!(copy.save(), port.save());
    }

    /// Saved state that was tampered with is restored whole or refused with nothing changed, and
    /// the function goes on serving accesses either way.
    #[test]
    fn tampered_state_is_all_or_nothing(
        ops in vec(op(true), 0..16),
        edits in vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
        later in vec(op(true), 0..16),
        is_mch in any::<bool>(),
    ) {
        let cfg = RootPortConfig { id: "rp".into(), ..Default::default() };
        let (mut mch, mut port) = (Mch::new(), RootPort::new(cfg));
        let (f, size): (&mut dyn PciFunction, u16) = if is_mch {
            for op in &ops {
                apply(&mut mch, op, 0x100)?;
            }
            (&mut mch, 0x100)
        } else {
            for op in &ops {
                event(&mut port, op)?;
            }
            (&mut port, 0x1000)
        };
        let mut text: Vec<char> = f.save().to_string().chars().collect();
        for (at, c) in &edits {
            let i = at.index(text.len());
            text[i] = *c;
        }
        let text: String = text.into_iter().collect();
        if let Ok(tampered) = serde_json::from_str::<serde_json::Value>(&text) {
            let before = f.save();
            if f.restore(&tampered).is_err() {
                prop_assert_eq!(f.save(), before, "a refused state changed the function");
            }
        }
        // Serve on (guest accesses only: platform events need the concrete port).
        for op in &later {
            apply(f, op, size)?;
        }
    }
}
