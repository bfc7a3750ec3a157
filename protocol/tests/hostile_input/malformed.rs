//! Well-framed but malformed requests: each gets one error reply with its code and id, and the
//! valid form of every request succeeds.

use pcierc_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use vm_memory::ByteValued;

use crate::{
    client::{
        closed, fd_kind, handshake_done, parse_replies, read_one, read_to_close, request, send, Fds,
    },
    config, fail,
    probe::{fresh_connection_works, serve, Probe},
    requests::{bad_request, expected, known_codes, payload_size, valid_fds, valid_payload},
    setup, CaseResult,
};

proptest! {
    #![proptest_config(config(160))]

    /// Each well-framed but malformed request gets exactly one reply: its code and id, the
    /// status section 9 prescribes, no payload; every descriptor it carried is closed by then.
    /// A message with more than MAX_FDS descriptors closes the connection instead.
    #[test]
    fn malformed_requests_get_error_replies(
        bad in vec(bad_request(), 1..8),
        too_many in proptest::option::of(vec(fd_kind(), MAX_FDS + 1..=MAX_FDS + 4)),
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        for (i, b) in bad.iter().enumerate() {
            let id = 1000 + i as u64;
            let fds = Fds::new(&b.fds)?;
            setup(send(&client, &request(b.code, id, &b.payload), &fds.raw()))?;
            let peers = fds.sent();
            let Some(got) = read_one(&client)? else {
                return fail(format!("the connection closed instead of answering {b:?}"));
            };
            prop_assert_eq!((got.request, got.id), (b.code, id), "{:?}", b);
            prop_assert_ne!(got.status, Status::Ok, "{:?}", b);
            if let Some(status) = b.expect {
                prop_assert_eq!(got.status, status, "{:?}", b);
            }
            prop_assert!(peers.iter().all(closed), "descriptors of {:?} left open", b);
        }
        let mut peers = Vec::new();
        if let Some(kinds) = &too_many {
            let fds = Fds::new(kinds)?;
            let msg = request(FrontendReq::GetFeatures as u32, 1, &[]);
            // The backend may close before all of it is sent.
            let _ = send(&client, &msg, &fds.raw());
            peers = fds.sent();
            prop_assert_eq!(read_one(&client)?, None, "a reply to {} descriptors", kinds.len());
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
        prop_assert_eq!(parse_replies(&read_to_close(&client)?)?, vec![]);
        let outcome = served.finish()?;
        prop_assert_eq!(outcome.is_err(), too_many.is_some(), "{:?}", outcome);
        prop_assert!(peers.iter().all(closed), "descriptors left open after the close");
        fresh_connection_works(&handler)?;
    }
}

/// The control for `malformed_requests_get_error_replies`: the valid form of every request
/// succeeds, so each malformed variant fails because of its defect.
#[test]
fn valid_form_of_every_request_succeeds() -> CaseResult {
    let handler = Probe::default();
    let (client, served) = serve(&handler)?;
    handshake_done(&client)?;
    for (i, code) in known_codes().into_iter().enumerate() {
        let fds = Fds::new(&valid_fds(code))?;
        setup(send(
            &client,
            &request(code as u32, i as u64, &valid_payload(code)),
            &fds.raw(),
        ))?;
        let _peers = fds.sent();
        let Some(answer) = read_one(&client)? else {
            return fail(format!("no reply to {code:?}"));
        };
        // A second SetProtocolFeatures or SetFrontendInfo is out of sequence.
        let want = match expected(code, Status::Ok) {
            Some(ok) => ok,
            None => Status::Protocol,
        };
        prop_assert_eq!((answer.id, answer.status), (i as u64, want), "{:?}", code);
    }
    drop(client);
    prop_assert_eq!(served.finish()?, Ok(()));
    Ok(())
}

/// Every known code with every wrong payload size from 0 to 72 bytes and a few large ones:
/// `EINVAL` (any error for the out-of-sequence `SetProtocolFeatures` and `SetFrontendInfo`), on
/// one connection that survives all of them.
#[test]
fn every_code_rejects_every_wrong_size() -> CaseResult {
    let handler = Probe::default();
    let (client, served) = serve(&handler)?;
    handshake_done(&client)?;
    let mut id = 0;
    for code in known_codes() {
        let Some(size) = payload_size(code) else {
            continue;
        };
        for len in (0..=72).chain([255, 4096, 65_537, 1 << 20]) {
            // Past the code's payload limit the connection closes (checked below).
            if len == size || len > max_request_payload(code as u32) {
                continue;
            }
            id += 1;
            setup(send(
                &client,
                &request(code as u32, id, &vec![0xa5; len]),
                &[],
            ))?;
            let Some(got) = read_one(&client)? else {
                return fail(format!(
                    "the connection closed on {code:?} with {len} bytes"
                ));
            };
            prop_assert_eq!((got.request, got.id), (code as u32, id));
            prop_assert_ne!(got.status, Status::Ok, "{:?} with {} bytes", code, len);
            if let Some(want) = expected(code, Status::Invalid) {
                prop_assert_eq!(got.status, want, "{:?} with {} bytes", code, len);
            }
        }
    }
    drop(client);
    prop_assert_eq!(served.finish()?, Ok(()));
    // One byte past the limit: closed at the header, nothing buffered, no reply.
    for code in known_codes() {
        let limit = max_request_payload(code as u32);
        if limit >= MAX_PAYLOAD_SIZE {
            continue;
        }
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        let header = MsgHeader::request(code as u32, (limit + 1) as u32, 1);
        setup(send(&client, header.as_slice(), &[]))?;
        prop_assert_eq!(read_one(&client)?.map(|r| r.status), None, "{:?}", code);
        prop_assert!(
            served.finish()?.is_err(),
            "{:?}: the connection must close",
            code
        );
    }
    fresh_connection_works(&handler)
}
