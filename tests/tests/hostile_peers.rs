//! Garbage on a live `pcierc`'s sockets while well-behaved frontends keep working: the garbage
//! connections get an error or are closed, the others see no error and no state change, and
//! the process survives.
//!
//! No timing is asserted: a connection that must be answered is waited on for as long as
//! [`ANSWER_LIMIT`] (it returns as soon as pcierc answers). Under a loaded machine pcierc can
//! take over 100 ms to get to a connection; the test used to give it 100 ms, failed, and its
//! unwinding killed pcierc under the good frontends, which then reported `PeerClosed`: the
//! "pcierc dead" failure of issue 18.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::noise::Noise;
use pcierc_tests::process::Backend;

/// How long a connection that must be answered may wait: far beyond any scheduling delay, so
/// only a pcierc that never answers fails.
const ANSWER_LIMIT: Duration = Duration::from_secs(20);
/// How long a connection that may legitimately be left waiting (an incomplete message) is given.
const GLANCE: Duration = Duration::from_millis(100);

/// What the server did with a garbage connection.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// It answered (an error reply) and/or closed the connection, after this long.
    Answered(Duration),
    /// It waited for more bytes (an incomplete message is not an error yet).
    Waiting,
}

/// Send `bytes` on a fresh connection and see what comes back within `limit`.
fn throw(path: &std::path::Path, bytes: &[u8], limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut s = UnixStream::connect(path).expect("the server still accepts connections");
    s.set_read_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(_) => Outcome::Answered(start.elapsed()), // data, or 0 = closed
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Outcome::Answered(start.elapsed())
        }
        Err(_) => Outcome::Waiting,
    }
}

fn header(request: u32, flags: u32, size: u32, id: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&request.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h
}

#[test]
fn garbage_on_both_sockets_leaves_other_frontends_untouched() {
    let b = Backend::start_with_control(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    // Well-behaved frontends, each on its own root port's scratch registers.
    let good: Vec<_> = [0x10u8, 0x11, 0x12, 0x13]
        .into_iter()
        .map(|devfn| {
            let socket = b.socket.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut f = Frontend::connect(&socket, FrontendOptions::tool("good")).unwrap();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    f.config_write(0, 0, devfn, 0x204, 4, n)
                        .expect("a good write failed");
                    let v = f
                        .config_read(0, 0, devfn, 0x204, 4)
                        .expect("a good read failed");
                    assert_eq!(v, n, "state changed under a good frontend");
                }
                n
            })
        })
        .collect();

    let mut noise = Noise::new(0x1234_5678);
    let mut random = |n: usize| noise.bytes(n);
    let control = b.control.clone().expect("control socket");
    // Failures are collected, not panicked on, so the good frontends are stopped and joined
    // (and pcierc checked alive) before the test reports them.
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for round in 0..6 {
        // Random bytes and a truncated header: answered, or waited on (incomplete).
        throw(&b.socket, &random(1 + round * 37 % 300), GLANCE);
        throw(&b.socket, &header(1, 0, 0, 1)[..10], GLANCE);
        // Complete but malformed messages: an error reply or a closed connection, never silence.
        for c in [
            header(8, 0, 0xffff_ffff, 2), // lying size, above the maximum
            [header(8, 0, 12, 3), random(12)].concat(), // wrong payload size for ConfigRead
            header(0xdead, 0, 0, 4),      // unknown code
            header(1, 0x4, 0, 5),         // a reply sent as a request
            [header(7, 0, 64, 6), random(64)].concat(), // GetTopology with a payload
            [header(9, 0, 4096, 7), random(4096)].concat(),
        ] {
            match throw(&b.socket, &c, ANSWER_LIMIT) {
                Outcome::Answered(t) => slowest = slowest.max(t),
                Outcome::Waiting => {
                    failures.push(format!("no answer in {ANSWER_LIMIT:?} to {:?}", &c[..24]))
                }
            }
        }
        // QMP: bytes, bad JSON, huge strings, deep nesting, valid JSON that is not QMP.
        // (The greeting comes first, so every QMP client is "answered".)
        throw(&control, &random(200), GLANCE);
        throw(&control, b"{\"execute\":\x01\x02}\n[[[[[[[[[[[[", GLANCE);
        throw(
            &control,
            format!("{}\n", "[".repeat(5000)).as_bytes(),
            GLANCE,
        );
        throw(
            &control,
            format!("\"{}\"\n", "a".repeat(70_000)).as_bytes(),
            GLANCE,
        );
        throw(
            &control,
            b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"device_add\",\"arguments\":{\"driver\":1}}",
            GLANCE,
        );
    }
    eprintln!("slowest answer to a malformed message: {slowest:?}");
    // A negotiated QMP client still gets answers after all that. (The throws above are this
    // process's clients too, 4 at most at once: wait until pcierc has seen them go.)
    let reply = {
        let deadline = std::time::Instant::now() + ANSWER_LIMIT;
        let mut s = loop {
            let mut s = UnixStream::connect(&control).unwrap();
            s.set_read_timeout(Some(ANSWER_LIMIT)).unwrap();
            let mut greeting = [0u8; 1];
            if matches!(s.read(&mut greeting), Ok(1)) || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        s.write_all(
            b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\",\"id\":9}\n",
        )
        .unwrap();
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while !all.contains("\"id\":9") {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => all.push_str(&String::from_utf8_lossy(&buf[..n])),
                r => {
                    failures.push(format!("control socket: {r:?} after {all}"));
                    break;
                }
            }
        }
        all
    };
    if !reply.contains("\"running\"") {
        failures.push(format!("query-status: {reply}"));
    }
    stop.store(true, Ordering::Relaxed);
    for g in good {
        assert!(g.join().expect("a good frontend failed") > 0);
    }
    let mut b = b;
    assert!(b.alive(), "pcierc survived");
    assert!(failures.is_empty(), "{failures:#?}");
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("after")).unwrap();
    assert_eq!(f.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
}

#[test]
fn a_peer_that_half_closes_still_gets_every_reply() {
    use pcierc_protocol::{FrontendReq, MsgHeader, ProtocolFeatures, U64};
    use vm_memory::ByteValued;
    let b = Backend::start(&[]);
    let mut s = UnixStream::connect(&b.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = Vec::new();
    let all = U64 {
        value: ProtocolFeatures::all().bits(),
    };
    for (code, id, payload) in [
        (FrontendReq::SetProtocolFeatures, 1, all.as_slice().to_vec()),
        (FrontendReq::SaveState, 2, Vec::new()),
        (FrontendReq::GetTopology, 3, Vec::new()),
    ] {
        bytes.extend_from_slice(
            MsgHeader::request(code as u32, payload.len() as u32, id).as_slice(),
        );
        bytes.extend_from_slice(&payload);
    }
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all_replies = Vec::new();
    s.read_to_end(&mut all_replies)
        .expect("the replies, then end of file");
    // Walk the replies: three whole messages, ids 1..=3, all successful.
    let mut ids = Vec::new();
    let mut rest = &all_replies[..];
    while rest.len() >= 24 {
        let h: MsgHeader = pcierc_protocol::read_obj(&rest[..24]).expect("a header");
        assert_eq!(h.status, 0, "{h:?}");
        ids.push(h.id);
        let len = 24 + h.size as usize;
        assert!(rest.len() >= len, "a reply cut short: {h:?}");
        rest = &rest[len..];
    }
    assert!(rest.is_empty());
    assert_eq!(ids, [1, 2, 3]);
}
