//! A minimal QMP client over a unix socket (`docs/interop/qmp-spec.rst` in QEMU): greeting,
//! `qmp_capabilities`, then one command at a time, events set aside. It talks to QEMU's `-qmp`
//! socket (recording Linux on QEMU) and to pcierc's `--control-socket` (replays, the service and
//! seccomp tests, the VMM's hot-plug tests, the Xen shim's simulated-Xen tests).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A negotiated QMP connection.
pub struct QmpSocket {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
    next_id: u64,
}

impl QmpSocket {
    /// Connect to `path` (retrying until `timeout` while the server creates it), read the
    /// greeting and negotiate capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<QmpSocket> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = QmpSocket {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
            next_id: 0,
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::other(format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", Value::Null)?
            .map_err(|e| io::Error::other(format!("qmp_capabilities: {e}")))?;
        Ok(q)
    }

    fn line(&mut self) -> io::Result<Value> {
        let mut s = String::new();
        if self.reader.read_line(&mut s)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QMP peer closed the connection",
            ));
        }
        serde_json::from_str(&s).map_err(|e| io::Error::other(format!("QMP '{s}': {e}")))
    }

    /// Run `cmd`: `Ok(Ok(return))`, or `Ok(Err(error))` when the server refused it.
    pub fn execute(&mut self, cmd: &str, args: Value) -> io::Result<Result<Value, Value>> {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = json!({"execute": cmd, "id": id});
        if !args.is_null() {
            req["arguments"] = args;
        }
        writeln!(self.writer, "{req}")?;
        loop {
            let v = self.line()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if v.get("id") != Some(&json!(id)) {
                return Err(io::Error::other(format!(
                    "unexpected QMP reply {v} to {req}"
                )));
            }
            if let Some(r) = v.get("return") {
                return Ok(Ok(r.clone()));
            }
            return Ok(Err(v.get("error").cloned().unwrap_or(v)));
        }
    }

    /// Run `cmd`, which must succeed.
    pub fn ok(&mut self, cmd: &str, args: Value) -> io::Result<Value> {
        self.execute(cmd, args.clone())?
            .map_err(|e| io::Error::other(format!("{cmd} {args}: {e}")))
    }

    /// An HMP command through `human-monitor-command`; its output.
    pub fn hmp(&mut self, line: &str) -> io::Result<String> {
        let out = self.ok("human-monitor-command", json!({"command-line": line}))?;
        Ok(out.as_str().unwrap_or_default().to_string())
    }

    /// Every event received so far and arriving until none has come for `quiet`.
    pub fn drain_events(&mut self, quiet: Duration) -> io::Result<Vec<Value>> {
        loop {
            self.writer.set_read_timeout(Some(quiet))?;
            let r = self.line();
            self.writer
                .set_read_timeout(Some(Duration::from_secs(30)))?;
            match r {
                Ok(v) => self.events.push(v),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(std::mem::take(&mut self.events))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait up to `timeout` for the event `name` (events already received count).
    pub fn event(&mut self, name: &str, timeout: Duration) -> io::Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return Ok(Some(self.events.remove(i)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.writer.set_read_timeout(Some(left))?;
            let r = self.line();
            self.writer
                .set_read_timeout(Some(Duration::from_secs(30)))?;
            match r {
                Ok(v) => self.events.push(v),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}
