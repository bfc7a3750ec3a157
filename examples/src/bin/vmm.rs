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
    /// Guest RAM, as QEMU's -m takes it: MiB (512), or a size with a suffix K, M, G or T
    /// (512M, 2G, 1024K); a whole number of MiB.
    #[arg(long, value_name = "SIZE", default_value = "256")]
    mem: String,
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
    /// Map pcierc's configuration snapshot read-only into the guest's ECAM window, so ECAM reads
    /// of pcierc's functions complete without a VM exit (writes still exit). `on` (the default)
    /// falls back to exits, with one log line, when KVM lacks read-only memory slots or when
    /// there is no snapshot (--no-config-snapshot).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    ecam_map: bool,
    /// Let KVM record writes to CONFIG_ADDRESS (0xCF8-0xCFB) and the CMOS index port (0x70) in
    /// its coalesced I/O ring instead of exiting (KVM_CAP_COALESCED_PIO); the VMM applies them,
    /// in order, before it handles the next exit. `on` (the default) falls back to exits, with
    /// one log line, when KVM lacks the capability.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    coalesce_pio: bool,
    /// Cold-plug the VMM's own test endpoint (1b36:0005: BAR0, MSI-X, Device Serial Number)
    /// behind root port PORT (repeatable); its function id is ep-PORT. Endpoints hot-added on
    /// pcierc's control socket with owner=<--name> are served as well.
    /// `,intx` makes it INTx-only (Interrupt Pin INTA, no MSI-X).
    #[arg(long, value_name = "PORT[,intx]")]
    endpoint: Vec<pcierc_examples::vmm::EndpointSpec>,
    /// Pass host PCI function SBDF (bound to vfio-pci) through behind root port ID (default:
    /// the first root port with an empty slot) at D.F of the port's bus (default: device 0 and
    /// the host function's number). Repeatable; the functions of one IOMMU group go together.
    /// docs/passthrough.md.
    #[arg(long, value_name = "SBDF[,port=ID][,addr=D.F]")]
    vfio: Vec<pcierc_examples::vmm::vfio::VfioSpec>,
}

/// `--mem`: a size as QEMU's `-m` takes it (`qemu_strtosz_MiB`): a plain number is MiB; a
/// suffix B, K, M, G or T (either case, powers of 1024) gives the unit, and a decimal fraction
/// is allowed (`1.5G`). The size must be a whole number of MiB. Returns MiB.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn parse_mem_mib(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a size (MiB, or with a suffix K, M, G or T: 512M, 2G)");
    let (num, shift) = match s.as_bytes().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                b'B' => 0,
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                b'T' => 40,
                _ => return Err(bad()),
            };
            (&s[..s.len() - 1], shift)
        }
        _ => (s, 20),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (num.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let too_large = || format!("'{s}' is too large");
    // Exact arithmetic: bytes = (int.frac) * 2^shift, in u128.
    let int: u128 = int.parse().map_err(|_| too_large())?;
    let frac_digits = u32::try_from(frac.len())
        .ok()
        .filter(|&n| n <= 18)
        .ok_or_else(bad)?;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let den = 10u128.pow(frac_digits);
    let scaled = int
        .checked_mul(den)
        .and_then(|v| v.checked_add(frac))
        .and_then(|v| v.checked_mul(1u128 << shift))
        .ok_or_else(too_large)?;
    if scaled % (den << 20) != 0 {
        return Err(format!("'{s}' is not a whole number of MiB"));
    }
    u64::try_from(scaled / (den << 20)).map_err(|_| too_large())
}

/// `on` or `off`.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off".into()),
    }
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
    let mem_mib = parse_mem_mib(&args.mem).unwrap_or_else(|e| {
        eprintln!("vmm: --mem: {e}");
        std::process::exit(2);
    });
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
        mem_mib,
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
        ecam_map: args.ecam_map,
        coalesce_pio: args.coalesce_pio,
        acpi: !args.no_acpi,
        endpoints: args.endpoint,
        vfio: args.vfio,
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

#[cfg(test)]
mod tests {
    use super::parse_mem_mib;

    #[test]
    fn mem_sizes_are_read_as_qemu_reads_them() {
        for (s, mib) in [
            ("256", 256),
            ("512M", 512),
            ("512m", 512),
            ("2G", 2048),
            ("2g", 2048),
            ("1024K", 1),
            ("1T", 1 << 20),
            ("1.5G", 1536),
            ("0.5g", 512),
            ("1048576k", 1024),
            ("536870912B", 512),
            ("0", 0),
        ] {
            assert_eq!(parse_mem_mib(s), Ok(mib), "{s}");
        }
    }

    #[test]
    fn bad_sizes_get_one_clear_line() {
        for (s, why) in [
            ("", "is not a size"),
            ("M", "is not a size"),
            ("512X", "is not a size"),
            ("512MB", "is not a size"),
            ("-1", "is not a size"),
            ("1.", "is not a size"),
            (".5G", "is not a size"),
            ("1e3", "is not a size"),
            (" 512", "is not a size"),
            ("1000K", "is not a whole number of MiB"),
            ("1.3M", "is not a whole number of MiB"),
            (
                "100000000000000000000000000000000000000000G",
                "is too large",
            ),
            ("99999999999999999999T", "is too large"),
        ] {
            let e = parse_mem_mib(s).unwrap_err();
            assert!(e.contains(why) && e.contains(&format!("'{s}'")), "{s}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
