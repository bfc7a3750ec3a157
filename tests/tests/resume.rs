//! Reconnection without guest-visible change: a VMM frontend ([`ResumableFrontend`]) that loses
//! its connection, or whose backend is killed and restarted from its state file, reconnects,
//! re-sends its backend channel and interrupt eventfds, and learns from the layout generation
//! that nothing moved; its guest's interrupts keep arriving on the same eventfd.

use std::time::Duration;

use pcierc_protocol::{BackendChannel, FrontendOptions, Notification, ResumableFrontend};
use pcierc_tests::process::{Backend, ScratchDir};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const ECAM: u64 = 0xb000_0000;
const RP1: u64 = ECAM + (0x10 << 12);
const SLTCTL: u64 = RP1 + 0x6c;
const SLTSTA: u64 = RP1 + 0x6e;

/// Wait for one eventfd signal; panic after 5 s.
fn fired(efd: &EventFd) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match efd.read() {
            Ok(n) => return n,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the eventfd never fired: {e}"),
        }
    }
}

/// A Command Completed interrupt from rp1 (CCIE|HPIE set, the guest acknowledges first).
fn command_completed(fe: &mut ResumableFrontend) {
    let f = fe.frontend();
    f.mmio_write(SLTSTA, 2, 0x10).unwrap();
    f.mmio_write(SLTCTL, 2, 0x0030).unwrap();
}

fn no_msi(ch: &mut BackendChannel) {
    while let Ok(Some(n)) = ch.recv_timeout(Duration::from_millis(100)) {
        assert!(!matches!(n, Notification::Msi(_)), "{n:?}");
    }
}

#[test]
fn a_vmm_resumes_after_its_connection_drops_and_after_a_backend_restart() {
    let dir = ScratchDir::new("resume");
    let state = dir.0.join("pcierc.state");
    let args = ["--state-file", state.to_str().expect("utf-8 path")];
    let mut b = Backend::start(&args);
    let mut fe = ResumableFrontend::connect(&b.socket, FrontendOptions::vmm("vmm")).unwrap();
    let mut ch = fe.frontend().take_backend_channel().expect("channel");
    // Firmware and driver setup of rp1 with MSI-X vector 0 through an eventfd.
    let f = fe.frontend();
    f.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    f.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    f.mmio_write(RP1 + 0x18, 4, 0x0001_0100).unwrap();
    f.mmio_write(RP1 + 0x10, 4, 0xfe00_0000).unwrap();
    f.mmio_write(RP1 + 4, 2, 0x6).unwrap();
    f.mmio_write(0xfe00_0000, 8, 0xfee0_1000).unwrap();
    f.mmio_write(0xfe00_0008, 4, 0x4021).unwrap();
    f.mmio_write(0xfe00_000c, 4, 0).unwrap();
    f.mmio_write(RP1 + 0x4a, 2, 0x8000).unwrap();
    let generation = f.topology().unwrap().generation;
    fe.saw_generation(generation);
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_interrupt_fd(0, 0, 0x10, 0, Some(&efd)).unwrap();
    command_completed(&mut fe);
    assert_eq!(fired(&efd), 1);
    no_msi(&mut ch);

    // 1. The connection drops (the VMM's side reconnects on its own).
    let r = fe.resume(Duration::from_secs(5)).unwrap();
    assert!(!r.layout_changed, "nothing moved");
    let mut ch = r.channel.expect("a new channel");
    command_completed(&mut fe);
    assert_eq!(fired(&efd), 1, "the eventfd was registered again");
    no_msi(&mut ch);

    // 2. The backend is killed and restarted from its state file.
    b.restart(&args);
    let r = fe.resume(Duration::from_secs(10)).unwrap();
    assert!(!r.layout_changed, "same generation after the restart");
    assert_eq!(r.topology.generation, generation);
    let mut ch = r.channel.expect("a new channel");
    let f = fe.frontend();
    assert_eq!(
        f.mmio_read(RP1 + 0x18, 4).unwrap() & 0xff_ffff,
        0x01_0100,
        "bus numbers survived"
    );
    command_completed(&mut fe);
    assert_eq!(
        fired(&efd),
        1,
        "interrupts reach the same eventfd after the restart"
    );
    no_msi(&mut ch);

    // A guest-visible change while disconnected is reported as such.
    let mut other =
        pcierc_protocol::Frontend::connect(&b.socket, FrontendOptions::vmm("other")).unwrap();
    other.mmio_write(RP1 + 0x18, 4, 0x0002_0200).unwrap();
    let r = fe.resume(Duration::from_secs(5)).unwrap();
    assert!(r.layout_changed, "bus numbers moved: resynchronise");
}
