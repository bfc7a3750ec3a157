//! `pcierc dump`: configuration space in `lspci -xxxx` format, so `lspci -F FILE -vvv` decodes it.

use std::io::Write;
use std::path::Path;

use pcierc_protocol::{decode_name, function_flags, Frontend, FrontendOptions};

use crate::topology::{Hierarchy, TopologySpec};
use crate::{Error, Result};

fn io_err(context: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

/// Write one function: a `BB:DD.F name` line (`SSSS:BB:DD.F` in an extra PCI segment, as
/// `lspci -F` reads domains), 256 lines of 16 bytes, a blank line.
fn write_function(
    out: &mut dyn Write,
    segment: u16,
    bus: u8,
    devfn: u8,
    name: &str,
    read: &mut dyn FnMut(u16) -> Result<u32>,
) -> Result<()> {
    let e = io_err("writing dump");
    if segment != 0 {
        write!(out, "{segment:04x}:").map_err(&e)?;
    }
    writeln!(out, "{bus:02x}:{:02x}.{} {name}", devfn >> 3, devfn & 7).map_err(&e)?;
    for line in (0..4096u16).step_by(16) {
        let mut bytes = Vec::with_capacity(16);
        for dw in (line..line + 16).step_by(4) {
            bytes.extend_from_slice(&read(dw)?.to_le_bytes());
        }
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(out, "{line:03x}: {}", hex.join(" ")).map_err(&e)?;
    }
    writeln!(out).map_err(&e)
}

/// Dump the power-on state of `spec` (its segment 0: the Q35 hierarchy). A switch port is read from its model and shown at the
/// bus it sits on now (0 while its parent is unnumbered, as at power-on) with the port above it;
/// a root port on a `pxb-pcie` expander's bus at that bus; the expanders' functions last.
pub fn dump_local(spec: TopologySpec, out: &mut dyn Write) -> Result<()> {
    let h = Hierarchy::new(spec)?;
    // Named by id, as `dump --connect` names them from the topology.
    write_function(out, 0, 0, 0, "mch", &mut |off| {
        h.config_read(0, 0, off, 4)
            .map_err(|status| Error::ConfigRead {
                devfn: 0,
                offset: off,
                status,
            })
    })?;
    for (i, (p, ps)) in h.ports().iter().zip(&h.spec().root_ports).enumerate() {
        let name = match h.port_parent(i) {
            None => ps.config.id.clone(),
            Some(_) => format!("{} (behind {})", ps.config.id, ps.bus),
        };
        write_function(out, 0, h.port_bus(i), ps.addr.0, &name, &mut |off| {
            Ok(crate::pci::PciFunction::config_read(p, off, 4))
        })?;
    }
    // The pxb-pcie expanders' functions, on pcie.0.
    for (x, xs) in h.expanders().iter().zip(&h.spec().expanders) {
        write_function(out, 0, 0, xs.addr.0, &xs.config.id, &mut |off| {
            Ok(crate::pci::PciFunction::config_read(x, off, 4))
        })?;
    }
    Ok(())
}

/// Dump every function a running backend emulates, in every segment.
pub fn dump_remote(path: &Path, out: &mut dyn Write) -> Result<()> {
    let mut fe =
        Frontend::connect(path, FrontendOptions::tool("pcierc-dump")).map_err(|source| {
            Error::Connect {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let topo = fe.topology().map_err(|source| Error::Request {
        context: "topology".into(),
        source,
    })?;
    for f in topo
        .functions
        .iter()
        .filter(|f| f.flags & function_flags::EMULATED != 0)
    {
        let name = decode_name(&f.id).unwrap_or("?").to_string();
        let (seg, bus, devfn) = (f.segment, f.bus, f.devfn);
        write_function(out, seg, bus, devfn, &name, &mut |off| {
            fe.config_read(seg, bus, devfn, off, 4)
                .map_err(|source| Error::Request {
                    context: format!("reading {name}+{off:#x}"),
                    source,
                })
        })?;
    }
    Ok(())
}
