//! Properties of the serving side under broken framing and flow: hostile byte streams, lying
//! sizes, truncated headers, pipelined floods and a half-closed peer.

use std::thread;
use std::time::Duration;

use pcierc_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use vm_memory::ByteValued;

use crate::{
    client::{
        closed, handshake, handshake_done, parse_replies, read_one, read_to_close, request, send,
        Fds, HANDSHAKE_ID,
    },
    config, fail,
    frames::hostile_send,
    probe::{fresh_connection_works, serve, Probe},
    setup, CaseResult,
};

proptest! {
    #![proptest_config(config(160))]

    /// Whatever bytes and descriptors arrive, the backend answers with well-formed replies,
    /// closes the connection when it must, ends without panicking, leaks no descriptor, and
    /// keeps serving fresh connections.
    #[test]
    fn hostile_streams_never_break_the_backend(
        negotiate in any::<bool>(),
        sends in vec(hostile_send(), 0..8),
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        let mut peers = Vec::new();
        let first = if negotiate { handshake() } else { Vec::new() };
        let mut pieces = vec![(first, Fds::default())];
        for s in &sends {
            let cut = s.split.map_or(s.bytes.len(), |i| i.index(s.bytes.len() + 1));
            let (mut early, mut late) = (Fds::new(&s.fds)?, Fds::default());
            if s.late {
                std::mem::swap(&mut early, &mut late);
            }
            pieces.push((s.bytes[..cut].to_vec(), early));
            pieces.push((s.bytes[cut..].to_vec(), late));
        }
        for (bytes, fds) in pieces {
            // Descriptors need at least one byte to travel with.
            let raw = if bytes.is_empty() { Vec::new() } else { fds.raw() };
            let gone = send(&client, &bytes, &raw).is_err();
            peers.extend(fds.sent());
            if gone {
                break;
            }
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
        let replies = parse_replies(&read_to_close(&client)?)?;
        if negotiate {
            prop_assert_eq!(
                replies.first().map(|a| (a.id, a.status)),
                Some((HANDSHAKE_ID, Status::Ok))
            );
        }
        // Closed by the backend (a framing error) or by us (end of file): both are fine here.
        let _closed = served.finish()?;
        prop_assert!(peers.iter().all(closed), "the backend kept a descriptor");
        fresh_connection_works(&handler)?;
    }

    /// A `ConfigRead` whose header lies about its size: a smaller size is a payload-size error
    /// (the rest is then read as the next header), a larger one swallows what follows, and the
    /// request is answered only once `size` bytes arrived; above the request's payload limit
    /// (`max_request_payload`: 4 KiB for all but `LoadState`) the connection is closed at once.
    /// Never a reply for bytes that did not arrive, never a hang.
    #[test]
    fn lying_sizes_are_never_trusted(
        size in prop_oneof![
            4 => 0u32..64,
            1 => 4032u32..=4096,
            1 => 4097u32..=(MAX_PAYLOAD_SIZE as u32),
            1 => (MAX_PAYLOAD_SIZE as u32 + 1)..=u32::MAX,
        ],
        trailer in any::<bool>(),
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        let access = ConfigAccess { width: 4, ..Default::default() };
        let mut bytes = MsgHeader::request(FrontendReq::ConfigRead as u32, size, 7)
            .as_slice()
            .to_vec();
        bytes.extend_from_slice(access.as_slice());
        if trailer {
            bytes.extend_from_slice(&request(FrontendReq::GetFeatures as u32, 8, &[]));
        }
        let _ = send(&client, &bytes, &[]);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let replies = parse_replies(&read_to_close(&client)?)?;
        let outcome = served.finish()?;
        let arrived = bytes.len() - HEADER_SIZE;
        let size = size as usize;
        if size > max_request_payload(FrontendReq::ConfigRead as u32) {
            prop_assert_eq!(replies, vec![]);
            prop_assert!(outcome.is_err(), "an oversized header must close the connection");
        } else if size > arrived {
            prop_assert_eq!(replies, vec![], "a reply before the payload arrived");
            prop_assert_eq!(outcome, Ok(()), "end of file mid-message is a clean close");
        } else {
            let first = replies.first().map(|a| (a.request, a.id, a.status));
            let status = if size == access.as_slice().len() { Status::Ok } else { Status::Invalid };
            prop_assert_eq!(first, Some((FrontendReq::ConfigRead as u32, 7, status)));
            if size == arrived || (size == 16 && trailer) {
                // In sync again: nothing else, or exactly the trailer's reply.
                let want = usize::from(size == 16 && trailer) + 1;
                prop_assert_eq!(replies.len(), want);
                prop_assert_eq!(outcome, Ok(()));
            }
        }
        fresh_connection_works(&handler)?;
    }

    /// Part of a header, then silence or end of file: no reply, a clean close on end of file,
    /// and other connections are served meanwhile.
    #[test]
    fn truncated_headers_wait_or_close_cleanly(cut in 0usize..HEADER_SIZE, close in any::<bool>()) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        let msg = request(FrontendReq::GetFeatures as u32, 1, &[]);
        setup(send(&client, &msg[..cut], &[]))?;
        if !close {
            // A peer stalled in the middle of a header must not hold anyone else up.
            fresh_connection_works(&handler)?;
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
        prop_assert_eq!(parse_replies(&read_to_close(&client)?)?, vec![]);
        prop_assert_eq!(served.finish()?, Ok(()));
        fresh_connection_works(&handler)?;
    }
}

proptest! {
    #![proptest_config(config(6))]

    /// A flood of pipelined requests, good and bad, from a peer that starts reading replies only
    /// after a while: the backend's back-pressure (it stops reading while 256 KiB of replies
    /// wait) must neither lose, reorder nor duplicate a reply, nor deadlock.
    #[test]
    fn pipelined_floods_are_answered_in_order(
        kinds in vec(0u8..3, 1..8),
        count in 15_000usize..25_000,
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        let read = ConfigAccess { width: 1, ..Default::default() };
        let mut bytes = Vec::new();
        let mut want = Vec::with_capacity(count);
        for i in 0..count {
            let id = i as u64 + 1;
            let (code, payload, status) = match kinds[i % kinds.len()] {
                0 => (FrontendReq::ConfigRead as u32, read.as_slice(), Status::Ok),
                1 => (FrontendReq::ConfigRead as u32, &read.as_slice()[1..], Status::Invalid),
                _ => (0xdead, &[][..], Status::NotSupported),
            };
            bytes.extend_from_slice(&request(code, id, payload));
            want.push((code, id, status));
        }
        let tx = setup(client.try_clone())?;
        let writer = thread::spawn(move || send(&tx, &bytes, &[]));
        // Let replies pile up past the socket buffer and the back-pressure threshold. (The
        // write side stays open: see `half_closed_peer_gets_every_reply`.)
        thread::sleep(Duration::from_millis(100));
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            match read_one(&client)? {
                Some(a) => got.push((a.request, a.id, a.status)),
                None => break,
            }
        }
        match writer.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(format!("the backend stopped reading: {e}")),
            Err(_) => return fail("the writer panicked"),
        }
        prop_assert_eq!(got.len(), want.len());
        prop_assert!(got == want, "replies lost, reordered or wrong");
        drop(client);
        prop_assert_eq!(served.finish()?, Ok(()));
    }
}

/// A peer that sends its last request and then shuts down its write side (`shutdown(SHUT_WR)`,
/// "no more requests") must still get every reply, whole. Here one `SaveState` reply of 1 MiB
/// does not fit the socket buffer, so the backend reads the end of file while most of it is
/// still queued. (Regression: the connection used to close there and drop the rest, leaving the
/// peer a reply whose header announced more bytes than ever arrived.)
#[test]
fn half_closed_peer_gets_every_reply() -> CaseResult {
    let handler = Probe {
        state_size: 1 << 20,
        ..Probe::default()
    };
    let (client, served) = serve(&handler)?;
    handshake_done(&client)?;
    let save = request(FrontendReq::SaveState as u32, 1, &[]);
    setup(send(&client, &save, &[]))?;
    setup(client.shutdown(std::net::Shutdown::Write))?;
    // Give the backend time to queue the reply and read the end of file.
    thread::sleep(Duration::from_millis(100));
    let replies = parse_replies(&read_to_close(&client)?)?;
    let got: Vec<_> = replies
        .iter()
        .map(|a| (a.id, a.status, a.payload.len()))
        .collect();
    prop_assert_eq!(got, vec![(1, Status::Ok, 1 << 20)]);
    prop_assert_eq!(served.finish()?, Ok(()));
    Ok(())
}
