//! `CONFIG_ADDRESS_LATCH`: a frontend that latches CONFIG_ADDRESS (0xCF8) itself and sends
//! CONFIG_DATA accesses as addressed configuration requests shows the guest exactly what the
//! backend's own register does, for every port, width and value (PCI Local Bus 3.0
//! §3.2.2.3.2, QEMU 7.2's q35), across a platform reset and a reconnection; and the backend's
//! register is left to the frontends that do not latch.

use std::time::Duration;

use pcierc_protocol::{Frontend, FrontendOptions, ProtocolFeatures, ResumableFrontend, Status};
use pcierc_tests::process::Backend;

/// rp1 (00:02.0) with a function another emulator serves behind it.
const ARGS: &[&str] = &["--device", "virtio-net-pci,id=net0,bus=rp1,owner=qemu"];

fn latching(name: &str) -> FrontendOptions {
    let mut opts = FrontendOptions::vmm(name);
    opts.protocol_features |= ProtocolFeatures::CONFIG_ADDRESS_LATCH;
    opts
}

/// What a guest sees of one access: the value read (0 for a write), or the refusal.
fn seen(r: pcierc_protocol::Result<u64>) -> Result<u64, Option<Status>> {
    r.map_err(|e| e.status())
}

/// A small xorshift generator: reproducible sequences without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// A CONFIG_ADDRESS value: enable bit on or off, a bus with functions (0, 1) or none (5),
/// present and absent devfns, any register, and junk in the reserved bits at times.
fn config_address(rng: &mut Rng) -> u64 {
    let enable = rng.pick(&[0x8000_0000u64, 0x8000_0000, 0x8000_0000, 0]);
    let bus = rng.pick(&[0u64, 0, 1, 5]);
    let devfn = rng.pick(&[0u64, 0x10, 0x11, 0x08, 0x01]);
    let reg = rng.next() & 0xff;
    let junk = rng.pick(&[0u64, 0, 0, 0x7f00_0000]);
    enable | junk | bus << 16 | devfn << 8 | reg
}

/// One random port access by the guest.
fn access(fe: &mut Frontend, op: (u64, u64, u8, u64)) -> Result<u64, Option<Status>> {
    let (kind, port, width, value) = op;
    if kind == 0 {
        seen(fe.pio_read(port, width))
    } else {
        seen(fe.pio_write(port, width, value).map(|()| 0))
    }
}

fn random_op(rng: &mut Rng) -> (u64, u64, u8, u64) {
    let port = rng.pick(&[
        0xcf8u64, 0xcf8, 0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfc, 0xcfd, 0xcfe, 0xcff,
    ]);
    let width = rng.pick(&[1u8, 2, 4, 4, 4, 8]);
    let write = rng.next().is_multiple_of(3);
    let value = if port == 0xcf8 && width == 4 {
        config_address(rng)
    } else {
        // Writes to CONFIG_DATA: bus numbers, windows, command bits, anything; now and then a
        // value wider than the access (refused).
        let mask = if width == 8 || rng.next().is_multiple_of(8) {
            u64::MAX
        } else {
            (1u64 << (8 * u32::from(width))) - 1
        };
        rng.next() & mask
    };
    // Dword writes to 0xCF8 are most of what a guest does.
    let kind = if port == 0xcf8 && width == 4 {
        1
    } else {
        u64::from(write)
    };
    (kind, port, width, value)
}

#[test]
fn latching_in_the_frontend_shows_the_guest_what_the_backend_register_does() {
    let a = Backend::start(ARGS);
    let b = Backend::start(ARGS);
    let mut latched = Frontend::connect(&a.socket, latching("latched")).unwrap();
    let mut plain = Frontend::connect(&b.socket, FrontendOptions::vmm("plain")).unwrap();
    assert!(latched.config_address_latch().is_some(), "negotiated");
    assert_eq!(
        plain.config_address_latch(),
        None,
        "not asked for by default"
    );
    // rp1 forwards bus 1, where 01:00.0 is another emulator's (EREMOTE).
    for fe in [&mut latched, &mut plain] {
        fe.config_write(0, 0, 0x10, 0x18, 4, 0x0001_0100).unwrap();
    }
    for seed in 1..=8u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x1000_0001));
        let mut trace = Vec::new();
        for _ in 0..300 {
            let op = random_op(&mut rng);
            trace.push(op);
            let got = access(&mut latched, op);
            let want = access(&mut plain, op);
            assert_eq!(
                got,
                want,
                "seed {seed}, after {} accesses, last (write?, port, width, value) {op:x?}",
                trace.len()
            );
        }
        // The two hierarchies were written alike: every register of every function agrees.
        for devfn in [0u8, 0x10, 0x11, 0x12, 0x13] {
            for off in (0..0x100u16).step_by(4) {
                assert_eq!(
                    seen(latched.config_read(0, 0, devfn, off, 4).map(u64::from)),
                    seen(plain.config_read(0, 0, devfn, off, 4).map(u64::from)),
                    "seed {seed}: 00:{:02x}.{} offset {off:#x}",
                    devfn >> 3,
                    devfn & 7
                );
            }
        }
    }
}

#[test]
fn config_address_resets_to_zero_with_the_platform() {
    let b = Backend::start(ARGS);
    let mut fe = Frontend::connect(&b.socket, latching("vmm")).unwrap();
    fe.pio_write(0xcf8, 4, 0x8000_1000).unwrap();
    assert_eq!(fe.pio_read(0xcf8, 4).unwrap(), 0x8000_1000);
    assert_eq!(fe.pio_read(0xcfc, 4).unwrap(), 0x000c_1b36, "rp1's IDs");
    // A reboot: the VMM resets the platform.
    fe.reset().unwrap();
    assert_eq!(
        fe.pio_read(0xcf8, 4).unwrap(),
        0,
        "CONFIG_ADDRESS is 0 after reset"
    );
    assert_eq!(fe.config_address_latch(), Some(0));
    assert_eq!(
        fe.pio_read(0xcfc, 4).unwrap(),
        0xffff_ffff,
        "mechanism disabled: all ones"
    );
    // And the backend's own register reset too (for frontends that do not latch).
    let mut plain = Frontend::connect(&b.socket, FrontendOptions::vmm("plain")).unwrap();
    assert_eq!(plain.pio_read(0xcf8, 4).unwrap(), 0);
}

#[test]
fn the_latch_is_the_frontends_own_and_survives_a_reconnection() {
    let b = Backend::start(ARGS);
    let mut plain = Frontend::connect(&b.socket, FrontendOptions::vmm("plain")).unwrap();
    plain.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    // A latching frontend starts from the backend's register (what a state file restored, or
    // a frontend that did not latch left there) ...
    let mut fe = ResumableFrontend::connect(&b.socket, latching("vmm")).unwrap();
    assert_eq!(fe.frontend().pio_read(0xcf8, 4).unwrap(), 0x8000_0060);
    // ... and from then on owns its own: the backend's register is not written.
    fe.frontend().pio_write(0xcf8, 4, 0x8000_1008).unwrap();
    assert_eq!(plain.pio_read(0xcf8, 4).unwrap(), 0x8000_0060);
    assert_eq!(
        fe.frontend().pio_read(0xcfc, 4).unwrap(),
        u64::from(plain.config_read(0, 0, 0x10, 0x08, 4).unwrap()),
        "Class Code and Revision of 00:02.0"
    );
    // A reconnection keeps what the guest latched, not what the backend holds.
    fe.resume(Duration::from_secs(5)).unwrap();
    assert_eq!(fe.frontend().config_address_latch(), Some(0x8000_1008));
    assert_eq!(fe.frontend().pio_read(0xcf8, 4).unwrap(), 0x8000_1008);
    // Saved and restored by whoever migrates the guest.
    assert!(fe.frontend().set_config_address_latch(0x8000_0000));
    assert_eq!(
        fe.frontend().pio_read(0xcfc, 2).unwrap(),
        0x8086,
        "the MCH's vendor"
    );
    assert!(
        !plain.set_config_address_latch(1),
        "a frontend that does not latch has no latch to restore"
    );
}
