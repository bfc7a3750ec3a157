//! Routing tests: configuration mechanism #1, ECAM through PCIEXBAR, bus numbers, remote
//! functions and BARs, driven through the same entry points the service uses.

use super::*;
use crate::devices::MachineType;
use crate::pci::{ErrorSeverity, SlotError};
use crate::topology::state;
use crate::Error;

fn hierarchy(devices: &[&str]) -> Hierarchy {
    let mut spec = TopologySpec::embedded_default().unwrap();
    for d in devices {
        spec.add_device_option(d).unwrap();
    }
    Hierarchy::new(spec).unwrap()
}

fn cf8(bus: u8, devfn: u8, reg: u8) -> u64 {
    0x8000_0000 | u64::from(bus) << 16 | u64::from(devfn) << 8 | u64::from(reg)
}

fn enable_ecam(h: &mut Hierarchy, base: u32) -> Effects {
    h.pio_write(0xcf8, 4, cf8(0, 0, 0x60)).unwrap();
    h.pio_write(0xcfc, 4, u64::from(base | 1)).unwrap()
}

#[test]
fn mechanism_1_reads_and_floats() {
    let mut h = hierarchy(&[]);
    h.pio_write(0xcf8, 4, cf8(0, 0x10, 0)).unwrap();
    assert_eq!(h.pio_read(0xcf8, 4), Ok(cf8(0, 0x10, 0)));
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0x000c_1b36), "rp1 at 00:02.0");
    assert_eq!(h.pio_read(0xcfe, 2), Ok(0x000c));
    assert_eq!(h.pio_read(0xcfd, 2), Ok(0x0c1b), "unaligned: byte by byte");
    assert_eq!(
        h.pio_read(0xcfd, 4),
        Ok(0xff00_0c1b),
        "bytes past 0xCFF float high"
    );
    // Non-dword accesses to CONFIG_ADDRESS are not configuration cycles; 0xCF9 is ICH9's.
    assert_eq!(h.pio_read(0xcf9, 1), Err(Status::NoDevice));
    assert_eq!(h.pio_write(0xcf8, 1, 0), Err(Status::NoDevice));
    assert_eq!(
        h.pio_read(0xcf8, 4),
        Ok(cf8(0, 0x10, 0)),
        "byte write did not latch"
    );
    // Bit 31 clear: all ones, writes dropped.
    h.pio_write(0xcf8, 4, 0x0000_1000).unwrap();
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0xffff_ffff));
    // Absent function.
    h.pio_write(0xcf8, 4, cf8(0, 0x18, 0)).unwrap();
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0xffff_ffff));
    // Not ours at all.
    assert_eq!(h.pio_read(0x60, 1), Err(Status::NoDevice));
    assert_eq!(h.pio_read(0xcfc, 8), Err(Status::Invalid));
}

#[test]
fn pciexbar_enables_moves_and_disables_ecam() {
    let mut h = hierarchy(&[]);
    assert_eq!(h.ecam(), None);
    let g0 = h.generation();
    assert!(enable_ecam(&mut h, 0xb000_0000).contains(Effects::ECAM));
    assert_eq!(h.ecam(), Some((0xb000_0000, 256 << 20, 255)));
    assert!(h.generation() > g0);
    assert_eq!(h.mmio_read(0xb000_0000, 4), Ok(0x29c0_8086));
    assert_eq!(h.mmio_read(0xb001_0000, 4), Ok(0x000c_1b36), "00:02.0");
    assert_eq!(
        h.mmio_read(0xb001_0000, 8),
        Ok(0x0010_0000_000c_1b36),
        "qword = two dwords"
    );
    // 64 MiB at 0xe0000000 (length bits 2:1 = 10).
    h.pio_write(0xcfc, 4, 0xe000_0005).unwrap();
    assert_eq!(h.ecam(), Some((0xe000_0000, 64 << 20, 63)));
    assert_eq!(
        h.mmio_read(0xb000_0000, 4),
        Err(Status::NoDevice),
        "old window gone"
    );
    assert_eq!(h.mmio_read(0xe000_0000, 4), Ok(0x29c0_8086));
    // Disable.
    h.pio_write(0xcfc, 4, 0xe000_0004).unwrap();
    assert_eq!(h.ecam(), None);
}

#[test]
fn bus_numbers_route_to_the_function_behind_the_port() {
    let mut h = hierarchy(&[
        "virtio-net-pci,id=net0,bus=rp2,owner=qemu",
        "ich9-lpc,id=lpc,bus=pcie.0,addr=1f.0,owner=qemu",
    ]);
    enable_ecam(&mut h, 0xb000_0000);
    let at = |bus: u64, devfn: u64| 0xb000_0000 + (bus << 20) + (devfn << 12);
    assert_eq!(
        h.mmio_read(at(0, 0xf8), 4),
        Err(Status::Remote),
        "LPC is QEMU's"
    );
    assert_eq!(h.mmio_read(at(5, 0), 4), Ok(0xffff_ffff), "no bus 5 yet");
    // rp2 (00:02.1): primary 0, secondary 5, subordinate 7.
    let fx = h.mmio_write(at(0, 0x11) + 0x18, 4, 0x0007_0500).unwrap();
    assert!(fx.contains(Effects::BUS_NUMBERS));
    assert_eq!(h.route(5, 0), Routed::Remote(0));
    assert_eq!(h.mmio_read(at(5, 0), 4), Err(Status::Remote));
    assert_eq!(
        h.route(5, 0x08),
        Routed::Absent,
        "only device 0 below a root port"
    );
    assert_eq!(
        h.route(6, 0),
        Routed::Remote(0),
        "buses below belong to the owner of 05:00.0"
    );
    assert_eq!(h.route(8, 0), Routed::Absent);
    let t = h.describe();
    let net = t
        .functions
        .iter()
        .find(|f| f.kind == pcierc_protocol::FunctionKind::Endpoint as u8)
        .unwrap();
    assert_eq!((net.bus, net.parent), (5, 2));
    // Renumbering moves it.
    h.mmio_write(at(0, 0x11) + 0x19, 1, 9).unwrap();
    h.mmio_write(at(0, 0x11) + 0x1a, 1, 9).unwrap();
    assert_eq!(h.route(5, 0), Routed::Absent);
    assert_eq!(h.route(9, 0), Routed::Remote(0));
}

#[test]
fn msix_bar_is_routed_when_programmed_and_enabled() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    let rp1 = 0xb000_0000u64 + (0x10 << 12);
    h.mmio_write(rp1 + 0x10, 4, 0xfe00_0000).unwrap();
    assert_eq!(
        h.mmio_read(0xfe00_0000, 4),
        Err(Status::NoDevice),
        "memory decode off"
    );
    let fx = h.mmio_write(rp1 + 4, 2, 0x2).unwrap();
    assert!(fx.contains(Effects::BARS));
    h.mmio_write(0xfe00_0000 + 8, 4, 0x4321).unwrap(); // vector 0 message data
    assert_eq!(h.mmio_read(0xfe00_0000 + 8, 4), Ok(0x4321));
    assert_eq!(
        h.mmio_read(0xfe00_0000 + 0x1000, 4),
        Err(Status::NoDevice),
        "past the 4 KiB BAR"
    );
}

#[test]
fn reset_and_state_round_trip() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(0xb001_0018, 4, 0x0003_0300).unwrap();
    let blob = state::save(&h);
    let before: Vec<u32> = (0..1024)
        .map(|i| h.config_read(0, 0x10, i * 4, 4).unwrap())
        .collect();
    h.reset();
    assert_eq!(h.ecam(), None);
    assert_eq!(h.config_read(0, 0x10, 0x18, 4), Ok(0));
    state::load(&mut h, &blob).unwrap();
    let after: Vec<u32> = (0..1024)
        .map(|i| h.config_read(0, 0x10, i * 4, 4).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(h.route(3, 0), Routed::Absent);
    assert_eq!(h.ecam(), Some((0xb000_0000, 256 << 20, 255)));
    // A blob for another topology is refused and changes nothing.
    let other = Hierarchy::new(TopologySpec::empty()).unwrap();
    let e = state::load(&mut h, &state::save(&other)).unwrap_err();
    assert!(
        matches!(&e, Error::State(StateError::Functions { got, expected })
            if got == &["mch"] && expected.len() == 5),
        "{e:?}"
    );
    assert_eq!(h.config_read(0, 0x10, 0x18, 4), Ok(0x0003_0300));
}

#[test]
fn state_blobs_from_older_builds_load_and_newer_versions_are_refused() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(0xb001_0018, 4, 0x0003_0300).unwrap();
    let mut blob: serde_json::Value = serde_json::from_slice(&state::save(&h)).unwrap();
    // Version 1 blobs written before the generation was recorded have no "generation".
    assert!(blob["generation"].as_u64().is_some_and(|g| g > 1));
    blob.as_object_mut().unwrap().remove("generation");
    let old = serde_json::to_vec(&blob).unwrap();
    let mut fresh = hierarchy(&[]);
    let g0 = fresh.generation();
    state::load(&mut fresh, &old).unwrap();
    assert_eq!(fresh.config_read(0, 0x10, 0x18, 4), Ok(0x0003_0300));
    assert!(
        fresh.generation() > g0,
        "a load still moves the generation on"
    );
    blob["version"] = 2.into();
    let e = state::load(&mut fresh, &serde_json::to_vec(&blob).unwrap()).unwrap_err();
    assert!(matches!(e, Error::State(StateError::Version(2))), "{e:?}");
    blob["version"] = 1.into();
    blob["format"] = "something-else".into();
    let e = state::load(&mut fresh, &serde_json::to_vec(&blob).unwrap()).unwrap_err();
    assert!(
        matches!(&e, Error::State(StateError::Format(f)) if f == "something-else"),
        "{e:?}"
    );
    assert!(e.to_string().contains("is not 'pcierc-state'"), "{e}");
    let e = state::load(&mut fresh, b"{").unwrap_err();
    assert!(matches!(e, Error::State(StateError::NotABlob(_))), "{e:?}");
}

#[test]
fn every_access_shape_is_answered_without_panicking() {
    let mut h = hierarchy(&["x,id=ep,bus=rp1,owner=qemu"]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(0xb001_0018, 4, 0x00ff_0100).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let width = [1u8, 2, 3, 4, 8, 0][(x % 6) as usize];
        let addr = 0xb000_0000 + (x >> 8) % (4 << 20);
        let port = 0xcf6 + (x >> 40) % 12;
        let _ = match (x >> 60) % 4 {
            0 => h.mmio_read(addr, width).map(drop),
            1 => h.mmio_write(addr, width, x).map(drop),
            2 => h.pio_read(port, width).map(drop),
            _ => h.pio_write(port, width, x >> 3).map(drop),
        };
        let _ = h.config_read(
            (x >> 16) as u8,
            (x >> 24) as u8,
            ((x >> 32) & 0x1fff) as u16,
            width,
        );
    }
    // The MCH identity never changes, whatever was written.
    assert_eq!(h.config_read(0, 0, 0, 4), Ok(0x29c0_8086));
}

mod expanders;
mod follow;
mod hotplug;
mod ioh3420;
mod layout_delta;
mod pcie_pci_bridge;
mod routing;
mod switch;

#[test]
fn snapshot_images_and_routes_agree_with_guest_reads() {
    let mut h = hierarchy(&["x,id=ep,bus=rp1,owner=qemu"]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(0xb001_0018, 4, 0x0001_0100).unwrap();
    let (changed, routes) = h.take_snapshot_changes();
    assert!(routes == BusSet::ALL && changed.len() == h.snapshot_functions());
    for n in 0..h.snapshot_functions() {
        let image = h.snapshot_image(n);
        assert_eq!(image.len(), 4096);
        let devfn = if n == 0 {
            0
        } else {
            h.spec().root_ports[n - 1].addr.0
        };
        for off in (0..4096u16).step_by(4) {
            let want = h.config_read(0, devfn, off, 4).unwrap();
            let got = u32::from_le_bytes(image[usize::from(off)..][..4].try_into().unwrap());
            assert_eq!(got, want, "function {n} at {off:#x}");
        }
    }
    let t = h.snapshot_routes();
    for bus in 0..=255u8 {
        for devfn in 0..=255u8 {
            let want = match h.route(bus, devfn) {
                Routed::Local(Slot::Mch) => 1,
                Routed::Local(Slot::Port(p)) => p + 2,
                Routed::Remote(_) => 0xffff,
                _ => 0,
            };
            assert_eq!(
                t[usize::from(bus) << 8 | usize::from(devfn)],
                want,
                "{bus:02x}:{devfn:02x}"
            );
        }
    }
    assert_eq!(t[0], 1, "00:00.0 is the MCH");
    assert_eq!(t[0x10], 2, "00:02.0 is rp1");
    assert_eq!(
        t[0x0100], 0xffff,
        "01:00.0 is the endpoint, another emulator's"
    );
    assert_eq!(t[0x0200], 0, "nothing on bus 2");
    // A write marks only its function; bus numbers mark the routes.
    h.config_write(0, 0x11, 0x1c, 2, 0x2010).unwrap();
    assert_eq!(h.take_snapshot_changes(), (vec![2], BusSet::default()));
    h.config_write(0, 0x11, 0x18, 4, 0x0002_0200).unwrap();
    let (changed, buses) = h.take_snapshot_changes();
    assert_eq!(
        (changed, buses.iter().collect::<Vec<_>>()),
        (vec![2], vec![2])
    );
}

#[test]
fn msix_bars_are_found_by_address_and_overlaps_resolve_to_the_lowest_port() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    // rp1..rp4 (00:02.0-3): BAR0 at 0xfe00_0000 + i * 0x10_0000, memory decode on.
    for i in 0..4u64 {
        let cfg = 0xb000_0000 + ((0x10 + i) << 12);
        h.mmio_write(cfg + 0x10, 4, 0xfe00_0000 + i * 0x10_0000)
            .unwrap();
        h.mmio_write(cfg + 4, 2, 0x2).unwrap();
        // Message Data of vector 0 identifies the port.
        h.mmio_write(0xfe00_0008 + i * 0x10_0000, 4, 0x100 + i)
            .unwrap();
    }
    for i in 0..4u64 {
        assert_eq!(h.mmio_read(0xfe00_0008 + i * 0x10_0000, 4), Ok(0x100 + i));
    }
    assert_eq!(
        h.mmio_read(0xfe00_1000, 4),
        Err(Status::NoDevice),
        "past rp1's 4 KiB BAR"
    );
    assert_eq!(
        h.mmio_read(0xfd00_0000, 4),
        Err(Status::NoDevice),
        "below every BAR"
    );
    // rp2's BAR moved onto rp1's: rp1 answers (the lower port), as the scan order always did.
    h.mmio_write(0xb001_1010, 4, 0xfe00_0000).unwrap();
    assert_eq!(h.mmio_read(0xfe00_0008, 4), Ok(0x100));
    // Memory decode off: rp1's BAR no longer decodes, rp2 answers there now.
    h.mmio_write(0xb001_0004, 2, 0).unwrap();
    assert_eq!(h.mmio_read(0xfe00_0008, 4), Ok(0x101));
}

#[test]
fn state_records_the_machine_type_and_refuses_another() {
    let on = |machine| {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.machine = machine;
        Hierarchy::new(spec).unwrap()
    };
    let mut h10 = on(MachineType::PcQ35V10_0);
    enable_ecam(&mut h10, 0xb000_0000);
    // rp1 at 00:02.0: AER Uncorrectable Error Mask (0x108) is writable on pc-q35-10.0 only.
    h10.mmio_write(0xb001_0108, 4, 0x0000_1000).unwrap();
    assert_eq!(h10.config_read(0, 0x10, 0x108, 4), Ok(0x0000_1000));
    let blob = state::save(&h10);
    let json: serde_json::Value = serde_json::from_slice(&blob).unwrap();
    assert_eq!(json["machine"], "pc-q35-10.0");

    let mut h7 = on(MachineType::PcQ35V7_2);
    assert_eq!(
        h7.config_read(0, 0x10, 0x108, 4),
        Ok(0),
        "read-only zero on 7.2"
    );
    let e = state::load(&mut h7, &blob).unwrap_err();
    assert!(
        matches!(
            e,
            Error::State(StateError::Machine {
                saved: MachineType::PcQ35V10_0,
                running: MachineType::PcQ35V7_2
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("pc-q35-10.0"), "{e}");
    assert_eq!(h7.ecam(), None, "a refused load changes nothing");

    // Blobs from before machine types were recorded are pc-q35-7.2's.
    let mut old: serde_json::Value = serde_json::from_slice(&state::save(&h7)).unwrap();
    old.as_object_mut().unwrap().remove("machine");
    let old = serde_json::to_vec(&old).unwrap();
    state::load(&mut h7, &old).unwrap();
    let e = state::load(&mut h10, &old).unwrap_err();
    assert!(
        matches!(
            e,
            Error::State(StateError::Machine {
                saved: MachineType::PcQ35V7_2,
                ..
            })
        ),
        "{e:?}"
    );
    // The same machine type loads.
    let mut other10 = on(MachineType::PcQ35V10_0);
    state::load(&mut other10, &blob).unwrap();
    assert_eq!(other10.config_read(0, 0x10, 0x108, 4), Ok(0x0000_1000));
}

#[test]
fn pc_q35_10_0_masks_uncorrectable_internal_errors_until_the_guest_unmasks_them() {
    // rp1 (00:02.0) through ECAM: AER at 0x100.
    const RP1: u64 = 0xb001_0000;
    let (mask, status, root_status) = (RP1 + 0x108, RP1 + 0x104, RP1 + 0x130);
    let internal: u32 = 1 << 22; // Uncorrectable Internal Error (PCIe Base 6.0 §7.8.4.2)
    for (machine, reported) in [
        (MachineType::PcQ35V7_2, true),
        (MachineType::PcQ35V10_0, false),
    ] {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.machine = machine;
        let mut h = Hierarchy::new(spec).unwrap();
        enable_ecam(&mut h, 0xb000_0000);
        h.inject_error("rp1", ErrorSeverity::NonFatal, internal)
            .unwrap();
        assert_eq!(
            h.mmio_read(status, 4).unwrap(),
            u64::from(internal),
            "{machine}: recorded"
        );
        assert_eq!(
            h.mmio_read(root_status, 4).unwrap() & 0x7f != 0,
            reported,
            "{machine}: reported to the root unless masked (§6.2.3.2.2)"
        );
        if machine == MachineType::PcQ35V10_0 {
            h.mmio_write(status, 4, internal.into()).unwrap(); // RW1C
            h.mmio_write(mask, 4, 0).unwrap();
            h.inject_error("rp1", ErrorSeverity::NonFatal, internal)
                .unwrap();
            assert_ne!(h.mmio_read(root_status, 4).unwrap() & 0x7f, 0, "unmasked");
        }
    }
}
