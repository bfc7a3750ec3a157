//! pcierc's function models against QEMU 7.2, register by register: the MCH, `pcie-root-port`s,
//! `ioh3420`s, `pcie-pci-bridge`s and `pxb-pcie`s in QEMU's `q35` machine on one side, the same functions as in-process models on
//! the other, every read compared (see `pcierc_tests::differential`). The same against QEMU 10.0's
//! `pc-q35-10.0` with the models built for that machine type.

use std::time::Instant;

use pcierc_backend::devices::pcie_pci_bridge::OnOffAuto;
use pcierc_backend::devices::{
    MachineType, Mch, PciePciBridge, PciePciBridgeConfig, PxbPcie, PxbPcieConfig, RootPort,
    RootPortConfig, RootPortModel,
};
use pcierc_backend::pci::PciFunction;
use pcierc_tests::differential::{
    ConfigTarget, Differential, Function, Kind, QtestTarget, DEVIATIONS, ECAM_BASE,
};
use pcierc_tests::qtest::{qemu_machine, qemu_q35, Qemu, Qtest};

/// pcierc's models in-process, placed on bus 0 like QEMU's machine: the MCH at 00:00.0 and
/// root ports and bridges at their devfns. ECAM decodes through the MCH's PCIEXBAR and BARs
/// through the functions; every other address reads 0, as unassigned memory does in QEMU.
struct ModelTarget {
    mch: Mch,
    ports: Vec<(u8, Box<dyn PciFunction>)>,
}

impl ModelTarget {
    /// ECAM enabled at [`ECAM_BASE`], as `QtestTarget::new` does.
    fn new(ports: Vec<(u8, Box<dyn PciFunction>)>) -> Self {
        let mut t = ModelTarget {
            mch: Mch::new(),
            ports,
        };
        t.mch.config_write(0x60, 4, ECAM_BASE as u32 | 1);
        t
    }

    fn function(&mut self, bus: u8, devfn: u8) -> Option<&mut dyn PciFunction> {
        match (bus, devfn) {
            (0, 0) => Some(&mut self.mch),
            (0, d) => self
                .ports
                .iter_mut()
                .find(|(f, _)| *f == d)
                .map(|(_, p)| p.as_mut() as &mut dyn PciFunction),
            _ => None,
        }
    }

    fn ecam(&self, addr: u64) -> Option<(u8, u8, u16)> {
        let (base, size, _) = self.mch.ecam()?;
        let off = addr.checked_sub(base).filter(|&o| o < size)?;
        Some(((off >> 20) as u8, (off >> 12) as u8, (off & 0xfff) as u16))
    }

    fn bar(&self, addr: u64) -> Option<(usize, u8, u64)> {
        self.ports.iter().enumerate().find_map(|(i, (_, p))| {
            p.bars().into_iter().find_map(|b| {
                addr.checked_sub(b.base)
                    .filter(|&o| o < b.size)
                    .map(|o| (i, b.index, o))
            })
        })
    }
}

impl ConfigTarget for ModelTarget {
    fn read(&mut self, bus: u8, devfn: u8, offset: u16, width: u8) -> u32 {
        let ones = u32::MAX >> (32 - 8 * u32::from(width));
        self.function(bus, devfn)
            .map_or(ones, |f| f.config_read(offset, width))
    }
    fn write(&mut self, bus: u8, devfn: u8, offset: u16, width: u8, value: u32) {
        if let Some(f) = self.function(bus, devfn) {
            f.config_write(offset, width, value);
        }
    }
    fn cf8_read(&mut self, bus: u8, devfn: u8, offset: u16, width: u8) -> u32 {
        self.read(bus, devfn, offset & 0xff, width)
    }
    fn cf8_write(&mut self, bus: u8, devfn: u8, offset: u16, width: u8, value: u32) {
        self.write(bus, devfn, offset & 0xff, width, value)
    }
    fn mem_read(&mut self, addr: u64, width: u8) -> u64 {
        if let Some((bus, devfn, off)) = self.ecam(addr) {
            return self.read(bus, devfn, off, width.min(4)).into();
        }
        self.bar(addr)
            .map_or(0, |(i, bar, off)| self.ports[i].1.bar_read(bar, off, width))
    }
    fn mem_write(&mut self, addr: u64, width: u8, value: u64) {
        if let Some((bus, devfn, off)) = self.ecam(addr) {
            return self.write(bus, devfn, off, width.min(4), value as u32);
        }
        if let Some((i, bar, off)) = self.bar(addr) {
            self.ports[i].1.bar_write(bar, off, width, value);
        }
    }
    fn platform_reset(&mut self) {
        self.mch.reset();
        self.ports.iter_mut().for_each(|(_, p)| p.reset());
        self.mch.config_write(0x60, 4, ECAM_BASE as u32 | 1);
    }
}

/// A root port as the QEMU command line describes it: (devfn, `-device` argument, config).
fn port(addr: (u8, u8), qemu_extra: &str, config: RootPortConfig) -> (u8, String, RootPort) {
    let arg = format!(
        "{},id={},bus=pcie.0,chassis={},slot={},addr={:#x}.{}{}{qemu_extra}",
        config.model.driver(),
        config.id,
        config.chassis,
        config.slot,
        addr.0,
        addr.1,
        if config.multifunction {
            ",multifunction=on"
        } else {
            ""
        },
    );
    (
        addr.0 << 3 | addr.1,
        arg,
        RootPort::try_new(config).expect("a configuration QEMU accepts"),
    )
}

fn compare(ports: Vec<(u8, String, RootPort)>) {
    let args: Vec<String> = ports.iter().map(|(_, a, _)| a.clone()).collect();
    let Some(qt) = qemu_q35(&args.iter().map(String::as_str).collect::<Vec<_>>()) else {
        return;
    };
    compare_with(qt, ports, &args);
}

fn compare_with(qt: Qtest, ports: Vec<(u8, String, RootPort)>, args: &[String]) {
    let functions = ports
        .into_iter()
        .map(|(devfn, _, p)| {
            let kind = match p.config().model {
                RootPortModel::PcieRootPort => Kind::RootPort,
                RootPortModel::Ioh3420 => Kind::Ioh3420,
                RootPortModel::X3130Upstream => Kind::X3130Upstream,
                RootPortModel::Xio3130Downstream => Kind::Xio3130Downstream,
            };
            let name = p.config().id.clone();
            (devfn, name, kind, Box::new(p) as Box<dyn PciFunction>)
        })
        .collect();
    compare_functions(qt, functions, args);
}

/// Compare the MCH and `functions` (devfn, name, kind, model) against QEMU's machine.
fn compare_functions(
    qt: Qtest,
    functions: Vec<(u8, String, Kind, Box<dyn PciFunction>)>,
    args: &[String],
) {
    let started = Instant::now();
    let mut qemu = QtestTarget::new(qt).expect("enabling ECAM in QEMU");
    let mut names = vec![Function {
        name: "00:00.0 mch".into(),
        kind: Kind::Mch,
        bus: 0,
        devfn: 0,
    }];
    let mut models = Vec::new();
    for (devfn, id, kind, f) in functions {
        names.push(Function {
            name: format!("00:{:02x}.{} {id}", devfn >> 3, devfn & 7),
            kind,
            bus: 0,
            devfn,
        });
        models.push((devfn, f));
    }
    let mut ours = ModelTarget::new(models);
    let mut diff = Differential::new(&mut qemu, &mut ours, names, DEVIATIONS);
    diff.run_all_and_check(&format!("models vs QEMU ({})", args.join(" ")), started);
}

fn config(id: &str, chassis: u8, slot: u16, multifunction: bool) -> RootPortConfig {
    RootPortConfig {
        id: id.into(),
        chassis,
        slot,
        multifunction,
        ..Default::default()
    }
}

#[test]
fn default_root_ports_match_qemu() {
    compare(vec![
        port((0x1c, 0), "", config("rp1", 1, 1, true)),
        port((0x1c, 1), "", config("rp2", 2, 2, false)),
    ]);
}

#[test]
fn resource_reserve_root_ports_match_qemu() {
    let rp1 = RootPortConfig {
        port: 0x10,
        bus_reserve: Some(2),
        io_reserve: Some(0x2000),
        mem_reserve: Some(0x10_0000),
        pref64_reserve: Some(0x4000_0000),
        ..config("rp1", 1, 1, true)
    };
    let rp2 = RootPortConfig {
        slot: 0x1fff,
        bus_reserve: Some(0),
        io_reserve: Some(0),
        pref32_reserve: Some(0x100_0000),
        ..config("rp2", 7, 0x1fff, false)
    };
    compare(vec![
        port(
            (0x1c, 0),
            ",port=0x10,bus-reserve=2,io-reserve=0x2000,mem-reserve=0x100000,pref64-reserve=0x40000000",
            rp1,
        ),
        port((0x1c, 1), ",bus-reserve=0,io-reserve=0,pref32-reserve=0x1000000", rp2),
    ]);
}

#[test]
fn ioh3420_root_ports_match_qemu() {
    let ioh = |id, chassis, slot, multifunction| RootPortConfig {
        model: RootPortModel::Ioh3420,
        ..config(id, chassis, slot, multifunction)
    };
    compare(vec![
        port((0x1c, 0), "", ioh("rp1", 1, 1, true)),
        port(
            (0x1c, 1),
            ",port=0x11",
            RootPortConfig {
                port: 0x11,
                ..ioh("rp2", 2, 0x1fff, false)
            },
        ),
        port((0x1c, 2), "", config("rp3", 3, 3, false)),
    ]);
}

#[test]
fn root_ports_on_pc_q35_10_0_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    let on_10_0 = |(devfn, arg, p): (u8, String, RootPort)| {
        let p = RootPort::on_machine(p.config().clone(), MachineType::PcQ35V10_0);
        (devfn, arg, p)
    };
    let ioh = RootPortConfig {
        model: RootPortModel::Ioh3420,
        ..config("rp3", 3, 3, false)
    };
    let ports: Vec<_> = [
        port((0x1c, 0), "", config("rp1", 1, 1, true)),
        port(
            (0x1c, 1),
            ",bus-reserve=2",
            RootPortConfig {
                bus_reserve: Some(2),
                ..config("rp2", 2, 2, false)
            },
        ),
        port((0x1d, 0), "", ioh),
    ]
    .into_iter()
    .map(on_10_0)
    .collect();
    let args: Vec<String> = ports.iter().map(|(_, a, _)| a.clone()).collect();
    let qt = qemu_machine(
        &q10,
        "pc-q35-10.0",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    compare_with(qt, ports, &args);
}

/// Two `pcie-pci-bridge`s on pcie.0 (QEMU accepts them there; behind a root port the registers
/// are the same, as the fixtures show), one with `msi=off`, beside a root port: every register,
/// the SHPC BAR and its commands, MSI and INTx.
#[test]
fn pcie_pci_bridges_match_qemu() {
    let bridge = |id: &str, msi| PciePciBridgeConfig {
        id: id.into(),
        msi,
        ..Default::default()
    };
    let args: Vec<String> = [
        "pcie-pci-bridge,id=br1,bus=pcie.0,addr=0x2",
        "pcie-pci-bridge,id=br2,bus=pcie.0,addr=0x3,msi=off",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0",
    ]
    .map(String::from)
    .to_vec();
    let Some(qt) = qemu_q35(&args.iter().map(String::as_str).collect::<Vec<_>>()) else {
        return;
    };
    let functions: Vec<(u8, String, Kind, Box<dyn PciFunction>)> = vec![
        (
            0x10,
            "br1".into(),
            Kind::PciePciBridge,
            Box::new(PciePciBridge::new(bridge("br1", OnOffAuto::Auto))),
        ),
        (
            0x18,
            "br2".into(),
            Kind::PciePciBridge,
            Box::new(PciePciBridge::new(bridge("br2", OnOffAuto::Off))),
        ),
        (
            0xe0,
            "rp1".into(),
            Kind::RootPort,
            Box::new(RootPort::new(config("rp1", 1, 1, false))),
        ),
    ];
    compare_functions(qt, functions, &args);
}

/// The same bridges built for `pc-q35-10.0` against QEMU 10.0's: Device Capabilities Extended
/// Tag and the writable AER Uncorrectable Error Mask are the differences.
#[test]
fn pcie_pci_bridges_on_pc_q35_10_0_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    let bridge = |id: &str, msi| {
        let cfg = PciePciBridgeConfig {
            id: id.into(),
            msi,
            ..Default::default()
        };
        Box::new(PciePciBridge::on_machine(cfg, MachineType::PcQ35V10_0)) as Box<dyn PciFunction>
    };
    let args: Vec<String> = [
        "pcie-pci-bridge,id=br1,bus=pcie.0,addr=0x2",
        "pcie-pci-bridge,id=br2,bus=pcie.0,addr=0x3,msi=off",
    ]
    .map(String::from)
    .to_vec();
    let qt = qemu_machine(
        &q10,
        "pc-q35-10.0",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let functions = vec![
        (
            0x10,
            "br1".into(),
            Kind::PciePciBridge,
            bridge("br1", OnOffAuto::Auto),
        ),
        (
            0x18,
            "br2".into(),
            Kind::PciePciBridge,
            bridge("br2", OnOffAuto::Off),
        ),
    ];
    compare_functions(qt, functions, &args);
}

/// Two `pxb-pcie` expanders on pcie.0 (one multi-function with a second at function 1) beside
/// a root port: the expander's function model alone (its root bus is the hierarchy's, compared
/// through the process in `differential.rs`), every register and pattern.
#[test]
fn pxb_pcie_functions_match_qemu() {
    let pxb = |id: &str, bus_nr, multifunction| PxbPcieConfig {
        id: id.into(),
        bus_nr,
        multifunction,
        ..Default::default()
    };
    let args: Vec<String> = [
        "pxb-pcie,id=pxb1,bus=pcie.0,addr=0x5.0,bus_nr=0x80,multifunction=on",
        "pxb-pcie,id=pxb2,bus=pcie.0,addr=0x5.1,bus_nr=0x40",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0",
    ]
    .map(String::from)
    .to_vec();
    let Some(qt) = qemu_q35(&args.iter().map(String::as_str).collect::<Vec<_>>()) else {
        return;
    };
    let functions: Vec<(u8, String, Kind, Box<dyn PciFunction>)> = vec![
        (
            0x28,
            "pxb1".into(),
            Kind::PxbPcie,
            Box::new(PxbPcie::new(pxb("pxb1", 0x80, true))),
        ),
        (
            0x29,
            "pxb2".into(),
            Kind::PxbPcie,
            Box::new(PxbPcie::new(pxb("pxb2", 0x40, false))),
        ),
        (
            0xe0,
            "rp1".into(),
            Kind::RootPort,
            Box::new(RootPort::new(config("rp1", 1, 1, false))),
        ),
    ];
    compare_functions(qt, functions, &args);
}
