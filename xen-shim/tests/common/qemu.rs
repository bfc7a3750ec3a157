//! A stand-in for QEMU's Xen device model: an ioreq server created before the shim (so it has
//! the lower id), claiming ports 0xCF8-0xCFF and its own i440fx host bridge 00:00.0 as QEMU
//! does, and serving one PCIe endpoint (virtio-net) for whatever SBDF Xen sends it. Like QEMU
//! 7.2's `cpu_ioreq_config()`, it serves 256 bytes of configuration space per function, and
//! MMIO it has no region for reads as all ones (its Xen machine has no MMCONFIG).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pcierc_xen_shim::abi::dm_op::{IoRange, PciSbdf};
use pcierc_xen_shim::hypervisor::Hypervisor;
use pcierc_xen_shim::ioreq_service::{Access, IoHandler};
use pcierc_xen_shim::server::IoreqServer;
use pcierc_xen_shim::sim::SimXen;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What reached the stand-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A port access.
    Pio(u16, Access),
    /// An MMIO access.
    Mmio(u64, Access),
    /// A configuration access Xen decoded.
    Config(PciSbdf, u32, Access),
    /// An INVALIDATE.
    Invalidate,
}

struct Model {
    cf8: u32,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// virtio-net-pci (modern) identity: vendor 1af4, device 1041, class 020000.
pub const ENDPOINT_ID: u32 = 0x1041_1af4;
/// QEMU's i440fx host bridge.
pub const I440FX_ID: u32 = 0x1237_8086;

impl IoHandler for Model {
    type Error = std::convert::Infallible;
    fn pio(&mut self, port: u16, size: u8, access: Access) -> Result<u64, Self::Error> {
        self.seen.lock().unwrap().push(Seen::Pio(port, access));
        Ok(match (port, size, access) {
            (0xcf8, 4, Access::Write(v)) => {
                self.cf8 = v as u32;
                0
            }
            (0xcf8, 4, Access::Read) => self.cf8.into(),
            _ => u64::MAX,
        })
    }
    fn mmio(&mut self, gpa: u64, _size: u8, access: Access) -> Result<u64, Self::Error> {
        self.seen.lock().unwrap().push(Seen::Mmio(gpa, access));
        Ok(u64::MAX)
    }
    fn pci_config(
        &mut self,
        sbdf: PciSbdf,
        reg: u32,
        size: u8,
        access: Access,
    ) -> Result<u64, Self::Error> {
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Config(sbdf, reg, access));
        if reg >= 0x100 {
            return Ok(u64::MAX); // QEMU 7.2 serves PCI_CONFIG_SPACE_SIZE (256) bytes
        }
        let dword = match (sbdf.bus, sbdf.devfn, reg & !3) {
            (0, 0, 0) => I440FX_ID,
            (0, 0, 8) => 0x0600_0002,
            (0, _, _) => u32::MAX,
            (_, 0, 0) => ENDPOINT_ID,
            (_, 0, 8) => 0x0200_0001,
            (_, 0, _) => 0,
            _ => u32::MAX,
        };
        Ok(u64::from(dword >> (8 * (reg & 3))) & (u64::MAX >> (64 - 8 * u32::from(size))))
    }
    fn invalidate(&mut self) {
        self.seen.lock().unwrap().push(Seen::Invalidate);
    }
}

/// The stand-in, serving on its own thread.
pub struct Qemu {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Its server id.
    pub id: u16,
}

impl Qemu {
    /// Create its server in dom0 of `sim` (before the shim), map its ranges, serve.
    pub fn start(sim: &SimXen) -> Qemu {
        let server = IoreqServer::create(sim.device_model(0)).expect("QEMU's ioreq server");
        server
            .map(IoRange::Port {
                first: 0xcf8,
                last: 0xcff,
            })
            .unwrap();
        server.map(IoRange::Pci(PciSbdf::default())).unwrap();
        let id = server.id();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop_fd = stop.try_clone().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut model = Model {
            cf8: 0,
            seen: Arc::clone(&seen),
        };
        let handle = std::thread::spawn(move || loop {
            let ev: RawFd = server.hypervisor().event_fd();
            let mut fds = [
                libc::pollfd {
                    fd: ev,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop_fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if fds[1].revents != 0 {
                server.shutdown().expect("QEMU's teardown");
                return;
            }
            server.service_pending(&mut model).expect("QEMU's service");
        });
        Qemu {
            stop,
            handle: Some(handle),
            seen,
            id,
        }
    }

    /// What reached it since the last call.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }

    /// The configuration accesses among them: (bus, devfn, reg).
    pub fn config_seen(&self) -> Vec<(u8, u8, u32)> {
        self.take_seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Config(f, reg, _) => Some((f.bus, f.devfn, reg)),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
