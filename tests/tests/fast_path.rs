//! The read fast path (`SetConfigSnapshot`): on by default, off when left out of the
//! features, served with no message, and coherent with writes from any frontend.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use pcierc_protocol::{Frontend, FrontendOptions, ProtocolFeatures, Status};
use pcierc_tests::process::Backend;

const RP1: u8 = 0x10;
const ECAM: u64 = 0xb000_0000;

#[test]
fn reads_come_from_the_snapshot_and_follow_every_write() {
    let mut b = Backend::start(&["--device", "virtio-net-pci,id=net0,bus=rp1,owner=qemu"]);
    let mut fast = Frontend::connect(&b.socket, FrontendOptions::vmm("fast")).unwrap();
    assert!(fast.snapshot_active(), "on by default");
    let mut opts = FrontendOptions::vmm("slow");
    opts.protocol_features -= ProtocolFeatures::CONFIG_SNAPSHOT;
    let mut slow = Frontend::connect(&b.socket, opts).unwrap();
    assert!(!slow.snapshot_active(), "and can be turned off");

    // Writes through one frontend are visible to the other's fast path after the reply.
    slow.config_write(0, 0, RP1, 0x18, 4, 0x0001_0100).unwrap();
    assert_eq!(fast.config_read(0, 0, RP1, 0x18, 4).unwrap(), 0x0001_0100);
    assert_eq!(
        fast.config_read(0, 1, 0, 0, 4).unwrap_err().status(),
        Some(Status::Remote),
        "01:00.0 is another emulator's"
    );
    assert_eq!(
        fast.config_read(0, 0, 0x08, 0, 2).unwrap(),
        0xffff,
        "absent"
    );
    // ECAM and CONFIG_DATA decode in the frontend, with the backend's latch and window.
    fast.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    fast.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    assert_eq!(
        fast.mmio_read(ECAM + (0x10 << 12) + 0x18, 4).unwrap(),
        0x0001_0100
    );
    fast.pio_write(0xcf8, 4, 0x8000_1000).unwrap(); // 00:02.0 offset 0
    assert_eq!(fast.pio_read(0xcfc, 4).unwrap(), 0x000c_1b36);
    // Both paths agree on every dword of every function.
    for devfn in [0u8, 0x10, 0x11, 0x12, 0x13] {
        for off in (0..4096u16).step_by(4) {
            assert_eq!(
                fast.config_read(0, 0, devfn, off, 4).unwrap(),
                slow.config_read(0, 0, devfn, off, 4).unwrap(),
                "{devfn:#x} {off:#x}"
            );
        }
    }
    // A read never tears while another frontend keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let writer = {
        let socket = b.socket.clone();
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut w = Frontend::connect(&socket, FrontendOptions::tool("writer")).unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let v = if n & 1 == 0 { 0x1111_1111 } else { 0xeeee_eeee };
                w.config_write(0, 0, RP1, 0x200, 4, v).unwrap();
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    // At least 200,000 reads, and until the writer has written 1,000 times (in a release build
    // 200,000 reads from the snapshot can end before the writer's handshake does).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut reads = 0u32;
    while reads < 200_000 || written.load(Ordering::Relaxed) < 1_000 {
        let v = fast.config_read(0, 0, RP1, 0x200, 4).unwrap();
        assert!(
            matches!(v, 0 | 0x1111_1111 | 0xeeee_eeee),
            "torn read {v:#x}"
        );
        reads += 1;
        assert!(
            std::time::Instant::now() < deadline || reads < 200_000,
            "the writer made {} writes in 60 s",
            written.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    // No message: with the backend gone, reads still answer (writes cannot).
    b.kill();
    assert_eq!(fast.config_read(0, 0, RP1, 0x18, 4).unwrap(), 0x0001_0100);
    assert!(slow.config_read(0, 0, RP1, 0x18, 4).is_err());
}
