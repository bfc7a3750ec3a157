//! Several PCI segments (beyond QEMU): the topology file's `[[segment]]` tables, validation,
//! and requests routed by segment through the protocol handler and the control operations.

use pcierc_backend::control::{ControlOps, DeviceAdd};
use pcierc_backend::service::RootComplex;
use pcierc_backend::topology::{state, Segments, TopologyError, TopologySpec};
use pcierc_protocol::{BackendHandler, ConfigAddress, FunctionKind, Status};

/// Segment 1's ECAM window: 256 buses at 4 GiB + 1 GiB.
const SEG1_ECAM: u64 = 0x1_4000_0000;

/// Segment 0 with rp1, segment 1 (ECAM at [`SEG1_ECAM`]) with rp5.
const TOPOLOGY: &str = include_str!("../../docs/examples/two-segments.toml");

fn rc() -> RootComplex {
    let spec = TopologySpec::from_toml(TOPOLOGY).expect("topology");
    RootComplex::new(Segments::new(spec).expect("segments"))
}

fn at(segment: u16, bus: u8, devfn: u8, offset: u16) -> ConfigAddress {
    ConfigAddress {
        segment,
        bus,
        devfn,
        offset,
    }
}

#[test]
fn segments_are_parsed_and_validated() {
    let spec = TopologySpec::from_toml(TOPOLOGY).unwrap();
    assert_eq!(spec.segments[0].ecam(), (SEG1_ECAM, 256 << 20, 255));
    assert_eq!(spec.root_ports[1].segment, 1);
    let refused = |extra: &str| TopologySpec::from_toml(&format!("{TOPOLOGY}{extra}")).unwrap_err();
    let e = refused("[[segment]]\nid='seg2'\nsegment=1\necam-base=0x200000000\n");
    assert!(
        matches!(&e, TopologyError::SegmentInUse { id, segment: 1 } if id == "seg2"),
        "{e:?}"
    );
    let e = refused("[[segment]]\nid='seg2'\nsegment=2\necam-base=0x14ff00000\n");
    assert!(
        matches!(&e, TopologyError::SegmentOverlap { id, other } if id == "seg2" && other == "seg1"),
        "{e:?}"
    );
    let e = refused("[[segment]]\nid='seg2'\nsegment=2\necam-base=0x200080000\n");
    assert!(matches!(&e, TopologyError::SegmentWindow { .. }), "{e:?}");
    // Chassis/slot pairs are one namespace for the machine, as QEMU's; ids too.
    let e = refused("[[root-port]]\nid='rp6'\nbus='seg1'\naddr='4.0'\nchassis=5\nslot=1\n");
    assert!(
        matches!(&e, TopologyError::ChassisSlotInUse { other, .. } if other == "rp5"),
        "{e:?}"
    );
    let e = refused("[[root-port]]\nid='seg1'\naddr='4.0'\nchassis=6\n");
    assert!(
        matches!(&e, TopologyError::DuplicateId(id) if id == "seg1"),
        "{e:?}"
    );
    // The same address on two root buses is two functions.
    TopologySpec::from_toml(&format!(
        "{TOPOLOGY}[[root-port]]\nid='rp6'\nbus='seg1'\naddr='2.0'\nchassis=6\n"
    ))
    .unwrap();
    // --device places a port on a segment's root bus by its id.
    let mut s = TopologySpec::from_toml(TOPOLOGY).unwrap();
    s.add_device_option("pcie-root-port,id=rp7,bus=seg1,addr=0x4,chassis=7")
        .unwrap();
    assert_eq!(s.root_ports[2].segment, 1);
    let e = TopologySpec::from_toml("[[segment]]\nid='pcie.0'\nsegment=1\necam-base=0x100000\n")
        .unwrap_err();
    assert!(
        matches!(&e, TopologyError::InvalidId(id) if id == "pcie.0"),
        "{e:?}"
    );
    let e = TopologySpec::from_toml("[[segment]]\nsegment=1\necam-base=0x100000\ncolour=1\n")
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    let e = TopologySpec::from_toml("segment = 1\n").unwrap_err();
    assert!(matches!(e, TopologyError::Segment(1)), "{e:?}");
}

#[test]
fn configuration_requests_reach_the_segment_they_name() {
    let mut rc = rc();
    // Segment 1: its host bridge at 00.0 (cloud-hypervisor's 8086:0d57) and rp5 at 03.0.
    assert_eq!(rc.config_read(at(1, 0, 0, 0), 4), Ok(0x0d57_8086));
    let rp5 = rc.config_read(at(1, 0, 3 << 3, 0), 4).unwrap();
    let rp1 = rc.config_read(at(0, 0, 2 << 3, 0), 4).unwrap();
    assert_eq!(rp5, rp1, "both are pcie-root-ports");
    assert_eq!(rc.config_read(at(0, 0, 3 << 3, 0), 4), Ok(0xffff_ffff));
    assert_eq!(rc.config_read(at(1, 0, 2 << 3, 0), 4), Ok(0xffff_ffff));
    assert_eq!(
        rc.config_read(at(0, 0, 0, 0), 4),
        Ok(0x29c0_8086),
        "the MCH"
    );
    assert_eq!(rc.config_read(at(2, 0, 0, 0), 4), Err(Status::NoDevice));
    // A write on segment 1 changes rp5 only.
    rc.config_write(at(1, 0, 3 << 3, 0x18), 4, 0x0002_0200)
        .unwrap();
    assert_eq!(rc.config_read(at(1, 0, 3 << 3, 0x18), 4), Ok(0x0002_0200));
    assert_eq!(rc.config_read(at(0, 0, 2 << 3, 0x18), 4), Ok(0));
    // Segment 1's ECAM window is decoded from power-on, without PCIEXBAR.
    let ecam = SEG1_ECAM + (3 << 15) + 0x18;
    assert_eq!(rc.mmio_read(ecam, 4), Ok(0x0002_0200));
    rc.mmio_write(ecam, 4, 0x0003_0300).unwrap();
    assert_eq!(rc.config_read(at(1, 0, 3 << 3, 0x18), 4), Ok(0x0003_0300));
    // The topology record lists both segments' functions and windows.
    let t = rc.topology();
    let hosts: Vec<u16> = t
        .functions
        .iter()
        .filter(|f| f.kind == FunctionKind::HostBridge as u8)
        .map(|f| f.segment)
        .collect();
    assert_eq!(hosts, [0, 1]);
    assert!(t
        .ecam
        .iter()
        .any(|w| w.segment == 1 && w.base == SEG1_ECAM && w.end_bus == 255));
}

#[test]
fn a_hot_add_behind_a_segment_1_port_and_query_pci() {
    let mut rc = rc();
    // Bus numbers for rp5, as firmware would give them through segment 1's ECAM.
    rc.mmio_write(SEG1_ECAM + (3 << 15) + 0x18, 4, 0x0001_0100)
        .unwrap();
    let add = |id: &str, bus: &str| DeviceAdd {
        driver: "virtio-net-pci".into(),
        id: id.into(),
        bus: bus.into(),
        addr: None,
        owner: None,
        multifunction: false,
    };
    rc.device_add(&add("net1", "rp5"))
        .expect("hot-add on segment 1");
    // Ids are unique across segments: refused as a duplicate in one segment is.
    let e = rc.device_add(&add("net1", "rp1")).unwrap_err();
    assert_eq!(e.to_string(), "id 'net1' is already in use");
    // The guest powers the slot on (Slot Control at 0x6c, through segment 1's ECAM); then
    // the function answers on segment 1 (owned elsewhere: EREMOTE), not on segment 0.
    assert_eq!(
        rc.config_read(at(1, 1, 0, 0), 4),
        Ok(0xffff_ffff),
        "unpowered"
    );
    rc.mmio_write(SEG1_ECAM + (3 << 15) + 0x6c, 2, 0x01c0)
        .unwrap();
    assert_eq!(rc.config_read(at(1, 1, 0, 0), 4), Err(Status::Remote));
    assert_eq!(rc.config_read(at(0, 1, 0, 0), 4), Ok(0xffff_ffff));
    let q = rc.query_pci();
    let buses = q.as_array().unwrap();
    assert_eq!(buses.len(), 2);
    assert!(buses[0].get("x-pcierc-segment").is_none());
    assert_eq!(buses[1]["x-pcierc-segment"], 1);
    let rp5 = &buses[1]["devices"][1];
    assert_eq!(rp5["qdev_id"], "rp5");
    assert_eq!(rp5["pci_bridge"]["devices"][0]["qdev_id"], "net1");
    // The record FunctionAdded carries is net1's record in the whole topology (its parent
    // an index into GetTopology's list, past segment 0's records).
    let segments = rc.segments();
    let net1 = segments.get(1).unwrap().endpoint("net1").unwrap();
    let rec = segments.endpoint_record(1, net1);
    let t = segments.describe();
    assert!(t.functions.contains(&rec), "{rec:?}");
    assert_eq!(t.functions[usize::from(rec.parent)].devfn, 3 << 3, "rp5");
    assert_eq!(t.functions[usize::from(rec.parent)].segment, 1);
    // Save and restore carry segment 1's registers and its hot-added function.
    let blob = rc.save_state().unwrap();
    let mut other = Segments::new(TopologySpec::from_toml(TOPOLOGY).unwrap()).unwrap();
    state::load_segments(&mut other, &blob).unwrap();
    let seg1 = other.get(1).unwrap();
    assert!(seg1.endpoint("net1").is_some());
    assert_eq!(seg1.config_read(0, 3 << 3, 0x18, 4), Ok(0x0001_0100));
}

#[test]
fn the_state_file_keeps_extra_segments_registers() {
    use pcierc_backend::service::state_file::{load_bytes, StateFile};
    let dir = std::env::temp_dir().join(format!("pcierc-segments-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.state");
    let fresh = || Segments::new(TopologySpec::from_toml(TOPOLOGY).unwrap()).unwrap();
    let mut h = fresh();
    let mut f = StateFile::open(&path, &mut h, false).unwrap();
    // rp5's bus numbers, written through segment 1's ECAM window: one journal record.
    h.mmio_write(SEG1_ECAM + (3 << 15) + 0x18, 4, 0x0004_0400)
        .unwrap();
    f.persist(&h);
    let mut again = fresh();
    let loaded = load_bytes(&mut again, &std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(loaded.records, 1);
    assert_eq!(
        again.get(1).unwrap().config_read(0, 3 << 3, 0x18, 4),
        Ok(0x0004_0400)
    );
    assert_eq!(again.save_functions(), h.save_functions());
    let ids: Vec<String> = h.save_functions().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["mch", "rp1", "seg1", "rp5"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn root_bus_functions_and_interrupt_eventfds_of_segment_1() {
    use pcierc_protocol::{ConnectionId, InterruptFd};
    use vmm_sys_util::eventfd::EventFd;
    // A function another emulator serves on segment 1's root bus.
    let spec = TopologySpec::from_toml(&format!(
        "{TOPOLOGY}[[device]]\ndriver='virtio-net-pci'\nid='net9'\nbus='seg1'\naddr='5.0'\n"
    ))
    .unwrap();
    let mut rc = RootComplex::new(Segments::new(spec).unwrap());
    assert_eq!(rc.config_read(at(1, 0, 5 << 3, 0), 4), Err(Status::Remote));
    assert_eq!(rc.config_read(at(0, 0, 5 << 3, 0), 4), Ok(0xffff_ffff));
    let rec = rc
        .topology()
        .functions
        .into_iter()
        .find(|f| f.kind == FunctionKind::Endpoint as u8)
        .unwrap();
    assert_eq!((rec.segment, rec.bus, rec.devfn), (1, 0, 5 << 3));
    // rp5's MSI-X vector 0 takes an eventfd by its segment; segment 2 has no function.
    let req = |segment| InterruptFd {
        segment,
        bus: 0,
        devfn: 3 << 3,
        vector: 0,
        ..Default::default()
    };
    let fd = || Some(EventFd::new(0).unwrap());
    let conn = ConnectionId(1);
    assert_eq!(rc.set_interrupt_fd(conn, &req(1), fd()), Ok(()));
    assert_eq!(
        rc.set_interrupt_fd(conn, &req(2), fd()),
        Err(Status::NoDevice)
    );
    assert_eq!(
        rc.set_interrupt_fd(conn, &req(0), fd()),
        Err(Status::NoDevice),
        "segment 0 has no port at 03.0"
    );
}

#[test]
fn a_switch_below_a_segment_1_root_port_is_in_segment_1() {
    let text = format!(
        "{TOPOLOGY}
[[switch-port]]
driver = \"x3130-upstream\"
id = \"up5\"
bus = \"rp5\"

[[switch-port]]
driver = \"xio3130-downstream\"
id = \"dp5\"
bus = \"up5\"
chassis = 6
slot = 1
"
    );
    let spec = TopologySpec::from_toml(&text).expect("topology");
    let seg1 = spec.for_segment(1);
    let ids: Vec<&str> = seg1
        .root_ports
        .iter()
        .map(|p| p.config.id.as_str())
        .collect();
    assert_eq!(ids, ["rp5", "up5", "dp5"]);
    assert!(spec
        .for_segment(0)
        .root_ports
        .iter()
        .all(|p| p.config.id == "rp1"));
    let mut rc = RootComplex::new(Segments::new(spec).expect("segments"));
    // Firmware's numbering on segment 1: rp5 1-2, up5 2-2; the switch answers there only.
    rc.config_write(at(1, 0, 3 << 3, 0x18), 4, 0x0002_0100)
        .unwrap();
    rc.config_write(at(1, 1, 0, 0x18), 4, 0x0002_0201).unwrap();
    assert_eq!(rc.config_read(at(1, 1, 0, 0), 4), Ok(0x8232_104c));
    assert_eq!(rc.config_read(at(1, 2, 0, 0), 4), Ok(0x8233_104c));
    assert_eq!(rc.config_read(at(0, 1, 0, 0), 4), Ok(0xffff_ffff));
    let t = rc.topology();
    let switch: Vec<u16> = t
        .functions
        .iter()
        .filter(|f| f.vendor_id == 0x104c)
        .map(|f| f.segment)
        .collect();
    assert_eq!(switch, [1, 1]);
}
