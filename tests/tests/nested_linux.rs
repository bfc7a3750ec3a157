//! Live Linux on the example VMM over pcierc, through nested virtualization
//! (`pcierc_tests::nested`): L1 Linux under QEMU/TCG with emulated SVM runs pcierc and the VMM,
//! which boots L2. Each case asserts from L2's own view (sysfs, dmesg, /proc/interrupts) and from
//! pcierc's QMP events, and prints its duration. The cases share one L1 (booted once, behind a
//! lock); each starts its own pcierc and L2.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pcierc_tests::nested::{tools, Nested, NestedOptions, Tools};

/// The one L1 of this test process, booted by the first case that needs it.
static L1: Mutex<Option<Nested>> = Mutex::new(None);

const T: Duration = Duration::from_secs(60);

/// Run `case` on the shared L1 (booting it first if needed); prints the case's duration. A
/// case that fails leaves L2 stopped for the next one; a dead L1 is booted again.
fn on_l1(name: &str, case: impl FnOnce(&mut Nested, &Tools)) {
    let Some(tools) = tools() else {
        return;
    };
    let mut guard = L1.lock().unwrap_or_else(PoisonError::into_inner);
    let alive = guard
        .as_mut()
        .is_some_and(|n| n.l1("true", Duration::from_secs(30)).is_ok());
    if !alive {
        let start = Instant::now();
        let n = Nested::boot(&tools, &NestedOptions::default())
            .unwrap_or_else(|e| panic!("booting L1: {e}"));
        eprintln!(
            "nested: L1 up in {:.1} s (shell and /dev/kvm; {:.1} s with the image build)",
            n.l1_boot.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        *guard = Some(n);
    }
    let nested = guard.as_mut().expect("L1 booted above");
    let start = Instant::now();
    case(nested, &tools);
    eprintln!(
        "nested: case {name}: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

fn lines_with<'a>(o: &'a [String], prefix: &str) -> Vec<&'a str> {
    o.iter().filter_map(|l| l.strip_prefix(prefix)).collect()
}

#[test]
fn boot_on_the_vmm() {
    on_l1("boot", |n, _| {
        let (uptime, wall) = n
            .start_l2(&[], &["--mem", "512", "--endpoint", "rp1"])
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "nested: L2 shell at {uptime:.2} s of its uptime, {:.1} s wall",
            wall.as_secs_f64()
        );
        let facts = n.l2_ok("facts", T).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{}", facts.text());
        let status = n.stop_l2().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 0);
        let _ = lines_with(&facts.lines, "pci ");
    });
}
