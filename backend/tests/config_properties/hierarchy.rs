//! Properties of the hierarchy (embedded default topology: MCH at 00:00.0, root ports at
//! 00:02.0-3; optionally functions other emulators serve).

use pcierc_backend::pci::PciFunction;
use pcierc_backend::topology::{Hierarchy, TopologySpec};
use pcierc_protocol::Topology;
use proptest::prelude::*;

use crate::{
    accesses::{accesses, run},
    config, fail,
    identity::{identity_map, snapshot},
    CaseResult,
};

/// The embedded default topology, with (`remote`) a function another emulator serves behind
/// rp2 and one on the root bus.
pub(crate) fn hierarchy(remote: bool) -> CaseResult<Hierarchy> {
    let mut spec = TopologySpec::embedded_default().or_else(fail)?;
    if remote {
        for d in [
            "virtio-net-pci,id=net0,bus=rp2,owner=qemu",
            "ich9-lpc,id=lpc,bus=pcie.0,addr=1f.0,owner=qemu",
        ] {
            spec.add_device_option(d).or_else(fail)?;
        }
    }
    Hierarchy::new(spec).or_else(fail)
}

proptest! {
    #![proptest_config(config(96))]

    /// The hierarchy under any trapped and direct accesses: documented statuses, values that
    /// fit, mechanism #1 and ECAM consistent with direct reads, a generation that never goes
    /// back, a topology description that always validates and round-trips, and identity
    /// registers of every function intact.
    #[test]
    fn hierarchy_survives_any_access(accesses in accesses(), remote in any::<bool>()) {
        let mut h = hierarchy(remote)?;
        let maps: Vec<_> = std::iter::once(identity_map(h.mch()))
            .chain(h.ports().iter().map(|p| identity_map(p)))
            .collect();
        let ids = |h: &Hierarchy| -> Vec<Vec<u32>> {
            std::iter::once(h.mch() as &dyn PciFunction)
                .chain(h.ports().iter().map(|p| p as &dyn PciFunction))
                .zip(&maps)
                .map(|(f, m)| snapshot(f, m))
                .collect()
        };
        let before = ids(&h);
        let mut generation = h.generation();
        for a in &accesses {
            run(&mut h, a)?;
            prop_assert!(h.generation() >= generation, "generation went back after {:?}", a);
            generation = h.generation();
            let topo = h.describe();
            if let Err(e) = topo.validate() {
                return fail(format!("after {a:?} the topology is invalid: {e}: {topo:?}"));
            }
            prop_assert_eq!(Topology::decode(&topo.encode()).ok(), Some(topo));
        }
        prop_assert_eq!(ids(&h), before);
    }
}
