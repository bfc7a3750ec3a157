//! Live Linux on the example VMM over pcierc, through nested virtualization
//! (`pcierc_tests::nested`): L1 Linux under QEMU/TCG with emulated SVM runs pcierc and the VMM,
//! which boots L2. Each case asserts from L2's own view (sysfs, dmesg, /proc/interrupts) and from
//! pcierc's QMP events, and prints its duration. The cases share one L1 (booted once, behind a
//! lock); each starts its own pcierc and L2.

mod nested_support;

use nested_support::{cfg_bytes, expect, on_l1, resources, T};
use pcierc_examples::vmm::endpoint::serial_number;
use pcierc_examples::vmm::endpoint_id;
use pcierc_tests::linux_facts::check_default_topology;

/// The default topology with the VMM's endpoint cold-plugged behind rp1; then hot-plug, AER
/// and PME on the same running L2.
#[test]
fn endpoint_hotplug_aer_and_pme_live() {
    on_l1("endpoint, hot-plug, AER, PME", |n, _| {
        let (uptime, wall) = expect(n.start_l2(&[], &["--mem", "512", "--endpoint", "rp1"]));
        eprintln!(
            "nested: L2 (VMM over pcierc) in userspace at {uptime:.2} s of its uptime, {:.1} s wall",
            wall.as_secs_f64()
        );

        // Boot: MMCONFIG from MCFG, _OSC, pcieport with its services, slots.
        let facts = expect(n.l2_ok("facts", T));
        let lines: Vec<&str> = facts.lines.iter().map(String::as_str).collect();
        if let Err(e) = check_default_topology(&lines, true) {
            panic!("{e}\n{}", facts.text());
        }
        // Each port's full 4 KiB is readable through sysfs, AER at 0x100 (PCIe Base 6.0
        // §7.8.4.1: capability ID 0x0001).
        let cfg = expect(n.l2_ok("cfg_all", T));
        for f in 0..4 {
            let port = format!("0000:00:02.{f}");
            let aer = cfg_bytes(&cfg.lines, &port, 0x100, 4)
                .unwrap_or_else(|| panic!("{port}: no extended configuration space in sysfs"));
            assert_eq!(&aer[..2], &[0x01, 0x00], "{port}: AER at 0x100");
            assert!(
                cfg_bytes(&cfg.lines, &port, 0xfe0, 32).is_some(),
                "{port}: 4 KiB"
            );
        }

        // The endpoint: BAR0 inside rp1's memory window, its Device Serial Number.
        let ep = "0000:01:00.0";
        let dsn = cfg_bytes(&cfg.lines, ep, 0x100, 12).expect("endpoint's 0x100");
        assert_eq!(&dsn[..2], &[0x03, 0x00], "DSN capability at 0x100");
        let serial = u64::from_le_bytes(dsn[4..12].try_into().expect("8 bytes"));
        assert_eq!(serial, serial_number(&endpoint_id("rp1")), "serial number");
        let res = expect(n.l2_ok(&format!("res {ep}; res 0000:00:02.0"), T));
        let (bar0, bar0_end) = resources(&res.lines, ep, 0).expect("BAR0 assigned");
        let (win, win_end) = resources(&res.lines, "0000:00:02.0", 14).expect("rp1's window");
        assert!(
            bar0 >= win && bar0_end <= win_end && bar0_end - bar0 + 1 == 0x4000,
            "BAR0 {bar0:#x}-{bar0_end:#x} inside rp1's window {win:#x}-{win_end:#x}"
        );

        // An MSI-X message from the endpoint, set up by hand as a driver would: memory and bus
        // master on, table entry 0 -> vector 0xd0 of CPU 0 (no handler: Linux reports it),
        // MSI-X enabled (control at 0x92, PCIe Base 6.0 §7.7.2.2), doorbell rung.
        let msix = format!(
            "dmesg -c >/dev/null; \
             printf '\\006\\000' | dd of=/sys/bus/pci/devices/{ep}/config bs=1 seek=4 conv=notrunc 2>/dev/null; \
             devmem {t0:#x} 32 0xfee00000; devmem {t1:#x} 32 0; devmem {t2:#x} 32 0xd0; devmem {t3:#x} 32 0; \
             printf '\\200' | dd of=/sys/bus/pci/devices/{ep}/config bs=1 seek=147 conv=notrunc 2>/dev/null; \
             devmem {door:#x} 32 0; sleep 0.5; echo \"sent $(devmem {sent:#x} 32)\"; dmesg",
            t0 = bar0 + 0x2000,
            t1 = bar0 + 0x2004,
            t2 = bar0 + 0x2008,
            t3 = bar0 + 0x200c,
            door = bar0 + 0x8,
            sent = bar0 + 0xc,
        );
        let out = expect(n.l2_ok(&msix, T));
        eprintln!("{}", out.text());
        assert!(
            out.lines.iter().any(|l| l == "sent 0x00000001"),
            "{}",
            out.text()
        );
        assert!(
            out.lines
                .iter()
                .any(|l| l.contains("0.208 No irq handler for vector")),
            "the message reached CPU 0's vector 0xd0:\n{}",
            out.text()
        );

        let status = expect(n.stop_l2());
        assert_eq!(status, 0, "the VMM's exit status after L2 powered off");
    });
}
