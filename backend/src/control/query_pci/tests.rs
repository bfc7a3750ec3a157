//! `query-pci` against QEMU 7.2's own output (tests/qmp/fixtures).

use serde_json::{json, Value};

use super::*;
use crate::pci::header::{self, Identity};
use crate::pci::{ConfigSpace, Effects};
use crate::topology::addr::DevFn;
use crate::topology::spec::TopologySpec;
use pcierc_protocol::Status;

const DEFAULT: &str =
    include_str!("../../../../tests/qmp/fixtures/qemu-7.2-query-pci-default.json");
const PROGRAMMED: &str =
    include_str!("../../../../tests/qmp/fixtures/qemu-7.2-query-pci-programmed.json");

/// tests/qmp/capture_qemu_fixtures.py's PROGRAMMED_RP1: (offset, dword) to rp1 (00:02.0).
const PROGRAMMED_RP1: [(u16, u32); 9] = [
    (0x18, 0x0001_0100),
    (0x1c, 0x0000_1111),
    (0x20, 0xfe10_fe00),
    (0x24, 0x0001_fff1),
    (0x28, 0x0000_0008),
    (0x2c, 0x0000_0008),
    (0x10, 0xfea0_0000),
    (0x3c, 0x0000_010b),
    (0x04, 0x0000_0007),
];
/// ... and PROGRAMMED_NET0, to net0 (01:00.0).
const PROGRAMMED_NET0: [(u16, u32); 2] = [(0x10, 0xfe00_0000), (0x04, 0x0000_0006)];

fn hierarchy(devices: &[&str]) -> Hierarchy {
    let mut spec = TopologySpec::embedded_default().unwrap();
    for d in devices {
        spec.add_device_option(d).unwrap();
    }
    Hierarchy::new(spec).unwrap()
}

/// QEMU's result restricted to the functions in `slots` of bus 0 (the ICH9 functions at
/// slot 31 are not pcierc's).
fn fixture(text: &str, slots: &[u64]) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap();
    let devices = v[0]["devices"].as_array_mut().unwrap();
    devices.retain(|d| slots.contains(&d["slot"].as_u64().unwrap()));
    v
}

fn rp1() -> u8 {
    DevFn::new(2, 0).unwrap().0
}

fn bridge_devices(v: &mut Value, index: usize) -> &mut Vec<Value> {
    v[0]["devices"][index]["pci_bridge"]["devices"]
        .as_array_mut()
        .unwrap()
}

#[test]
fn default_topology_is_qemus() {
    let got = query_pci(&hierarchy(&[]));
    let want = fixture(DEFAULT, &[0, 2]);
    assert_eq!(want[0]["devices"].as_array().unwrap().len(), 5);
    for (g, w) in got[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want[0]["devices"].as_array().unwrap())
    {
        assert_eq!(g, w);
    }
    assert_eq!(got, want);
}

#[test]
fn programmed_ports_are_qemus() {
    let mut h = hierarchy(&["e1000e,id=net0,bus=rp1"]);
    for (off, val) in PROGRAMMED_RP1 {
        h.config_write(0, rp1(), off, 4, val).unwrap();
    }
    for (off, val) in PROGRAMMED_NET0 {
        // net0's configuration space is its owner's.
        assert_eq!(h.config_write(1, 0, off, 4, val), Err(Status::Remote));
    }
    let mut got = query_pci(&h);
    let mut want = fixture(PROGRAMMED, &[0, 2]);
    let got_net0 = bridge_devices(&mut got, 1).remove(0);
    let want_net0 = bridge_devices(&mut want, 1).remove(0);
    assert!(bridge_devices(&mut got, 1).is_empty());
    assert_eq!(
        got, want,
        "MCH and root ports, nested bus numbers and windows"
    );

    for k in ["bus", "slot", "function", "qdev_id"] {
        assert_eq!(got_net0[k], want_net0[k], "{k}");
    }
    assert_eq!(
        got_net0,
        json!({
            "bus": 1, "slot": 0, "function": 0,
            "class_info": {"class": 0xffff},
            "id": {"device": 0xffff, "vendor": 0xffff},
            "irq_pin": 0, "qdev_id": "net0", "regions": []
        })
    );
    // Every member is one QEMU's PciDeviceInfo has, of the same JSON type.
    for (k, v) in got_net0.as_object().unwrap() {
        assert!(want_net0.get(k).is_some(), "{k} is not in QEMU's entry");
        assert_eq!(
            std::mem::discriminant(v),
            std::mem::discriminant(&want_net0[k]),
            "{k}"
        );
    }
    for (k, v) in got_net0["id"].as_object().unwrap() {
        assert!(v.is_u64() && want_net0["id"][k].is_u64(), "id.{k}");
    }
}

#[test]
fn structs_serialize_in_schema_order() {
    // serde_json::Value sorts members; the structs keep qapi/pci.json's order.
    let info = from_hierarchy(&hierarchy(&[]));
    let text = serde_json::to_string(&info[0].devices[1]).unwrap();
    let want = concat!(
        r#"{"bus":0,"slot":2,"function":0,"class_info":{"desc":"PCI bridge","class":1540},"#,
        r#""id":{"device":12,"vendor":6966},"irq":0,"irq_pin":1,"qdev_id":"rp1","#,
        r#""pci_bridge":{"bus":{"number":0,"secondary":0,"subordinate":0,"#,
        r#""io_range":{"base":61440,"limit":4095},"#,
        r#""memory_range":{"base":4293918720,"limit":1048575},"#,
        r#""prefetchable_range":{"base":4293918720,"limit":1048575}}},"#,
        r#""regions":[{"bar":0,"type":"memory","address":-1,"size":4096,"#,
        r#""prefetch":false,"mem_type_64":false}]}"#
    );
    assert_eq!(text, want);
}

#[test]
fn secondary_bus_lists_the_slot_and_remote_functions_keep_devfn_order() {
    let mut h = hierarchy(&["virtio-net-pci,id=nic0,bus=pcie.0,addr=0x5.0"]);
    let rp2 = DevFn::new(2, 1).unwrap().0;
    h.config_write(0, rp2, 0x18, 4, 0x0002_0200).unwrap();
    let v = query_pci(&h);
    let devices = v[0]["devices"].as_array().unwrap();
    let ids: Vec<&str> = devices
        .iter()
        .map(|d| d["qdev_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["", "rp1", "rp2", "rp3", "rp4", "nic0"]);
    assert_eq!(
        (devices[5]["bus"].as_u64(), devices[5]["slot"].as_u64()),
        (Some(0), Some(5))
    );
    assert_eq!(
        devices[2]["pci_bridge"]["devices"],
        json!([]),
        "empty slot, bus 2"
    );
    assert!(
        devices[1]["pci_bridge"].get("devices").is_none(),
        "secondary 0"
    );

    let disk = EndpointSpec {
        id: "disk0".into(),
        driver: "nvme".into(),
        bus: "rp2".into(),
        addr: DevFn(0),
        owner: "vmm".into(),
        multifunction: false,
    };
    h.hot_add(disk.clone()).unwrap();
    h.hot_add(EndpointSpec {
        bus: "rp3".into(),
        id: "disk1".into(),
        ..disk
    })
    .unwrap();
    let v = query_pci(&h);
    let below = &v[0]["devices"][2]["pci_bridge"]["devices"];
    assert_eq!(below[0]["qdev_id"], "disk0");
    assert_eq!(
        (below[0]["bus"].as_u64(), below[0]["slot"].as_u64()),
        (Some(2), Some(0))
    );
    // rp3 has no secondary bus: like QEMU, nothing behind it is listed.
    assert!(v[0]["devices"][3]["pci_bridge"].get("devices").is_none());
}

#[test]
fn bar_address_follows_pci_bar_address() {
    let mut h = hierarchy(&[]);
    let address = |h: &Hierarchy| query_pci(h)[0]["devices"][1]["regions"][0]["address"].clone();
    h.config_write(0, rp1(), 0x10, 4, 0xfea0_0000).unwrap();
    assert_eq!(address(&h), json!(-1), "Memory Space disabled");
    h.config_write(0, rp1(), 0x04, 2, 0x0002).unwrap();
    assert_eq!(address(&h), json!(0xfea0_0000u32));
    h.config_write(0, rp1(), 0x10, 4, 0xffff_f000).unwrap();
    assert_eq!(address(&h), json!(-1), "a 32-bit BAR ending at 4 GiB - 1");
    h.config_write(0, rp1(), 0x10, 4, 0).unwrap();
    assert_eq!(address(&h), json!(-1), "address 0");
    // Sizing used a copy: the port's BAR still holds what the guest wrote.
    assert_eq!(h.config_read(0, rp1(), 0x10, 4), Ok(0));
}

/// A type 0 function with the regions pcierc's own models lack: an I/O BAR, a 64-bit
/// prefetchable BAR and an expansion ROM, registered as QEMU's `pci_register_bar()` does.
#[derive(Clone)]
struct Fake(ConfigSpace);

impl PciFunction for Fake {
    fn config_read(&self, offset: u16, width: u8) -> u32 {
        self.0.read(offset, width)
    }
    fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Effects {
        self.0.write(offset, width, value);
        Effects::empty()
    }
    fn reset(&mut self) {}
    fn save(&self) -> Value {
        Value::Null
    }
    fn restore(&mut self, _: &Value) -> Result<(), crate::Error> {
        Ok(())
    }
}

#[test]
fn io_64bit_and_rom_regions_decode_as_qemu() {
    let mut cs = ConfigSpace::new(256);
    let id = Identity {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision: 0,
        class_code: 0xff_0000,
    };
    header::init_type0(&mut cs, id, false);
    cs.set_byte(INTERRUPT_PIN, 2);
    cs.set_dword(0x10, 0x1);
    cs.set_wmask(0x10, 4, 0xffff_ffe0);
    cs.set_dword(0x18, 0xc);
    cs.set_wmask(0x18, 8, 0xffff_ffff_fff0_0000);
    cs.set_wmask(ROM_ADDRESS, 4, 0xfffc_0001);
    let mut f = Fake(cs);
    for (off, val) in [
        (0x10, 0xc000),
        (0x18, 0),
        (0x1c, 8),
        (ROM_ADDRESS, 0xfeb0_0000),
        (INTERRUPT_LINE, 10),
        (COMMAND, 3),
    ] {
        f.config_write(off, 4, val);
    }
    let info = serde_json::to_value(emulated(&f, 3, 0x28, "x")).unwrap();
    assert_eq!(
        info,
        json!({
            "bus": 3, "slot": 5, "function": 0,
            "class_info": {"class": 0xff00},
            "id": {"device": 0x5678, "vendor": 0x1234, "subsystem": 0x1100,
                   "subsystem-vendor": 0x1af4},
            "irq": 10, "irq_pin": 2, "qdev_id": "x",
            "regions": [
                {"bar": 0, "type": "io", "address": 0xc000, "size": 32},
                {"bar": 2, "type": "memory", "address": 0x8_0000_0000u64, "size": 0x10_0000,
                 "prefetch": true, "mem_type_64": true},
                {"bar": 6, "type": "memory", "address": -1, "size": 0x4_0000,
                 "prefetch": false, "mem_type_64": false}
            ]
        })
    );
    f.config_write(ROM_ADDRESS, 4, 0xfeb0_0001);
    f.config_write(COMMAND, 2, 2);
    let regions = regions(&f, HEADER_TYPE_NORMAL);
    let addresses: Vec<i64> = regions.iter().map(|r| r.address).collect();
    assert_eq!(
        addresses,
        [-1, 0x8_0000_0000, 0xfeb0_0000],
        "I/O decode off, ROM enabled"
    );
}

const SWITCH: &str = include_str!("../../../../tests/qmp/fixtures/qemu-7.2-query-pci-switch.json");

/// QEMU's `query-pci` with a switch behind rp1 (tests/qmp/capture_qemu_fixtures.py's SWITCH,
/// numbered as its SWITCH_NUMBERS): up1 nested in rp1, dp1 and dp2 in up1, net1 in dp1, each
/// port decoded as QEMU decodes it; net1 (another emulator's) with what pcierc knows of it.
#[test]
fn a_switch_nests_as_qemus() {
    let mut h = hierarchy(&[
        "x3130-upstream,id=up1,bus=rp1",
        "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1",
        "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=2",
        "e1000e,id=net1,bus=dp1",
    ]);
    for (bus, devfn, val) in [
        (0, rp1(), 0x0004_0100),
        (1, 0, 0x0004_0201),
        (2, 0, 0x0003_0302),
        (2, 8, 0x0004_0402),
    ] {
        h.config_write(bus, devfn, 0x18, 4, val).unwrap();
    }
    let mut got = query_pci(&h);
    let mut want = fixture(SWITCH, &[0, 2]);
    let path = |v: &mut Value| -> Value {
        let dp1 = &mut v[0]["devices"][1]["pci_bridge"]["devices"][0]["pci_bridge"]["devices"][0];
        let devices = dp1["pci_bridge"]["devices"].as_array_mut().unwrap();
        devices.remove(0)
    };
    let got_net1 = path(&mut got);
    let want_net1 = path(&mut want);
    assert_eq!(got, want, "ports nested as QEMU nests them");
    for k in ["bus", "slot", "function", "qdev_id"] {
        assert_eq!(got_net1[k], want_net1[k], "{k}");
    }
}

/// A `pcie-pci-bridge` in rp1's slot and one on the root bus: each listed where it sits with
/// its identity (1b36:000e, class 0x0604), nested in rp1's devices, and listing the functions
/// below it once its Secondary Bus Number is set (as QEMU's `qmp_query_pci_bridge()` does).
#[test]
fn pcie_pci_bridges_nest() {
    let mut h = hierarchy(&[
        "pcie-pci-bridge,id=br1,bus=rp1",
        "e1000,id=n1,bus=br1,addr=1,owner=qemu",
        "pcie-pci-bridge,id=br0,addr=5",
    ]);
    h.config_write(0, rp1(), 0x18, 4, 0x02_0100).unwrap();
    let br0_devfn = DevFn::new(5, 0).unwrap().0;
    let list = |h: &Hierarchy| serde_json::to_value(from_hierarchy(h)).unwrap();
    let v = list(&h);
    let br0 = v[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["slot"] == 5)
        .expect("br0 on bus 0")
        .clone();
    assert_eq!(br0["qdev_id"], "br0");
    assert_eq!(br0["id"]["device"], 0x000e);
    assert_eq!(br0["class_info"]["class"], 0x0604);
    assert!(
        br0["pci_bridge"].get("devices").is_none(),
        "no secondary bus"
    );
    let rp1_index = v[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .position(|d| d["qdev_id"] == "rp1")
        .unwrap();
    let mut v = v;
    let below_rp1 = bridge_devices(&mut v, rp1_index).clone();
    assert_eq!(below_rp1.len(), 1);
    assert_eq!(below_rp1[0]["qdev_id"], "br1");
    assert_eq!(
        (below_rp1[0]["bus"].clone(), below_rp1[0]["slot"].clone()),
        (json!(1), json!(0))
    );
    assert!(below_rp1[0]["pci_bridge"].get("devices").is_none());
    // br1 numbered: n1 at device 1 of bus 2.
    h.config_write(1, 0, 0x18, 4, 0x02_0201).unwrap();
    h.config_write(0, br0_devfn, 0x18, 4, 0x03_0300).unwrap();
    let mut v = list(&h);
    let br1 = bridge_devices(&mut v, rp1_index)[0].clone();
    let n1 = &br1["pci_bridge"]["devices"][0];
    assert_eq!(
        (n1["qdev_id"].clone(), n1["bus"].clone(), n1["slot"].clone()),
        (json!("n1"), json!(2), json!(1))
    );
    let br0 = v[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["slot"] == 5)
        .unwrap()
        .clone();
    assert_eq!(br0["pci_bridge"]["devices"], json!([]));
}
