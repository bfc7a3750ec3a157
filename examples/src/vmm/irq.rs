//! Interrupt routing: the in-kernel irqchip's GSI table, with pcierc's MSI-X vectors on KVM irqfds.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so the table is kept here and re-sent on every
//! change: the legacy routes (QEMU's layout for a PC: GSI 0-15 to the 8259 pair except the
//! cascade, GSI 0-23 to the IOAPIC with IRQ 0 on pin 2) plus one MSI route per vector pcierc
//! delivers through an eventfd, updated from `MsiRoute` notifications. pcierc writes the eventfd;
//! KVM injects the message: no VMM thread and no socket message sits on the interrupt path.
//!
//! Device vectors ([`DeviceVector`]) are the same path for a passed-through function's MSI-X
//! vectors: the host kernel's VFIO driver writes the eventfd. The VMM emulates their mask bits,
//! so a device vector's irqfd is attached only while the vector may fire; while it is masked the
//! eventfd keeps counting, and the VMM reads it to learn the vector is pending.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use pcierc_protocol::{MsiMessage, MsiRoute};
use vmm_sys_util::eventfd::EventFd;

use super::Error;

/// Number of IOAPIC pins (GSIs 0-23).
pub const IOAPIC_PINS: u32 = 24;
/// The GSI of COM1 (ISA IRQ 4).
pub const SERIAL_GSI: u32 = 4;

/// A function's MSI-X vector, as pcierc names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VectorId {
    /// PCI segment.
    pub segment: u16,
    /// Bus.
    pub bus: u8,
    /// Device/function.
    pub devfn: u8,
    /// MSI-X table entry.
    pub vector: u16,
}

/// One vector on an irqfd.
struct MsiVector {
    gsi: u32,
    /// Kept open: KVM holds its own reference, pcierc has a duplicate.
    _eventfd: EventFd,
    route: Option<MsiRoute>,
}

/// A passed-through function's MSI-X vector: the function's index among the VMM's
/// passed-through functions, and the vector.
pub type DeviceVector = (u32, u16);

/// A device vector: its GSI and eventfd, attached to KVM while it has a route.
struct DeviceMsi {
    gsi: u32,
    eventfd: EventFd,
    route: Option<(u64, u32)>,
}

/// The GSI routing table and the irqfds behind it.
pub struct IrqRouting {
    vectors: BTreeMap<VectorId, MsiVector>,
    devices: BTreeMap<DeviceVector, DeviceMsi>,
    next_gsi: u32,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = address as u32;
    e.u.msi.address_hi = (address >> 32) as u32;
    e.u.msi.data = data;
    e
}

/// QEMU's legacy routes (`kvm_pc_setup_irq_routing`): ISA IRQs on both 8259s and the IOAPIC,
/// with the PIT's IRQ 0 on IOAPIC pin 2 (the MADT says so with an interrupt source override).
fn legacy_entries() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for irq in 0..16 {
        if irq == 2 {
            continue; // the cascade
        }
        let chip = if irq < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        v.push(irqchip_entry(irq, chip, irq % 8));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => v.push(irqchip_entry(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    v
}

impl Default for IrqRouting {
    fn default() -> Self {
        IrqRouting {
            vectors: BTreeMap::new(),
            devices: BTreeMap::new(),
            next_gsi: IOAPIC_PINS,
        }
    }
}

impl IrqRouting {
    /// The whole table as KVM takes it.
    fn table(&self) -> Result<KvmIrqRouting, Error> {
        let mut entries = legacy_entries();
        entries.extend(self.vectors.values().filter_map(|v| {
            v.route
                .as_ref()
                .map(|r| msi_entry(v.gsi, r.address, r.data))
        }));
        entries.extend(
            self.devices
                .values()
                .filter_map(|v| v.route.map(|(a, d)| msi_entry(v.gsi, a, d))),
        );
        KvmIrqRouting::from_entries(&entries)
            .map_err(|e| Error::Config(format!("GSI routing table: {e:?}")))
    }

    /// Send the table to KVM.
    pub fn apply(&self, vm: &VmFd) -> Result<(), Error> {
        vm.set_gsi_routing(&self.table()?)
            .map_err(|source| Error::Kvm {
                what: "KVM_SET_GSI_ROUTING",
                source,
            })
    }

    /// A new GSI and eventfd for `id`, registered as a KVM irqfd; the caller hands the eventfd to
    /// pcierc with `SetInterruptFd`. The route is added when pcierc reports the message.
    pub fn add_vector(&mut self, vm: &VmFd, id: VectorId) -> Result<&EventFd, Error> {
        let gsi = self.next_gsi;
        let eventfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Io {
            what: "eventfd".into(),
            source: e,
        })?;
        vm.register_irqfd(&eventfd, gsi)
            .map_err(|source| Error::Kvm {
                what: "KVM_IRQFD",
                source,
            })?;
        self.next_gsi += 1;
        let v = self.vectors.entry(id).or_insert(MsiVector {
            gsi,
            _eventfd: eventfd,
            route: None,
        });
        Ok(&v._eventfd)
    }

    /// Apply an `MsiRoute` notification; `Ok(false)` if it names a vector not registered here.
    pub fn update(&mut self, vm: &VmFd, route: MsiRoute) -> Result<bool, Error> {
        let id = VectorId {
            segment: route.segment,
            bus: route.bus,
            devfn: route.devfn,
            vector: route.vector,
        };
        let Some(v) = self.vectors.get_mut(&id) else {
            return Ok(false);
        };
        // A masked vector does not fire (pcierc keeps it pending), so its last route can stay.
        if v.route
            .is_some_and(|r| r.address == route.address && r.data == route.data)
        {
            v.route = Some(route);
            return Ok(true);
        }
        v.route = Some(route);
        self.apply(vm)?;
        Ok(true)
    }

    /// The GSI of a registered vector.
    pub fn gsi(&self, id: &VectorId) -> Option<u32> {
        self.vectors.get(id).map(|v| v.gsi)
    }

    /// The eventfd of device vector `id` (made, with a GSI, on first use; not attached to KVM
    /// until it has a route), for the host driver to signal.
    pub fn device_vector(&mut self, id: DeviceVector) -> Result<&EventFd, Error> {
        if !self.devices.contains_key(&id) {
            let eventfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Io {
                what: "eventfd".into(),
                source: e,
            })?;
            let gsi = self.next_gsi;
            self.next_gsi += 1;
            self.devices.insert(
                id,
                DeviceMsi {
                    gsi,
                    eventfd,
                    route: None,
                },
            );
        }
        self.devices
            .get(&id)
            .map(|v| &v.eventfd)
            .ok_or_else(|| Error::Config("device vector vanished".into()))
    }

    /// Route device vector `id` to `message` (attaching its irqfd), or detach it (`None`: it is
    /// masked; its eventfd keeps counting for [`IrqRouting::take_fired`]).
    pub fn route_device_vector(
        &mut self,
        vm: &VmFd,
        id: DeviceVector,
        message: Option<(u64, u32)>,
    ) -> Result<(), Error> {
        self.device_vector(id)?;
        let Some(v) = self.devices.get_mut(&id) else {
            return Ok(());
        };
        let kvm = |what: &'static str| move |source| Error::Kvm { what, source };
        match (v.route, message) {
            (old, new) if old == new => return Ok(()),
            (None, Some(_)) => {
                v.route = message;
                let (gsi, fd) = (
                    v.gsi,
                    v.eventfd.try_clone().map_err(|e| Error::Io {
                        what: "eventfd".into(),
                        source: e,
                    })?,
                );
                self.apply(vm)?;
                vm.register_irqfd(&fd, gsi).map_err(kvm("KVM_IRQFD"))?;
            }
            (Some(_), None) => {
                vm.unregister_irqfd(&v.eventfd, v.gsi)
                    .map_err(kvm("KVM_IRQFD (deassign)"))?;
                v.route = None;
                self.apply(vm)?;
            }
            (Some(_), Some(_)) => {
                v.route = message;
                self.apply(vm)?;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Did detached device vector `id` fire since the last call? (Reads its eventfd.)
    pub fn take_fired(&self, id: DeviceVector) -> bool {
        self.devices
            .get(&id)
            .is_some_and(|v| v.route.is_none() && v.eventfd.read().is_ok_and(|n| n > 0))
    }

    /// Forget every device vector of function `index` (its irqfds detached).
    pub fn remove_device(&mut self, vm: &VmFd, index: u32) -> Result<(), Error> {
        let ids: Vec<DeviceVector> = self
            .devices
            .keys()
            .filter(|(i, _)| *i == index)
            .copied()
            .collect();
        for id in ids {
            self.route_device_vector(vm, id, None)?;
            self.devices.remove(&id);
        }
        Ok(())
    }
}

/// Inject an `Msi` notification's message directly (`KVM_SIGNAL_MSI`): the path for vectors not
/// on an irqfd.
pub fn signal_msi(vm: &VmFd, m: &MsiMessage) -> Result<(), Error> {
    let msi = kvm_msi {
        address_lo: m.address as u32,
        address_hi: (m.address >> 32) as u32,
        data: m.data,
        ..Default::default()
    };
    vm.signal_msi(msi).map(drop).map_err(|source| Error::Kvm {
        what: "KVM_SIGNAL_MSI",
        source,
    })
}

/// The IOAPIC GSI of a bus-0 function's INTx pin (1-4): the conventional swizzle onto GSIs
/// 16-23, which the DSDT's `_PRT` describes (the ICH9's PIRQ link devices are not modelled).
pub fn intx_gsi(devfn: u8, pin: u8) -> u32 {
    16 + ((u32::from(devfn >> 3) + u32::from(pin.max(1)) - 1) % 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_table_is_qemus() {
        let e = legacy_entries();
        // 15 PIC routes (no cascade) + 23 IOAPIC routes (no pin 2 as GSI 2).
        assert_eq!(e.len(), 15 + 23);
        // SAFETY: every legacy entry is an irqchip entry, written through the `irqchip` member.
        let irqchip = |x: &kvm_irq_routing_entry| unsafe { x.u.irqchip };
        let pin_of_gsi0 = e
            .iter()
            .map(|x| (x.gsi, irqchip(x)))
            .find(|(gsi, c)| *gsi == 0 && c.irqchip == KVM_IRQCHIP_IOAPIC)
            .map(|(_, c)| c.pin);
        assert_eq!(pin_of_gsi0, Some(2));
    }

    #[test]
    fn intx_swizzle() {
        assert_eq!(intx_gsi(0x10, 1), 18);
        assert_eq!(intx_gsi(0x18, 4), 18);
        assert_eq!(intx_gsi(0x08, 1), 17);
    }
}
