//! A small KVM VMM built from rust-vmm crates whose guest's PCIe hierarchy above the endpoints is
//! pcierc's: every trapped access pcierc decodes (CF8/CFC, its ECAM windows, its functions'
//! BARs, as its topology says and `LayoutChanged` updates) is forwarded unchanged over the
//! protocol; pcierc's MSI-X vectors reach the guest through KVM irqfds whose GSI routes follow
//! `MsiRoute` notifications. See docs/vmm.md.
//!
//! The VMM also serves PCIe endpoints of its own behind pcierc's root ports ([`endpoint`], a
//! small test device with a BAR, MSI-X and a Device Serial Number; [`devices`], which of them
//! exist and where): it claims them with `ClaimFunction` (`--endpoint PORT`) or is given them by
//! pcierc's control socket (`FunctionAdded`), and serves their configuration space when pcierc
//! answers `EREMOTE`.
//!
//! Modules: [`acpi`] (RSDP, XSDT, FADT, DSDT, MADT, MCFG), [`layout`] (the guest-physical memory
//! map), [`cpu`] (64-bit entry state), [`boot`] (kernel loading and Linux's zero page), [`pcie`]
//! (pcierc's claims and the forwarding link), [`wiring`] (what the VMM asks of pcierc before the
//! guest runs), [`irq`] (GSI routing and irqfds), [`machine`] (what each exit reaches: pcierc,
//! the VMM's endpoints, COM1, PM1a, all ones), [`coalesced`] (port writes KVM records without
//! an exit: CONFIG_ADDRESS, the CMOS index), [`vcpu`] (the loop), [`session`] (the vCPUs and
//! reboots), [`console`] (COM1's stdout and stdin) and [`backend`] (`--spawn-backend`).

pub mod acpi;
pub mod backend;
pub mod boot;
pub mod cmos;
pub mod coalesced;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod ecam_map;
pub mod endpoint;
mod endpoint_access;
pub mod irq;
pub mod layout;
pub mod machine;
pub mod pcie;
pub mod power_on;
pub mod session;
pub mod vcpu;
pub mod vfio;
pub mod wiring;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, PoisonError};
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use pcierc_protocol::{Frontend, FrontendOptions, ProtocolFeatures};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use self::backend::SpawnedBackend;
pub use self::machine::Stop;
use self::machine::{Machine, MachineParts};
use self::pcie::PcieLink;

/// Why the VMM could not start or the guest could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A function could not be passed through (`--vfio`).
    #[error(transparent)]
    Vfio(#[from] vfio::VfioError),
    /// A KVM ioctl failed.
    #[error("KVM {what}: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel image could not be loaded.
    #[error("loading the kernel: {0}")]
    Kernel(String),
    /// A request to pcierc failed.
    #[error("pcierc: {what}: {source}")]
    Backend {
        /// The request.
        what: String,
        /// The protocol error.
        #[source]
        source: pcierc_protocol::Error,
    },
    /// `--spawn-backend` could not start pcierc.
    #[error("starting pcierc: {0}")]
    Spawn(String),
    /// An invalid option, or something the host lacks.
    #[error("{0}")]
    Config(String),
    /// A host I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The guest cannot go on (KVM internal error, emulation failure, triple fault...).
    #[error("vCPU {cpu}: {detail}")]
    Guest {
        /// vCPU index.
        cpu: u8,
        /// What KVM reported and where the guest was.
        detail: String,
    },
    /// `--timeout` passed before the guest stopped.
    #[error("the guest did not stop within {after:?}; {position}")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// Where the vCPUs were when they were stopped.
        position: String,
    },
}

/// The kernel to boot.
#[derive(Clone, Debug)]
pub enum KernelImage {
    /// A file: ELF (vmlinux, the test guests) or bzImage.
    Path(PathBuf),
    /// An image built into this program (the test guests of `crate::guest`).
    Embedded {
        /// Its name, for messages.
        name: &'static str,
        /// The ELF image.
        bytes: &'static [u8],
    },
}

/// Where pcierc is.
#[derive(Clone, Debug)]
pub enum BackendSource {
    /// Connect to a running pcierc's main socket.
    Socket(PathBuf),
    /// Start pcierc (`program`, else the one found by [`backend::find_pcierc`]) on a temporary
    /// socket with extra `args`, and stop it on exit.
    Spawn {
        /// The pcierc binary.
        program: Option<PathBuf>,
        /// Extra arguments (e.g. `--control-socket PATH`, `--device ...`).
        args: Vec<String>,
    },
}

/// A validated VMM configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The kernel.
    pub kernel: KernelImage,
    /// An initrd.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// pcierc.
    pub backend: BackendSource,
    /// Give up (error) if the guest has not stopped after this long.
    pub timeout: Option<Duration>,
    /// Print exit statistics on stderr at the end.
    pub stats: bool,
    /// The name this VMM gives pcierc (`SetFrontendInfo`).
    pub name: String,
    /// Act as firmware: enable ECAM (PCIEXBAR) at [`layout::ECAM_BASE`] if it is off, and give
    /// the guest ACPI tables (MCFG describing pcierc's ECAM windows). Off, the guest finds the
    /// platform as pcierc powers on (ECAM disabled) and no tables.
    pub acpi: bool,
    /// Let configuration reads be served from pcierc's shared snapshot when it offers one
    /// (`CONFIG_SNAPSHOT`); off, every forwarded read is a socket round trip.
    pub config_snapshot: bool,
    /// Map the snapshot's configuration pages read-only into the guest's ECAM window
    /// ([`ecam_map`]): ECAM reads of pcierc's functions without a VM exit. Needs
    /// `config_snapshot` and KVM_CAP_READONLY_MEM; otherwise reads exit as before.
    pub ecam_map: bool,
    /// Coalesce port writes to CONFIG_ADDRESS and the CMOS index ([`coalesced`]): no exit for
    /// them. Needs KVM_CAP_COALESCED_PIO; otherwise they exit as before.
    pub coalesce_pio: bool,
    /// Reboot the guest when it resets (QEMU's default); off, a reset ends the run
    /// (`--no-reboot`).
    pub reboot: bool,
    /// The endpoints the VMM cold-plugs, one behind each root port named, before the
    /// guest runs (`ClaimFunction` with `COLDPLUG`; the endpoint's id is [`endpoint_id`]).
    pub endpoints: Vec<EndpointSpec>,
    /// Host PCI functions passed through (`--vfio`), claimed behind their root ports before the
    /// guest runs.
    pub vfio: Vec<vfio::VfioSpec>,
}

/// `--endpoint PORT[,intx]`: the VMM's endpoint behind root port `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The root port's id.
    pub port: String,
    /// MSI-X (the default) or INTx only (`,intx`).
    pub interrupts: endpoint::Interrupts,
}

impl std::str::FromStr for EndpointSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, interrupts) = match s.split_once(',') {
            None => (s, endpoint::Interrupts::Msix),
            Some((port, "intx")) => (port, endpoint::Interrupts::Intx),
            Some((_, other)) => {
                return Err(format!("unknown endpoint option {other:?} (known: intx)"))
            }
        };
        if port.is_empty() {
            return Err("a root port id is needed".into());
        }
        Ok(EndpointSpec {
            port: port.to_owned(),
            interrupts,
        })
    }
}

/// The function id of the endpoint `--endpoint PORT` cold-plugs behind `port`.
pub fn endpoint_id(port: &str) -> String {
    format!("ep-{port}")
}

/// Smallest guest RAM accepted (the kernel is loaded at 1 MiB).
pub const MIN_MEM_MIB: u64 = 16;
/// Largest guest RAM accepted.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Most vCPUs accepted.
pub const MAX_CPUS: u8 = 32;

impl Config {
    /// Check the values a user gave.
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(Error::Config(format!(
                "--mem must be {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB"
            )));
        }
        if !(1..=MAX_CPUS).contains(&self.cpus) {
            return Err(Error::Config(format!("--cpus must be 1 to {MAX_CPUS}")));
        }
        for EndpointSpec { port, .. } in &self.endpoints {
            if pcierc_protocol::encode_name(&endpoint_id(port)).is_none() {
                return Err(Error::Config(format!(
                    "--endpoint {port:?}: not a root port id (at most {} printable characters)",
                    pcierc_protocol::NAME_LEN - 3
                )));
            }
        }
        Ok(())
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn read_file(path: &PathBuf, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        what: format!("reading the {what} {}", path.display()),
        source,
    })
}

/// Boot the guest and run it until it powers off or resets (`Ok`), or fails (`Err`).
pub fn run(config: &Config) -> Result<Stop, Error> {
    config.validate()?;
    let kernel: std::borrow::Cow<'static, [u8]> = match &config.kernel {
        KernelImage::Path(p) => read_file(p, "kernel")?.into(),
        KernelImage::Embedded { name, bytes } => {
            if bytes.is_empty() {
                return Err(Error::Config(format!(
                    "the built-in guest {name} was not built (binutils' `as` and `ld` were \
                     missing when pcierc-examples was compiled)"
                )));
            }
            (*bytes).into()
        }
    };
    let initrd = config
        .initrd
        .as_ref()
        .map(|p| read_file(p, "initrd"))
        .transpose()?;

    // pcierc first: its topology says where ECAM is before the guest runs.
    let (_spawned, socket) = match &config.backend {
        BackendSource::Socket(p) => (None, p.clone()),
        BackendSource::Spawn { program, args } => {
            let program = program
                .clone()
                .or_else(backend::find_pcierc)
                .ok_or_else(|| {
                    Error::Spawn(
                        "no `pcierc` next to this program or on PATH (build it: \
                     `cargo build --release -p pcierc-backend`)"
                            .into(),
                    )
                })?;
            let b = SpawnedBackend::start(&program, args)?;
            log::info!("started {} (pid {})", program.display(), b.pid());
            let socket = b.socket.clone();
            (Some(b), socket)
        }
    };
    let mut opts = FrontendOptions::vmm(config.name.clone());
    // CONFIG_ADDRESS lives here: a CONFIG_ADDRESS write is no round trip (docs/vmm.md).
    opts.protocol_features |= ProtocolFeatures::CONFIG_ADDRESS_LATCH;
    if !config.config_snapshot {
        opts.protocol_features -= ProtocolFeatures::CONFIG_SNAPSHOT;
    }
    let frontend = Frontend::connect(&socket, opts).map_err(|source| Error::Backend {
        what: format!("connecting to {}", socket.display()),
        source,
    })?;
    let interrupts = frontend
        .protocol_features()
        .contains(ProtocolFeatures::INTERRUPTS);
    log::info!(
        "connected to pcierc at {}: protocol features {:?}",
        socket.display(),
        frontend.protocol_features()
    );
    let pcie = PcieLink::new(frontend)?;

    if config.acpi {
        wiring::enable_ecam(&pcie)?;
    }
    wiring::check_segment_windows(&pcie, config.mem_mib << 20)?;

    let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::Config(format!("this host's KVM lacks {name}")));
        }
    }
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::KVM_TSS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    let platform = power_on::Platform::capture(&vm)?;

    let mem_size = config.mem_mib << 20;
    let ranges: Vec<_> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(a, s)| (a, s as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
        .map_err(|e| Error::Memory(format!("allocating {} MiB: {e}", config.mem_mib)))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(e.to_string()))?;
        // Transparent huge pages where the host allows them (its default is often `madvise`):
        // fewer host page faults and, under shadow or nested paging, far fewer page-table entries
        // for the hypervisor to build for the guest.
        // SAFETY: advice on a mapping `mem` owns; it changes no contents and no permissions.
        if unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) } != 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE): {}",
                std::io::Error::last_os_error()
            );
        }
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap of `memory_size` bytes owned by `mem`, which the
        // machine keeps until the process exits (vCPU threads are never joined before exit).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }

    let topology = pcie.topology()?;
    let ecam_map = if config.ecam_map {
        open_ecam_map(&vm, &pcie, &ranges)?
    } else {
        None
    };

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
        what: "eventfd".into(),
        source,
    })?;
    vm.register_irqfd(&serial_irq, irq::SERIAL_GSI)
        .map_err(kvm_err("KVM_IRQFD"))?;
    let machine = Arc::new(Machine::new(MachineParts {
        vm,
        mem,
        pcie,
        name: config.name.clone(),
        topology: topology.clone(),
        ecam_map,
        serial_irq,
        console: Box::new(console::Stdout),
    }));
    machine
        .irq
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .apply(&machine.vm)?;
    if interrupts {
        wiring::register_msix_vectors(&machine)?;
    }
    for e in &config.endpoints {
        machine
            .devices()
            .set_interrupts(&endpoint_id(&e.port), e.interrupts);
    }
    machine.adopt_endpoints();
    for e in &config.endpoints {
        wiring::claim_endpoint(&machine, &config.name, &e.port, &topology)?;
    }
    // Kept open until the VMM exits: the container holds the groups and the DMA mappings.
    let _vfio = if config.vfio.is_empty() {
        None
    } else {
        let (container, assigned) = vfio::open_all(
            &machine.vm,
            &machine.mem,
            &config.vfio,
            std::path::Path::new("/sys"),
        )?;
        let taken: Vec<&str> = config.endpoints.iter().map(|e| e.port.as_str()).collect();
        wiring::claim_assigned(&machine, assigned, &taken, &machine.pcie.topology()?)?;
        Some(container)
    };
    machine.drain_notifications()?;
    let entry = load_images(&machine, config, &kernel, initrd.as_deref())?;

    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    // SIGRTMIN kicks a vCPU thread out of KVM_RUN (EINTR) when the VMM stops the guest.
    vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), kick_handler)
        .map_err(kvm_err("installing the vCPU kick signal handler"))?;
    let mut vcpus = Vec::new();
    for id in 0..config.cpus {
        let vcpu = machine
            .vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        cpu::set_cpuid(&vcpu, id, &cpuid)?;
        let state = power_on::Vcpu::capture(&kvm, &vcpu)?;
        vcpus.push((id, vcpu, state));
    }
    if let (true, Some((_, vcpu0, _))) = (config.coalesce_pio, vcpus.first()) {
        // CONFIG_ADDRESS only while the VMM latches it: otherwise its writes are messages to
        // pcierc, and nothing is saved by deferring them.
        let mut zones = vec![coalesced::CMOS_INDEX_ZONE];
        if machine.pcie.latches_config_address() {
            zones.push(coalesced::CONFIG_ADDRESS_ZONE);
        }
        if let Some(ring) = coalesced::CoalescedPio::open(&machine.vm, vcpu0, &zones)? {
            log::debug!("coalesced port writes: {:x?}", ring.zones());
            let _ = machine.coalesced.set(ring);
        }
    }
    let tsc_khz = vcpus.first().and_then(|(_, v, _)| v.get_tsc_khz().ok());
    let mut session = session::Session::new(machine.clone(), platform, vcpus);
    if machine.coalesced.get().is_some() {
        let (m, tx) = (machine.clone(), session.reporter());
        std::thread::Builder::new()
            .name("coalesced-pio".into())
            .spawn(move || coalesced_watch_loop(&m, &tx))
            .map_err(|source| Error::Io {
                what: "spawning the coalesced I/O watcher".into(),
                source,
            })?;
    }

    if let Some(fd) = machine.pcie.channel_fd() {
        let (m, tx) = (machine.clone(), session.reporter());
        std::thread::Builder::new()
            .name("pcierc-events".into())
            .spawn(move || {
                let errors = m.devices().assigned_error_fds();
                notification_loop(&m, fd, &errors, &tx)
            })
            .map_err(|source| Error::Io {
                what: "spawning the notification thread".into(),
                source,
            })?;
    }
    {
        let m = machine.clone();
        std::thread::Builder::new()
            .name("console-input".into())
            .spawn(move || console::input_loop(&m))
            .map_err(|source| Error::Io {
                what: "spawning the console input thread".into(),
                source,
            })?;
    }

    let deadline = config.timeout.map(|t| (std::time::Instant::now() + t, t));
    let outcome = session.run(entry, deadline, config.reboot, |m| {
        session::reset_platform(m, config.acpi)?;
        load_images(m, config, &kernel, initrd.as_deref())
    });
    if config.stats {
        if let Some(khz) = tsc_khz {
            eprintln!("vmm: guest TSC {khz} kHz");
        }
        if session.reboots > 0 {
            eprintln!("vmm: reboots {}", session.reboots);
        }
        eprint!("{}", machine.report());
    }
    outcome
}

/// The ECAM map (`--ecam-map on`) when pcierc shares its configuration snapshot and KVM has
/// read-only slots; `None` (reads exit) otherwise, said once in the log.
fn open_ecam_map(
    vm: &kvm_ioctls::VmFd,
    pcie: &PcieLink,
    ram: &[(GuestAddress, usize)],
) -> Result<Option<ecam_map::EcamMap>, Error> {
    let reader = match pcie.frontend().snapshot().map(|r| r.try_clone()) {
        Some(Ok(r)) => r,
        Some(Err(source)) => {
            return Err(Error::Io {
                what: "mapping pcierc's configuration snapshot".into(),
                source,
            })
        }
        None => {
            log::info!("--ecam-map: no configuration snapshot from pcierc; ECAM reads exit");
            return Ok(None);
        }
    };
    let mut forbidden: Vec<(u64, u64)> = ram.iter().map(|&(a, s)| (a.0, s as u64)).collect();
    forbidden.push((layout::IOAPIC, (1 << 32) - layout::IOAPIC));
    ecam_map::EcamMap::new(vm, reader, forbidden)
}

/// Write the boot tables, ACPI tables (with `config.acpi`) and the kernel and initrd into
/// guest memory as pcierc's topology is now; the kernel's entry point.
fn load_images(
    machine: &Machine,
    config: &Config,
    kernel: &[u8],
    initrd: Option<&[u8]>,
) -> Result<GuestAddress, Error> {
    let mem = &machine.mem;
    cpu::write_boot_tables(mem)?;
    let topology = machine.pcie.topology()?;
    let rsdp = if config.acpi {
        let expanders = acpi::expanders(&topology);
        for line in acpi::expander_summary(&topology.ecam, &expanders) {
            eprintln!("vmm: ACPI: {line}");
        }
        Some(acpi::write_tables(
            mem,
            config.cpus,
            &topology.ecam,
            &expanders,
        )?)
    } else {
        None
    };
    // As firmware does, so that Linux trusts MCFG: ECAM is reserved in the E820 map.
    let ecam: Vec<(u64, u64)> = topology.ecam.iter().map(|e| (e.base, e.size)).collect();
    boot::load(
        mem,
        &boot::BootImage {
            kernel,
            initrd,
            cmdline: &config.cmdline,
            mem_size: config.mem_mib << 20,
            reserved: &ecam,
            rsdp,
        },
    )
}

/// Apply coalesced port writes that waited in KVM's ring for a whole period, because the guest
/// made no exit since (a reset request through 0xCF9 followed by a halt or a spin); a reset is
/// reported to the session as a vCPU would report it.
fn coalesced_watch_loop(machine: &Machine, tx: &mpsc::Sender<session::Report>) {
    loop {
        std::thread::sleep(coalesced::WATCH_PERIOD);
        match machine.drain_stale_coalesced() {
            Ok(None) => {}
            Ok(Some(stop)) => {
                if tx.send((u8::MAX, Ok(stop), None)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send((u8::MAX, Err(e), None));
                return;
            }
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Wait for notifications pcierc sends while no vCPU is forwarding (interrupts from hot-plug
/// events the control socket caused, layout changes made by other frontends) and apply them.
fn notification_loop(
    machine: &Machine,
    fd: RawFd,
    errors: &[(u32, RawFd)],
    tx: &mpsc::Sender<session::Report>,
) {
    loop {
        let mut pfds: Vec<libc::pollfd> = std::iter::once(fd)
            .chain(errors.iter().map(|&(_, e)| e))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds for the duration of the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 200) };
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
        for (p, &(index, _)) in pfds[1..].iter().zip(errors) {
            if p.revents & libc::POLLIN != 0 {
                machine.report_assigned_error(index);
            }
        }
        if let Err(e) = machine.drain_notifications() {
            let _ = tx.send((u8::MAX, Err(e), None));
            return;
        }
        if machine.pcie.channel_fd().is_none() {
            return;
        }
    }
}
