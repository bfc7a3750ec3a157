//! `LAYOUT_DELTA` against the real `pcierc`: a frontend that takes layout deltas sees, change
//! by change, the same topologies as one that takes the whole form, for far fewer bytes; and a
//! frontend whose layout went stale is told to resynchronise instead of acting on it.

use std::time::Duration;

use pcierc_examples::firmware::{enumerate, Layout};
use pcierc_examples::socket_bus::SocketBus;
use pcierc_protocol::{
    BackendChannel, Frontend, FrontendOptions, LayoutChanges, Notification, ProtocolFeatures,
    Topology,
};
use pcierc_tests::process::Backend;

fn watcher(b: &Backend, name: &str, delta: bool) -> (Frontend, BackendChannel) {
    let mut opts = FrontendOptions::vmm(name);
    if !delta {
        opts.protocol_features -= ProtocolFeatures::LAYOUT_DELTA;
    }
    let mut fe = Frontend::connect(&b.socket, opts).expect("handshake");
    assert_eq!(
        fe.protocol_features()
            .contains(ProtocolFeatures::LAYOUT_DELTA),
        delta
    );
    let ch = fe.take_backend_channel().expect("backend channel");
    (fe, ch)
}

/// Every layout notification waiting on `ch`, as (changes, topology).
fn layouts(ch: &mut BackendChannel) -> Vec<(LayoutChanges, Topology)> {
    let mut out = Vec::new();
    while let Some(n) = ch.recv_timeout(Duration::from_millis(500)).unwrap() {
        match n {
            Notification::LayoutChanged { changes, topology } => out.push((changes, topology)),
            Notification::LayoutResync { .. } => panic!("unexpected resync"),
            _ => {}
        }
    }
    out
}

#[test]
fn deltas_give_the_same_topologies_as_the_whole_form() {
    let b = Backend::start(&[
        "--device",
        "virtio-net-pci,id=net0,bus=rp2,owner=qemu",
        "--device",
        "virtio-blk-pci,id=blk0,bus=rp4,owner=qemu",
    ]);
    let (_d, mut delta) = watcher(&b, "delta", true);
    let (_w, mut whole) = watcher(&b, "whole", false);
    let mut bus = SocketBus(
        Frontend::connect(&b.socket, FrontendOptions::vmm("firmware")).expect("handshake"),
    );
    enumerate(&mut bus, Layout::default()).expect("enumeration");
    // A platform reset moves everything back, then the firmware runs again.
    bus.0.reset().expect("reset");
    enumerate(&mut bus, Layout::default()).expect("second enumeration");
    let (got, want) = (layouts(&mut delta), layouts(&mut whole));
    assert!(want.len() > 20, "{} layout notifications", want.len());
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "notification {i}");
    }
    let now = bus.0.topology().unwrap();
    assert_eq!(got.last().map(|l| &l.1), Some(&now));
    // The delta form is much smaller: usually one record or range per change.
    let (db, wb) = (delta.layout_bytes(), whole.layout_bytes());
    assert!(db * 4 < wb, "delta {db} bytes, whole {wb} bytes");
}

#[test]
fn a_stale_layout_is_resynchronised_not_used() {
    let b = Backend::start(&[]);
    let (mut fe, mut ch) = watcher(&b, "stale", true);
    let mut bus = SocketBus(
        Frontend::connect(&b.socket, FrontendOptions::vmm("firmware")).expect("handshake"),
    );
    enumerate(&mut bus, Layout::default()).expect("enumeration");
    let seen = layouts(&mut ch);
    let first = seen.first().expect("layout notifications").1.clone();
    // The frontend's layout goes stale (as after a notification it refused): the next change
    // must not be applied to it.
    ch.set_layout(first);
    bus.0.reset().expect("reset");
    let n = ch
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("a notification");
    let Notification::LayoutResync {
        changes,
        generation,
    } = n
    else {
        panic!("expected LayoutResync, got {n:?}");
    };
    assert!(ch.layout().is_none());
    let Notification::LayoutChanged { topology, .. } = ch.resync(&mut fe, changes).unwrap() else {
        panic!("resync gives a LayoutChanged");
    };
    assert!(topology.generation >= generation);
    assert_eq!(topology, bus.0.topology().unwrap());
    // From the resynchronised layout, deltas apply again.
    enumerate(&mut bus, Layout::default()).expect("second enumeration");
    let after = layouts(&mut ch);
    assert_eq!(after.last().map(|l| &l.1), Some(&bus.0.topology().unwrap()));
}
