//! Unit tests of [`super::Session`]: the checks of `docs/protocol.md` section 9, request by request.

use super::*;
use crate::messages::{encode_name, ChipsetMemory, ErrorReport, FunctionAddress, InterruptFd};
use crate::topology::Topology;
use std::os::unix::net::{UnixDatagram, UnixStream};

#[derive(Default)]
struct Fake {
    channels: usize,
    identified: Option<FrontendIdentity>,
    disconnected: usize,
    bad_topology: bool,
    /// Report a host bridge record with a proximity domain (an expander's numa_node 3).
    proximity: bool,
    irqfds: Vec<(InterruptFd, bool)>,
    /// `request_done` calls: (request code, status).
    done: Vec<(u32, Status)>,
}

impl BackendHandler for Fake {
    fn features(&mut self) -> Features {
        Features::Q35_HOST_BRIDGE | Features::ECAM
    }
    fn protocol_features(&mut self) -> ProtocolFeatures {
        ProtocolFeatures::all() - ProtocolFeatures::LAYOUT_EVENTS
    }
    fn topology(&mut self) -> Topology {
        let mut t = Topology::default();
        if self.bad_topology {
            t.ecam.push(Default::default()); // size 0: invalid
        }
        if self.proximity {
            t.functions.push(crate::FunctionRecord {
                devfn: 0x28,
                kind: crate::FunctionKind::HostBridge as u8,
                flags: crate::function_flags::PRESENT | crate::function_flags::EMULATED,
                parent: crate::NO_PARENT,
                secondary_bus: 0x80,
                subordinate_bus: 0x80,
                proximity: 4,
                owner: encode_name("pcierc").unwrap(),
                ..Default::default()
            });
        }
        t
    }
    fn config_read(&mut self, addr: ConfigAddress, _width: u8) -> Result<u32, Status> {
        match addr.devfn {
            0 => Ok(0xdead_beef), // wider than most accesses: the session masks it
            1 => Err(Status::Ok), // a buggy handler
            _ => Err(Status::NoDevice),
        }
    }
    fn config_write(&mut self, _: ConfigAddress, _: u8, _: u32) -> Result<(), Status> {
        Ok(())
    }
    fn pio_read(&mut self, _: u64, _: u8) -> Result<u64, Status> {
        Ok(u64::MAX)
    }
    fn pio_write(&mut self, _: u64, _: u8, _: u64) -> Result<(), Status> {
        Ok(())
    }
    fn mmio_read(&mut self, addr: u64, _: u8) -> Result<u64, Status> {
        Ok(addr)
    }
    fn mmio_write(&mut self, _: u64, _: u8, _: u64) -> Result<(), Status> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        Ok(b"blob".to_vec())
    }
    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        if blob == b"blob" {
            Ok(())
        } else {
            Err(Status::BadMessage)
        }
    }
    fn chipset_memory(&mut self) -> ChipsetMemory {
        ChipsetMemory::default()
    }
    fn set_interrupt_fd(
        &mut self,
        _: ConnectionId,
        req: &InterruptFd,
        fd: Option<EventFd>,
    ) -> Result<(), Status> {
        if let Some(fd) = &fd {
            fd.write(1).map_err(|_| Status::Io)?;
        }
        self.irqfds.push((*req, fd.is_some()));
        Ok(())
    }
    fn frontend_identified(&mut self, _: ConnectionId, info: &FrontendIdentity) {
        self.identified = Some(info.clone());
    }
    fn backend_channel(&mut self, _: ConnectionId, _: BackendChannelSender) {
        self.channels += 1;
    }
    fn disconnected(&mut self, _: ConnectionId) {
        self.disconnected += 1;
    }
    fn request_done(&mut self, _: ConnectionId, request: u32, status: Status) {
        self.done.push((request, status));
    }
}

fn msg(code: FrontendReq, payload: &[u8], fds: Vec<File>) -> Message {
    Message {
        header: MsgHeader::request(code as u32, payload.len() as u32, 42),
        payload: payload.to_vec(),
        fds,
    }
}

fn run(s: &mut Session, h: &mut Fake, code: FrontendReq, payload: &[u8]) -> (Status, Vec<u8>) {
    let r = s.handle(h, msg(code, payload, Vec::new())).unwrap();
    assert_eq!(
        (r.header.request, r.header.id, r.header.is_reply()),
        (code as u32, 42, true)
    );
    assert_eq!(r.header.payload_len(), r.payload.len());
    (r.status(), r.payload)
}

fn u64p(v: u64) -> Vec<u8> {
    U64 { value: v }.as_slice().to_vec()
}

fn negotiated(pf: ProtocolFeatures) -> (Session, Fake) {
    let (mut s, mut h) = (Session::new(ConnectionId(1)), Fake::default());
    assert_eq!(
        run(
            &mut s,
            &mut h,
            FrontendReq::SetProtocolFeatures,
            &u64p(pf.bits())
        )
        .0,
        Status::Ok
    );
    (s, h)
}

fn cfg(offset: u16, width: u8, devfn: u8) -> Vec<u8> {
    ConfigAccess {
        devfn,
        offset,
        width,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}

fn guest(addr: u64, width: u8, data: u64) -> Vec<u8> {
    GuestAccess {
        addr,
        width,
        data,
        reserved: [0; 7],
    }
    .as_slice()
    .to_vec()
}

#[test]
fn handshake_sequence() {
    use FrontendReq::*;
    let (mut s, mut h) = (Session::new(ConnectionId(1)), Fake::default());
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(0, 4, 0)).0,
        Status::Protocol
    );
    assert_eq!(run(&mut s, &mut h, GetTopology, &[]).0, Status::Protocol);
    let (st, p) = run(&mut s, &mut h, GetFeatures, &[]);
    assert_eq!((st, p), (Status::Ok, u64p(0b11)));
    assert_eq!(
        run(&mut s, &mut h, SetFeatures, &u64p(0b100)).0,
        Status::Invalid
    ); // not offered
    assert_eq!(run(&mut s, &mut h, SetFeatures, &u64p(0b10)).0, Status::Ok);
    assert_eq!(s.features(), Features::ECAM);
    let info = FrontendInfo {
        role: 1,
        flags: 0,
        name: encode_name("vmm0").unwrap(),
    };
    assert_eq!(
        run(&mut s, &mut h, SetFrontendInfo, info.as_slice()).0,
        Status::Ok
    );
    assert_eq!(
        h.identified.as_ref().map(|i| (i.name.as_str(), i.role)),
        Some(("vmm0", FrontendRole::Vmm))
    );
    assert_eq!(
        run(&mut s, &mut h, SetFrontendInfo, info.as_slice()).0,
        Status::Protocol
    );
    let bad_info = FrontendInfo { role: 9, ..info };
    assert_eq!(
        run(
            &mut Session::new(ConnectionId(2)),
            &mut h,
            SetFrontendInfo,
            bad_info.as_slice()
        )
        .0,
        Status::Invalid
    );
    let not_offered = ProtocolFeatures::LAYOUT_EVENTS.bits();
    assert_eq!(
        run(&mut s, &mut h, SetProtocolFeatures, &u64p(not_offered)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, SetProtocolFeatures, &u64p(1 << 40)).0,
        Status::Invalid
    );
    assert_eq!(s.stage(), Stage::Connected);
    let pf = ProtocolFeatures::GUEST_ACCESS;
    assert_eq!(
        run(&mut s, &mut h, SetProtocolFeatures, &u64p(pf.bits())).0,
        Status::Ok
    );
    assert_eq!((s.stage(), s.protocol_features()), (Stage::Negotiated, pf));
    assert_eq!(
        run(&mut s, &mut h, SetProtocolFeatures, &u64p(pf.bits())).0,
        Status::Protocol
    );
    assert_eq!(run(&mut s, &mut h, ConfigRead, &cfg(0, 4, 0)).0, Status::Ok);
    assert_eq!(
        run(&mut s, &mut h, PioRead, &guest(0xcf8, 4, 0)).0,
        Status::Ok
    );
    assert_eq!(run(&mut s, &mut h, SaveState, &[]).0, Status::Protocol);
    assert_eq!(
        run(&mut s, &mut h, SetBackendReqFd, &[]).0,
        Status::Protocol
    );
    s.disconnect(&mut h);
    s.disconnect(&mut h);
    assert_eq!(h.disconnected, 1);
}

#[test]
fn config_validation() {
    use FrontendReq::*;
    let (mut s, mut h) = negotiated(ProtocolFeatures::empty());
    let (st, p) = run(&mut s, &mut h, ConfigRead, &cfg(2, 2, 0));
    assert_eq!(st, Status::Ok);
    assert_eq!(read_obj::<ConfigAccess>(&p).unwrap().data, 0xbeef);
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(0, 3, 0)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(0, 8, 0)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(2, 4, 0)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(4096, 4, 0)).0,
        Status::OutOfRange
    );
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(0xfffc, 4, 0)).0,
        Status::OutOfRange
    );
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(0, 4, 0)[..15]).0,
        Status::Invalid
    );
    assert_eq!(
        run(
            &mut s,
            &mut h,
            ConfigRead,
            &[cfg(0, 4, 0), vec![0]].concat()
        )
        .0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, ConfigRead, &cfg(0, 4, 8)).0,
        Status::NoDevice
    );
    assert_eq!(run(&mut s, &mut h, ConfigRead, &cfg(0, 4, 1)).0, Status::Io);
    let reserved = ConfigAccess {
        width: 4,
        reserved: 1,
        ..Default::default()
    };
    assert_eq!(
        run(&mut s, &mut h, ConfigWrite, reserved.as_slice()).0,
        Status::Invalid
    );
    let too_wide = ConfigAccess {
        width: 1,
        data: 0x100,
        ..Default::default()
    };
    assert_eq!(
        run(&mut s, &mut h, ConfigWrite, too_wide.as_slice()).0,
        Status::Invalid
    );
    let (st, p) = run(&mut s, &mut h, ConfigWrite, &cfg(0x10, 4, 0));
    assert_eq!((st, p.len()), (Status::Ok, 0));
    // fds on a request that takes none are refused (and closed).
    let (a, _b) = UnixStream::pair().unwrap();
    let r = s.handle(
        &mut h,
        msg(
            ConfigRead,
            &cfg(0, 4, 0),
            vec![File::from(std::os::fd::OwnedFd::from(a))],
        ),
    );
    assert_eq!(r.unwrap().status(), Status::Invalid);
}

#[test]
fn guest_access_validation() {
    use FrontendReq::*;
    let (mut s, mut h) = negotiated(ProtocolFeatures::GUEST_ACCESS);
    let (st, p) = run(&mut s, &mut h, PioRead, &guest(0xcfc, 2, 0));
    assert_eq!(st, Status::Ok);
    assert_eq!(
        read_obj::<GuestAccess>(&p).unwrap(),
        GuestAccess {
            addr: 0xcfc,
            width: 2,
            data: 0xffff,
            reserved: [0; 7]
        }
    );
    assert_eq!(
        run(&mut s, &mut h, PioRead, &guest(0xcf8, 8, 0)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, PioRead, &guest(0xcf8, 3, 0)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, PioRead, &guest(0xffff, 2, 0)).0,
        Status::OutOfRange
    );
    assert_eq!(
        run(&mut s, &mut h, PioRead, &guest(0xfffe, 2, 0)).0,
        Status::Ok
    );
    assert_eq!(
        run(&mut s, &mut h, PioWrite, &guest(0x80, 1, 0x100)).0,
        Status::Invalid
    );
    assert_eq!(
        run(&mut s, &mut h, MmioRead, &guest(u64::MAX, 2, 0)).0,
        Status::OutOfRange
    );
    assert_eq!(
        run(&mut s, &mut h, MmioRead, &guest(u64::MAX - 7, 8, 0)).0,
        Status::Ok
    );
    assert_eq!(
        run(&mut s, &mut h, MmioWrite, &guest(0x1000, 8, u64::MAX)).0,
        Status::Ok
    );
    assert_eq!(
        run(&mut s, &mut h, MmioWrite, &guest(0x1000, 4, 0)[..23]).0,
        Status::Invalid
    );
    let mut reserved = guest(0x1000, 4, 0);
    reserved[17] = 1;
    assert_eq!(run(&mut s, &mut h, MmioWrite, &reserved).0, Status::Invalid);
}

#[test]
fn other_requests() {
    use FrontendReq::*;
    let (mut s, mut h) = negotiated(ProtocolFeatures::DEVICE_STATE);
    assert_eq!(
        run(&mut s, &mut h, SaveState, &[]),
        (Status::Ok, b"blob".to_vec())
    );
    assert_eq!(run(&mut s, &mut h, SaveState, &[1]).0, Status::Invalid);
    assert_eq!(run(&mut s, &mut h, LoadState, b"blob").0, Status::Ok);
    assert_eq!(
        run(&mut s, &mut h, LoadState, b"junk").0,
        Status::BadMessage
    );
    assert_eq!(run(&mut s, &mut h, Reset, &[]).0, Status::Ok);
    assert_eq!(run(&mut s, &mut h, Reset, &[0; 8]).0, Status::Invalid);
    assert_eq!(run(&mut s, &mut h, GetChipsetMemory, &[]).1.len(), 16);
    assert_eq!(
        run(&mut s, &mut h, GetTopology, &[]),
        (Status::Ok, Topology::default().encode())
    );
    h.bad_topology = true;
    assert_eq!(run(&mut s, &mut h, GetTopology, &[]).0, Status::Io);
    assert_eq!(
        run(&mut s, &mut h, PioRead, &guest(0, 1, 0)).0,
        Status::Protocol
    );
    let unknown = Message {
        header: MsgHeader::request(999, 0, 5),
        payload: vec![],
        fds: vec![],
    };
    let r = s.handle(&mut h, unknown).unwrap();
    assert_eq!(
        (r.status(), r.header.request, r.header.id),
        (Status::NotSupported, 999, 5)
    );
}

#[test]
fn reply_flag_is_fatal() {
    let (mut s, mut h) = negotiated(ProtocolFeatures::empty());
    let m = Message {
        header: MsgHeader::request(7, 0, 1).reply(Status::Ok, 0),
        payload: vec![],
        fds: vec![],
    };
    assert!(s.handle(&mut h, m).unwrap_err().should_disconnect());
    // A hand-built message whose header disagrees with its payload is refused, not trusted.
    let m = Message {
        header: MsgHeader::request(7, 4, 1),
        payload: vec![],
        fds: vec![],
    };
    assert_eq!(s.handle(&mut h, m).unwrap().status(), Status::Invalid);
}

#[test]
fn backend_channel_fd_checks() {
    use FrontendReq::SetBackendReqFd;
    let (mut s, mut h) = negotiated(ProtocolFeatures::BACKEND_CHANNEL);
    let sock = || File::from(std::os::fd::OwnedFd::from(UnixStream::pair().unwrap().0));
    let run_fds = |s: &mut Session, h: &mut Fake, payload: &[u8], fds| {
        s.handle(h, msg(SetBackendReqFd, payload, fds))
            .unwrap()
            .status()
    };
    assert_eq!(run_fds(&mut s, &mut h, &[], vec![]), Status::Invalid);
    assert_eq!(
        run_fds(&mut s, &mut h, &[], vec![sock(), sock()]),
        Status::Invalid
    );
    assert_eq!(
        run_fds(&mut s, &mut h, &[0; 8], vec![sock()]),
        Status::Invalid
    );
    let dgram = File::from(std::os::fd::OwnedFd::from(UnixDatagram::pair().unwrap().0));
    assert_eq!(run_fds(&mut s, &mut h, &[], vec![dgram]), Status::Invalid);
    assert_eq!(h.channels, 0);
    assert_eq!(run_fds(&mut s, &mut h, &[], vec![sock()]), Status::Ok);
    assert_eq!(h.channels, 1);
}

#[test]
fn error_reporting_needs_its_feature_and_a_valid_report() {
    let good = ErrorReport {
        bus: 3,
        severity: 1,
        status: 1 << 20,
        ..Default::default()
    };
    let (mut s, mut h) = negotiated(ProtocolFeatures::GUEST_ACCESS);
    let (st, _) = run(&mut s, &mut h, FrontendReq::ReportError, good.as_slice());
    assert_eq!(st, Status::Protocol, "ERROR_REPORTING not negotiated");
    let (mut s, mut h) = negotiated(ProtocolFeatures::ERROR_REPORTING);
    for bad in [
        ErrorReport {
            severity: 3,
            ..good
        },
        ErrorReport { status: 0, ..good },
        ErrorReport {
            reserved: [0, 1, 0],
            ..good
        },
        ErrorReport {
            reserved2: 1,
            ..good
        },
    ] {
        let (st, _) = run(&mut s, &mut h, FrontendReq::ReportError, bad.as_slice());
        assert_eq!(st, Status::Invalid, "{bad:?}");
    }
    let (st, _) = run(
        &mut s,
        &mut h,
        FrontendReq::ReportError,
        &good.as_slice()[..8],
    );
    assert_eq!(st, Status::Invalid, "short payload");
    // The fake handler keeps the default: not supported.
    let (st, _) = run(&mut s, &mut h, FrontendReq::ReportError, good.as_slice());
    assert_eq!(st, Status::NotSupported);
    let pme = FunctionAddress {
        bus: 3,
        ..Default::default()
    };
    let (st, _) = run(&mut s, &mut h, FrontendReq::RaisePme, pme.as_slice());
    assert_eq!(st, Status::NotSupported);
    let bad = FunctionAddress { reserved: 1, ..pme };
    let (st, _) = run(&mut s, &mut h, FrontendReq::RaisePme, bad.as_slice());
    assert_eq!(st, Status::Invalid);
}

#[test]
fn set_interrupt_fd_takes_exactly_one_eventfd_or_none_to_unregister() {
    use FrontendReq::SetInterruptFd;
    let file = |fd: EventFd| {
        // SAFETY: we own the eventfd and hand its fd to the File.
        unsafe { File::from_raw_fd(fd.into_raw_fd()) }
    };
    let efd = || EventFd::new(0).unwrap();
    let req = InterruptFd {
        bus: 0,
        devfn: 0x10,
        vector: 0,
        ..Default::default()
    };
    let handle = |s: &mut Session, h: &mut Fake, p: &[u8], fds: Vec<File>| {
        s.handle(h, msg(SetInterruptFd, p, fds)).unwrap().status()
    };
    // Needs INTERRUPTS.
    let (mut s, mut h) = negotiated(ProtocolFeatures::BACKEND_CHANNEL);
    assert_eq!(
        handle(&mut s, &mut h, req.as_slice(), vec![file(efd())]),
        Status::Protocol
    );
    let (mut s, mut h) = negotiated(ProtocolFeatures::INTERRUPTS);
    assert_eq!(
        handle(&mut s, &mut h, req.as_slice(), vec![]),
        Status::Invalid,
        "no fd"
    );
    let (a, _b) = UnixStream::pair().unwrap();
    let not_eventfd = File::from(std::os::fd::OwnedFd::from(a));
    assert_eq!(
        handle(&mut s, &mut h, req.as_slice(), vec![not_eventfd]),
        Status::Invalid,
        "a socket is not an eventfd"
    );
    assert_eq!(
        handle(
            &mut s,
            &mut h,
            req.as_slice(),
            vec![file(efd()), file(efd())]
        ),
        Status::Invalid,
        "two fds"
    );
    let bad_flags = InterruptFd { flags: 2, ..req };
    assert_eq!(
        handle(&mut s, &mut h, bad_flags.as_slice(), vec![file(efd())]),
        Status::Invalid
    );
    let unreg = InterruptFd {
        flags: InterruptFd::UNREGISTER,
        ..req
    };
    assert_eq!(
        handle(&mut s, &mut h, unreg.as_slice(), vec![file(efd())]),
        Status::Invalid,
        "unregister takes no fd"
    );
    assert!(h.irqfds.is_empty(), "nothing reached the handler");
    let e = efd();
    let dup = e.try_clone().unwrap();
    assert_eq!(
        handle(&mut s, &mut h, req.as_slice(), vec![file(dup)]),
        Status::Ok
    );
    assert_eq!(e.read().unwrap(), 1, "the handler got the very eventfd");
    assert_eq!(handle(&mut s, &mut h, unreg.as_slice(), vec![]), Status::Ok);
    assert_eq!(h.irqfds, vec![(req, true), (unreg, false)]);
}

#[test]
fn claims_need_an_identity_and_well_formed_names() {
    use crate::messages::{FunctionClaim, FunctionRelease};
    use FrontendReq::{ClaimFunction, ReleaseFunction, SetFrontendInfo};
    let claim = FunctionClaim {
        port: encode_name("rp1").unwrap(),
        id: encode_name("net0").unwrap(),
        driver: encode_name("e1000e").unwrap(),
        ..Default::default()
    };
    let (mut s, mut h) = negotiated(ProtocolFeatures::GUEST_ACCESS);
    assert_eq!(
        run(&mut s, &mut h, ClaimFunction, claim.as_slice()).0,
        Status::Protocol,
        "OWNERSHIP not negotiated"
    );
    let (mut s, mut h) = negotiated(ProtocolFeatures::OWNERSHIP);
    assert_eq!(
        run(&mut s, &mut h, ClaimFunction, claim.as_slice()).0,
        Status::Protocol,
        "who claims? SetFrontendInfo first"
    );
    let info = FrontendInfo {
        role: FrontendRole::Vmm as u32,
        flags: 0,
        name: encode_name("qemu").unwrap(),
    };
    assert_eq!(
        run(&mut s, &mut h, SetFrontendInfo, info.as_slice()).0,
        Status::Ok
    );
    for bad in [
        FunctionClaim { devfn: 8, ..claim },
        FunctionClaim { flags: 4, ..claim },
        FunctionClaim {
            port: [0; 32],
            ..claim
        },
        FunctionClaim {
            id: {
                let mut n = [0u8; 32];
                n[..8].copy_from_slice(b"bad\x01name");
                n
            },
            ..claim
        },
    ] {
        assert_eq!(
            run(&mut s, &mut h, ClaimFunction, bad.as_slice()).0,
            Status::Invalid
        );
    }
    assert_eq!(
        run(&mut s, &mut h, ClaimFunction, claim.as_slice()).0,
        Status::NotSupported,
        "well formed: up to the handler (this one has no ownership)"
    );
    let release = FunctionRelease {
        id: encode_name("net0").unwrap(),
        flags: 2,
        reserved: 0,
    };
    assert_eq!(
        run(&mut s, &mut h, ReleaseFunction, release.as_slice()).0,
        Status::Invalid
    );
}

#[test]
fn every_reply_is_reported_with_its_status_protocol_refusals_included() {
    let (mut s, mut h) = (Session::new(ConnectionId(1)), Fake::default());
    run(&mut s, &mut h, FrontendReq::ConfigRead, &cfg(0, 4, 0)); // before negotiation
    let _ = s.handle(&mut h, msg(FrontendReq::GetFeatures, &[], Vec::new()));
    let unknown = Message {
        header: MsgHeader::request(999, 0, 7),
        payload: Vec::new(),
        fds: Vec::new(),
    };
    assert_eq!(
        s.handle(&mut h, unknown).unwrap().status(),
        Status::NotSupported
    );
    assert_eq!(
        h.done,
        [
            (FrontendReq::ConfigRead as u32, Status::Protocol),
            (FrontendReq::GetFeatures as u32, Status::Ok),
            (999, Status::NotSupported),
        ]
    );
}

/// A host bridge record's proximity domain goes only to a frontend that negotiated
/// `PROXIMITY`; the others get 0 there, as version-1 records have it (reserved).
#[test]
fn proximity_only_for_frontends_that_negotiated_it() {
    use FrontendReq::*;
    for (features, want) in [
        (ProtocolFeatures::PROXIMITY, 4u16),
        (ProtocolFeatures::empty(), 0),
    ] {
        let (mut s, mut h) = negotiated(features);
        h.proximity = true;
        let (status, body) = run(&mut s, &mut h, GetTopology, &[]);
        assert_eq!(status, Status::Ok);
        let t = Topology::decode(&body).unwrap();
        assert_eq!(t.functions[0].proximity, want, "{features:?}");
        assert_eq!(t.functions[0].secondary_bus, 0x80);
    }
}
