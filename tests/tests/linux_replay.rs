//! Real Linux against pcierc on any machine, no KVM needed: QEMU 7.2 `q35` under TCG boots
//! Debian's kernel (SeaBIOS first) with pcierc's default root ports while a native hot-add, a
//! hot-remove and three AER injections are driven through QMP; every configuration-mechanism
//! access (CF8/CFC, MMCONFIG, the root ports' MSI-X BARs) is traced, then replayed in order
//! against the real `pcierc` process through the protocol, with the same host actions sent to its
//! control socket at the same points. Every read of a function pcierc answers for must equal
//! QEMU's, bit for bit, but for the deviations in docs/qemu-compat.md; the root ports' MSIs must
//! come after the same accesses. See `pcierc_tests::trace` and `tests/linux/README.md`.
//!
//! Needs qemu-system-x86_64, a kernel in /boot (`apt-get install linux-image-amd64`, readable:
//! Debian's are root-only) and busybox-static; without them the test skips loudly, and fails
//! when `PCIERC_REQUIRE_TOOLS` is set (CI). `PCIERC_LINUX_KERNEL=PATH` boots another kernel,
//! `PCIERC_LINUX_TRACE_OUT=FILE` keeps the recording, `PCIERC_LINUX_TRACE=FILE` replays a kept
//! one instead of recording.

use std::path::Path;
use std::time::Instant;

use pcierc_tests::linux_images::{busybox_initramfs, kernel};
use pcierc_tests::process::{tool_available, Backend, ScratchDir};
use pcierc_tests::qtest::QEMU;
use pcierc_tests::trace::record::{default_root_ports, default_scenario};
use pcierc_tests::trace::replay::{backend_args, ReadPath, SCOPED_DEVIATIONS};
use pcierc_tests::trace::{record, replay, Control, RecordOptions, Recording, Step};

/// Record a boot (or load `PCIERC_LINUX_TRACE`); `None` when skipping.
fn recording(dir: &ScratchDir) -> Option<Recording> {
    if let Some(f) = std::env::var_os("PCIERC_LINUX_TRACE") {
        let text = std::fs::read_to_string(&f).expect("reading PCIERC_LINUX_TRACE");
        return Some(Recording::from_text(&text).expect("parsing PCIERC_LINUX_TRACE"));
    }
    if !tool_available(QEMU) {
        return None;
    }
    let kernel = kernel()?;
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux/init");
    let initrd = busybox_initramfs(&init, &dir.0.join("initrd.cpio"))?;
    let opts = RecordOptions {
        kernel,
        initrd,
        work_dir: dir.0.clone(),
        root_ports: default_root_ports(),
        scenario: default_scenario(),
    };
    let r = record(&opts).unwrap_or_else(|e| panic!("recording on QEMU failed: {e}"));
    eprintln!(
        "recorded Linux {} on QEMU (TCG): boot to userspace {:.2?}, whole run {:.2?}, {} trace \
         lines, {} accesses kept",
        r.recording.kernel,
        r.boot,
        r.total,
        r.trace_lines,
        r.recording.accesses()
    );
    // The guest really used native hot-plug and AER (else the recording proves little).
    for needle in [
        "pciehp",
        "AER: enabled",
        "Uncorrected (Non-Fatal)",
        "Uncorrected (Fatal)",
    ] {
        assert!(
            r.console.contains(needle),
            "the guest's log lacks '{needle}':\n{}",
            r.console
        );
    }
    if let Some(out) = std::env::var_os("PCIERC_LINUX_TRACE_OUT") {
        std::fs::write(&out, r.recording.to_text()).expect("writing PCIERC_LINUX_TRACE_OUT");
    }
    Some(r.recording)
}

#[test]
fn linux_on_qemu_replayed_against_pcierc_matches() {
    let dir = ScratchDir::new("linux-trace");
    let Some(rec) = recording(&dir) else {
        return;
    };
    let controls: Vec<&Control> = rec
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Control(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(controls.len(), 4, "every host action is in the stream");
    let args = backend_args(&rec);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for path in [ReadPath::Requests, ReadPath::Snapshot] {
        let started = Instant::now();
        let backend = Backend::start_with_control(&args);
        let report = replay(&rec, &backend, path);
        eprintln!(
            "replay ({path:?}) against pcierc: {} [{:.2?} with start-up]",
            report.summary(),
            started.elapsed()
        );
        eprintln!("  compared reads: {:?}", report.per_function);
        if report.known_gaps > 0 {
            eprintln!(
                "  *** {} reads differ only where pcierc lacks QEMU behaviour (known gaps):",
                report.known_gaps
            );
            for d in SCOPED_DEVIATIONS.iter().filter(|d| d.known_gap) {
                eprintln!(
                    "      {:#x}..{:#x} bits {:#x}: {}",
                    d.offsets.start, d.offsets.end, d.bits, d.reason
                );
            }
        }
        report.assert_clean();
        assert!(report.compared_emulated > 1000, "too few reads compared");
        assert!(report.msis.0 > 0, "no root-port MSI recorded");
        assert!(report.remote > 0, "QEMU's own functions were reached");
    }
}
