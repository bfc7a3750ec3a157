//! The control socket through the real `qemu.qmp` Python library: `tests/qmp/qmp_driver.py`
//! runs one QMP step per line and prints the raw reply, so the tests exercise pcierc against the
//! client existing QMP tooling uses.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// Is `python3` with `qemu.qmp` importable? When `PCIERC_REQUIRE_TOOLS` is set (CI) its absence
/// fails the test; otherwise the caller skips, and this says so loudly.
pub fn qemu_qmp_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import qemu.qmp.legacy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none(),
            "python3 with qemu.qmp is required (PCIERC_REQUIRE_TOOLS is set): pip install qemu.qmp"
        );
        eprintln!("\n*** SKIP: python3 -c 'import qemu.qmp' failed; QMP tests did not run ***\n");
    }
    ok
}

fn driver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("qmp/qmp_driver.py")
}

/// A `qemu.qmp` client connected (and negotiated) to a control socket.
pub struct QmpClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The server's greeting as the library received it.
    pub greeting: Value,
}

impl QmpClient {
    /// Connect to `socket` and negotiate capabilities.
    pub fn connect(socket: &Path) -> QmpClient {
        let mut child = Command::new("python3")
            .arg(driver_script())
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tests/qmp/qmp_driver.py");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        let mut c = QmpClient {
            child,
            stdin,
            stdout,
            greeting: Value::Null,
        };
        c.greeting = c.line();
        c
    }

    fn line(&mut self) -> Value {
        let mut s = String::new();
        let n = self
            .stdout
            .read_line(&mut s)
            .expect("reading the QMP driver");
        assert!(n > 0, "the QMP driver exited (see its stderr above)");
        serde_json::from_str(&s).expect("the QMP driver prints JSON")
    }

    fn step(&mut self, step: Value) -> Value {
        writeln!(self.stdin, "{step}").expect("writing to the QMP driver");
        self.line()
    }

    /// Run a command; the raw reply (`{"return": ..}` or `{"error": {"class", "desc"}}`).
    pub fn raw(&mut self, cmd: &str, args: Value) -> Value {
        let args = if args.is_null() { Value::Null } else { args };
        self.step(json!({"cmd": cmd, "args": args}))
    }

    /// Run a command that must succeed; its `return` value.
    pub fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.raw(cmd, args.clone());
        match r.get("return") {
            Some(v) => v.clone(),
            None => panic!("{cmd} {args}: {r}"),
        }
    }

    /// Run a command that must fail; its `(class, desc)`.
    pub fn err(&mut self, cmd: &str, args: Value) -> (String, String) {
        let r = self.raw(cmd, args.clone());
        let e = r
            .get("error")
            .unwrap_or_else(|| panic!("{cmd} {args} succeeded: {r}"));
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        (s("class"), s("desc"))
    }

    /// The next event called `name` within `timeout_s` seconds, if any.
    pub fn event(&mut self, name: &str, timeout_s: f64) -> Option<Value> {
        let r = self.step(json!({"event": name, "timeout": timeout_s}));
        (r.get("timeout").is_none()).then_some(r)
    }

    /// Every event arriving within `timeout_s` seconds.
    pub fn events(&mut self, timeout_s: f64) -> Vec<Value> {
        match self.step(json!({"events": timeout_s})) {
            Value::Array(v) => v,
            other => panic!("events: {other}"),
        }
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
