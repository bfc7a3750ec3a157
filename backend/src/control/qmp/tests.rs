//! The session against QEMU 7.2's own replies (tests/qmp/fixtures, recorded by
//! tests/qmp/capture_qemu_fixtures.py), and pcierc's commands against a recording
//! [`ControlOps`].

use serde_json::{json, Value};

use super::*;
use crate::control::{ControlError, SlotInfo};

const TRANSCRIPT: &str =
    include_str!("../../../../tests/qmp/fixtures/qemu-7.2-qmp-transcript.json");

/// Records what the session asked for; answers like QEMU's `-S` machine for the transcript.
#[derive(Default)]
struct Recorder {
    status: &'static str,
    calls: Vec<String>,
}

impl ControlOps for Recorder {
    fn query_pci(&mut self) -> Value {
        self.calls.push("query_pci".into());
        json!([{"bus": 0, "devices": []}])
    }
    fn device_add(&mut self, req: &DeviceAdd) -> Result<(), ControlError> {
        self.calls.push(format!("device_add {req:?}"));
        if req.bus != "rp1" {
            return Err(ControlError::Generic(format!(
                "Bus '{}' not found",
                req.bus
            )));
        }
        Ok(())
    }
    fn device_del(&mut self, id: &str) -> Result<(), ControlError> {
        self.calls.push(format!("device_del {id}"));
        Err(ControlError::DeviceNotFound(id.into()))
    }
    fn inject_aer(&mut self, req: &AerInject) -> Result<(), ControlError> {
        self.calls
            .push(format!("inject_aer {} {:#x}", req.id, req.status_bits));
        Ok(())
    }
    fn inject_pme(&mut self, id: &str) -> Result<(), ControlError> {
        self.calls.push(format!("inject_pme {id}"));
        Ok(())
    }
    fn surprise_remove(&mut self, id: &str) -> Result<(), ControlError> {
        self.calls.push(format!("surprise_remove {id}"));
        Ok(())
    }
    fn query_slots(&mut self) -> Vec<SlotInfo> {
        Vec::new()
    }
    fn status(&mut self) -> String {
        self.status.into()
    }
    fn quit(&mut self) {
        self.calls.push("quit".into());
    }
}

fn replies(s: &mut QmpSession, ops: &mut Recorder, text: &str) -> Vec<Value> {
    let mut input = text.as_bytes().to_vec();
    input.push(b'\n');
    s.input(ops, &input)
        .iter()
        .map(|l| serde_json::from_str(l).expect("every reply line is JSON"))
        .collect()
}

fn negotiated() -> (QmpSession, Recorder) {
    let (mut s, _) = QmpSession::new();
    let mut ops = Recorder {
        status: "running",
        ..Default::default()
    };
    let r = replies(&mut s, &mut ops, r#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(r, [json!({"return": {}})]);
    (s, ops)
}

#[test]
fn replies_match_qemu_7_2_exchange_by_exchange() {
    let t: Value = serde_json::from_str(TRANSCRIPT).expect("fixture");
    let (mut s, greeting) = QmpSession::new();
    let g: Value = serde_json::from_str(&greeting).expect("greeting is JSON");
    let q = &t["greeting"][0]["QMP"];
    for key in ["major", "minor", "micro"] {
        assert!(q["version"]["qemu"][key].is_u64() && g["QMP"]["version"]["qemu"][key].is_u64());
    }
    assert!(g["QMP"]["version"]["package"].is_string());
    assert_eq!(
        g["QMP"]["capabilities"],
        json!([]),
        "no out-of-band support offered"
    );
    // QEMU was started with -S: its run state was "prelaunch".
    let mut ops = Recorder {
        status: "prelaunch",
        ..Default::default()
    };
    let exchanges = t["exchanges"].as_array().expect("exchanges");
    assert!(exchanges.len() >= 40);
    for e in exchanges {
        let send = e["send"].as_str().expect("send");
        let got = replies(&mut s, &mut ops, send);
        let want = e["qemu"].as_array().expect("qemu replies");
        assert_eq!(&got, want, "after sending {send}");
    }
    assert!(
        !s.quit_requested(),
        "the transcript's quit had a bad argument"
    );
    assert!(
        ops.calls.iter().all(|c| c != "quit"),
        "bad arguments run nothing: {:?}",
        ops.calls
    );
}

#[test]
fn negotiation_gates_commands_and_events() {
    let (mut s, _) = QmpSession::new();
    let mut ops = Recorder::default();
    assert!(!s.wants_events());
    let r = replies(&mut s, &mut ops, r#"{"execute":"query-pci"}"#);
    assert_eq!(r[0]["error"]["class"], "CommandNotFound");
    assert!(ops.calls.is_empty(), "nothing runs before negotiation");
    let r = replies(
        &mut s,
        &mut ops,
        r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
    );
    assert_eq!(r[0]["error"]["desc"], "Capability oob not available");
    assert!(!s.wants_events());
    replies(&mut s, &mut ops, r#"{"execute":"qmp_capabilities"}"#);
    assert!(s.wants_events());
}

#[test]
fn commands_reach_the_hierarchy_with_validated_arguments() {
    let (mut s, mut ops) = negotiated();
    let r = replies(
        &mut s,
        &mut ops,
        r#"{"execute":"device_add","arguments":{"driver":"e1000e","id":"net0","bus":"rp1","addr":"0.1","multifunction":"on","owner":"vmm"},"id":1}"#,
    );
    assert_eq!(r, [json!({"return": {}, "id": 1})]);
    assert_eq!(
        ops.calls.last().map(String::as_str),
        Some(
            r#"device_add DeviceAdd { driver: "e1000e", id: "net0", bus: "rp1", addr: Some(DevFn(1)), owner: Some("vmm"), multifunction: true }"#
        )
    );
    for (args, desc) in [
        (
            r#"{"driver":"e1000e","bus":"rp1"}"#,
            "Parameter 'id' is missing",
        ),
        (
            r#"{"driver":"e1000e","id":"n"}"#,
            "Parameter 'bus' is missing",
        ),
        (
            r#"{"driver":"e1000e","id":"n","bus":"rp1","addr":"zz"}"#,
            "Property 'e1000e.addr' doesn't take value 'zz'",
        ),
        (
            r#"{"driver":"e1000e","id":"n","bus":"rp1","addr":300}"#,
            "Property 'e1000e.addr' doesn't take value '300'",
        ),
        (
            r#"{"driver":"e1000e","id":"n","bus":"rp1","mac":"52:54:00:12:34:56"}"#,
            "Parameter 'mac' is unexpected",
        ),
        (
            r#"{"driver":"e1000e","id":"n","bus":"rp9"}"#,
            "Bus 'rp9' not found",
        ),
    ] {
        let line = format!(r#"{{"execute":"device_add","arguments":{args}}}"#);
        let r = replies(&mut s, &mut ops, &line);
        let got = r[0]["error"]["desc"].as_str().unwrap_or_default();
        assert!(got.starts_with(desc), "{args}: {got}");
        assert_eq!(r[0]["error"]["class"], "GenericError");
    }
    let r = replies(
        &mut s,
        &mut ops,
        r#"{"execute":"device_del","arguments":{"id":"nope"}}"#,
    );
    assert_eq!(
        r[0]["error"],
        json!({"class": "DeviceNotFound", "desc": "Device 'nope' not found"})
    );
    let r = replies(
        &mut s,
        &mut ops,
        r#"{"execute":"pcie-aer-inject-error","arguments":{"id":"rp1","error":"UNSUP"}}{"execute":"x-pcierc-inject-pme","arguments":{"id":"net0"}}{"execute":"x-pcierc-surprise-remove","arguments":{"id":"net0"}}"#,
    );
    assert_eq!(r, vec![json!({"return": {}}); 3]);
    assert_eq!(
        ops.calls[ops.calls.len() - 3..],
        [
            "inject_aer rp1 0x100000",
            "inject_pme net0",
            "surprise_remove net0"
        ]
    );
    let r = replies(&mut s, &mut ops, r#"{"execute":"query-commands"}"#);
    assert_eq!(
        r[0]["return"].as_array().map(Vec::len),
        Some(COMMANDS.len())
    );
    let r = replies(&mut s, &mut ops, r#"{"execute":"query-status"}"#);
    assert_eq!(
        r[0]["return"],
        json!({"status": "running", "singlestep": false, "running": true})
    );
    let r = replies(&mut s, &mut ops, r#"{"execute":"quit","id":"bye"}"#);
    assert_eq!(r, [json!({"return": {}, "id": "bye"})]);
    assert!(s.quit_requested());
}

#[test]
fn events_carry_a_timestamp() {
    let e: Value = serde_json::from_str(&event("DEVICE_DELETED", Some(json!({"device": "net0"}))))
        .expect("json");
    assert_eq!(e["event"], "DEVICE_DELETED");
    assert_eq!(e["data"]["device"], "net0");
    assert!(e["timestamp"]["seconds"].as_u64().unwrap_or(0) > 1_600_000_000);
    assert!(e["timestamp"]["microseconds"].as_u64().unwrap_or(u64::MAX) < 1_000_000);
    let e: Value = serde_json::from_str(&event("SHUTDOWN", None)).expect("json");
    assert!(e.get("data").is_none());
}
