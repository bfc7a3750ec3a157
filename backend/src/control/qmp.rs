//! The QMP session state machine (QEMU's `docs/interop/qmp-spec.rst`): greeting, capabilities
//! negotiation, command dispatch with QEMU's error classes and wording, and events. No I/O: the
//! service feeds it the bytes a client sent and writes back the lines it returns, each followed
//! by `\r\n` as QEMU does.
//!
//! Commands: `qmp_capabilities`, `query-status`, `query-version`, `query-commands`, `query-pci`,
//! `device_add`, `device_del`, `pcie-aer-inject-error`, `quit`, and pcierc's extensions
//! `x-pcierc-inject-pme`, `x-pcierc-surprise-remove`, `x-pcierc-query-slots`,
//! `x-pcierc-query-stats`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::args::{bad_type, Args, QmpError};
use super::stream::{Item, JsonStream};
use super::{AerInject, ControlOps, DeviceAdd};
use crate::topology::addr::parse_devfn;

/// Every command, in `query-commands` order.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "query-version",
    "query-commands",
    "query-pci",
    "device_add",
    "device_del",
    "pcie-aer-inject-error",
    "x-pcierc-inject-pme",
    "x-pcierc-surprise-remove",
    "x-pcierc-query-slots",
    "x-pcierc-query-stats",
    "quit",
];

/// One client connection's protocol state.
#[derive(Debug, Default)]
pub struct QmpSession {
    stream: JsonStream,
    negotiated: bool,
    quit: bool,
}

impl QmpSession {
    /// A new session and the greeting to send first.
    pub fn new() -> (Self, String) {
        let greeting = json!({"QMP": {"version": version(), "capabilities": []}});
        (Self::default(), greeting.to_string())
    }

    /// Has the client left capabilities negotiation (so it receives events)?
    pub fn wants_events(&self) -> bool {
        self.negotiated
    }

    /// Did the client run `quit`? The service exits after writing the reply.
    pub fn quit_requested(&self) -> bool {
        self.quit
    }

    /// Consume bytes from the client; return the reply lines (without line terminator).
    pub fn input(&mut self, ops: &mut dyn ControlOps, bytes: &[u8]) -> Vec<String> {
        let items = self.stream.push(bytes);
        items
            .into_iter()
            .map(|item| match item {
                Item::Value(v) => self.request(ops, v),
                Item::Error(desc) => error_reply(None, &QmpError::generic(desc)),
            })
            .map(|v| v.to_string())
            .collect()
    }

    fn request(&mut self, ops: &mut dyn ControlOps, v: Value) -> Value {
        let Value::Object(mut req) = v else {
            return error_reply(None, &QmpError::generic("QMP input must be a JSON object"));
        };
        let id = req.remove("id");
        let r = self.dispatch(ops, req);
        ops.command_done(r.is_ok());
        match r {
            Ok(ret) => {
                let mut out = Map::new();
                out.insert("return".into(), ret);
                if let Some(id) = id {
                    out.insert("id".into(), id);
                }
                Value::Object(out)
            }
            Err(e) => error_reply(id, &e),
        }
    }

    /// QEMU's `qmp_dispatch_check_obj()` then `qmp_dispatch()`.
    fn dispatch(
        &mut self,
        ops: &mut dyn ControlOps,
        req: Map<String, Value>,
    ) -> Result<Value, QmpError> {
        let mut execute = None;
        let mut arguments = Map::new();
        for (k, v) in req {
            match (k.as_str(), v) {
                ("execute", Value::String(s)) => execute = Some(s),
                ("execute", _) => {
                    return Err(QmpError::generic(
                        "QMP input member 'execute' must be a string",
                    ))
                }
                ("arguments", Value::Object(m)) => arguments = m,
                ("arguments", _) => {
                    return Err(QmpError::generic(
                        "QMP input member 'arguments' must be an object",
                    ))
                }
                (k, _) => {
                    return Err(QmpError::generic(format!(
                        "QMP input member '{k}' is unexpected"
                    )))
                }
            }
        }
        let Some(cmd) = execute else {
            return Err(QmpError::generic("QMP input lacks member 'execute'"));
        };
        if !COMMANDS.contains(&cmd.as_str()) {
            return Err(QmpError::command_not_found(format!(
                "The command {cmd} has not been found"
            )));
        }
        // monitor/qmp-cmds-control.c: only qmp_capabilities before negotiation, never after.
        let negotiating = cmd == "qmp_capabilities";
        if negotiating && self.negotiated {
            return Err(QmpError::command_not_found(
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        if !negotiating && !self.negotiated {
            return Err(QmpError::command_not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        self.command(ops, &cmd, &mut Args::new(arguments))
    }

    fn command(
        &mut self,
        ops: &mut dyn ControlOps,
        cmd: &str,
        args: &mut Args,
    ) -> Result<Value, QmpError> {
        match cmd {
            "qmp_capabilities" => {
                if let Some(v) = args.take("enable") {
                    capabilities(&v)?;
                }
                args.finish()?;
                self.negotiated = true;
                Ok(json!({}))
            }
            "query-status" => {
                args.finish()?;
                let status = ops.status();
                let running = status == "running";
                Ok(json!({"status": status, "singlestep": false, "running": running}))
            }
            "query-version" => {
                args.finish()?;
                Ok(version())
            }
            "query-commands" => {
                args.finish()?;
                Ok(COMMANDS.iter().map(|c| json!({"name": c})).collect())
            }
            "query-pci" => {
                args.finish()?;
                Ok(ops.query_pci())
            }
            "device_add" => {
                let req = device_add(args)?;
                args.finish()?;
                ops.device_add(&req)?;
                Ok(json!({}))
            }
            "device_del" | "x-pcierc-inject-pme" | "x-pcierc-surprise-remove" => {
                let id = args.string("id")?;
                args.finish()?;
                match cmd {
                    "device_del" => ops.device_del(&id)?,
                    "x-pcierc-inject-pme" => ops.inject_pme(&id)?,
                    _ => ops.surprise_remove(&id)?,
                }
                Ok(json!({}))
            }
            "pcie-aer-inject-error" => {
                let req = AerInject::from_args(args)?;
                args.finish()?;
                ops.inject_aer(&req)?;
                Ok(json!({}))
            }
            "x-pcierc-query-slots" => {
                args.finish()?;
                serde_json::to_value(ops.query_slots())
                    .map_err(|e| QmpError::generic(format!("internal error: {e}")))
            }
            "x-pcierc-query-stats" => {
                args.finish()?;
                Ok(ops.query_stats())
            }
            "quit" => {
                args.finish()?;
                ops.quit();
                self.quit = true;
                Ok(json!({}))
            }
            other => Err(QmpError::command_not_found(format!(
                "The command {other} has not been found"
            ))),
        }
    }
}

/// `qmp_capabilities` `enable`: pcierc offers no capability (no out-of-band execution).
fn capabilities(v: &Value) -> Result<(), QmpError> {
    let Value::Array(caps) = v else {
        return Err(bad_type("enable", "array"));
    };
    let mut unavailable = Vec::new();
    for c in caps {
        match c {
            // QEMU 7.2's wording for a value outside the QMPCapability enum.
            Value::String(s) if s != "oob" => {
                return Err(QmpError::generic(format!(
                    "Parameter 'null' does not accept value '{s}'"
                )))
            }
            Value::String(s) => unavailable.push(s.as_str()),
            _ => return Err(bad_type("enable[0]", "string")),
        }
    }
    if unavailable.is_empty() {
        return Ok(());
    }
    Err(QmpError::generic(format!(
        "Capability {} not available",
        unavailable.join(", ")
    )))
}

/// `device_add` members: QEMU's `driver`, `id`, `bus`, `addr`, `multifunction`, plus `owner`.
/// pcierc does not instantiate the device (its owner does), so it takes no other properties.
fn device_add(args: &mut Args) -> Result<DeviceAdd, QmpError> {
    let driver = args.string("driver")?;
    let id = args.string("id")?;
    let bus = args.string("bus")?;
    let addr = match args.take("addr") {
        None => None,
        // QEMU's message exactly (set_pci_devfn()), without the reason.
        Some(Value::String(s)) => Some(parse_devfn(&s).map_err(|_| {
            QmpError::generic(format!("Property '{driver}.addr' doesn't take value '{s}'"))
        })?),
        Some(Value::Number(n)) => {
            let devfn = n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| {
                    QmpError::generic(format!("Property '{driver}.addr' doesn't take value '{n}'"))
                })?;
            Some(crate::topology::DevFn(devfn))
        }
        Some(_) => return Err(bad_type("addr", "string")),
    };
    let multifunction = match args.take("multifunction") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) if s == "on" || s == "true" => true,
        Some(Value::String(s)) if s == "off" || s == "false" => false,
        Some(_) => return Err(bad_type("multifunction", "boolean")),
    };
    let owner = args.opt_string("owner")?;
    Ok(DeviceAdd {
        driver,
        id,
        bus,
        addr,
        owner,
        multifunction,
    })
}

fn error_reply(id: Option<Value>, e: &QmpError) -> Value {
    let mut out = Map::new();
    out.insert("error".into(), json!({"class": e.class, "desc": e.desc}));
    if let Some(id) = id {
        out.insert("id".into(), id);
    }
    Value::Object(out)
}

/// `VersionInfo`: pcierc's own version in QEMU's shape.
fn version() -> Value {
    let part = |s: &str| s.parse::<u64>().unwrap_or(0);
    json!({
        "qemu": {
            "major": part(env!("CARGO_PKG_VERSION_MAJOR")),
            "minor": part(env!("CARGO_PKG_VERSION_MINOR")),
            "micro": part(env!("CARGO_PKG_VERSION_PATCH")),
        },
        "package": concat!("pcierc ", env!("CARGO_PKG_VERSION")),
    })
}

/// An event line as QEMU emits it: `{"event", "data", "timestamp": {seconds, microseconds}}`.
pub fn event(name: &str, data: Option<Value>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert("event".into(), name.into());
    if let Some(d) = data {
        out.insert("data".into(), d);
    }
    out.insert(
        "timestamp".into(),
        json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}),
    );
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests;
