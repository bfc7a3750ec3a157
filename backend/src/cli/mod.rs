//! The `pcierc` command line, following QEMU's vhost-user backend program conventions
//! (`--socket-path`, `--fd`, `--print-capabilities`), and what a service manager needs
//! ([`activation`]: sockets passed by systemd or `--control-fd`; [`notify`]: `READY=1` and
//! `--pidfile`; SIGTERM/SIGINT are handled by the service's event loop).

pub mod activation;
pub mod capabilities;
pub mod dump;
pub mod logging;
pub mod man;
pub mod notify;
pub mod qtest;

use std::path::PathBuf;

use clap::{Args as ClapArgs, CommandFactory, Parser, Subcommand};
use thiserror::Error as ThisError;

use crate::devices::MachineType;
use crate::sandbox::SeccompMode;
use crate::service::access::{self, DEFAULT_MAX_CONNECTIONS};
use crate::service::{self, AccessConfig, AccessPolicy, ControlListen, Listen, ServiceConfig};
use crate::topology::TopologySpec;
use crate::{Error, Result};

/// pcierc: a PCIe root complex (Q35 host bridge, ECAM, PCIe root ports) served over a unix socket.
#[derive(Parser, Debug)]
#[command(name = "pcierc", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Serve the protocol on a unix socket created at PATH.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// Serve on an inherited socket: a listening socket (frontends connect to it) or one
    /// already-connected stream (a single frontend).
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,
    /// Also serve a QMP-compatible control socket (query-pci, device_add, device_del,
    /// pcie-aer-inject-error, ...) created at PATH.
    #[arg(long, value_name = "PATH", conflicts_with = "control_fd")]
    pub control_socket: Option<PathBuf>,
    /// Serve the QMP control socket on an inherited listening unix stream socket.
    #[arg(long, value_name = "N")]
    pub control_fd: Option<i32>,
    /// Write pcierc's pid to FILE (atomically) once it is ready; removed at exit.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Keep the guest-visible state in FILE: restored from it at start (if it exists), written
    /// atomically after every change, before the change is acknowledged.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Discard what the --state-file holds (logged) and start from the power-on state, instead
    /// of refusing to start when it does not load.
    #[arg(long, requires = "state_file")]
    pub state_reset: bool,
    /// Permissions of the socket files pcierc creates (both sockets), in octal.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "0600",
        value_parser = access::parse_socket_mode
    )]
    pub socket_mode: u32,
    /// Serve peers whose effective uid is UID (checked with SO_PEERCRED on both sockets;
    /// repeatable). Default: only the uid pcierc runs as; given, only the uids listed.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Most frontends served at once; more are closed at accept.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
    /// System calls outside pcierc's allow-list, once it is set up: kill the process
    /// (default), allow and have the kernel log them, or no filter at all.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,
    /// Print a JSON description of the backend and its features, then exit (other options are
    /// ignored, wrong ones included).
    #[arg(long)]
    pub print_capabilities: bool,
    /// Log LEVEL and above to standard error (instead of RUST_LOG's filter; default info).
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<logging::LogLevel>,
    /// Topology options.
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Subcommands (tools).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The `pcierc` command line as clap describes it (for `--help`, man pages, completions).
pub fn command() -> clap::Command {
    Args::command()
}

/// Where the hierarchy comes from: the embedded default (unless `--nodefaults`) or a TOML file,
/// plus QEMU-syntax `--device` options.
#[derive(ClapArgs, Debug, Default, Clone)]
pub struct TopologyArgs {
    /// Read the topology from a TOML file instead of the embedded default.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Start from the host bridge alone instead of the embedded default's four root ports.
    #[arg(long, short = 'n')]
    pub nodefaults: bool,
    /// Add a function, QEMU syntax: `pcie-root-port,id=rp5,chassis=5,slot=5,addr=0x3.0` (or
    /// `ioh3420,...`, `x3130-upstream,...`, `pcie-pci-bridge,...`,
    /// `pxb-pcie,id=pxb1,bus_nr=0x80,addr=0x5`; docs/topology.md); a root port takes every
    /// property QEMU 7.2's `pcie-root-port` has (e.g. `hotplug=off`, `x-speed=8`,
    /// `disable-acs=on`).
    #[arg(long, value_name = "DRIVER,PROP=VALUE,...")]
    pub device: Vec<String>,
    /// The machine type whose register behaviour the root ports have, by QEMU's name:
    /// pc-q35-7.2 (the default), pc-q35-10.0, or q35 for the newest (as in QEMU). Overrides the
    /// topology file's `machine`.
    #[arg(long, short = 'M', value_name = "TYPE")]
    pub machine: Option<MachineType>,
}

impl TopologyArgs {
    /// Build and validate the topology these options describe.
    pub fn load(&self) -> Result<TopologySpec> {
        let mut spec = match &self.topology {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })?;
                TopologySpec::from_toml(&text).map_err(|source| Error::TopologyFile {
                    path: path.clone(),
                    source,
                })?
            }
            None if self.nodefaults => TopologySpec::empty(),
            None => TopologySpec::embedded_default()?,
        };
        if let Some(m) = self.machine {
            spec.machine = m;
        }
        for d in &self.device {
            spec.add_device_option(d)?;
        }
        Ok(spec)
    }
}

/// A command line (with the environment a service manager set) that asks for something
/// impossible.
#[derive(Debug, Clone, PartialEq, Eq, ThisError)]
pub enum UsageError {
    /// No socket to serve and no tool to run.
    #[error(
        "nothing to do: give --socket-path PATH or --fd N, or start pcierc with socket activation (or --print-capabilities, or a subcommand)"
    )]
    NothingToDo,
    /// The protocol socket comes from the command line and from socket activation.
    #[error(
        "the protocol socket is given twice: by --socket-path or --fd and by socket activation (LISTEN_FDS)"
    )]
    ProtocolSocketTwice,
    /// The control socket comes from the command line and from socket activation.
    #[error(
        "the control socket is given twice: by --control-socket or --control-fd and by socket activation (LISTEN_FDS)"
    )]
    ControlSocketTwice,
    /// `--fd` and `--control-fd` name one descriptor.
    #[error("--fd and --control-fd are both {0}: the two sockets must differ")]
    SameFd(i32),
}

/// Tools built into `pcierc`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every emulated function's 4 KiB configuration space in `lspci -xxxx` format.
    Dump {
        /// Read from a running backend instead of the power-on state of the topology.
        #[arg(long, value_name = "PATH")]
        connect: Option<PathBuf>,
        /// Topology options (without --connect).
        #[command(flatten)]
        topology: TopologyArgs,
    },
    /// Answer QEMU's qtest line protocol on stdin/stdout through a running backend.
    Qtest {
        /// The backend's socket.
        #[arg(long, value_name = "PATH")]
        connect: PathBuf,
    },
}

/// Run the program.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Dump {
            connect: Some(path),
            ..
        }) => dump::dump_remote(&path, &mut std::io::stdout().lock()),
        Some(Command::Dump {
            connect: None,
            topology,
        }) => dump::dump_local(topology.load()?, &mut std::io::stdout().lock()),
        Some(Command::Qtest { connect }) => {
            qtest::run(&connect, std::io::stdin().lock(), std::io::stdout().lock())
        }
        None => {
            if args.print_capabilities {
                capabilities::print(Some(&args));
                return Ok(());
            }
            // Before anything else, and before any thread exists: the variables are consumed.
            let mut readiness = notify::Readiness::from_env(args.pidfile.clone());
            let activated = activation::from_env()?.unwrap_or_default();
            let spec = args.topology.load()?;
            let (listen, control) = sockets(&args, activated)?;
            let r = service::serve(
                ServiceConfig {
                    spec,
                    listen,
                    control,
                    state_file: args.state_file,
                    state_reset: args.state_reset,
                    access: AccessConfig {
                        socket_mode: args.socket_mode,
                        policy: AccessPolicy::uids(args.allow_uid),
                        max_connections: args.max_connections as usize,
                    },
                    seccomp: args.seccomp,
                },
                || readiness.ready(),
            );
            readiness.stopping();
            r
        }
    }
}

/// Where the protocol and control sockets come from: the command line or socket activation,
/// each from exactly one place.
fn sockets(
    args: &Args,
    activated: activation::Activated,
) -> Result<(Listen, Option<ControlListen>)> {
    let listen = match (&args.socket_path, args.fd, activated.protocol) {
        (Some(p), None, None) => Listen::Path(p.clone()),
        (None, Some(fd), None) | (None, None, Some(fd)) => Listen::Fd(fd),
        (None, None, None) => return Err(UsageError::NothingToDo.into()),
        _ => return Err(UsageError::ProtocolSocketTwice.into()),
    };
    let control = match (&args.control_socket, args.control_fd, activated.control) {
        (Some(p), None, None) => Some(ControlListen::Path(p.clone())),
        (None, Some(fd), None) => {
            if args.fd == Some(fd) {
                return Err(UsageError::SameFd(fd).into());
            }
            activation::check_listening_unix_stream(fd, "--control-fd")?;
            Some(ControlListen::Fd(fd))
        }
        (None, None, Some(fd)) => Some(ControlListen::Fd(fd)),
        (None, None, None) => None,
        _ => return Err(UsageError::ControlSocketTwice.into()),
    };
    Ok((listen, control))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::service::access::DEFAULT_SOCKET_MODE;

    #[test]
    fn the_command_line_is_consistent_and_access_defaults_match_the_service() {
        Args::command().debug_assert();
        let a = Args::parse_from(["pcierc", "--socket-path", "s"]);
        assert_eq!(a.socket_mode, DEFAULT_SOCKET_MODE);
        assert_eq!(a.max_connections as usize, DEFAULT_MAX_CONNECTIONS);
        assert!(a.allow_uid.is_empty());
        let a = Args::parse_from([
            "pcierc",
            "--socket-path",
            "s",
            "--socket-mode",
            "660",
            "--allow-uid",
            "0",
            "--allow-uid",
            "107",
            "--max-connections",
            "3",
        ]);
        assert_eq!(
            (a.socket_mode, a.allow_uid, a.max_connections),
            (0o660, vec![0, 107], 3)
        );
    }
}
