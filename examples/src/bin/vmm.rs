//! `vmm`: a small KVM VMM whose guest's PCIe hierarchy is pcierc's (docs/vmm.md).
//!
//! ```sh
//! vmm --spawn-backend --guest pcie-probe           # the built-in PCIe probe guest
//! vmm --backend-socket /run/pcierc.sock --kernel vmlinux --initrd initrd.img --mem 512
//! ```
//! A guest reset reboots the guest (pcierc's hierarchy and the VMM's endpoints are reset too);
//! `--no-reboot` makes it end the VMM instead.
//! Exit status: 0 when the guest powers off (or resets with `--no-reboot`), 1 on any error (KVM internal error,
//! emulation failure, pcierc gone, `--timeout`), 2 for bad options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};

/// A KVM VMM whose guest's PCIe root complex is a pcierc process.
#[derive(Parser, Debug)]
#[command(group(ArgGroup::new("image").required(true).args(["kernel", "guest"])))]
#[command(group(ArgGroup::new("backend").required(true).args(["backend_socket", "spawn_backend"])))]
struct Args {
    /// Kernel to boot: ELF (vmlinux) or bzImage, entered in 64-bit mode.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Boot a built-in test guest instead of a kernel: pcie-probe (the demo: enumerates the
    /// hierarchy), fault-exec-mmio, fault-triple or hang (examples/guest/).
    #[arg(long, value_name = "NAME", value_parser = guest_name)]
    guest: Option<&'static str>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Connect to a running pcierc's main socket.
    #[arg(long, value_name = "PATH")]
    backend_socket: Option<PathBuf>,
    /// Start pcierc (next to this program, or on PATH) on a temporary socket; stop it on exit.
    #[arg(long)]
    spawn_backend: bool,
    /// The pcierc binary for --spawn-backend.
    #[arg(long, value_name = "PATH", requires = "spawn_backend")]
    pcierc: Option<PathBuf>,
    /// Extra argument for the spawned pcierc (repeat; e.g. --backend-arg=--control-socket
    /// --backend-arg=/tmp/qmp.sock).
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "spawn_backend"
    )]
    backend_arg: Vec<String>,
    /// Fail if the guest has not stopped after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Print exit counts and handling times on stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Name given to pcierc (the owner name of functions this VMM serves).
    #[arg(long, default_value = "vmm")]
    name: String,
    /// No firmware work: leave ECAM disabled (as pcierc powers on) and give no ACPI tables.
    #[arg(long)]
    no_acpi: bool,
    /// Exit when the guest resets instead of rebooting it (as QEMU's -no-reboot).
    #[arg(long)]
    no_reboot: bool,
    /// Do not use pcierc's shared configuration snapshot: every forwarded read is a message.
    #[arg(long)]
    no_config_snapshot: bool,
    /// Cold-plug the VMM's own test endpoint (1b36:0005: BAR0, MSI-X, Device Serial Number)
    /// behind root port PORT (repeatable); its function id is ep-PORT. Endpoints hot-added on
    /// pcierc's control socket with owner=<--name> are served as well.
    #[arg(long, value_name = "PORT")]
    endpoint: Vec<String>,
}

fn guest_name(s: &str) -> Result<&'static str, String> {
    pcierc_examples::guest::ALL
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(n, _)| *n)
        .ok_or_else(|| {
            let names: Vec<_> = pcierc_examples::guest::ALL.iter().map(|g| g.0).collect();
            format!("one of {}", names.join(", "))
        })
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use pcierc_examples::vmm::{self, BackendSource, Config, KernelImage, Stop};

    env_logger::init();
    let args = Args::parse();
    let timeout = match args.timeout {
        Some(t) if !(t > 0.0 && t < 1e9) => {
            eprintln!("vmm: --timeout must be a positive number of seconds");
            std::process::exit(2);
        }
        t => t.map(Duration::from_secs_f64),
    };
    let config = Config {
        kernel: match (args.kernel, args.guest) {
            (Some(p), _) => KernelImage::Path(p),
            (None, name) => {
                let (name, bytes) = pcierc_examples::guest::ALL
                    .iter()
                    .find(|(n, _)| Some(*n) == name)
                    .copied()
                    .unwrap_or(pcierc_examples::guest::ALL[0]);
                KernelImage::Embedded { name, bytes }
            }
        },
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem,
        cpus: args.cpus,
        backend: match args.backend_socket {
            Some(p) => BackendSource::Socket(p),
            None => BackendSource::Spawn {
                program: args.pcierc,
                args: args.backend_arg,
            },
        },
        timeout,
        stats: args.stats,
        name: args.name,
        config_snapshot: !args.no_config_snapshot,
        acpi: !args.no_acpi,
        endpoints: args.endpoint,
        reboot: !args.no_reboot,
    };
    match vmm::run(&config) {
        Ok(Stop::PowerOff) => eprintln!("vmm: guest powered off"),
        Ok(Stop::Reset) => eprintln!("vmm: guest reset; stopping (--no-reboot)"),
        Err(e) => {
            eprintln!("vmm: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("vmm:   caused by: {s}");
                src = s.source();
            }
            std::process::exit(1);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    let _ = Args::parse();
    eprintln!("vmm: only x86-64 hosts are supported");
    std::process::exit(1);
}
