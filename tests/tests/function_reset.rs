//! Resets reach the owners of the functions below a root port: a Secondary Bus Reset the guest
//! writes, the guest powering a slot off with the card in it, and a platform reset each send
//! `FunctionReset` to the owning frontend only, before the reply of the request that caused it.

use std::time::Duration;

use pcierc_protocol::{
    decode_name, BackendChannel, Frontend, FrontendOptions, Notification, ProtocolFeatures,
    ResetReason,
};
use pcierc_tests::process::Backend;

const ECAM: u64 = 0xb000_0000;
const RP2: u64 = ECAM + (0x11 << 12); // 00:02.1
const RP3: u64 = ECAM + (0x12 << 12); // 00:02.2
const RP4: u64 = ECAM + (0x13 << 12); // 00:02.3
/// Bridge Control (PCI-to-PCI Bridge 1.2 §3.2.5.18); bit 6 Secondary Bus Reset.
const BRIDGE_CONTROL: u64 = 0x3e;
/// Slot Control and Slot Status of the PCIe capability at 0x54 (PCIe Base 6.0 §7.5.3.10-11).
const SLTCTL: u64 = 0x6c;
const SLTSTA: u64 = 0x6e;

/// Every notification waiting on `ch` (the backend queues them before the reply of the request
/// that caused them, so after that reply they are all there).
fn drain(ch: &mut BackendChannel) -> Vec<Notification> {
    let mut out = Vec::new();
    while let Some(n) = ch.recv_timeout(Duration::from_millis(200)).unwrap() {
        out.push(n);
    }
    out
}

/// The `FunctionReset`s among `ns`, as (id, bus, devfn, reason).
fn resets(ns: &[Notification]) -> Vec<(String, u8, u8, Option<ResetReason>)> {
    ns.iter()
        .filter_map(|n| match n {
            Notification::FunctionReset(r) => Some((
                decode_name(&r.function.id).unwrap_or("?").to_string(),
                r.function.bus,
                r.function.devfn,
                r.reason(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn guest_resets_reach_the_owner_of_the_function_only() {
    use ResetReason::*;
    let b = Backend::start(&[]);
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).unwrap();
    let mut vmm_ch = vmm.take_backend_channel().unwrap();
    let mut gpu = Frontend::connect(&b.socket, FrontendOptions::vmm("gpu-dm")).unwrap();
    let mut gpu_ch = gpu.take_backend_channel().unwrap();
    let mut qemu = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).unwrap();
    let mut qemu_ch = qemu.take_backend_channel().unwrap();
    // An owner that did not negotiate RESET_EVENTS is not sent them.
    let mut old_opts = FrontendOptions::vmm("old-dm");
    old_opts.protocol_features -= ProtocolFeatures::RESET_EVENTS;
    let mut old = Frontend::connect(&b.socket, old_opts).unwrap();
    let mut old_ch = old.take_backend_channel().unwrap();
    assert!(!old
        .protocol_features()
        .contains(ProtocolFeatures::RESET_EVENTS));

    vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    vmm.mmio_write(RP2 + 0x18, 4, 0x0002_0200).unwrap();
    vmm.mmio_write(RP3 + 0x18, 4, 0x0003_0300).unwrap();
    vmm.mmio_write(RP4 + 0x18, 4, 0x0004_0400).unwrap();
    gpu.claim_function("rp2", "gpu0", "vfio-pci", 0, true, false)
        .unwrap();
    qemu.claim_function("rp3", "net0", "e1000e", 0, true, false)
        .unwrap();
    old.claim_function("rp4", "blk0", "virtio-blk-pci", 0, true, false)
        .unwrap();
    for ch in [&mut vmm_ch, &mut gpu_ch, &mut qemu_ch, &mut old_ch] {
        assert_eq!(resets(&drain(ch)), vec![], "claims reset nothing");
    }

    // Secondary Bus Reset 0 -> 1 on rp2, written by the guest's VMM: gpu-dm hears of gpu0.
    vmm.mmio_write(RP2 + BRIDGE_CONTROL, 2, 0x0040).unwrap();
    assert_eq!(
        resets(&drain(&mut gpu_ch)),
        vec![("gpu0".into(), 2, 0, Some(SecondaryBusReset))]
    );
    // Held at 1 (no edge), then released: nothing more.
    vmm.mmio_write(RP2 + BRIDGE_CONTROL, 2, 0x0040).unwrap();
    vmm.mmio_write(RP2 + BRIDGE_CONTROL, 2, 0).unwrap();
    assert_eq!(resets(&drain(&mut gpu_ch)), vec![]);
    // The same on rp3 and rp4: qemu hears of net0 (and never of gpu0), old-dm of nothing.
    vmm.mmio_write(RP3 + BRIDGE_CONTROL, 2, 0x0040).unwrap();
    vmm.mmio_write(RP4 + BRIDGE_CONTROL, 2, 0x0040).unwrap();
    assert_eq!(
        resets(&drain(&mut qemu_ch)),
        vec![("net0".into(), 3, 0, Some(SecondaryBusReset))]
    );
    assert_eq!(resets(&drain(&mut old_ch)), vec![]);
    assert_eq!(resets(&drain(&mut gpu_ch)), vec![]);

    // The guest turns rp2's slot power off with the power indicator on: the card stays (no
    // removal), gpu0 is reset (PCIe Base 6.0 §6.7.1.8).
    let ctl = vmm.mmio_read(RP2 + SLTCTL, 2).unwrap();
    assert_eq!(ctl & 0x0700, 0x0100, "powered, power indicator on");
    vmm.mmio_write(RP2 + SLTCTL, 2, ctl | 0x0400).unwrap();
    let ns = drain(&mut gpu_ch);
    assert_eq!(resets(&ns), vec![("gpu0".into(), 2, 0, Some(SlotPowerOff))]);
    assert!(
        !ns.iter()
            .any(|n| matches!(n, Notification::FunctionRemoved(_))),
        "{ns:?}"
    );
    assert_ne!(
        vmm.mmio_read(RP2 + SLTSTA, 2).unwrap() & 0x40,
        0,
        "still present"
    );
    // Power back on: no reset.
    vmm.mmio_write(RP2 + SLTCTL, 2, ctl).unwrap();
    assert_eq!(resets(&drain(&mut gpu_ch)), vec![]);

    // A platform reset: each owner hears of its own functions.
    vmm.reset().unwrap();
    assert_eq!(
        resets(&drain(&mut gpu_ch)),
        vec![("gpu0".into(), 0, 0, Some(PlatformReset))],
        "bus 0: the port's secondary bus is unprogrammed after the reset"
    );
    assert_eq!(
        resets(&drain(&mut qemu_ch)),
        vec![("net0".into(), 0, 0, Some(PlatformReset))]
    );
    assert_eq!(resets(&drain(&mut old_ch)), vec![]);
    // The guest-side frontend owns nothing and is told nothing.
    assert_eq!(resets(&drain(&mut vmm_ch)), vec![]);
}
