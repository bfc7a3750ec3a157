//! Fuzzed framing: frames whose every header field may be wrong, sent in pieces with
//! descriptors attached anywhere.

use pcierc_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use vm_memory::ByteValued;

use crate::{
    client::{fd_kind, FdKind},
    requests::{known_codes, unknown_code},
};

/// How a header's `size` relates to the payload bytes that follow it.
#[derive(Copy, Clone, Debug)]
enum Size {
    Exact,
    Delta(i8),
    Raw(u32),
    OverMax(u32),
}

impl Size {
    fn resolve(self, len: usize) -> u32 {
        match self {
            Size::Exact => len as u32,
            Size::Delta(d) => (len as i64 + i64::from(d)).max(0) as u32,
            Size::Raw(v) => v,
            Size::OverMax(k) => (MAX_PAYLOAD_SIZE as u32)
                .saturating_add(1)
                .saturating_add(k),
        }
    }
}

fn size_field() -> impl Strategy<Value = Size> {
    prop_oneof![
        6 => Just(Size::Exact),
        3 => any::<i8>().prop_map(Size::Delta),
        1 => any::<u32>().prop_map(Size::Raw),
        1 => (0u32..4).prop_map(Size::OverMax),
    ]
}

/// One message as a hostile peer would frame it: every header field may be wrong.
fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(known_codes()).prop_map(|c| c as u32);
    let code = prop_oneof![6 => known, 1 => unknown_code()];
    let flag_bits = prop_oneof![
        6 => Just(PROTOCOL_VERSION | flags::NEED_REPLY),
        1 => Just(PROTOCOL_VERSION),
        1 => Just(PROTOCOL_VERSION | flags::REPLY),
        1 => any::<u32>(),
    ];
    let status = prop_oneof![8 => Just(0i32), 1 => any::<i32>()];
    let header = (code, flag_bits, size_field(), status, any::<u64>());
    prop_oneof![
        1 => vec(any::<u8>(), 0..48),
        4 => (header, vec(any::<u8>(), 0..48)).prop_map(
            |((request, flags, size, status, id), payload)| {
                let h = MsgHeader {
                    request,
                    flags,
                    size: size.resolve(payload.len()),
                    status,
                    id,
                };
                let mut b = h.as_slice().to_vec();
                b.extend_from_slice(&payload);
                b
            }
        ),
    ]
}

/// Descriptors attached to one send: usually none, sometimes a few, sometimes over MAX_FDS.
fn fd_set() -> impl Strategy<Value = Vec<FdKind>> {
    prop_oneof![
        6 => Just(Vec::new()),
        3 => vec(fd_kind(), 1..=3),
        1 => vec(fd_kind(), MAX_FDS + 1..=MAX_FDS + 3),
    ]
}

/// A frame sent as one or two `sendmsg` calls, descriptors with the first or (`late`) the
/// second, i.e. in the middle of the header or payload.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<FdKind>,
    pub(crate) split: Option<Index>,
    pub(crate) late: bool,
}

pub(crate) fn hostile_send() -> impl Strategy<Value = Frame> {
    let split = proptest::option::of(any::<Index>());
    (hostile_frame(), fd_set(), split, any::<bool>()).prop_map(|(bytes, fds, split, late)| Frame {
        bytes,
        fds,
        split,
        late,
    })
}
