//! `pcierc-qmp`: a minimal QMP client for scripts, e.g. inside the nested-virtualization test
//! guest where no Python is available (tests/src/nested/).
//!
//! ```sh
//! pcierc-qmp SOCKET '{"execute":"device_add","arguments":{...}}' ...   # run commands in order
//! pcierc-qmp SOCKET --wait DEVICE_DELETED --timeout 30 '{"execute":"device_del",...}'
//! ```
//! It negotiates capabilities, sends each command and prints every line the server sends (the
//! replies and any events) as it arrives. With `--wait NAME` it then reads until an event called
//! NAME arrives (an event seen while the commands ran counts). Exit status: 0 when every command
//! returned and the awaited event came, 1 when a command got an error reply, 2 for a timeout, a
//! closed connection or bad arguments.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Args {
    socket: String,
    wait: Option<String>,
    timeout: Duration,
    commands: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let socket = it
        .next()
        .ok_or("usage: pcierc-qmp SOCKET [--wait EVENT] [--timeout SECONDS] COMMAND...")?;
    let mut args = Args {
        socket,
        wait: None,
        timeout: Duration::from_secs(30),
        commands: Vec::new(),
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--wait" => args.wait = Some(it.next().ok_or("--wait needs an event name")?),
            "--timeout" => {
                let s = it.next().ok_or("--timeout needs seconds")?;
                let secs: f64 = s
                    .parse()
                    .map_err(|_| format!("--timeout {s}: not a number"))?;
                if !(0.0..=86_400.0).contains(&secs) {
                    return Err(format!("--timeout {s}: out of range"));
                }
                args.timeout = Duration::from_secs_f64(secs);
            }
            _ => args.commands.push(a),
        }
    }
    Ok(args)
}

/// The connection: lines in, JSON out, every line echoed to stdout.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    deadline: Instant,
    events: Vec<String>,
}

impl Qmp {
    fn next(&mut self) -> Result<Value, String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => {
                println!("{}", line.trim_end());
                let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad JSON: {e}"))?;
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    self.events.push(name.to_owned());
                }
                Ok(v)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err("timed out".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Send `command`; the reply (`Ok(true)` for a return, `Ok(false)` for an error).
    fn execute(&mut self, command: &str) -> Result<bool, String> {
        let line = command.replace('\n', " ");
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        loop {
            let v = self.next()?;
            if v.get("return").is_some() {
                return Ok(true);
            }
            if v.get("error").is_some() {
                return Ok(false);
            }
        }
    }
}

fn run(args: Args) -> Result<bool, String> {
    let stream = UnixStream::connect(&args.socket).map_err(|e| format!("{}: {e}", args.socket))?;
    let mut qmp = Qmp {
        reader: BufReader::new(stream.try_clone().map_err(|e| e.to_string())?),
        writer: stream,
        deadline: Instant::now() + args.timeout,
        events: Vec::new(),
    };
    let greeting = qmp.next()?;
    if greeting.get("QMP").is_none() {
        return Err("no QMP greeting".into());
    }
    if !qmp.execute(r#"{"execute":"qmp_capabilities"}"#)? {
        return Err("qmp_capabilities refused".into());
    }
    let mut all_ok = true;
    for c in &args.commands {
        all_ok &= qmp.execute(c)?;
    }
    if let Some(want) = &args.wait {
        while !qmp.events.iter().any(|e| e == want) {
            qmp.next().map_err(|e| format!("waiting for {want}: {e}"))?;
        }
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pcierc-qmp: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pcierc-qmp: {e}");
            ExitCode::from(2)
        }
    }
}
