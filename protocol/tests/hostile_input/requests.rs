//! Requests: what each code takes, a valid payload, and ways to get it wrong.

use pcierc_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use vm_memory::ByteValued;

use crate::{
    client::{fd_kind, FdKind},
    probe::BLOB,
};

/// Every request code this version of the crate knows.
pub(crate) fn known_codes() -> Vec<FrontendReq> {
    (0..=u8::MAX)
        .filter_map(|c| FrontendReq::try_from(u32::from(c)).ok())
        .collect()
}

/// The exact payload size of `code`, `None` for `LoadState` (a blob of any size). Exhaustive on
/// purpose: a new request code must be described here before these tests build.
pub(crate) fn payload_size(code: FrontendReq) -> Option<usize> {
    use std::mem::size_of;
    use FrontendReq::*;
    Some(match code {
        SetFeatures | SetProtocolFeatures => size_of::<U64>(),
        SetFrontendInfo => size_of::<FrontendInfo>(),
        ConfigRead | ConfigWrite => size_of::<ConfigAccess>(),
        PioRead | PioWrite | MmioRead | MmioWrite => size_of::<GuestAccess>(),
        ReportError => size_of::<ErrorReport>(),
        RaisePme => size_of::<FunctionAddress>(),
        SetInterruptFd => size_of::<InterruptFd>(),
        ClaimFunction => size_of::<FunctionClaim>(),
        ReleaseFunction => size_of::<FunctionRelease>(),
        LoadState => return None,
        GetFeatures | GetProtocolFeatures | SetBackendReqFd | GetTopology | Reset | SaveState
        | GetChipsetMemory | SetConfigSnapshot => 0,
    })
}

/// A payload `code` accepts (with the descriptors of [`valid_fds`]).
pub(crate) fn valid_payload(code: FrontendReq) -> Vec<u8> {
    use FrontendReq::*;
    let guest = |addr| GuestAccess {
        addr,
        width: 4,
        ..Default::default()
    };
    match code {
        SetFeatures | SetProtocolFeatures => U64::default().as_slice().to_vec(),
        SetFrontendInfo => FrontendInfo {
            role: FrontendRole::Tool as u32,
            flags: 0,
            name: encode_name("hostile").unwrap_or_default(),
        }
        .as_slice()
        .to_vec(),
        ConfigRead | ConfigWrite => ConfigAccess {
            width: 4,
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        PioRead | PioWrite => guest(0xcf8).as_slice().to_vec(),
        MmioRead | MmioWrite => guest(0xb000_0000).as_slice().to_vec(),
        ReportError => ErrorReport {
            status: 1,
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        RaisePme => FunctionAddress::default().as_slice().to_vec(),
        SetInterruptFd => InterruptFd::default().as_slice().to_vec(),
        ClaimFunction => FunctionClaim {
            port: encode_name("rp1").unwrap_or_default(),
            id: encode_name("net0").unwrap_or_default(),
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        ReleaseFunction => FunctionRelease {
            id: encode_name("net0").unwrap_or_default(),
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        LoadState => BLOB.to_vec(),
        _ => Vec::new(),
    }
}

/// The descriptors `code` takes with [`valid_payload`].
pub(crate) fn valid_fds(code: FrontendReq) -> Vec<FdKind> {
    match code {
        FrontendReq::SetBackendReqFd => vec![FdKind::Stream],
        FrontendReq::SetInterruptFd => vec![FdKind::Event],
        // The session only counts it; what the descriptor is, is the handler's business.
        FrontendReq::SetConfigSnapshot => vec![FdKind::DevNull],
        _ => Vec::new(),
    }
}

/// A well-framed request that must fail, and the status it must fail with (`None`: any error).
#[derive(Clone, Debug)]
pub(crate) struct Bad {
    pub(crate) code: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<FdKind>,
    pub(crate) expect: Option<Status>,
}

/// A second `SetProtocolFeatures` or `SetFrontendInfo` (the handshake sent the first) is out of
/// sequence (EPROTO, section 7) and its payload or descriptors are wrong too (EINVAL): the order
/// of those checks is left open here.
pub(crate) fn expected(code: FrontendReq, status: Status) -> Option<Status> {
    let again = matches!(
        code,
        FrontendReq::SetProtocolFeatures | FrontendReq::SetFrontendInfo
    );
    (!again).then_some(status)
}

/// A request code no version-1 backend knows.
pub(crate) fn unknown_code() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 1u32..64, Just(u32::MAX), any::<u32>()]
        .prop_filter("known code", |c| FrontendReq::try_from(*c).is_err())
}

/// Malformed requests, each a small mutation of a valid one (docs/protocol.md section 9).
pub(crate) fn bad_request() -> impl Strategy<Value = Bad> {
    let code = prop::sample::select(known_codes());
    let unknown = (
        unknown_code(),
        vec(any::<u8>(), 0..48),
        vec(fd_kind(), 0..=8),
    )
        .prop_map(|(code, payload, fds)| Bad {
            code,
            payload,
            fds,
            expect: Some(Status::NotSupported),
        });
    // Every code but LoadState has an exact size.
    let wrong_size = (code.clone(), 0usize..80, any::<u8>()).prop_filter_map(
        "right size",
        |(code, len, fill)| {
            let size = payload_size(code)?;
            (len != size).then(|| Bad {
                code: code as u32,
                payload: vec![fill; len],
                fds: Vec::new(),
                expect: expected(code, Status::Invalid),
            })
        },
    );
    // Descriptors on a request that takes none: EINVAL before anything else is looked at.
    let unexpected_fds =
        (code, vec(fd_kind(), 1..=8)).prop_filter_map("takes descriptors", |(code, fds)| {
            valid_fds(code).is_empty().then(|| Bad {
                code: code as u32,
                payload: valid_payload(code),
                fds,
                expect: expected(code, Status::Invalid),
            })
        });
    // SetBackendReqFd: empty payload and exactly one unix stream socket.
    let channel = (0usize..16, vec(fd_kind(), 0..=8)).prop_filter_map(
        "valid SetBackendReqFd",
        |(len, fds)| {
            (len != 0 || fds != [FdKind::Stream]).then(|| Bad {
                code: FrontendReq::SetBackendReqFd as u32,
                payload: vec![0; len],
                fds,
                expect: Some(Status::Invalid),
            })
        },
    );
    // SetConfigSnapshot: empty payload and exactly one descriptor.
    let snapshot = (0usize..16, vec(fd_kind(), 0..=8)).prop_filter_map(
        "valid SetConfigSnapshot",
        |(len, fds)| {
            (len != 0 || fds.len() != 1).then(|| Bad {
                code: FrontendReq::SetConfigSnapshot as u32,
                payload: vec![0; len],
                fds,
                expect: Some(Status::Invalid),
            })
        },
    );
    // SetInterruptFd: one eventfd to register, none to unregister, no other flag.
    let irqfd = (any::<u16>(), vec(fd_kind(), 0..=8)).prop_filter_map(
        "valid SetInterruptFd",
        |(flags, fds)| {
            let unregister = flags == InterruptFd::UNREGISTER;
            let fine = flags & !InterruptFd::UNREGISTER == 0
                && if unregister {
                    fds.is_empty()
                } else {
                    fds == [FdKind::Event]
                };
            let payload = InterruptFd {
                flags,
                ..Default::default()
            };
            (!fine).then(|| Bad {
                code: FrontendReq::SetInterruptFd as u32,
                payload: payload.as_slice().to_vec(),
                fds,
                expect: Some(Status::Invalid),
            })
        },
    );
    // LoadState takes any size: the handler decides.
    let blob = vec(any::<u8>(), 0..64).prop_filter_map("the valid blob", |b| {
        (b != BLOB).then(|| Bad {
            code: FrontendReq::LoadState as u32,
            payload: b,
            fds: Vec::new(),
            expect: Some(Status::BadMessage),
        })
    });
    prop_oneof![
        unknown,
        wrong_size,
        unexpected_fds,
        channel,
        snapshot,
        irqfd,
        blob
    ]
}
