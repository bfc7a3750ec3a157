//! How the vCPUs reach the VMM's own endpoints ([`super::devices`]): configuration accesses
//! pcierc answered `EREMOTE` (through ECAM, or CF8/CFC with CONFIG_ADDRESS as pcierc latched
//! it) and the interrupt messages the endpoints send, delivered as a root port forwards them.
//! BAR accesses are decoded in [`Machine::mmio_read`] and [`Machine::mmio_write`].

use std::sync::PoisonError;

use pcierc_config_space::Message;
use pcierc_protocol::MsiMessage;
use vmm_sys_util::eventfd::EventFd;

use super::devices::PortAddress;
use super::endpoint::Effects;
use super::irq;
use super::machine::Machine;
use super::pcie::{ConfigAddress, CONFIG_DATA_PORT};
use super::vfio::{function::Changes, VfioError};
use super::Error;

/// The local APIC's MSI address range (Intel SDM Vol. 3A §11.11.1).
const MSI_ADDRESS: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

impl Machine {
    /// The function and register a CONFIG_DATA access selects (CONFIG_ADDRESS as pcierc
    /// latched it), after pcierc answered `EREMOTE` for it.
    pub(super) fn config_data_function(&self, port: u16) -> Result<Option<ConfigAddress>, Error> {
        let latch = self.pcie.config_address()?;
        let segment = self.devices().segment();
        Ok(port
            .checked_sub(CONFIG_DATA_PORT)
            .and_then(|byte| ConfigAddress::from_config_address(segment, latch, byte)))
    }

    /// The ECAM accesses of a read pcierc answered `EREMOTE`: one configuration read, or two
    /// dword reads for an 8-byte access (as QEMU splits them); all ones where this VMM serves
    /// no function.
    pub(super) fn ecam_endpoint_read(&self, addr: u64, width: u8) -> Result<u64, Error> {
        let claims = self.pcie.claims();
        let read = |addr: u64, width: u8| -> Result<Option<u32>, Error> {
            match claims.ecam_function(addr) {
                Some(f) => self.endpoint_config_read(f, width),
                None => Ok(None),
            }
        };
        let dword = |v: Option<u32>| v.map_or(u64::from(u32::MAX), u64::from);
        Ok(match width {
            8 => dword(read(addr, 4)?) | dword(read(addr + 4, 4)?) << 32,
            w => read(addr, w)?.map_or(u64::MAX, u64::from),
        })
    }

    /// The ECAM accesses of a write pcierc answered `EREMOTE`.
    pub(super) fn ecam_endpoint_write(
        &self,
        addr: u64,
        width: u8,
        value: u64,
    ) -> Result<(), Error> {
        let claims = self.pcie.claims();
        let parts: &[(u64, u8, u32)] = if width == 8 {
            &[(addr, 4, value as u32), (addr + 4, 4, (value >> 32) as u32)]
        } else {
            &[(addr, width, value as u32)]
        };
        for &(a, w, v) in parts {
            if let Some(f) = claims.ecam_function(a) {
                self.endpoint_config_write(f, w, v)?;
            }
        }
        Ok(())
    }

    /// Read a register of one of this VMM's endpoints. Not found at first, the notifications
    /// that may have brought it are applied and the lookup is retried (a hot-added function is
    /// announced on the backend channel before the guest hears of it).
    pub(super) fn endpoint_config_read(
        &self,
        f: ConfigAddress,
        width: u8,
    ) -> Result<Option<u32>, Error> {
        for attempt in 0..2 {
            let v = self
                .devices()
                .config_read(f.segment, f.bus, f.devfn, f.offset, width);
            if v.is_some() || attempt == 1 {
                return Ok(v);
            }
            self.drain_notifications()?;
        }
        Ok(None)
    }

    /// Write a register of one of this VMM's endpoints (dropped where it serves none) and apply
    /// the effects.
    pub(super) fn endpoint_config_write(
        &self,
        f: ConfigAddress,
        width: u8,
        value: u32,
    ) -> Result<(), Error> {
        for attempt in 0..2 {
            let r = self
                .devices()
                .config_write(f.segment, f.bus, f.devfn, f.offset, width, value);
            if let Some(o) = r {
                self.deliver(o.effects, o.port, o.devfn)?;
                if let Some((index, changes)) = o.assigned {
                    self.apply_assigned(index, changes)?;
                }
                return Ok(());
            }
            if attempt == 0 {
                self.drain_notifications()?;
            }
        }
        Ok(())
    }

    /// Send the interrupt messages an endpoint's access produced, as the memory writes they are:
    /// upstream through its root port (which forwards them only with Bus Master Enable) to the
    /// local APICs (`KVM_SIGNAL_MSI`). Writes elsewhere would be DMA, which this VMM's test
    /// device does not do: they are counted as lost.
    pub(super) fn deliver(
        &self,
        fx: Effects,
        port: Option<PortAddress>,
        devfn: u8,
    ) -> Result<(), Error> {
        let mut lost = u64::from(fx.blocked);
        if !fx.messages.is_empty() {
            let forwarded = match port {
                Some((segment, bus, devfn)) => self.pcie.bus_master(segment, bus, devfn)?,
                None => true,
            };
            for m in &fx.messages {
                if !forwarded || !MSI_ADDRESS.contains(&m.address) {
                    lost += 1;
                    continue;
                }
                let msg = MsiMessage {
                    address: m.address,
                    data: m.data,
                    ..Default::default()
                };
                irq::signal_msi(&self.vm, &msg)?;
                self.devices().stats.messages += 1;
            }
        }
        if lost > 0 {
            log::debug!("{lost} interrupt message(s) of an endpoint lost");
            self.devices().stats.lost += lost;
        }
        if let (Some(level), Some(port)) = (fx.intx, port) {
            // INTA of the endpoint reaches the slot of the bridge above it swizzled by its
            // device number (PCI-to-PCI Bridge 1.2 §9.1: pin (device + pin) mod 4; device 0
            // below a PCIe port); each bridge above swizzles it again, up to the root port on
            // the root bus.
            if let Some((segment, devfn, pin)) = self.devices().intx_route(port, devfn) {
                self.endpoint_intx((segment, 0, devfn), pin, level)?;
            }
        }
        Ok(())
    }

    /// Apply what a guest access to passed-through function `index` changed: MSI-X enabled or
    /// disabled in the host driver (one eventfd per vector, `VFIO_DEVICE_SET_IRQS`), each
    /// vector's irqfd attached with the guest's message or detached while masked (a vector that
    /// fired while detached is delivered as it is attached: it was pending), and pending messages
    /// the unmasking released.
    pub(super) fn apply_assigned(&self, index: u32, changes: Changes) -> Result<(), Error> {
        if let Some(on) = changes.msix_enabled {
            let vectors = self
                .devices()
                .assigned_mut(index)
                .and_then(|a| a.view.msix_place())
                .map_or(0, |p| p.vectors);
            let fds = if on {
                let mut irq = self.irq.lock().unwrap_or_else(PoisonError::into_inner);
                (0..vectors)
                    .map(|v| {
                        irq.device_vector((index, v))?
                            .try_clone()
                            .map_err(|source| Error::Io {
                                what: "eventfd".into(),
                                source,
                            })
                    })
                    .collect::<Result<Vec<EventFd>, Error>>()?
            } else {
                Vec::new()
            };
            let mut devices = self.devices();
            if let Some(a) = devices.assigned_mut(index) {
                let sbdf = a.host.sbdf;
                let r = if on {
                    a.view.io().enable_msix(fds.iter().collect())
                } else {
                    a.view.io().disable_msix()
                };
                r.map_err(|source| VfioError::Vfio {
                    sbdf,
                    what: if on {
                        "enabling MSI-X (VFIO_DEVICE_SET_IRQS)"
                    } else {
                        "disabling MSI-X (VFIO_DEVICE_SET_IRQS)"
                    },
                    source,
                })?;
                log::info!(
                    "{sbdf}: MSI-X {} ({vectors} vectors)",
                    if on { "enabled" } else { "disabled" }
                );
            }
        }
        for (v, route) in changes.routes {
            let mut irq = self.irq.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(m) = route {
                if irq.take_fired((index, v)) {
                    self.send_message(m)?;
                }
            }
            irq.route_device_vector(&self.vm, (index, v), route.map(|m| (m.address, m.data)))?;
        }
        for (_, m) in changes.send {
            self.send_message(m)?;
        }
        Ok(())
    }

    /// A read of a passed-through function's PBA: first learn which detached (masked) vectors
    /// fired since, so their pending bits are right.
    pub(super) fn poll_assigned_pba(&self, addr: u64) -> Result<(), Error> {
        let Some((index, vectors)) = self.devices().assigned_pba_at(addr) else {
            return Ok(());
        };
        let fired: Vec<u16> = {
            let irq = self.irq.lock().unwrap_or_else(PoisonError::into_inner);
            (0..vectors)
                .filter(|&v| irq.take_fired((index, v)))
                .collect()
        };
        let mut send = Vec::new();
        if let Some(a) = self.devices().assigned_mut(index) {
            send.extend(fired.into_iter().filter_map(|v| a.view.vector_fired(v)));
        }
        for m in send {
            self.send_message(m)?;
        }
        Ok(())
    }

    /// Passed-through function `index`'s error eventfd fired: send pcierc what its AER registers
    /// say (`ReportError`), so the guest's root port logs and signals it. A refusal is logged:
    /// the device stays the guest's.
    pub(super) fn report_assigned_error(&self, index: u32) {
        let Some(report) = self.devices().assigned_error(index) else {
            log::warn!("an error of passed-through function {index}, not in the guest now");
            return;
        };
        match self.pcie.frontend().report_error(&report) {
            Ok(()) => log::warn!(
                "passed-through function at {:02x}:{:02x}.{}: error reported to the guest \
                 (severity {}, status {:#010x})",
                report.bus,
                report.devfn >> 3,
                report.devfn & 7,
                report.severity,
                report.status
            ),
            Err(e) => log::warn!("ReportError for passed-through function {index}: {e}"),
        }
    }

    fn send_message(&self, m: Message) -> Result<(), Error> {
        let msg = MsiMessage {
            address: m.address,
            data: m.data,
            ..Default::default()
        };
        irq::signal_msi(&self.vm, &msg)?;
        self.devices().stats.messages += 1;
        Ok(())
    }
}
