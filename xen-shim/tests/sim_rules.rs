//! The simulated hypervisor's routing and setup rules, checked without pcierc: what Xen 4.17
//! does with CF8/CFC, overlapping ranges, disabled servers, foreign servers and setup order
//! (FLOW.md §1, §4), driven through `IoreqServer` with a recording handler.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pcierc_xen_shim::abi::dm_op::{xen_dm_op, IoRange, PciSbdf};
use pcierc_xen_shim::abi::hvm::HVM_IOREQSRV_BUFIOREQ_OFF;
use pcierc_xen_shim::hypervisor::{Hypervisor, IoreqPage};
use pcierc_xen_shim::ioreq_service::{Access, IoHandler, IoRequest};
use pcierc_xen_shim::server::IoreqServer;
use pcierc_xen_shim::sim::{Routed, SimConfig, SimDm, SimXen};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Answers every read with `reply` and records what it got.
struct Echo {
    reply: u64,
    seen: Arc<Mutex<Vec<IoRequest>>>,
}

impl IoHandler for Echo {
    type Error = std::convert::Infallible;
    fn pio(&mut self, port: u16, size: u8, access: Access) -> Result<u64, Self::Error> {
        self.seen
            .lock()
            .unwrap()
            .push(IoRequest::Pio { port, size, access });
        Ok(self.reply)
    }
    fn mmio(&mut self, gpa: u64, size: u8, access: Access) -> Result<u64, Self::Error> {
        self.seen
            .lock()
            .unwrap()
            .push(IoRequest::Mmio { gpa, size, access });
        Ok(self.reply)
    }
    fn pci_config(
        &mut self,
        sbdf: PciSbdf,
        reg: u32,
        size: u8,
        access: Access,
    ) -> Result<u64, Self::Error> {
        self.seen.lock().unwrap().push(IoRequest::PciConfig {
            sbdf,
            reg,
            size,
            access,
        });
        Ok(self.reply)
    }
}

struct Served {
    id: u16,
    stop: EventFd,
    seen: Arc<Mutex<Vec<IoRequest>>>,
    handle: Option<JoinHandle<()>>,
}

impl Served {
    fn start(dm: SimDm, reply: u64, ranges: &[IoRange]) -> Served {
        let server = IoreqServer::create(dm).unwrap();
        for r in ranges {
            server.map(*r).unwrap();
        }
        let id = server.id();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop_fd = stop.try_clone().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut h = Echo {
            reply,
            seen: Arc::clone(&seen),
        };
        let handle = std::thread::spawn(move || loop {
            let mut fds =
                [server.hypervisor().event_fd(), stop_fd.as_raw_fd()].map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            // SAFETY: valid pollfds for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if fds[1].revents != 0 {
                server.shutdown().unwrap();
                return;
            }
            server.service_pending(&mut h).unwrap();
        });
        Served {
            id,
            stop,
            seen,
            handle: Some(handle),
        }
    }

    fn take(&self) -> Vec<IoRequest> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

fn sbdf(bus: u8, devfn: u8) -> PciSbdf {
    PciSbdf {
        segment: 0,
        bus,
        devfn,
    }
}

#[test]
fn cf8_cfc_becomes_pci_config_routed_by_sbdf() {
    let sim = SimXen::new(SimConfig::default());
    let ports = Served::start(
        sim.device_model(0),
        0x11,
        &[IoRange::Port {
            first: 0xcf8,
            last: 0xcff,
        }],
    );
    let dev3 = Served::start(sim.device_model(0), 0xbeef, &[IoRange::Pci(sbdf(0, 0x18))]);
    let v = sim.vcpu(0);
    // FLOW.md §4: CF8=0x80001804 and a word read at 0xcfe: addr 0x0000001800000006.
    assert_eq!(
        v.pio_write(0xcf8, 4, 0x8000_1804).unwrap(),
        Routed::Server(ports.id)
    );
    assert_eq!(
        v.pio_read(0xcfe, 2).unwrap(),
        (0xbeef, Routed::Server(dev3.id))
    );
    assert_eq!(
        dev3.take(),
        [IoRequest::PciConfig {
            sbdf: sbdf(0, 0x18),
            reg: 6,
            size: 2,
            access: Access::Read
        }]
    );
    // An SBDF nobody mapped is dropped even though a server owns port 0xcfc.
    v.pio_write(0xcf8, 4, 0x8000_2000).unwrap();
    assert_eq!(
        v.pio_read(0xcfc, 4).unwrap(),
        (0xffff_ffff, Routed::Dropped)
    );
    // With CF8 bit 31 clear, CFC is plain port I/O; a byte write to 0xCF8 is not latched.
    v.pio_write(0xcf8, 4, 0x0000_1800).unwrap();
    v.pio_write(0xcf8, 1, 0x80).unwrap();
    assert_eq!(
        v.pio_read(0xcfc, 4).unwrap(),
        (0x11, Routed::Server(ports.id))
    );
    assert!(dev3.take().is_empty());
    drop((ports, dev3));
    assert_eq!(sim.crashed(), None);
    assert!(sim.servers().is_empty());
    assert_eq!(sim.bound_ports(), 0);
}

#[test]
fn overlapping_ranges_go_to_the_highest_enabled_server() {
    let sim = SimXen::new(SimConfig::default());
    let mem = IoRange::Memory {
        first: 0xe000_0000,
        last: 0xe000_ffff,
    };
    let low = Served::start(sim.device_model(0), 1, &[mem, IoRange::Pci(sbdf(0, 0))]);
    let high = Served::start(
        sim.device_model(0),
        2,
        &[
            IoRange::Memory {
                first: 0xe000_1000,
                last: 0xe000_1fff,
            },
            IoRange::Pci(sbdf(0, 0)),
        ],
    );
    let v = sim.vcpu(1);
    assert_eq!(
        v.mmio_read(0xe000_1004, 4).unwrap(),
        (2, Routed::Server(high.id))
    );
    assert_eq!(
        v.mmio_read(0xe000_2000, 4).unwrap(),
        (1, Routed::Server(low.id))
    );
    // The whole access must lie in one range: one straddling high's end goes to low.
    assert_eq!(
        v.mmio_read(0xe000_1ffc, 8).unwrap().1,
        Routed::Server(low.id)
    );
    v.pio_write(0xcf8, 4, 0x8000_0000).unwrap();
    assert_eq!(v.pio_read(0xcfc, 4).unwrap().1, Routed::Server(high.id));
    // A disabled server receives nothing.
    let dm = sim.device_model(0);
    dm.dm_op(&mut xen_dm_op::set_ioreq_server_state(high.id, false))
        .unwrap();
    assert_eq!(v.pio_read(0xcfc, 4).unwrap().1, Routed::Server(low.id));
    assert_eq!(sim.crashed(), None);
}

#[test]
fn xen_checks_who_changes_a_server_and_how() {
    let sim = SimXen::new(SimConfig::default());
    let dom0 = Served::start(sim.device_model(0), 0, &[]);
    let stubdom = sim.device_model(7);
    let errno = |r: Result<(), pcierc_xen_shim::hypervisor::XenError>| r.unwrap_err().errno();
    let pci = IoRange::Pci(sbdf(1, 0));
    // Another domain's device model may not touch dom0's server...
    assert_eq!(
        errno(stubdom.dm_op(&mut xen_dm_op::map_io_range_to_ioreq_server(dom0.id, pci))),
        Some(libc::EPERM)
    );
    // ...but a device model of dom0 may (the shim relies on this for QEMU's SBDFs).
    let dm = sim.device_model(0);
    dm.dm_op(&mut xen_dm_op::map_io_range_to_ioreq_server(dom0.id, pci))
        .unwrap();
    assert_eq!(
        errno(dm.dm_op(&mut xen_dm_op::map_io_range_to_ioreq_server(dom0.id, pci))),
        Some(libc::EEXIST)
    );
    let other = IoRange::Pci(sbdf(2, 0));
    assert_eq!(
        errno(dm.dm_op(&mut xen_dm_op::unmap_io_range_from_ioreq_server(
            dom0.id, other
        ))),
        Some(libc::ENOENT)
    );
    let mut bad = xen_dm_op::nr_vcpus();
    bad.pad = 1;
    assert_eq!(errno(dm.dm_op(&mut bad)), Some(libc::EINVAL));
    let mut unknown = xen_dm_op::nr_vcpus();
    unknown.op = 99;
    assert_eq!(errno(dm.dm_op(&mut unknown)), Some(libc::EOPNOTSUPP));
    assert_eq!(
        errno(dm.dm_op(&mut xen_dm_op::set_pci_intx_level(0, 1, 3, 0, true))),
        Some(libc::EINVAL),
        "INTx only on bus 0"
    );
    assert_eq!(
        errno(dm.dm_op(&mut xen_dm_op::x_pcierc_mmcfg(Some((
            0xb000_0000,
            0,
            0,
            255
        ))))),
        Some(libc::EOPNOTSUPP),
        "stock 4.17 has no MMCONFIG decode"
    );
}

#[test]
fn enabling_before_mapping_the_page_leaves_no_event_channel() {
    let sim = SimXen::new(SimConfig::default());
    let dm = sim.device_model(0);
    let mut op = xen_dm_op::create_ioreq_server(HVM_IOREQSRV_BUFIOREQ_OFF);
    dm.dm_op(&mut op).unwrap();
    let id = op.ioreq_server_id_out().unwrap();
    // Wrong order: enable, then map. Xen wrote vp_eport nowhere.
    dm.dm_op(&mut xen_dm_op::set_ioreq_server_state(id, true))
        .unwrap();
    let page = dm.map_ioreq_pages(id, 1, 1).unwrap();
    // SAFETY: the page is mapped and holds slot 0; read only.
    let eport = unsafe { (*page.as_ptr().as_ptr()).vcpu_ioreq[0].vp_eport };
    assert_eq!(eport, 0);
    // A disable/enable cycle fixes it, as FLOW.md says.
    dm.dm_op(&mut xen_dm_op::set_ioreq_server_state(id, false))
        .unwrap();
    dm.dm_op(&mut xen_dm_op::set_ioreq_server_state(id, true))
        .unwrap();
    // SAFETY: as above.
    let eport = unsafe { (*page.as_ptr().as_ptr()).vcpu_ioreq[0].vp_eport };
    assert_ne!(eport, 0);
    // With BUFIOREQ_OFF there is no buffered page (frame 0).
    assert_eq!(
        dm.map_ioreq_pages(id, 0, 1).unwrap_err().errno(),
        Some(libc::ENOENT)
    );
    // Legacy get_info (without no_gfns) makes acquiring the pages fail.
    let mut op = xen_dm_op::create_ioreq_server(HVM_IOREQSRV_BUFIOREQ_OFF);
    dm.dm_op(&mut op).unwrap();
    let id2 = op.ioreq_server_id_out().unwrap();
    let mut info = xen_dm_op::get_ioreq_server_info(id2);
    info.u.bytes[2] = 0; // flags = 0
    dm.dm_op(&mut info).unwrap();
    assert_eq!(
        dm.map_ioreq_pages(id2, 1, 1).unwrap_err().errno(),
        Some(libc::EPERM)
    );
}
