//! Live Linux on the example VMM over pcierc, through nested virtualization
//! (`pcierc_tests::nested`): L1 Linux under QEMU/TCG with emulated SVM runs pcierc and the VMM,
//! which boots L2. Each case asserts from L2's own view (sysfs, dmesg, /proc/interrupts) and from
//! pcierc's QMP events, and prints its duration. The cases share one L1 (booted once, behind a
//! lock); each starts its own pcierc and L2.

#[macro_use]
mod nested_support;

use nested_support::compare::compare_views;
use nested_support::{alone, cfg_bytes, expect, on_l1, qmp_events, resources, T};
use pcierc_examples::vmm::endpoint::serial_number;
use pcierc_examples::vmm::endpoint_id;
use pcierc_tests::linux_facts::check_default_topology;
use pcierc_tests::nested::ProbeVm;
use pcierc_tests::process::root_port_options;

/// The default topology with the VMM's endpoint cold-plugged behind rp1; then hot-plug, AER
/// and PME on the same running L2.
#[test]
fn endpoint_hotplug_aer_and_pme_live() {
    on_l1("endpoint, hot-plug, AER, PME", |n, _| {
        let (uptime, wall) = expect(n.start_l2(&[], &["--mem", "512", "--endpoint", "rp1"]));
        report!(
            "nested: L2 (VMM over pcierc) in userspace at {uptime:.2} s of its uptime, {:.1} s wall",
            wall.as_secs_f64()
        );

        // Boot: MMCONFIG from MCFG, _OSC, pcieport with its services, slots.
        let facts = expect(n.l2_ok("facts", T));
        let lines: Vec<&str> = facts.lines.iter().map(String::as_str).collect();
        if let Err(e) = check_default_topology(&lines, true) {
            panic!("{e}\n{}", facts.text());
        }
        // The VMM's CMOS clock: Linux read the date at boot (without it, it polls Update-In-
        // Progress until it gives up and starts in 1970).
        let clock = expect(n.l2_ok(
            "dmesg | grep -c 'Unable to read current time from RTC'; date -u +%s",
            T,
        ));
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("host clock after 1970")
            .as_secs() as i64;
        let numbers: Vec<i64> = clock
            .lines
            .iter()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert!(
            matches!(numbers[..], [0, t] if (t - host).abs() < 3600),
            "L2 read its date from the RTC (no failure in dmesg, within an hour of the host's {host}):\n{}",
            clock.text()
        );
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

        hotplug(n);
        aer_and_pme(n);

        expect(n.stop_l2());
    });
}

/// Wait until pciehp in L2 has turned the power indicator of `port`'s slot on: it does so once
/// the card it powered is enumerated, and only after that does it take an attention button
/// press (a `device_del`) as a request to remove it; a press before is ignored ("invalid
/// attention button event") and the removal never comes. (QEMU and pcierc refuse `device_del`
/// only while the indicator blinks, not in between.)
fn wait_power_indicator_on(n: &mut pcierc_tests::nested::Nested, port: &str) {
    expect(n.l2_ok(&format!("waitfor 30 '[ \"$(pwr_ind {port})\" = on ]'"), T));
}

const EP2: &str = r#"{"execute":"device_add","arguments":{"driver":"pcierc-testdev","id":"ep2","bus":"rp2","owner":"vmm"}}"#;
const EP2_DEL: &str = r#"{"execute":"device_del","arguments":{"id":"ep2"}}"#;
const EP2_SURPRISE: &str = r#"{"execute":"x-pcierc-surprise-remove","arguments":{"id":"ep2"}}"#;
const AT_02: &str = "[ -e /sys/bus/pci/devices/0000:02:00.0 ]";
const GONE_02: &str = "[ ! -e /sys/bus/pci/devices/0000:02:00.0 ]";

/// The guest-time wait `waitfor` reported ("waited 1.23 s for ...").
fn waited(o: &pcierc_tests::nested::console::Output) -> f64 {
    o.lines
        .iter()
        .find_map(|l| l.strip_prefix("waited ")?.split(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Hot-add into rp2 (the VMM serves the card), orderly removal, re-add, surprise removal.
fn hotplug(n: &mut pcierc_tests::nested::Nested) {
    // device_add: pciehp sees Presence Detect Changed, powers the slot, Linux enumerates the
    // card and assigns its BAR inside rp2's window.
    expect(n.l2_ok("dmesg -c >/dev/null", T));
    let add = expect(n.qmp(&[EP2], T));
    assert_eq!(add.status, 0, "device_add: {}", add.text());
    let seen = expect(n.l2_ok(&format!("waitfor 60 '{AT_02}'"), T));
    let res = expect(n.l2_ok("res 0000:02:00.0; res 0000:00:02.1; dmesg", T));
    let (bar0, bar0_end) = resources(&res.lines, "0000:02:00.0", 0).expect("hot-added BAR0");
    let (win, win_end) = resources(&res.lines, "0000:00:02.1", 14).expect("rp2's window");
    assert!(
        bar0 >= win && bar0_end <= win_end,
        "BAR0 {bar0:#x} inside rp2's window {win:#x}-{win_end:#x}\n{}",
        res.text()
    );
    for needle in ["Slot(2): Card present", "Slot(2): Link Up"] {
        assert!(
            res.lines.iter().any(|l| l.contains(needle)),
            "dmesg: {needle}\n{}",
            res.text()
        );
    }
    report!(
        "nested: device_add -> 02:00.0 in L2's sysfs: {:.2} s of L2 time ({:.1} s wall)",
        waited(&seen),
        (add.elapsed + seen.elapsed).as_secs_f64()
    );

    // device_del: the attention button; pciehp waits 5 s, powers the slot off; pcierc then
    // sends DEVICE_DELETED (and FunctionRemoved to the VMM).
    wait_power_indicator_on(n, "0000:00:02.1");
    let del = expect(n.qmp(
        &["--wait", "DEVICE_DELETED", "--timeout", "60", EP2_DEL],
        T + T,
    ));
    assert_eq!(del.status, 0, "device_del: {}", del.text());
    let deleted = qmp_events(&del.lines);
    assert!(
        deleted
            .iter()
            .any(|(e, d)| e == "DEVICE_DELETED" && d["device"] == "ep2"),
        "{}",
        del.text()
    );
    let gone = expect(n.l2_ok(
        &format!("waitfor 30 '{GONE_02}'; cat /sys/bus/pci/slots/2/power"),
        T,
    ));
    assert_eq!(
        gone.lines.last().map(String::as_str),
        Some("0"),
        "slot 2 powered off: {}",
        gone.text()
    );
    report!(
        "nested: device_del -> DEVICE_DELETED: {:.1} s wall (pciehp's 5 s wait included)",
        del.elapsed.as_secs_f64()
    );

    // The same card again in the same slot, then a surprise removal: Linux drops it at once.
    let add = expect(n.qmp(&[EP2], T));
    assert_eq!(add.status, 0, "second device_add: {}", add.text());
    expect(n.l2_ok(&format!("waitfor 60 '{AT_02}'"), T));
    let out = expect(n.qmp(&["--wait", "DEVICE_DELETED", EP2_SURPRISE], T));
    assert_eq!(out.status, 0, "surprise removal: {}", out.text());
    let gone = expect(n.l2_ok(
        &format!("waitfor 30 '{GONE_02}'; dmesg | grep -E 'Slot\\(2\\)'"),
        T,
    ));
    report!(
        "nested: surprise removal -> gone from L2's sysfs in {:.2} s of L2 time",
        waited(&gone)
    );
    assert!(
        gone.lines
            .iter()
            .any(|l| l.contains("Slot(2): Card not present")),
        "{}",
        gone.text()
    );
}

/// AER from rp1 itself (correctable) and from its endpoint (uncorrectable, non-fatal by the
/// default severity); PME from the endpoint's owner.
fn aer_and_pme(n: &mut pcierc_tests::nested::Nested) {
    let ep = endpoint_id("rp1");
    expect(n.l2_ok("dmesg -c >/dev/null", T));
    let port_err = r#"{"execute":"pcie-aer-inject-error","arguments":{"id":"rp1","error":"RCVR"}}"#;
    let ep_err = format!(
        r#"{{"execute":"pcie-aer-inject-error","arguments":{{"id":"{ep}","error":"UNSUP"}}}}"#
    );
    let out = expect(n.qmp(&[port_err], T));
    assert_eq!(out.status, 0, "{}", out.text());
    let seen = expect(n.l2_ok("waitfor 30 'dmesg | grep -q RxErr'; dmesg", T));
    for needle in [
        "pcieport 0000:00:02.0: AER: Corrected error message received from 0000:00:02.0",
        "severity=Corrected, type=Physical Layer, (Receiver ID)",
    ] {
        assert!(
            seen.lines.iter().any(|l| l.contains(needle)),
            "dmesg: {needle}\n{}",
            seen.text()
        );
    }
    let out = expect(n.qmp(&[&ep_err], T));
    assert_eq!(out.status, 0, "{}", out.text());
    let seen = expect(n.l2_ok("waitfor 30 'dmesg | grep -q Uncorrected'; dmesg", T));
    let needle =
        "pcieport 0000:00:02.0: AER: Uncorrected (Non-Fatal) error message received from 0000:01:00.0";
    assert!(
        seen.lines.iter().any(|l| l.contains(needle)),
        "dmesg: {needle}\n{}",
        seen.text()
    );

    // PME: Root Status PME Status with the endpoint as requester, and rp1's interrupt. The
    // injection is pcierc's alone (the endpoint's own PME_Status stays clear), so Linux's PME
    // service, having found no function with PME_Status set, reports the interrupt spurious.
    let count = "irq=$(ls /sys/bus/pci/devices/0000:00:02.0/msi_irqs); grep \"^ *$irq:\" /proc/interrupts | awk '{ print \"count \" $2 }'";
    let before = expect(n.l2_ok(&format!("dmesg -c >/dev/null; {count}"), T));
    let pme = format!(r#"{{"execute":"x-pcierc-inject-pme","arguments":{{"id":"{ep}"}}}}"#);
    let out = expect(n.qmp(&[&pme], T));
    assert_eq!(out.status, 0, "{}", out.text());
    let after = expect(n.l2_ok(
        &format!("waitfor 30 'dmesg | grep -q PME:'; dmesg; {count}"),
        T,
    ));
    let counted = |o: &pcierc_tests::nested::console::Output| -> u64 {
        o.lines
            .iter()
            .find_map(|l| l.strip_prefix("count ")?.parse().ok())
            .unwrap_or_else(|| panic!("no interrupt count: {}", o.text()))
    };
    assert_eq!(
        counted(&after),
        counted(&before) + 1,
        "one interrupt on rp1: {}",
        after.text()
    );
    assert!(
        after
            .lines
            .iter()
            .any(|l| l.contains("pcieport 0000:00:02.0: PME: Spurious native interrupt!")),
        "Linux's PME service handled it: {}",
        after.text()
    );
}

/// A guest reset through each of Linux's x86 reboot methods that reach the platform (the
/// i8042 reset line, ICH9's Reset Control at 0xCF9, the FADT's reset register) reboots L2: the
/// VMM resets pcierc and its endpoint, and Linux finds the same hierarchy as at the first boot.
#[test]
fn guest_reboot_resets_the_hierarchy_live() {
    on_l1("reboot", |n, _| {
        expect(n.start_l2(&[], &["--mem", "512", "--endpoint", "rp1"]));
        let view = "cfg_all; facts";
        let first = expect(n.l2_ok(view, T));
        // Leave state behind that a reset must clear: Bus Master and Memory on the endpoint,
        // an uncorrectable error logged in rp1's AER registers.
        expect(n.l2_ok(
            "printf '\\006' | dd of=/sys/bus/pci/devices/0000:01:00.0/config bs=1 seek=4 conv=notrunc 2>/dev/null",
            T,
        ));
        let ep_err =
            r#"{"execute":"pcie-aer-inject-error","arguments":{"id":"rp1","error":"UNSUP"}}"#;
        expect(n.qmp(&[ep_err], T));
        for method in ["kbd", "pci", "acpi"] {
            let (uptime, wall) = expect(n.reboot_l2(&format!(
                "echo {method} > /sys/kernel/reboot/type; reboot -f"
            )));
            report!(
                "nested: reboot through {method}: L2 in userspace again at {uptime:.2} s, {:.1} s wall",
                wall.as_secs_f64()
            );
            let again = expect(n.l2_ok(view, T));
            let mut diffs = compare_views(&first.lines, &again.lines);
            // Error Source Identification is sticky (ROS, PCIe Base 6.0 §7.8.4.11), so it
            // keeps rp1's own uncorrectable error from before the resets, as QEMU's does.
            diffs.retain(|d| {
                !["134", "135", "136", "137"]
                    .iter()
                    .any(|o| d.starts_with(&format!("0000:00:02.0 {o}:")))
            });
            assert_eq!(
                cfg_bytes(&again.lines, "0000:00:02.0", 0x136, 2),
                Some(vec![0x10, 0x00]),
                "rp1's ERR_FATAL/NONFATAL Source Identification after the reset"
            );
            assert!(
                diffs.is_empty() && facts_of(&first.lines) == facts_of(&again.lines),
                "after the {method} reboot Linux's view differs from the first boot's:\n  {}",
                diffs.join("\n  ")
            );
        }
        expect(n.stop_l2());
    });
}

/// INTx: with `pci=nomsi` the root ports signal through INTA, which the VMM's `_PRT` routes to
/// IOAPIC GSI 18 (slot 2, pin A): pciehp and the PME service work over it, and its count grows.
/// (Without MSI Linux asks no native control through `_OSC`, so `pcie_ports=native` takes it;
/// Linux's AER driver needs MSI and stays away.)
#[test]
fn root_ports_intx_without_msi_live() {
    on_l1("INTx (pci=nomsi)", |n, _| {
        expect(n.start_l2_with(
            "pci=nomsi pcie_ports=native",
            &[],
            &["--mem", "512", "--endpoint", "rp1,intx"],
        ));
        let irq = "grep '^ *18:' /proc/interrupts | awk '{ print \"count \" $2; print }'";
        let ports = expect(n.l2_ok(
            &format!("for f in 0 1 2 3; do echo \"irq $f $(cat /sys/bus/pci/devices/0000:00:02.$f/irq) $(ls /sys/bus/pci/devices/0000:00:02.$f/msi_irqs 2>/dev/null | wc -l)\"; done; facts; {irq}"),
            T,
        ));
        for f in 0..4 {
            assert!(
                ports.lines.iter().any(|l| l == &format!("irq {f} 18 0")),
                "00:02.{f} on GSI 18 without MSI: {}",
                ports.text()
            );
        }
        let pciehp = ports
            .lines
            .iter()
            .filter(|l| l.ends_with("driver pciehp"))
            .count();
        assert_eq!(pciehp, 4, "{}", ports.text());
        let count = |o: &pcierc_tests::nested::console::Output| -> u64 {
            o.lines
                .iter()
                .find_map(|l| l.strip_prefix("count ")?.parse().ok())
                .unwrap_or_else(|| panic!("no count for GSI 18: {}", o.text()))
        };
        let before = count(&ports);
        // Hot-add: Presence Detect Changed, then pciehp's power-on and Data Link Layer State
        // Changed, all on INTA.
        let out = expect(n.qmp(&[EP2], T));
        assert_eq!(out.status, 0, "{}", out.text());
        let added = expect(n.l2_ok(&format!("waitfor 60 '{AT_02}'; {irq}"), T));
        let after_add = count(&added);
        assert!(
            after_add > before,
            "hot-plug interrupts on GSI 18: {before} -> {}",
            added.text()
        );
        // PME from the card in rp2: Root Status PME Status, on INTA too.
        expect(n.l2_ok("dmesg -c >/dev/null", T));
        let pme = r#"{"execute":"x-pcierc-inject-pme","arguments":{"id":"ep2"}}"#;
        let out = expect(n.qmp(&[pme], T));
        assert_eq!(out.status, 0, "{}", out.text());
        let after = expect(n.l2_ok(
            &format!("waitfor 30 'dmesg | grep -q PME:'; dmesg; {irq}"),
            T,
        ));
        assert!(
            count(&after) > after_add,
            "PME interrupt on GSI 18: {}",
            after.text()
        );
        assert!(
            after
                .lines
                .iter()
                .any(|l| l.contains("pcieport 0000:00:02.1: PME: Spurious native interrupt!")),
            "{}",
            after.text()
        );
        report!(
            "nested: INTx on GSI 18: {before} -> {after_add} interrupts over a hot-add, {} after a PME",
            count(&after)
        );

        // The VMM's INTx-only endpoint behind rp1 (INTA of 01:00.0, through rp1's slot to GSI
        // 18), taken by uio_pci_generic: the doorbell asserts it, the driver's handler finds
        // Interrupt Status set and masks it with Interrupt Disable (PCI 3.0 §6.2.2), one event.
        let ep = "0000:01:00.0";
        let bind = expect(n.l2_ok(
            &format!(
                "insmod /lib/modules/uio.ko && insmod /lib/modules/uio_pci_generic.ko && \
                 echo '1b36 0005' > /sys/bus/pci/drivers/uio_pci_generic/new_id && \
                 waitfor 10 '[ -e /sys/bus/pci/devices/{ep}/driver ]' && \
                 echo \"driver $(basename $(readlink /sys/bus/pci/devices/{ep}/driver)) irq $(cat /sys/bus/pci/devices/{ep}/irq) pin $(od -An -tu1 -j61 -N1 /sys/bus/pci/devices/{ep}/config)\"; res {ep}"
            ),
            T,
        ));
        assert!(
            bind.lines
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["driver", "uio_pci_generic", "irq", "18", "pin", "1"]),
            "01:00.0 bound to uio_pci_generic on GSI 18 with INTA: {}",
            bind.text()
        );
        let (bar0, _) = resources(&bind.lines, ep, 0).expect("BAR0");
        let events = "cat /sys/class/uio/uio0/event";
        let before = expect(n.l2_ok(events, T));
        let rung = expect(n.l2_ok(
            &format!("devmem {:#x} 32 0; sleep 1; {events}; od -An -tx1 -j4 -N4 /sys/bus/pci/devices/{ep}/config", bar0 + 0x8),
            T,
        ));
        let event_count = |o: &pcierc_tests::nested::console::Output| -> u64 {
            o.lines
                .iter()
                .find_map(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("no uio event count: {}", o.text()))
        };
        assert_eq!(
            event_count(&rung),
            event_count(&before) + 1,
            "one INTx event: {}",
            rung.text()
        );
        // Command byte 1 has Interrupt Disable (bit 10) set by the handler; Status byte 0 has
        // Interrupt Status (bit 3) until the device is acknowledged.
        let cfg: Vec<u8> = rung
            .lines
            .last()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|b| u8::from_str_radix(b, 16).ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            cfg.len() == 4 && cfg[1] & 0x04 != 0 && cfg[2] & 0x08 != 0,
            "Interrupt Disable and Interrupt Status after the event: {}",
            rung.text()
        );
        report!("nested: the VMM's INTx endpoint: one uio_pci_generic event on GSI 18");
        expect(n.stop_l2());
    });
}

/// The `pci`, `service` and `slot` lines of a view.
fn facts_of(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("pci ") || l.starts_with("service ") || l.starts_with("slot "))
        .collect()
}

/// 32 root ports (four multifunction slots of eight): Linux binds pcieport with pciehp on each,
/// and a card hot-added into each port in turn is enumerated below it and surprise-removed.
#[test]
fn thirty_two_root_ports_hotplug_each_live() {
    on_l1("32 root ports", |n, _| {
        const PORTS: usize = 32;
        let mut rc: Vec<String> = vec!["-n".into()];
        rc.extend(root_port_options(PORTS));
        let rc: Vec<&str> = rc.iter().map(String::as_str).collect();
        let (uptime, wall) = expect(n.start_l2(&rc, &["--mem", "512"]));
        report!(
            "nested: L2 with {PORTS} root ports in userspace at {uptime:.2} s, {:.1} s wall",
            wall.as_secs_f64()
        );
        let facts = expect(n.l2_ok("facts", T));
        let bound = facts
            .lines
            .iter()
            .filter(|l| l.contains("0x1b36:0x000c class 0x060400 driver pcieport"))
            .count();
        let pciehp = facts
            .lines
            .iter()
            .filter(|l| l.ends_with("driver pciehp"))
            .count();
        assert_eq!((bound, pciehp), (PORTS, PORTS), "{}", facts.text());
        let start = std::time::Instant::now();
        for i in 1..=PORTS {
            // The slot's bus, as pciehp registered it ("slot N address 0000:BB:00").
            let bus = facts
                .lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("slot {i} address 0000:")))
                .and_then(|a| a.split(':').next())
                .unwrap_or_else(|| panic!("slot {i}: {}", facts.text()))
                .to_owned();
            let dev = format!("/sys/bus/pci/devices/0000:{bus}:00.0");
            let add = format!(
                r#"{{"execute":"device_add","arguments":{{"driver":"pcierc-testdev","id":"ep{i}","bus":"rp{i}","owner":"vmm"}}}}"#
            );
            let out = expect(n.qmp(&[&add], T));
            assert_eq!(out.status, 0, "rp{i}: {}", out.text());
            expect(n.l2_ok(&format!("waitfor 60 '[ -e {dev} ]'"), T));
            let del =
                format!(r#"{{"execute":"x-pcierc-surprise-remove","arguments":{{"id":"ep{i}"}}}}"#);
            let out = expect(n.qmp(&["--wait", "DEVICE_DELETED", &del], T));
            assert_eq!(out.status, 0, "rp{i}: {}", out.text());
            expect(n.l2_ok(&format!("waitfor 60 '[ ! -e {dev} ]'"), T));
        }
        report!(
            "nested: {PORTS} hot-add + surprise-removal cycles in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        expect(n.stop_l2());
    });
}

/// The same probe initramfs and kernel under QEMU 7.2's q35 with the same four root ports:
/// Linux's view of the hierarchy after enumeration (every common function's 4 KiB, the port
/// services, the slots) must be the same, except for the named exclusions.
#[test]
fn linux_sees_the_same_hierarchy_as_under_qemu() {
    let Some(tools) = pcierc_tests::nested::tools() else {
        return;
    };
    let devices: Vec<String> = (0..4)
        .map(|f| {
            let (n, mf) = (f + 1, if f == 0 { ",multifunction=on" } else { "" });
            format!("pcie-root-port,id=rp{n},chassis={n},slot={n},port=0x1{f},bus=pcie.0,addr=0x2.{f}{mf}")
        })
        .collect();
    // Alone: with L1 running beside it both would share two CPUs and the timings would not
    // compare.
    let reference = alone(|| {
        let start = std::time::Instant::now();
        let mut qemu = expect(ProbeVm::boot(&tools, &devices));
        report!(
            "nested: reference under QEMU q35/TCG in userspace at {:.2} s of its uptime, {:.1} s wall",
            qemu.boot_uptime,
            qemu.boot_wall.as_secs_f64()
        );
        let reference = expect(qemu.sh("cfg_all; facts", T));
        let scan = expect(qemu.sh("dmesg", T));
        qemu_hotplug_timings(&mut qemu);
        drop(qemu);
        report!(
            "nested: QEMU reference {:.1} s",
            start.elapsed().as_secs_f64()
        );
        (reference, scan)
    });
    let (reference, qemu_log) = reference;
    on_l1("live comparison with QEMU", |n, _| {
        expect(n.start_l2(&[], &["--mem", "512"]));
        let ours = expect(n.l2_ok("cfg_all; facts", T));
        let log = expect(n.l2_ok("dmesg", T));
        expect(n.stop_l2());
        report_scan_times(&qemu_log.lines, &log.lines);
        let diffs = compare_views(&reference.lines, &ours.lines);
        assert!(
            diffs.is_empty(),
            "Linux's view differs:\n  {}",
            diffs.join("\n  ")
        );
    });
}

/// Issue 17's live figure: Linux's boot-time enumeration of the hierarchy on the VMM over pcierc
/// (L2: KVM in L1 under TCG, every configuration access an exit to the VMM and a message to
/// pcierc) against the same kernel under QEMU's q35 with the same four root ports (TCG, QEMU's
/// in-process ports), from each kernel's own log. QEMU's q35 has more functions on bus 0 (the
/// ICH9's), so the ratio is given per function found as well.
fn report_scan_times(qemu: &[String], ours: &[String]) {
    use pcierc_tests::nested::dmesg::pci_scan;
    let (Some(q), Some(o)) = (pci_scan(qemu), pci_scan(ours)) else {
        panic!(
            "no PCI scan in a kernel log (QEMU's found: {}, the VMM's: {})",
            pci_scan(qemu).is_some(),
            pci_scan(ours).is_some()
        );
    };
    report!(
        "nested: Linux's PCI scan at boot: VMM over pcierc {:.1} ms for {} functions ({:.0} us each), \
         QEMU q35 {:.1} ms for {} functions ({:.0} us each): ratio {:.2} total, {:.2} per function",
        o.seconds * 1e3,
        o.functions,
        o.us_per_function(),
        q.seconds * 1e3,
        q.functions,
        q.us_per_function(),
        o.seconds / q.seconds.max(1e-6),
        o.us_per_function() / q.us_per_function().max(1e-3)
    );
}

/// The reference figures for the live timings: an e1000e hot-added into rp2 and removed through
/// QEMU's own QMP socket (with the project's `pcierc-qmp` client), timed as on the VMM.
fn qemu_hotplug_timings(qemu: &mut ProbeVm) {
    let qmp = expect(pcierc_tests::nested::release_binaries()).qmp;
    let socket = qemu.qmp_socket.clone();
    let run = |args: &[&str]| {
        let start = std::time::Instant::now();
        let out = std::process::Command::new(&qmp)
            .arg(&socket)
            .args(args)
            .output()
            .expect("running pcierc-qmp");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            start.elapsed(),
        )
    };
    let add = r#"{"execute":"device_add","arguments":{"driver":"e1000e","id":"nic0","bus":"rp2"}}"#;
    let (ok, out, add_wall) = run(&[add]);
    assert!(ok, "QEMU device_add: {out}");
    let seen = expect(qemu.sh(&format!("waitfor 60 '{AT_02}'"), T));
    assert_eq!(seen.status, 0, "{}", seen.text());
    // As `wait_power_indicator_on`: a press before pciehp took the card is ignored.
    let on = expect(qemu.sh("waitfor 30 '[ \"$(pwr_ind 0000:00:02.1)\" = on ]'", T));
    assert_eq!(on.status, 0, "rp2's power indicator on: {}", on.text());
    // QEMU refuses device_del while pciehp still blinks the power indicator: retry.
    let del = r#"{"execute":"device_del","arguments":{"id":"nic0"}}"#;
    let mut result = (false, String::new(), std::time::Duration::ZERO);
    for _ in 0..20 {
        result = run(&["--wait", "DEVICE_DELETED", "--timeout", "60", del]);
        if result.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(result.0, "QEMU device_del: {}", result.1);
    expect(qemu.sh(&format!("waitfor 30 '{GONE_02}'"), T));
    report!(
        "nested: QEMU reference: device_add -> 02:00.0 in sysfs {:.2} s of guest time ({:.1} s wall); \
         device_del -> DEVICE_DELETED {:.1} s wall",
        waited(&seen),
        (add_wall + seen.elapsed).as_secs_f64(),
        result.2.as_secs_f64()
    );
}

/// The switch of [`switch_hotplug_live`] behind rp1: an upstream port and two downstream ports
/// with hot-plug slots 5 and 6 (chassis 5; the default root ports have slots 1 to 4 of chassis 1,
/// so each slot's name in Linux is its number); a `pcie-pci-bridge` in rp2's slot
/// ([`pcie_pci_bridge_hotplug_live`]); a `pxb-pcie` expander with rp9 on its root bus
/// ([`expander_hotplug_live`]).
const SWITCH: [&str; 12] = [
    "--device",
    "x3130-upstream,id=up1,bus=rp1",
    "--device",
    "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=5",
    "--device",
    "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=6",
    "--device",
    "pcie-pci-bridge,id=br1,bus=rp2",
    "--device",
    "pxb-pcie,id=pxb1,bus_nr=0x80,bus=pcie.0,addr=0x5",
    "--device",
    "pcie-root-port,id=rp9,bus=pxb1,chassis=9,slot=9,addr=0",
];
/// The VMM's test endpoint hot-added below rp9, on the expander's root bus.
const PX_EP: &str = r#"{"execute":"device_add","arguments":{"driver":"pcierc-testdev","id":"pxep","bus":"rp9","owner":"vmm"}}"#;
const PX_EP_DEL: &str = r#"{"execute":"device_del","arguments":{"id":"pxep"}}"#;
/// The VMM's test endpoint hot-added below br1, at device 1 (SHPC slot 1).
const BR_EP: &str = r#"{"execute":"device_add","arguments":{"driver":"pcierc-testdev","id":"brep","bus":"br1","addr":"1","owner":"vmm"}}"#;
const BR_EP_DEL: &str = r#"{"execute":"device_del","arguments":{"id":"brep"}}"#;
const SW_EP: &str = r#"{"execute":"device_add","arguments":{"driver":"pcierc-testdev","id":"swep","bus":"dp1","owner":"vmm"}}"#;
const SW_EP_DEL: &str = r#"{"execute":"device_del","arguments":{"id":"swep"}}"#;
const SW_EP_SURPRISE: &str = r#"{"execute":"x-pcierc-surprise-remove","arguments":{"id":"swep"}}"#;

/// One function of pcierc's `query-pci`, flattened: its qdev id, address as Linux names it
/// (`0000:BB:DD.F`), `0xVVVV:0xDDDD` as sysfs prints them, class (base and sub), for a bridge
/// its (primary, secondary, subordinate) bus numbers, the address of the bridge it is below,
/// and the root bus it is on (pcie.0's 0, an expander's `bus_nr`).
#[derive(Debug)]
struct PciInfo {
    id: String,
    bdf: String,
    ids: String,
    class: u64,
    buses: Option<(u64, u64, u64)>,
    parent: Option<String>,
    root: u64,
}

fn flatten_query_pci(
    devices: &serde_json::Value,
    parent: Option<&str>,
    root: u64,
    out: &mut Vec<PciInfo>,
) {
    for d in devices.as_array().into_iter().flatten() {
        let num = |v: &serde_json::Value| v.as_u64().unwrap_or(u64::MAX);
        let bdf = format!(
            "0000:{:02x}:{:02x}.{}",
            num(&d["bus"]),
            num(&d["slot"]),
            num(&d["function"])
        );
        let bridge = &d["pci_bridge"];
        out.push(PciInfo {
            id: d["qdev_id"].as_str().unwrap_or_default().to_owned(),
            bdf: bdf.clone(),
            ids: format!(
                "0x{:04x}:0x{:04x}",
                num(&d["id"]["vendor"]),
                num(&d["id"]["device"])
            ),
            class: num(&d["class_info"]["class"]),
            buses: bridge.get("bus").map(|b| {
                (
                    num(&b["number"]),
                    num(&b["secondary"]),
                    num(&b["subordinate"]),
                )
            }),
            parent: parent.map(str::to_owned),
            root,
        });
        flatten_query_pci(&bridge["devices"], Some(&bdf), root, out);
    }
}

/// pcierc's `x-pcierc-query-slots` (QMP in L1).
fn query_slots(n: &mut pcierc_tests::nested::Nested) -> serde_json::Value {
    let out = expect(n.qmp(&[r#"{"execute":"x-pcierc-query-slots"}"#], T));
    out.lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("return").filter(|r| r.is_array()).cloned())
        .unwrap_or_else(|| panic!("no x-pcierc-query-slots reply: {}", out.text()))
}

/// pcierc's `query-pci` (QMP in L1), flattened.
fn query_pci(n: &mut pcierc_tests::nested::Nested) -> Vec<PciInfo> {
    let out = expect(n.qmp(&[r#"{"execute":"query-pci"}"#], T));
    assert_eq!(out.status, 0, "query-pci: {}", out.text());
    let reply = out
        .lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("return").filter(|r| r.is_array()).cloned())
        .unwrap_or_else(|| panic!("no query-pci reply: {}", out.text()));
    let mut all = Vec::new();
    for bus in reply.as_array().into_iter().flatten() {
        let root = bus["bus"].as_u64().unwrap_or(u64::MAX);
        flatten_query_pci(&bus["devices"], None, root, &mut all);
    }
    all
}

/// A card [`hot_add_below`] added: what L2 showed of it (its IDs and driver, its and the
/// port's resources, the tree, the kernel log) and the two steps' timings.
struct HotAdded {
    card: pcierc_tests::nested::console::Output,
    add: pcierc_tests::nested::console::Output,
    seen: pcierc_tests::nested::console::Output,
}

/// `device_add` of the VMM's test endpoint (the QMP command `add`) below `port`, where L2 must
/// find it at `ep`: it appears in L2's sysfs, it is the test endpoint (1b36:0005, which no Linux
/// driver takes), its BAR0 lies inside the window Linux gave `port`, and L2's tree is what
/// pcierc's `query-pci` says, the card in it below `port` with `id`.
fn hot_add_below(
    n: &mut pcierc_tests::nested::Nested,
    add: &str,
    id: &str,
    port: &PciInfo,
    ep: &str,
) -> HotAdded {
    let cmd = expect(n.qmp(&[add], T));
    assert_eq!(
        cmd.status,
        0,
        "device_add below {}: {}",
        port.id,
        cmd.text()
    );
    let seen = expect(n.l2_ok(&format!("waitfor 60 '[ -e /sys/bus/pci/devices/{ep} ]'"), T));
    let card = expect(n.l2_ok(
        &format!(
            "d=/sys/bus/pci/devices/{ep}; echo \"card $(cat $d/vendor) $(cat $d/device) driver \
             $([ -e $d/driver ] && basename $(readlink $d/driver) || echo -)\"; \
             res {ep}; res {}; {TREE}; dmesg",
            port.bdf
        ),
        T,
    ));
    assert!(
        card.lines
            .iter()
            .any(|l| l == "card 0x1b36 0x0005 driver -"),
        "{ep}: the VMM's test endpoint (1b36:0005, which no Linux driver takes): {}",
        card.text()
    );
    let (bar0, bar0_end) = resources(&card.lines, ep, 0).expect("hot-added BAR0");
    let (win, win_end) = resources(&card.lines, &port.bdf, 14)
        .unwrap_or_else(|| panic!("{}'s window: {}", port.id, card.text()));
    assert!(
        bar0 >= win && bar0_end <= win_end,
        "BAR0 {bar0:#x}-{bar0_end:#x} inside {}'s window {win:#x}-{win_end:#x}\n{}",
        port.id,
        card.text()
    );
    let qp = query_pci(n);
    assert_same_tree(&qp, &card);
    assert!(
        qp.iter()
            .any(|f| f.id == id && f.bdf == ep && f.parent.as_deref() == Some(port.bdf.as_str())),
        "query-pci: {id} at {ep} below {}: {qp:?}",
        port.id
    );
    HotAdded {
        card,
        add: cmd,
        seen,
    }
}

/// What L2 sees of every function besides `facts`: "buses BDF PRI SEC SUB" (decimal, bytes
/// 0x18-0x1a of its configuration space, meaningful for bridges) and "parent BDF P" (the device
/// above it in sysfs, `pci0000:00` on the root bus).
const TREE: &str = "for d in /sys/bus/pci/devices/*; do b=${d##*/}; \
    echo \"buses $b $(od -An -tu1 -j24 -N3 $d/config)\"; \
    echo \"parent $b $(basename $(dirname $(readlink -f $d)))\"; done; facts";

/// Every function pcierc's `query-pci` lists is in L2 at the same address with the same IDs and
/// class, bridges with the bus numbers Linux programmed and below the same bridge, and L2 has no
/// function `query-pci` does not list.
fn assert_same_tree(qp: &[PciInfo], l2: &pcierc_tests::nested::console::Output) {
    let line = |prefix: &str| {
        l2.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    for f in qp {
        let pci = line(&format!("pci {} ", f.bdf))
            .unwrap_or_else(|| panic!("{} ({}) not in L2: {}", f.bdf, f.id, l2.text()));
        // pcierc does not hold the configuration space of the functions other emulators serve
        // and reports their IDs as 0xffff (docs/control-socket.md): only their place compares.
        let remote = f.ids == "0xffff:0xffff";
        assert!(
            remote
                || pci.first() == Some(&f.ids.as_str())
                    && pci
                        .get(2)
                        .is_some_and(|c| c.starts_with(&format!("0x{:04x}", f.class))),
            "{} ({}): query-pci {} class {:#06x}, L2 {pci:?}",
            f.bdf,
            f.id,
            f.ids,
            f.class
        );
        let parent = line(&format!("parent {} ", f.bdf));
        // On a root bus, Linux's parent is that root bus's host bridge (`pci0000:BB`).
        let root = format!("pci0000:{:02x}", f.root);
        let want = f.parent.as_deref().unwrap_or(&root);
        assert_eq!(
            parent.as_deref(),
            Some(&[want][..]),
            "{} ({}): the bridge above it",
            f.bdf,
            f.id
        );
        if let Some((p, s, b)) = f.buses {
            let want = [p, s, b].map(|v| v.to_string());
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            assert_eq!(
                line(&format!("buses {} ", f.bdf)),
                Some(want),
                "{} ({}): primary/secondary/subordinate as Linux left them vs query-pci",
                f.bdf,
                f.id
            );
        }
    }
    let mut linux: Vec<&str> = l2
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("pci ")?.split_whitespace().next())
        .collect();
    let mut ours: Vec<&str> = qp.iter().map(|f| f.bdf.as_str()).collect();
    linux.sort_unstable();
    ours.sort_unstable();
    assert_eq!(linux, ours, "the functions L2 found vs query-pci");
}

/// Issue 16 item 6: a PCIe switch (`x3130-upstream` with two `xio3130-downstream` ports) behind
/// rp1 (with [`SWITCH`]'s pcie-pci-bridge and expander beside it, each tested in its own case),
/// as Linux sees it on the VMM over pcierc: the switch ports bound to `pcieport`, the
/// downstream ports' slots taken by pciehp, bus numbers and the tree as pcierc's `query-pci`
/// reports them; then the VMM's test endpoint hot-added below dp1 with `device_add` (enumerated
/// at dp1's secondary bus, its BAR inside dp1's window), removed with `device_del`, added again
/// and surprise-removed; no AER error and no pciehp failure in L2's log.
#[test]
fn switch_hotplug_live() {
    on_l1("switch, hot-plug below a downstream port", |n, _| {
        start_on_switch_topology(n, "hot-plug below dp1");
        let qp = query_pci(n);
        let l2 = expect(n.l2_ok(TREE, T));
        assert_same_tree(&qp, &l2);
        let port = |id: &str| {
            qp.iter()
                .find(|f| f.id == id)
                .unwrap_or_else(|| panic!("{id} not in query-pci: {qp:?}"))
        };
        let (rp1, up1, dp1, dp2) = (port("rp1"), port("up1"), port("dp1"), port("dp2"));
        assert_eq!(
            up1.parent.as_deref(),
            Some(rp1.bdf.as_str()),
            "up1 below rp1"
        );
        for (f, ids) in [
            (up1, "0x104c:0x8232"),
            (dp1, "0x104c:0x8233"),
            (dp2, "0x104c:0x8233"),
        ] {
            let want = format!("pci {} {ids} class 0x060400 driver pcieport", f.bdf);
            assert!(l2.lines.contains(&want), "{}: {want}\n{}", f.id, l2.text());
        }
        // Each downstream port's slot, registered by pciehp under its Physical Slot Number, for
        // its secondary bus.
        let mut slots = Vec::new();
        for (f, slot) in [(dp1, 5), (dp2, 6)] {
            assert_eq!(
                f.parent.as_deref(),
                Some(up1.bdf.as_str()),
                "{} below up1",
                f.id
            );
            let (_, secondary, _) = f.buses.expect("a downstream port is a bridge");
            for want in [
                // Port service names carry the port type (Linux's pcie_port_device_register:
                // 2 for a downstream port) before the service (004: hot-plug).
                format!("service {}:pcie204 driver pciehp", f.bdf),
                format!("slot {slot} address 0000:{secondary:02x}:00"),
            ] {
                assert!(l2.lines.contains(&want), "{}: {want}\n{}", f.id, l2.text());
            }
            slots.push(secondary);
        }
        report!(
            "nested: switch in L2: up1 {} dp1 {} (bus {:02x}) dp2 {} (bus {:02x}), as query-pci",
            up1.bdf,
            dp1.bdf,
            slots[0],
            dp2.bdf,
            slots[1]
        );

        // device_add below dp1: pciehp on dp1 sees the card, Linux enumerates it at dp1's
        // secondary bus and assigns its BAR in dp1's window.
        let ep = format!("0000:{:02x}:00.0", slots[0]);
        let at = format!("[ -e /sys/bus/pci/devices/{ep} ]");
        let gone = format!("[ ! -e /sys/bus/pci/devices/{ep} ]");
        let added = hot_add_below(n, SW_EP, "swep", dp1, &ep);
        report!(
            "nested: device_add below dp1 -> {ep} in L2's sysfs: {:.2} s of L2 time ({:.1} s wall)",
            waited(&added.seen),
            (added.add.elapsed + added.seen.elapsed).as_secs_f64()
        );
        assert!(
            added
                .card
                .lines
                .iter()
                .any(|l| l.contains("Slot(5): Card present")),
            "dmesg: dp1's pciehp saw the card\n{}",
            added.card.text()
        );

        // device_del: the attention button, pciehp powers dp1's slot off after its 5 s.
        wait_power_indicator_on(n, &dp1.bdf);
        let del = expect(n.qmp(
            &["--wait", "DEVICE_DELETED", "--timeout", "60", SW_EP_DEL],
            T + T,
        ));
        assert_eq!(del.status, 0, "device_del: {}", del.text());
        assert!(
            qmp_events(&del.lines)
                .iter()
                .any(|(e, d)| e == "DEVICE_DELETED" && d["device"] == "swep"),
            "{}",
            del.text()
        );
        let off = expect(n.l2_ok(
            &format!("waitfor 30 '{gone}'; cat /sys/bus/pci/slots/5/power"),
            T,
        ));
        assert_eq!(
            off.lines.last().map(String::as_str),
            Some("0"),
            "slot 5 powered off: {}",
            off.text()
        );
        report!(
            "nested: device_del below dp1 -> DEVICE_DELETED: {:.1} s wall (pciehp's 5 s wait included)",
            del.elapsed.as_secs_f64()
        );

        // Again, then a surprise removal.
        let add = expect(n.qmp(&[SW_EP], T));
        assert_eq!(add.status, 0, "second device_add: {}", add.text());
        expect(n.l2_ok(&format!("waitfor 60 '{at}'"), T));
        let out = expect(n.qmp(&["--wait", "DEVICE_DELETED", SW_EP_SURPRISE], T));
        assert_eq!(out.status, 0, "surprise removal: {}", out.text());
        let removed = expect(n.l2_ok(&format!("waitfor 30 '{gone}'; dmesg"), T));
        report!(
            "nested: surprise removal below dp1 -> gone from L2's sysfs in {:.2} s of L2 time",
            waited(&removed)
        );
        assert!(
            removed
                .lines
                .iter()
                .any(|l| l.contains("Slot(5): Card not present")),
            "{}",
            removed.text()
        );

        // The whole log: no AER error reported anywhere, no pciehp failure on the switch's
        // ports and no resource failure of the switch or the card.
        let switch = [&up1.bdf, &dp1.bdf, &dp2.bdf, &ep];
        let failures: Vec<&String> = removed
            .lines
            .iter()
            .filter(|l| {
                let ours = switch.iter().any(|b| l.contains(b.as_str()))
                    || l.contains("Slot(5)")
                    || l.contains("Slot(6)");
                let pciehp_failed = ours
                    && l.contains("pciehp")
                    && [
                        "fail",
                        "Fail",
                        "Cannot",
                        "error",
                        "Timeout",
                        "timed out",
                        "not responding",
                    ]
                    .iter()
                    .any(|w| l.contains(w));
                let aer = [
                    "PCIe Bus Error",
                    "AER: Corrected",
                    "AER: Uncorrected",
                    "AER: Multiple",
                ]
                .iter()
                .any(|w| l.contains(w));
                let resources =
                    ours && (l.contains("failed to assign") || l.contains("no space for"));
                pciehp_failed || aer || resources
            })
            .collect();
        report!(
            "nested: dp1's slot in L2's log:\n  {}",
            removed
                .lines
                .iter()
                .filter(|l| l.contains("Slot(5)"))
                .map(String::as_str)
                .collect::<Vec<&str>>()
                .join("\n  ")
        );
        assert!(
            failures.is_empty(),
            "L2's log:\n  {}",
            failures
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<&str>>()
                .join("\n  ")
        );
        expect(n.stop_l2());
    });
}

/// L2 on [`SWITCH`]'s hierarchy (the switch, the bridge and the expander), for the case `what`.
fn start_on_switch_topology(n: &mut pcierc_tests::nested::Nested, what: &str) {
    let (uptime, wall) = expect(n.start_l2(&SWITCH, &["--mem", "512"]));
    report!(
        "nested: L2 with a switch, a pcie-pci-bridge and an expander ({what}) in userspace at \
         {uptime:.2} s of its uptime, {:.1} s wall",
        wall.as_secs_f64()
    );
}

/// Issue 16 item 6, the `pcie-pci-bridge` ([`bridge_hotplug`]) in an L2 of its own: each live
/// case under QEMU's emulated SVM is kept short, since an emulation failure costs the whole case
/// a second run.
#[test]
fn pcie_pci_bridge_hotplug_live() {
    on_l1("pcie-pci-bridge, SHPC hot-plug", |n, _| {
        start_on_switch_topology(n, "SHPC hot-plug below br1");
        bridge_hotplug(n);
        expect(n.stop_l2());
    });
}

/// The `pxb-pcie` expander ([`expander_hotplug`]) in an L2 of its own, as
/// [`pcie_pci_bridge_hotplug_live`].
#[test]
fn expander_hotplug_live() {
    on_l1("pxb-pcie, hot-plug below its root port", |n, _| {
        start_on_switch_topology(n, "hot-plug below rp9");
        expander_hotplug(n);
        expect(n.stop_l2());
    });
}

/// The `pxb-pcie` expander of [`SWITCH`] (root bus 0x80, rp9 on it), in a running L2:
/// Linux finds the expander's root bus from the VMM's DSDT (a host bridge with `_BBN` 0x80 and
/// its `_CRS`), binds `pcieport` and `pciehp` to rp9 at 80:00.0 and numbers the bus below it;
/// the tree is as pcierc's `query-pci` says; the VMM's test endpoint hot-added below rp9 is
/// enumerated at rp9's secondary bus with its BAR inside rp9's window (which Linux carved from
/// the expander's `_CRS` aperture), and `device_del` removes it (`DEVICE_DELETED`); no AER error
/// and no pciehp or resource failure for rp9 or the card in L2's log.
fn expander_hotplug(n: &mut pcierc_tests::nested::Nested) {
    expect(n.l2_ok("dmesg -c >/dev/null", T));
    let qp = query_pci(n);
    let l2 = expect(n.l2_ok(TREE, T));
    assert_same_tree(&qp, &l2);
    let find = |id: &str| {
        qp.iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("{id} not in query-pci: {qp:?}"))
    };
    let (pxb1, rp9) = (find("pxb1"), find("rp9"));
    assert_eq!(
        (pxb1.bdf.as_str(), rp9.bdf.as_str()),
        ("0000:00:05.0", "0000:80:00.0"),
        "the expander on pcie.0, rp9 on its root bus"
    );
    for want in [
        format!(
            "pci {} 0x1b36:0x000c class 0x060400 driver pcieport",
            rp9.bdf
        ),
        format!("service {}:pcie004 driver pciehp", rp9.bdf),
    ] {
        assert!(l2.lines.contains(&want), "rp9: {want}\n{}", l2.text());
    }
    let (_, secondary, _) = rp9.buses.expect("rp9 is a bridge");
    assert!(
        secondary > 0x80,
        "Linux numbered rp9's secondary bus above the expander's 0x80: {secondary:#x}"
    );
    report!(
        "nested: expander in L2: pxb1 {} with rp9 {} (secondary bus {secondary:02x}), as query-pci",
        pxb1.bdf,
        rp9.bdf
    );

    let ep = format!("0000:{secondary:02x}:00.0");
    let gone = format!("[ ! -e /sys/bus/pci/devices/{ep} ]");
    let added = hot_add_below(n, PX_EP, "pxep", rp9, &ep);
    report!(
        "nested: device_add below rp9 (expander's bus) -> {ep} in L2's sysfs: {:.2} s of L2 time",
        waited(&added.seen)
    );

    wait_power_indicator_on(n, &rp9.bdf);
    let del = expect(n.qmp(
        &["--wait", "DEVICE_DELETED", "--timeout", "60", PX_EP_DEL],
        T + T,
    ));
    assert_eq!(del.status, 0, "device_del below rp9: {}", del.text());
    assert!(
        qmp_events(&del.lines)
            .iter()
            .any(|(e, d)| e == "DEVICE_DELETED" && d["device"] == "pxep"),
        "{}",
        del.text()
    );
    let removed = expect(n.l2_ok(&format!("waitfor 30 '{gone}'; dmesg"), T));
    let ours = [rp9.bdf.as_str(), ep.as_str(), "Slot(9)"];
    let failures: Vec<&String> = removed
        .lines
        .iter()
        .filter(|l| {
            let mine = ours.iter().any(|b| l.contains(b));
            let aer = ["PCIe Bus Error", "AER: Corrected", "AER: Uncorrected"]
                .iter()
                .any(|w| l.contains(w));
            let failed = mine
                && ["fail", "Fail", "Cannot", "no space for", "Timeout"]
                    .iter()
                    .any(|w| l.contains(w));
            aer || failed
        })
        .collect();
    assert!(failures.is_empty(), "L2's log: {failures:?}");
}

/// The `pcie-pci-bridge` of [`SWITCH`] in rp2's slot, in a running L2: bound to
/// `shpchp` (its SHPC, through BAR0 and MSI), its 31 slots registered at devices 1-31 of its
/// secondary bus, the tree as pcierc's `query-pci` says; the VMM's test endpoint hot-added at
/// device 1 with `device_add bus=br1` (shpchp's attention-button path: 5 s, then the slot
/// enabled and scanned), its BAR inside br1's window; `device_del` (shpchp disables the slot
/// with its power indicator off, pcierc then sends `DEVICE_DELETED`; the control socket shows
/// the slot's power indicator blinking on the way, `x-pcierc-query-slots` the slot empty after);
/// added again (`x-pcierc-query-slots`: the slot powered, the card in it); no AER error and no
/// shpchp or resource failure in L2's log.
fn bridge_hotplug(n: &mut pcierc_tests::nested::Nested) {
    expect(n.l2_ok("dmesg -c >/dev/null", T));
    let qp = query_pci(n);
    let l2 = expect(n.l2_ok(TREE, T));
    assert_same_tree(&qp, &l2);
    let port = |id: &str| {
        qp.iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("{id} not in query-pci: {qp:?}"))
    };
    let (rp2, br1) = (port("rp2"), port("br1"));
    assert_eq!(
        br1.parent.as_deref(),
        Some(rp2.bdf.as_str()),
        "br1 below rp2"
    );
    let want = format!("pci {} 0x1b36:0x000e class 0x060400 driver shpchp", br1.bdf);
    assert!(l2.lines.contains(&want), "br1: {want}\n{}", l2.text());
    let (_, secondary, _) = br1.buses.expect("a pcie-pci-bridge is a bridge");
    // shpchp registers the 31 SHPC slots at devices 1-31 of the secondary bus (their names
    // follow the Physical Slot Number, 1 up; taken names get a suffix).
    let shpc_slots = (1..=31)
        .filter(|d| {
            let at = format!(" address 0000:{secondary:02x}:{d:02x}");
            l2.lines
                .iter()
                .any(|l| l.starts_with("slot ") && l.ends_with(&at))
        })
        .count();
    assert_eq!(shpc_slots, 31, "br1's SHPC slots in sysfs\n{}", l2.text());
    report!(
        "nested: pcie-pci-bridge in L2: br1 {} (bus {secondary:02x}) bound to shpchp, 31 slots",
        br1.bdf
    );

    let ep = format!("0000:{secondary:02x}:01.0");
    let at = format!("[ -e /sys/bus/pci/devices/{ep} ]");
    let gone = format!("[ ! -e /sys/bus/pci/devices/{ep} ]");
    let added = hot_add_below(n, BR_EP, "brep", br1, &ep);
    report!(
        "nested: device_add below br1 -> {ep} in L2's sysfs: {:.2} s of L2 time ({:.1} s wall; shpchp's 5 s button wait included)",
        waited(&added.seen),
        (added.add.elapsed + added.seen.elapsed).as_secs_f64()
    );
    assert!(
        added
            .card
            .lines
            .iter()
            .any(|l| l.contains("shpchp") && l.contains("Button pressed on Slot")),
        "dmesg: br1's shpchp saw the attention button\n{}",
        added.card.text()
    );

    // device_del: the attention button; shpchp disables the slot with its power indicator off
    // after its 5 s, and pcierc releases the card.
    let del = expect(n.qmp(
        &["--wait", "DEVICE_DELETED", "--timeout", "60", BR_EP_DEL],
        T + T,
    ));
    assert_eq!(del.status, 0, "device_del: {}", del.text());
    assert!(
        qmp_events(&del.lines)
            .iter()
            .any(|(e, d)| e == "DEVICE_DELETED" && d["device"] == "brep"),
        "{}",
        del.text()
    );
    expect(n.l2_ok(&format!("waitfor 30 '{gone}'"), T));
    report!(
        "nested: device_del below br1 -> DEVICE_DELETED: {:.1} s wall (shpchp's 5 s wait included)",
        del.elapsed.as_secs_f64()
    );
    // The operator saw shpchp at work on the SHPC slot: the power indicator blinking after the
    // button, then the slot disabled with it off and the card gone.
    let slot1 = |d: &serde_json::Value| d["port"] == "br1" && d["slot"] == 1;
    let changes: Vec<serde_json::Value> = qmp_events(&del.lines)
        .into_iter()
        .filter(|(e, d)| e == "X_PCIERC_SLOT_CHANGED" && slot1(d))
        .map(|(_, d)| d)
        .collect();
    assert!(
        changes.iter().any(|d| d["power-indicator"] == "blink"),
        "br1 slot 1 blinking: {changes:?}\n{}",
        del.text()
    );
    let slots = query_slots(n);
    assert!(
        !slots.as_array().into_iter().flatten().any(slot1),
        "x-pcierc-query-slots: br1's slot 1 empty: {slots}"
    );

    // The same card again into the slot the guest released.
    let add = expect(n.qmp(&[BR_EP], T));
    assert_eq!(add.status, 0, "second device_add below br1: {}", add.text());
    let again = expect(n.l2_ok(&format!("waitfor 60 '{at}'; dmesg"), T));
    let qp = query_pci(n);
    assert!(
        qp.iter().any(|f| f.id == "brep" && f.bdf == ep),
        "query-pci after the second device_add: {qp:?}"
    );
    // x-pcierc-query-slots: br1's slot 1, enabled by shpchp, holds brep.
    let slots = query_slots(n);
    assert!(
        slots.as_array().into_iter().flatten().any(|s| slot1(s)
            && s["powered"] == true
            && s["bus"] == secondary
            && s["devices"][0]["id"] == "brep"),
        "x-pcierc-query-slots: br1 slot 1 powered with brep: {slots}"
    );
    report!(
        "nested: br1's slot in L2's log:\n  {}",
        again
            .lines
            .iter()
            .filter(|l| l.contains("shpchp"))
            .map(String::as_str)
            .collect::<Vec<&str>>()
            .join("\n  ")
    );
    let ours = [&br1.bdf, &ep];
    let failures: Vec<&String> = again
        .lines
        .iter()
        .filter(|l| {
            let mine = ours.iter().any(|b| l.contains(b.as_str()));
            let shpchp_failed = mine
                && l.contains("shpchp")
                && [
                    "fail",
                    "Fail",
                    "Cannot",
                    "error",
                    "Error",
                    "Timeout",
                    "timed out",
                ]
                .iter()
                .any(|w| l.contains(w));
            let aer = [
                "PCIe Bus Error",
                "AER: Corrected",
                "AER: Uncorrected",
                "AER: Multiple",
            ]
            .iter()
            .any(|w| l.contains(w));
            let resources = mine && (l.contains("failed to assign") || l.contains("no space for"));
            shpchp_failed || aer || resources
        })
        .collect();
    assert!(
        failures.is_empty(),
        "L2's log:\n  {}",
        failures
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<&str>>()
            .join("\n  ")
    );
}
