//! The real-ioctl path (`LinuxXen`) against an in-process stand-in for `/dev/xen/privcmd` and
//! `/dev/xen/evtchn`, modelled on the reference `fakexen.c` (the LD_PRELOAD fake the recorded
//! trace was made with): the same simulated answers (server id 1, 2 vCPUs, `vp_eport` 100+v
//! written on enable, local ports from 40), and every ioctl's bytes read through the pointers
//! as the kernel would. The bytes are compared with what the real libxendevicemodel,
//! libxenforeignmemory and libxenevtchn 4.17 sent in `fake-dev-xen/flow.stdout`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use core::ffi::{c_int, c_ulong, c_void};
use pcierc_xen_shim::abi::dm_op::{xen_dm_op, IoRange, PciSbdf};
use pcierc_xen_shim::abi::evtchn::*;
use pcierc_xen_shim::abi::ioreq::*;
use pcierc_xen_shim::abi::privcmd::*;
use pcierc_xen_shim::hypervisor::linux::LinuxXen;
use pcierc_xen_shim::hypervisor::sys::Sys;
use pcierc_xen_shim::ioreq_service::{Access, IoHandler, Serviced};
use pcierc_xen_shim::server::{dm_op, IoreqServer};

/// One system call on a fake device, with the bytes it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Open(String),
    /// `privcmd_dm_op {dom, num}`, `buf[0].size`, the buffer before and after.
    DmOp {
        dom: u16,
        num: u16,
        size: usize,
        before: Vec<u8>,
        after: Vec<u8>,
    },
    MmapResource(Vec<u8>),
    Restrict(u16),
    Bind(u32, u32, u32),
    Notify(u32),
    Unbind(u32),
    RestrictDomid(u16),
    Read(Vec<u32>),
    Unmask(Vec<u32>),
}

#[derive(Default, Debug)]
struct State {
    kinds: std::collections::HashMap<RawFd, &'static str>,
    calls: Vec<Call>,
    res_addr: usize,
    next_local: u32,
    local_of_vcpu: [u32; 2],
    pending: Option<u32>,
    evtchn: Option<RawFd>,
}

#[derive(Clone, Default, Debug)]
struct FakeDevXen(Arc<Mutex<State>>);

fn bytes_of<T>(p: *const T) -> Vec<u8> {
    // SAFETY: `p` points at a live, fully initialised (zeroed, then set) ioctl struct.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size_of::<T>()).to_vec() }
}
use core::mem::size_of;

impl FakeDevXen {
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().calls.clone()
    }

    /// `fakexen_raise_vcpu0()`: Xen puts `proto` in vCPU 0's slot (state READY, vp_eport
    /// kept) and notifies its port.
    fn raise_vcpu0(&self, proto: ioreq_t) {
        let mut s = self.0.lock().unwrap();
        let p = s.res_addr as *mut ioreq_t;
        // SAFETY: the page mapped at `res_addr` holds vCPU 0's slot; nothing else runs.
        unsafe {
            let port = (*p).vp_eport;
            *p = proto;
            (*p).vp_eport = port;
            (*p).set_state(STATE_IOREQ_READY);
        }
        s.pending = Some(s.local_of_vcpu[0]);
        if let Some(fd) = s.evtchn {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes to our own eventfd.
            unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
        }
    }
}

impl Sys for FakeDevXen {
    fn open(&self, path: &CStr, _flags: c_int) -> io::Result<OwnedFd> {
        let path = path.to_string_lossy().into_owned();
        let (kind, fd) = match path.as_str() {
            // SAFETY: plain open/eventfd; the new fd is owned by the OwnedFd below.
            "/dev/xen/privcmd" => ("privcmd", unsafe {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC)
            }),
            // SAFETY: as above.
            "/dev/xen/evtchn" => ("evtchn", unsafe {
                libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            }),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        assert!(fd >= 0);
        let mut s = self.0.lock().unwrap();
        s.kinds.insert(fd, kind);
        if kind == "evtchn" {
            s.evtchn = Some(fd);
        }
        s.calls.push(Call::Open(path));
        // SAFETY: just opened, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    unsafe fn ioctl(&self, fd: RawFd, req: c_ulong, arg: *mut c_void) -> io::Result<c_int> {
        let mut s = self.0.lock().unwrap();
        let kind = s.kinds.get(&fd).copied();
        let mut ret = 0;
        // SAFETY (all derefs below): the caller passes the argument type `req` takes.
        let call = unsafe {
            match (kind, req) {
                (Some("privcmd"), IOCTL_PRIVCMD_DM_OP) => {
                    let a = &*(arg as *const privcmd_dm_op_t);
                    let buf = &*a.ubufs;
                    let op = &mut *(buf.uptr as *mut xen_dm_op);
                    let before = op.as_bytes().to_vec();
                    match op.op {
                        1 => op.u.bytes[4] = 1,  // create: id 1
                        2 => op.u.bytes[4] = 77, // get_info: bufioreq_port
                        20 => op.u.bytes[0] = 2, // nr_vcpus: 2
                        5 if op.u.bytes[2] == 1 => {
                            // Xen writes vp_eport = 100+v into the mapped page on enable.
                            let p = s.res_addr as *mut ioreq_t;
                            for v in 0..2 {
                                (*p.add(v)).vp_eport = 100 + v as u32;
                            }
                        }
                        _ => {}
                    }
                    Call::DmOp {
                        dom: a.dom,
                        num: a.num,
                        size: buf.size,
                        before,
                        after: op.as_bytes().to_vec(),
                    }
                }
                (Some("privcmd"), IOCTL_PRIVCMD_MMAP_RESOURCE) => {
                    let r = &*(arg as *const privcmd_mmap_resource_t);
                    s.res_addr = r.addr as usize;
                    Call::MmapResource(bytes_of(r))
                }
                (Some("privcmd"), IOCTL_PRIVCMD_RESTRICT) => Call::Restrict(*(arg as *const u16)),
                (Some("evtchn"), IOCTL_EVTCHN_BIND_INTERDOMAIN) => {
                    let b = &*(arg as *const ioctl_evtchn_bind_interdomain);
                    let local = 40 + s.next_local;
                    s.next_local += 1;
                    if let Some(v) = b.remote_port.checked_sub(100).filter(|&v| v < 2) {
                        s.local_of_vcpu[v as usize] = local;
                    }
                    ret = local as c_int;
                    Call::Bind(b.remote_domain, b.remote_port, local)
                }
                (Some("evtchn"), IOCTL_EVTCHN_NOTIFY) => Call::Notify(*(arg as *const u32)),
                (Some("evtchn"), IOCTL_EVTCHN_UNBIND) => Call::Unbind(*(arg as *const u32)),
                (Some("evtchn"), IOCTL_EVTCHN_RESTRICT_DOMID) => {
                    Call::RestrictDomid(*(arg as *const u16))
                }
                _ => return Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            }
        };
        s.calls.push(call);
        Ok(ret)
    }

    fn mmap_shared(&self, _fd: RawFd, len: usize) -> io::Result<NonNull<c_void>> {
        // Simulated with anonymous shared memory, as fakexen.c does.
        // SAFETY: a new mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Ok(NonNull::new(p).unwrap())
    }

    unsafe fn munmap(&self, addr: NonNull<c_void>, len: usize) {
        // SAFETY: our mapping, from mmap_shared.
        unsafe { libc::munmap(addr.as_ptr(), len) };
    }

    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.lock().unwrap();
        let mut counter = [0u8; 8];
        // SAFETY: reading our own eventfd into a local buffer.
        unsafe { libc::read(fd, counter.as_mut_ptr().cast(), 8) };
        let Some(port) = s.pending.take() else {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        };
        buf[..4].copy_from_slice(&port.to_ne_bytes());
        s.calls.push(Call::Read(vec![port]));
        Ok(4)
    }

    fn write(&self, _fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        let ports = buf
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        self.0.lock().unwrap().calls.push(Call::Unmask(ports));
        Ok(buf.len())
    }
}

struct Answer;
impl IoHandler for Answer {
    type Error = ();
    fn pio(&mut self, _: u16, _: u8, _: Access) -> Result<u64, ()> {
        Err(())
    }
    fn mmio(&mut self, _: u64, _: u8, _: Access) -> Result<u64, ()> {
        Err(())
    }
    fn pci_config(&mut self, f: PciSbdf, reg: u32, size: u8, a: Access) -> Result<u64, ()> {
        assert_eq!((f.raw(), reg, size, a), (0x18, 0, 4, Access::Read));
        Ok(0x1234_8086) // flow.c's answer
    }
}

/// The hex dumps `tag (N bytes): ..` of the recorded trace, continued on following lines.
fn dumps(text: &str, tag: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(tag) else {
            continue;
        };
        let (n, hex) = rest.trim_start()[1..].split_once(" bytes):").unwrap();
        let n: usize = n.parse().unwrap();
        let mut b: Vec<u8> = hex
            .split_whitespace()
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect();
        while b.len() < n {
            let more = lines.next().unwrap();
            b.extend(
                more.split_whitespace()
                    .map(|x| u8::from_str_radix(x, 16).unwrap()),
            );
        }
        out.push(b);
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect()
}

/// dm_op buffers the real libxendevicemodel sent in `fixtures/xen-4.17/flow.stdout` (domain 5,
/// server 1), for the ops the shim sends with the same arguments.
fn recorded_dm_ops() -> Vec<Vec<u8>> {
    dumps(
        include_str!("../../fixtures/xen-4.17/flow.stdout"),
        "raw buf contents (before)",
    )
}

#[test]
fn the_real_ioctl_path_sends_what_the_xen_libraries_send() {
    let fake = FakeDevXen::default();
    let xen = LinuxXen::with_sys(fake.clone(), 5).unwrap();
    xen.restrict().unwrap();
    let server = IoreqServer::create(xen).unwrap();
    assert_eq!((server.id(), server.ports()), (1, &[40, 41][..]));
    let dev3 = IoRange::Pci(PciSbdf::from_raw(0x18));
    server.map(dev3).unwrap();

    // flow.c's request: a CFC read of 0000:00:03.0 register 0, answered with 0x12348086.
    let mut req = ioreq_t {
        addr: 0x18_0000_0000,
        size: 4,
        count: 1,
        type_: IOREQ_TYPE_PCI_CONFIG,
        ..Default::default()
    };
    req.set_dir(IOREQ_READ);
    fake.raise_vcpu0(req);
    let out = server.service_pending(&mut Answer).unwrap();
    assert!(matches!(out[..], [(0, Serviced::Answered(_))]), "{out:?}");
    let hv = server.hypervisor();
    dm_op(hv, xen_dm_op::set_pci_intx_level(0, 0, 3, 0, true)).unwrap();
    dm_op(hv, xen_dm_op::inject_msi(0xfee0_0000, 0x4041)).unwrap();
    server.unmap(dev3).unwrap();
    server.shutdown().unwrap();

    let calls = fake.calls();
    let recorded = recorded_dm_ops();
    let mut ops = Vec::new();
    for c in &calls {
        if let Call::DmOp {
            dom,
            num,
            size,
            before,
            ..
        } = c
        {
            assert_eq!((*dom, *num, *size), (5, 1, 32), "privcmd_dm_op header");
            ops.push(before[0]);
            if before[0] == 1 {
                // The shim asks for no buffered ring; QEMU (and flow.c) for ATOMIC (2).
                let mut as_flow = before.clone();
                assert_eq!(as_flow[8], 0, "HVM_IOREQSRV_BUFIOREQ_OFF");
                as_flow[8] = 2;
                assert!(recorded.contains(&as_flow), "create differs: {before:02x?}");
            } else {
                assert!(
                    recorded.contains(before),
                    "not what the library sends: {before:02x?}"
                );
            }
        }
    }
    // Xen's order: nr_vcpus, create, (map page), get_info, enable, (bind), map, ...,
    // intx, msi, unmap, disable, destroy.
    assert_eq!(ops, [20, 1, 2, 5, 3, 8, 14, 4, 5, 6]);
    let pos = |want: &dyn Fn(&Call) -> bool| calls.iter().position(want).unwrap();
    let mmap = pos(&|c| matches!(c, Call::MmapResource(_)));
    let create = pos(&|c| matches!(c, Call::DmOp { before, .. } if before[0] == 1));
    let info = pos(&|c| matches!(c, Call::DmOp { before, .. } if before[0] == 2));
    let bind = pos(&|c| matches!(c, Call::Bind(..)));
    let enable = pos(&|c| matches!(c, Call::DmOp { before, .. } if before[0] == 5));
    assert!(create < mmap && mmap < info && info < enable && enable < bind);

    // The resource mapping: libxenforeignmemory's layout; frame 1, one page (no bufioreq page,
    // where QEMU maps frames 0-1).
    let Call::MmapResource(r) = &calls[mmap] else {
        unreachable!()
    };
    let flow = hex("05 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
    assert_eq!(r[..12], flow[..12], "dom, type, id");
    assert_eq!(r[12..16], [1, 0, 0, 0], "idx = frame_ioreq(0)");
    assert_eq!(r[16..24], [1, 0, 0, 0, 0, 0, 0, 0], "num = 1");
    assert_ne!(r[24..32], [0; 8], "addr = the privcmd mapping");

    // Event channels exactly as libxenevtchn drove them in the trace.
    let evt: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::Bind(..)
                    | Call::Read(_)
                    | Call::Unmask(_)
                    | Call::Notify(_)
                    | Call::Unbind(_)
            )
        })
        .collect();
    assert_eq!(
        evt,
        [
            &Call::Bind(5, 100, 40),
            &Call::Bind(5, 101, 41),
            &Call::Read(vec![40]),
            &Call::Unmask(vec![40]),
            &Call::Notify(40),
            &Call::Unbind(40),
            &Call::Unbind(41),
        ]
    );
    assert!(calls.contains(&Call::Restrict(5)) && calls.contains(&Call::RestrictDomid(5)));
    assert_eq!(
        calls[..2],
        [
            Call::Open("/dev/xen/privcmd".into()),
            Call::Open("/dev/xen/evtchn".into())
        ]
    );
}

#[test]
fn missing_devices_are_named() {
    #[derive(Debug)]
    struct NoXen;
    impl Sys for NoXen {
        fn open(&self, _: &CStr, _: c_int) -> io::Result<OwnedFd> {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        }
        unsafe fn ioctl(&self, _: RawFd, _: c_ulong, _: *mut c_void) -> io::Result<c_int> {
            unreachable!()
        }
        fn mmap_shared(&self, _: RawFd, _: usize) -> io::Result<NonNull<c_void>> {
            unreachable!()
        }
        unsafe fn munmap(&self, _: NonNull<c_void>, _: usize) {}
        fn read(&self, _: RawFd, _: &mut [u8]) -> io::Result<usize> {
            unreachable!()
        }
        fn write(&self, _: RawFd, _: &[u8]) -> io::Result<usize> {
            unreachable!()
        }
    }
    let e = LinuxXen::with_sys(NoXen, 5).unwrap_err().to_string();
    assert!(e.contains("/dev/xen/privcmd and /dev/xen/evtchn"), "{e}");
}
