//! The platform behind the vCPUs' exits: pcierc's ranges (forwarded), the VMM's own endpoints
//! behind pcierc's root ports (configuration accesses pcierc answers `EREMOTE`, their BARs),
//! COM1 (vm-superio), the CMOS real-time clock, the ACPI PM1a registers at 0x600 (power-off), the
//! i8042 reset line, and all-ones for everything else.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use kvm_ioctls::VmFd;
use pcierc_protocol::{AccessKind, Notification, ResetReason, Status, Topology};
use vm_memory::GuestMemoryMmap;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::cmos::{self, Cmos, CMOS_DATA, CMOS_INDEX};
use super::coalesced::CoalescedPio;
use super::devices::OwnDevices;
use super::ecam_map::EcamMap;
use super::irq::{self, IrqRouting};
use super::pcie::{Access, Claims, Forwarded, PcieLink};
use super::Error;

/// COM1's ports.
pub const COM1: u16 = 0x3f8;
/// ACPI PM1a event block (status, enable), as QEMU's q35 places it (PMBASE 0x600).
pub const PM1A_EVT: u16 = 0x600;
/// ACPI PM1a control register: writing SLP_EN with SLP_TYP 0 (S5) powers off.
pub const PM1A_CNT: u16 = 0x604;
/// PM1 control: sleep enable (ACPI 6.5 §4.8.3.2.1, Table 4.13).
const PM1_SLP_EN: u64 = 1 << 13;
/// PM1 control: SLP_TYP.
const PM1_SLP_TYP: u64 = 7 << 10;
/// PM1 control: SCI_EN (the platform is in ACPI mode; always, there is no SMM here).
const PM1_SCI_EN: u64 = 1;
/// ICH9's Reset Control register (ICH9 datasheet §13.7.5 RST_CNT): a write with RST_CPU (bit 2)
/// set resets the platform (Linux `reboot=pci`, and the FADT's reset register).
pub const RESET_CONTROL: u16 = 0xcf9;
/// The value the FADT tells the OS to write: SYS_RST | RST_CPU (a hard reset), as QEMU's q35.
pub const RESET_CONTROL_RESET: u8 = 0x06;
const RST_CPU: u64 = 1 << 2;
/// i8042 command port: writing 0xfe pulses the CPU reset line.
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

/// How the guest asked to stop.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// ACPI S5 through PM1a control.
    PowerOff,
    /// Reset (i8042, ICH9's Reset Control register, or a KVM system event); the VMM reboots
    /// the guest unless `--no-reboot`.
    Reset,
}

/// COM1's receive FIFO (vm-superio's, a 16550A's).
const CONSOLE_FIFO: usize = 64;
/// 16550 registers (offsets from COM1) and bits the console watchdog reads.
const IER: u8 = 1;
const LCR: u8 = 3;
const IER_RDA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const LCR_DLAB: u8 = 1 << 7;

/// What COM1's driver waits for ([`Machine::console_state`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConsoleState {
    /// Received bytes not read yet, while the receive interrupt is enabled.
    pub unread: Option<usize>,
    /// Bytes transmitted so far, while the transmit interrupt is enabled (the driver has more
    /// to send).
    pub sent: Option<u64>,
}

/// COM1's interrupt: an eventfd registered as a KVM irqfd on GSI 4.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Exit counts and handling time per kind, for `--stats`.
#[derive(Default)]
pub struct ExitStats {
    counters: [(AtomicU64, AtomicU64); ExitKind::COUNT],
    /// `Msi` notifications injected with KVM_SIGNAL_MSI (vectors not on an irqfd).
    msi_signalled: AtomicU64,
    /// `MsiRoute` notifications applied to the GSI routing table.
    msi_routes: AtomicU64,
    /// Port writes KVM coalesced (no exit), applied from its ring.
    coalesced: AtomicU64,
    /// Of those, the ones the watcher thread applied (no exit came within its period).
    coalesced_by_watcher: AtomicU64,
}

/// What an exit was.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Port I/O forwarded to pcierc.
    ForwardedPio,
    /// MMIO forwarded to pcierc.
    ForwardedMmio,
    /// COM1.
    Serial,
    /// Port I/O nobody decodes (all ones) or the VMM's PM/i8042/CMOS registers.
    LocalPio,
    /// MMIO nobody decodes (all ones).
    LocalMmio,
    /// A configuration access pcierc answered `EREMOTE`, served by one of the VMM's endpoints
    /// (the forwarding round trip included).
    EndpointConfig,
    /// MMIO in a BAR of one of the VMM's endpoints.
    EndpointBar,
}

impl ExitKind {
    const COUNT: usize = 7;
    const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::ForwardedPio,
        ExitKind::ForwardedMmio,
        ExitKind::Serial,
        ExitKind::LocalPio,
        ExitKind::LocalMmio,
        ExitKind::EndpointConfig,
        ExitKind::EndpointBar,
    ];
    fn name(self) -> &'static str {
        match self {
            ExitKind::ForwardedPio => "forwarded-pio",
            ExitKind::ForwardedMmio => "forwarded-mmio",
            ExitKind::Serial => "serial",
            ExitKind::LocalPio => "local-pio",
            ExitKind::LocalMmio => "local-mmio",
            ExitKind::EndpointConfig => "endpoint-config",
            ExitKind::EndpointBar => "endpoint-bar",
        }
    }
}

impl ExitStats {
    fn record(&self, kind: ExitKind, start: Instant) {
        let (n, ns) = &self.counters[kind as usize];
        n.fetch_add(1, Ordering::Relaxed);
        ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// One line per kind: count and mean time the VMM spent handling it (guest time excluded).
    pub fn report(&self) -> String {
        let mut s = String::new();
        for k in ExitKind::ALL {
            let (n, ns) = &self.counters[k as usize];
            let (n, ns) = (n.load(Ordering::Relaxed), ns.load(Ordering::Relaxed));
            if n > 0 {
                s += &format!(
                    "vmm: exits {:<15} {n:>8}  mean handling {:>8.2} us\n",
                    k.name(),
                    ns as f64 / n as f64 / 1000.0
                );
            }
        }
        s += &format!(
            "vmm: interrupts: {} MSI routes updated (irqfd path), {} MSIs signalled from notifications\n",
            self.msi_routes.load(Ordering::Relaxed),
            self.msi_signalled.load(Ordering::Relaxed)
        );
        let coalesced = self.coalesced.load(Ordering::Relaxed);
        if coalesced > 0 {
            s += &format!(
                "vmm: coalesced port writes {coalesced} (no exit), {} applied by the watcher\n",
                self.coalesced_by_watcher.load(Ordering::Relaxed)
            );
        }
        s
    }
}

type ComPort = Serial<IrqLine, NoEvents, Box<dyn Write + Send>>;

/// The INTx sources (segment, bus, devfn, pin) asserted on each GSI.
type IntxLines = std::collections::BTreeMap<u32, std::collections::BTreeSet<(u16, u8, u8, u8)>>;

/// Everything the vCPU threads share.
pub struct Machine {
    /// The VM.
    pub vm: VmFd,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The connection to pcierc.
    pub pcie: PcieLink,
    /// GSI routing and irqfds.
    pub irq: Mutex<IrqRouting>,
    serial: Mutex<ComPort>,
    /// The real-time clock (battery-backed: kept across reboots).
    cmos: Mutex<Cmos>,
    /// The endpoints this VMM serves behind pcierc's root ports.
    pub devices: Mutex<OwnDevices>,
    /// Exit statistics.
    pub stats: ExitStats,
    /// pcierc's configuration pages in the guest's ECAM window (`--ecam-map`).
    pub ecam_map: Option<EcamMap>,
    /// KVM's ring of coalesced port writes (CONFIG_ADDRESS, the CMOS index), once vCPU 0
    /// exists to map it through.
    pub coalesced: OnceLock<CoalescedPio>,
    stop: AtomicBool,
    /// The INTx sources asserted on each GSI: (segment, bus, devfn, pin). Functions share GSIs
    /// (the swizzle maps four slots onto each), so a line is the wired OR of its sources
    /// (PCI Local Bus 3.0 §2.2.6), as QEMU's `pci_bus_change_irq_level` counts them.
    intx: Mutex<IntxLines>,
    /// Bytes the guest wrote to COM1's transmitter.
    console_sent: AtomicU64,
}

fn read_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn fill(data: &mut [u8], value: u64) {
    let b = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0xff);
    }
}

/// The parts of a [`Machine`].
pub struct MachineParts {
    /// The VM.
    pub vm: VmFd,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The connection to pcierc.
    pub pcie: PcieLink,
    /// The VMM's frontend name: the `owner` of the functions it serves.
    pub name: String,
    /// pcierc's topology when the machine is assembled.
    pub topology: Topology,
    /// The ECAM map, if the VMM maps the snapshot into the guest.
    pub ecam_map: Option<EcamMap>,
    /// COM1's interrupt (an eventfd registered as an irqfd).
    pub serial_irq: EventFd,
    /// Where COM1's output goes.
    pub console: Box<dyn Write + Send>,
}

impl Machine {
    /// Assemble the machine. It serves no endpoint until [`Machine::adopt_endpoints`] or a
    /// `FunctionAdded` notification.
    pub fn new(p: MachineParts) -> Machine {
        Machine {
            vm: p.vm,
            mem: p.mem,
            pcie: p.pcie,
            irq: Mutex::new(IrqRouting::default()),
            serial: Mutex::new(Serial::new(IrqLine(p.serial_irq), p.console)),
            cmos: Mutex::new(Cmos::default()),
            devices: Mutex::new(OwnDevices::new(&p.name, p.topology)),
            stats: ExitStats::default(),
            ecam_map: p.ecam_map,
            coalesced: OnceLock::new(),
            stop: AtomicBool::new(false),
            intx: Mutex::new(Default::default()),
            console_sent: AtomicU64::new(0),
        }
    }

    /// Give COM1's receiver as many of `input`'s bytes as its FIFO has room for (raising the
    /// receive interrupt when the guest enabled it); the number taken.
    pub fn console_input(&self, input: &[u8]) -> usize {
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let n = serial.fifo_capacity().min(input.len());
        if n == 0 {
            return 0;
        }
        match serial.enqueue_raw_bytes(&input[..n]) {
            Ok(taken) => taken,
            Err(e) => {
                log::warn!("COM1 input: {e:?}");
                0
            }
        }
    }

    /// What COM1's driver is waiting for now: (bytes received and unread, with the receive
    /// interrupt enabled; bytes sent so far, with the transmit interrupt enabled). `None` while
    /// the divisor latch is selected (IER is not reachable then).
    pub fn console_state(&self) -> Option<ConsoleState> {
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        if serial.read(LCR) & LCR_DLAB != 0 {
            return None;
        }
        let ier = serial.read(IER);
        Some(ConsoleState {
            unread: (ier & IER_RDA != 0)
                .then(|| CONSOLE_FIFO - serial.fifo_capacity())
                .filter(|&n| n > 0),
            sent: (ier & IER_THRE != 0).then(|| self.console_sent.load(Ordering::Relaxed)),
        })
    }

    /// Raise COM1's interrupt again for a driver that waits on it: rewrite IER with its value
    /// (vm-superio then presents the receive and transmit conditions again, as a 16550's level
    /// output would) and signal the interrupt. A spurious interrupt is harmless to a 16550
    /// driver: it reads IIR and finds nothing, or what it missed.
    pub fn console_kick(&self) {
        let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        if serial.read(LCR) & LCR_DLAB != 0 {
            return;
        }
        let ier = serial.read(IER);
        if let Err(e) = serial.write(IER, ier) {
            log::warn!("COM1: {e:?}");
        }
        if let Err(e) = serial.interrupt_evt().trigger() {
            log::warn!("COM1 interrupt: {e}");
        }
    }

    pub(super) fn devices(&self) -> std::sync::MutexGuard<'_, OwnDevices> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything `--stats` prints: exits, interrupts, the VMM's endpoints.
    pub fn report(&self) -> String {
        let d = self.devices();
        let ecam = match &self.ecam_map {
            Some(m) => {
                let s = m.stats();
                format!(
                    "vmm: ecam map: {} image pages, {} all-ones pages, {} trapped pages in {} slots; {} layouts installed\n",
                    s.images, s.all_ones, s.trapped, s.slots, s.rebuilds
                )
            }
            None => "vmm: ecam map: off\n".to_string(),
        };
        format!(
            "{}{ecam}vmm: endpoints: {} added, {} removed, {} served; {} configuration accesses, {} BAR accesses, {} MSI-X messages sent, {} lost\n",
            self.stats.report(),
            d.stats.added,
            d.stats.removed,
            d.len(),
            d.stats.config_accesses,
            d.stats.bar_accesses,
            d.stats.messages,
            d.stats.lost
        )
    }

    /// Serve the functions pcierc's topology already gives this VMM (declared in pcierc's
    /// topology, or left by an earlier run under the same name).
    pub fn adopt_endpoints(&self) {
        for id in self.devices().adopt() {
            log::info!("serving endpoint {id} (already in pcierc's topology)");
        }
    }

    /// Ask the vCPUs to stop at their next exit (see [`Machine::stop_requested`]).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// A source on `gsi` asserts or deasserts; the line is the OR of its sources.
    fn intx_source(&self, gsi: u32, source: (u16, u8, u8, u8), level: bool) -> Result<(), Error> {
        let mut intx = self.intx.lock().unwrap_or_else(PoisonError::into_inner);
        let sources = intx.entry(gsi).or_default();
        if level {
            sources.insert(source);
        } else {
            sources.remove(&source);
        }
        let line = !sources.is_empty();
        self.set_line(gsi, line)
    }

    /// INTA of the VMM's endpoint arriving at the root port `port` (segment, bus, devfn) as
    /// `pin` (1 = INTA; another pin through a switch, see `Devices::intx_route`): that line of
    /// the port's slot. Keyed apart from the port's own INTA (pin 0x80 | pin).
    pub(super) fn endpoint_intx(
        &self,
        port: (u16, u8, u8),
        pin: u8,
        level: bool,
    ) -> Result<(), Error> {
        let gsi = irq::intx_gsi(port.2, pin);
        self.intx_source(gsi, (port.0, port.1, port.2, 0x80 | pin), level)
    }

    /// Every INTx source deasserted and every line lowered (a platform reset).
    pub fn lower_intx(&self) -> Result<(), Error> {
        let lines: Vec<u32> = {
            let mut intx = self.intx.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *intx).into_keys().collect()
        };
        for gsi in lines {
            self.set_line(gsi, false)?;
        }
        Ok(())
    }

    fn set_line(&self, gsi: u32, level: bool) -> Result<(), Error> {
        self.vm
            .set_irq_line(gsi, level)
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQ_LINE",
                source,
            })
    }

    /// Let the vCPUs run again after [`Machine::request_stop`] (a reboot).
    pub fn clear_stop(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }

    /// Has the VMM asked the vCPUs to stop?
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The width of an exit of `len` bytes, if the protocol carries such an access of `kind`.
    fn width(len: usize, kind: AccessKind) -> Option<u8> {
        u8::try_from(len)
            .ok()
            .filter(|&w| kind.check_width(w).is_ok())
    }

    /// `in` from `port`.
    pub fn pio_in(&self, port: u16, data: &mut [u8]) -> Result<(), Error> {
        let start = Instant::now();
        if let (Some(width), true) = (
            Self::width(data.len(), AccessKind::Pio),
            self.pcie.claims_pio(port),
        ) {
            match self.pcie.forward(Access::PioRead { port, width })? {
                Forwarded::Done(v) => {
                    fill(data, v);
                    self.stats.record(ExitKind::ForwardedPio, start);
                    return Ok(());
                }
                Forwarded::NotMine(Status::Remote) => {
                    let v = match self.config_data_function(port)? {
                        Some(f) => self.endpoint_config_read(f, width)?,
                        None => None,
                    };
                    fill(data, v.map_or(u64::MAX, u64::from));
                    self.stats.record(ExitKind::EndpointConfig, start);
                    return Ok(());
                }
                Forwarded::NotMine(_) => {}
            }
        }
        let kind = match port {
            COM1..=0x3ff => {
                let v = self
                    .serial
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read((port - COM1) as u8);
                fill(data, u64::from(v));
                ExitKind::Serial
            }
            CMOS_INDEX | CMOS_DATA => {
                let mut cmos = self.cmos.lock().unwrap_or_else(PoisonError::into_inner);
                let now = cmos::host_now();
                for d in data.iter_mut() {
                    *d = cmos.read(port, now);
                }
                ExitKind::LocalPio
            }
            PM1A_EVT..=0x603 | RESET_CONTROL => {
                fill(data, 0);
                ExitKind::LocalPio
            }
            PM1A_CNT..=0x605 => {
                fill(data, PM1_SCI_EN);
                ExitKind::LocalPio
            }
            _ => {
                fill(data, u64::MAX);
                ExitKind::LocalPio
            }
        };
        self.stats.record(kind, start);
        Ok(())
    }

    /// `out` to `port`; `Some` when the guest asked to stop.
    pub fn pio_out(&self, port: u16, data: &[u8]) -> Result<Option<Stop>, Error> {
        self.port_write(port, data, true)
    }

    /// Apply the port writes KVM coalesced (see [`super::coalesced`]), in order, before the
    /// exit at hand is handled; `Some` when one of them asked to stop (a reset through 0xCF9).
    pub fn drain_coalesced(&self) -> Result<Option<Stop>, Error> {
        match self.coalesced.get() {
            Some(ring) => ring.drain(|port, data| self.coalesced_write(port, data)),
            None => Ok(None),
        }
    }

    /// The watcher's turn (every [`super::coalesced::WATCH_PERIOD`]): apply entries no exit has
    /// applied since the last turn.
    pub fn drain_stale_coalesced(&self) -> Result<Option<Stop>, Error> {
        match self.coalesced.get() {
            Some(ring) => ring.drain_if_stale(|port, data| {
                self.stats
                    .coalesced_by_watcher
                    .fetch_add(1, Ordering::Relaxed);
                self.coalesced_write(port, data)
            }),
            None => Ok(None),
        }
    }

    fn coalesced_write(&self, port: u16, data: &[u8]) -> Result<Option<Stop>, Error> {
        self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        self.port_write(port, data, false)
    }

    /// A port write, from an exit (`exit`: counted in the exit statistics) or from KVM's
    /// coalesced ring (handled the same way, counted apart).
    fn port_write(&self, port: u16, data: &[u8], exit: bool) -> Result<Option<Stop>, Error> {
        let start = Instant::now();
        let record = |kind: ExitKind| {
            if exit {
                self.stats.record(kind, start);
            }
        };
        let value = read_value(data);
        if let (Some(width), true) = (
            Self::width(data.len(), AccessKind::Pio),
            self.pcie.claims_pio(port),
        ) {
            let access = Access::PioWrite { port, width, value };
            match self.pcie.forward(access)? {
                Forwarded::Done(_) => {
                    if !self.pcie.is_local_write(port, width) {
                        self.drain_notifications()?;
                    }
                    record(ExitKind::ForwardedPio);
                    return Ok(None);
                }
                Forwarded::NotMine(Status::Remote) => {
                    if let Some(f) = self.config_data_function(port)? {
                        self.endpoint_config_write(f, width, value as u32)?;
                    }
                    record(ExitKind::EndpointConfig);
                    return Ok(None);
                }
                Forwarded::NotMine(_) => {}
            }
        }
        let mut stop = None;
        let kind = match port {
            COM1..=0x3ff => {
                let mut serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
                if port == COM1 {
                    self.console_sent
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                for &b in data {
                    if let Err(e) = serial.write((port - COM1) as u8, b) {
                        log::warn!("COM1: {e:?}");
                    }
                }
                ExitKind::Serial
            }
            CMOS_INDEX | CMOS_DATA => {
                let mut cmos = self.cmos.lock().unwrap_or_else(PoisonError::into_inner);
                let now = cmos::host_now();
                for &b in data {
                    cmos.write(port, b, now);
                }
                ExitKind::LocalPio
            }
            PM1A_CNT if value & PM1_SLP_EN != 0 => {
                match (value & PM1_SLP_TYP) >> 10 {
                    0 => stop = Some(Stop::PowerOff),
                    t => log::warn!("guest asked for sleep type {t}: only S5 (0) is implemented"),
                }
                ExitKind::LocalPio
            }
            RESET_CONTROL if data.len() == 1 && value & RST_CPU != 0 => {
                stop = Some(Stop::Reset);
                ExitKind::LocalPio
            }
            I8042_COMMAND if data.first() == Some(&I8042_RESET) => {
                stop = Some(Stop::Reset);
                ExitKind::LocalPio
            }
            _ => ExitKind::LocalPio,
        };
        record(kind);
        Ok(stop)
    }

    /// An MMIO read outside RAM.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), Error> {
        let start = Instant::now();
        let Some(width) = Self::width(data.len(), AccessKind::Mmio) else {
            fill(data, u64::MAX);
            self.stats.record(ExitKind::LocalMmio, start);
            return Ok(());
        };
        if self.pcie.claims_mmio(addr) {
            match self.pcie.forward(Access::MmioRead { addr, width })? {
                Forwarded::Done(v) => {
                    fill(data, v);
                    self.stats.record(ExitKind::ForwardedMmio, start);
                    return Ok(());
                }
                Forwarded::NotMine(Status::Remote) => {
                    let v = self.ecam_endpoint_read(addr, width)?;
                    fill(data, v);
                    self.stats.record(ExitKind::EndpointConfig, start);
                    return Ok(());
                }
                Forwarded::NotMine(_) => {}
            }
        }
        self.poll_assigned_pba(addr)?;
        if let Some(v) = self.devices().mmio_read(addr, width) {
            fill(data, v);
            self.stats.record(ExitKind::EndpointBar, start);
            return Ok(());
        }
        fill(data, u64::MAX);
        self.stats.record(ExitKind::LocalMmio, start);
        Ok(())
    }

    /// An MMIO write outside RAM.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        let start = Instant::now();
        let Some(width) = Self::width(data.len(), AccessKind::Mmio) else {
            self.stats.record(ExitKind::LocalMmio, start);
            return Ok(());
        };
        let value = read_value(data);
        if self.pcie.claims_mmio(addr) {
            let access = Access::MmioWrite { addr, width, value };
            match self.pcie.forward(access)? {
                Forwarded::Done(_) => {
                    self.drain_notifications()?;
                    self.stats.record(ExitKind::ForwardedMmio, start);
                    return Ok(());
                }
                Forwarded::NotMine(Status::Remote) => {
                    self.ecam_endpoint_write(addr, width, value)?;
                    self.stats.record(ExitKind::EndpointConfig, start);
                    return Ok(());
                }
                Forwarded::NotMine(_) => {}
            }
        }
        let outcome = self.devices().mmio_write(addr, width, value);
        if let Some(o) = outcome {
            self.deliver(o.effects, o.port, o.devfn)?;
            if let Some((index, changes)) = o.assigned {
                self.apply_assigned(index, changes)?;
            }
            self.stats.record(ExitKind::EndpointBar, start);
            return Ok(());
        }
        self.stats.record(ExitKind::LocalMmio, start);
        Ok(())
    }

    /// Apply every notification waiting on pcierc's backend channel, then bring the ECAM map
    /// up to date with pcierc's routing (called after every forwarded write, before the vCPU
    /// resumes, so a guest write that moves ECAM or renumbers buses is followed at once).
    pub fn drain_notifications(&self) -> Result<(), Error> {
        self.pcie.drain(|n| self.apply(n))?;
        match &self.ecam_map {
            Some(m) => m.sync(&self.vm),
            None => Ok(()),
        }
    }

    fn apply(&self, n: Notification) -> Result<(), Error> {
        match n {
            Notification::LayoutChanged { changes, topology } => {
                let claims = Claims::from_topology(&topology);
                if claims.generation >= self.pcie.claims().generation {
                    log::info!(
                        "pcierc layout generation {}: {changes:?}; ECAM {:x?}, BARs {:x?}",
                        claims.generation,
                        claims.ecam,
                        claims.mmio
                    );
                    self.pcie.set_claims(claims);
                    self.devices().set_topology(topology);
                }
            }
            Notification::MsiRoute(r) => {
                let mut irq = self.irq.lock().unwrap_or_else(PoisonError::into_inner);
                log::debug!("MSI route {r:x?}");
                self.stats.msi_routes.fetch_add(1, Ordering::Relaxed);
                if !irq.update(&self.vm, r)? {
                    log::warn!("MsiRoute for a vector not registered here: {r:?}");
                }
            }
            Notification::Msi(m) => {
                self.stats.msi_signalled.fetch_add(1, Ordering::Relaxed);
                irq::signal_msi(&self.vm, &m)?
            }
            Notification::Intx(l) => {
                let gsi = irq::intx_gsi(l.devfn, l.pin);
                self.intx_source(gsi, (l.segment, l.bus, l.devfn, l.pin), l.level != 0)?;
            }
            Notification::LayoutResync { generation, .. } => {
                // PcieLink::drain answers it with GetTopology before it gets here.
                log::warn!("pcierc layout {generation}: stale layout notification ignored");
            }
            Notification::ChipsetMemoryChanged(c) => {
                log::debug!("chipset memory routing {c:?} (no BIOS area to remap here)");
            }
            Notification::FunctionAdded(f) => {
                let mut devices = self.devices();
                match devices.add(&f) {
                    Some(id) => log::info!(
                        "endpoint {id} added behind {:?} at bus {:02x} devfn {:02x}; {} served",
                        devices.at(f.segment, f.bus, f.devfn).and_then(|e| e.port),
                        f.bus,
                        f.devfn,
                        devices.len()
                    ),
                    None => log::warn!("FunctionAdded for a function not served here: {f:?}"),
                }
            }
            // A platform reset is the VMM's own `Reset`: `reset_platform` resets every endpoint.
            Notification::FunctionReset(r) if r.reason() == Some(ResetReason::PlatformReset) => {}
            Notification::FunctionReset(r) => {
                let reset = self.devices().reset_function(&r.function);
                match reset {
                    Some((id, assigned)) => {
                        log::info!("endpoint {id} reset ({:?})", r.reason());
                        if let Some((index, changes)) = assigned {
                            self.apply_assigned(index, changes)?;
                        }
                    }
                    None => log::warn!("FunctionReset for a function not served here: {r:?}"),
                }
            }
            Notification::FunctionRemoved(f) => {
                let mut devices = self.devices();
                match devices.remove(&f) {
                    Some((id, assigned)) => {
                        log::info!(
                            "endpoint {id} removed from {:02x}:{:02x}.{}; {} served",
                            f.bus,
                            f.devfn >> 3,
                            f.devfn & 7,
                            devices.len()
                        );
                        drop(devices);
                        if let Some(index) = assigned {
                            self.irq
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove_device(&self.vm, index)?;
                        }
                    }
                    None => log::warn!("FunctionRemoved for a function not served here: {f:?}"),
                }
            }
        }
        Ok(())
    }
}
