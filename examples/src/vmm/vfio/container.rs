//! One VFIO container per VM, as cloud-hypervisor's `vfio` device manager keeps it: the groups
//! of every passed-through function join it, its type 1 v2 IOMMU maps all of guest RAM at the
//! guest-physical addresses (so a device's DMA to a bus address reaches the guest page the guest
//! driver meant), and KVM's VFIO device is told about each group (KVM then knows DMA may be
//! non-coherent and keeps the guest's cache attributes right).

use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{HostFunction, VfioError};

/// The VM's container, with guest RAM mapped for DMA.
pub struct Container {
    container: Arc<VfioContainer>,
}

impl Container {
    /// Create KVM's VFIO device and the container (`first` names the function it is made
    /// for, in errors). Guest RAM is mapped when the first device is opened: the IOMMU type
    /// can only be set once a group has joined.
    pub fn new(vm: &VmFd, first: &HostFunction) -> Result<Self, VfioError> {
        let sbdf = first.sbdf;
        let mut device = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .create_device(&mut device)
            .map_err(|source| VfioError::Kvm {
                sbdf,
                what: "creating KVM's VFIO device",
                source,
            })?;
        let container = VfioContainer::new(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))
            .map_err(|source| VfioError::Vfio {
                sbdf,
                what: "opening /dev/vfio/vfio (type 1 v2 IOMMU)",
                source,
            })?;
        Ok(Container {
            container: Arc::new(container),
        })
    }

    /// Open `f`'s VFIO device (its group joins the container) and, for the first device, map
    /// guest RAM for DMA.
    pub fn open(
        &self,
        f: &HostFunction,
        mem: &GuestMemoryMmap,
        first: bool,
    ) -> Result<VfioDevice, VfioError> {
        let ops: Arc<dyn VfioOps> = self.container.clone();
        let device = VfioDevice::new(&f.sysfs, ops, false).map_err(|source| VfioError::Vfio {
            sbdf: f.sbdf,
            what: "opening its VFIO device (group, container, IOMMU)",
            source,
        })?;
        if first {
            for region in mem.iter() {
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .map_err(|e| VfioError::Memory {
                        sbdf: f.sbdf,
                        detail: e.to_string(),
                    })?;
                // SAFETY: `host` is the start of a live mapping of `region.len()` bytes that the
                // machine owns until the process exits; guest memory is only ever accessed
                // through vm-memory's volatile accessors, which the device's DMA may race with.
                unsafe {
                    self.container
                        .vfio_dma_map(region.start_addr().0, region.len() as usize, host)
                }
                .map_err(|source| VfioError::Vfio {
                    sbdf: f.sbdf,
                    what: "mapping guest RAM for DMA (VFIO_IOMMU_MAP_DMA)",
                    source,
                })?;
            }
        }
        Ok(device)
    }
}
