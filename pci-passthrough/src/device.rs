//! One host PCI function served as an `mdev::Device`: regions forwarded to the device fd
//! (mmap-able BARs offered as the fd itself), interrupts forwarded as eventfds, DMA maps
//! given to the shared IOMMU space, resets under the reset-scope rules.

use std::sync::Arc;

use log::{debug, info, warn};
use mdev::dma::DmaMapping;
use mdev::irq::IrqSpan;
use mdev::region::{
    MmapBacking, RegionFlags, RegionInfo, SparseArea, CONFIG_REGION_INDEX, PCI_NUM_REGIONS,
    ROM_REGION_INDEX,
};
use mdev::{ConnectionId, Device, DeviceError, DeviceFlags, Interrupts, SetContext};

use crate::address::PciAddress;
use crate::dma::IommuSpace;
use crate::host::{AffectedDevice, HostDevice, HostRegion, HostVfio};
use crate::irq::{host_layout, IrqForwarder};
use crate::reset::{plan_device_reset, plan_hot_reset, ResetMethod, ResetState};

/// Offset of the command register in config space.
const PCI_COMMAND: u64 = 0x04;
/// Command register: bus master enable.
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// A host PCI function served over vfio-user.
pub struct PassthroughDevice<V: HostVfio> {
    address: PciAddress,
    host: Arc<V>,
    device: V::Device,
    flr: bool,
    scope: Vec<AffectedDevice>,
    regions: Vec<HostRegion>,
    interrupts: Arc<Interrupts>,
    forwarder: IrqForwarder,
    iommu: Arc<IommuSpace<V>>,
    resets: Arc<ResetState>,
}

impl<V: HostVfio> PassthroughDevice<V> {
    /// Wraps an opened host device. `scope` is its hot reset scope (empty: none), `resets`
    /// the state shared by the scope's devices, `iommu` the process's IOMMU space.
    pub fn new(
        host: Arc<V>,
        device: V::Device,
        scope: Vec<AffectedDevice>,
        iommu: Arc<IommuSpace<V>>,
        resets: Arc<ResetState>,
    ) -> Self {
        let info = device.info();
        let regions = (0..PCI_NUM_REGIONS.min(info.num_regions))
            .map(|i| device.region_info(i).unwrap_or_default())
            .collect();
        let layout = host_layout(&device);
        let forwarder = IrqForwarder::new(layout.len() as u32);
        PassthroughDevice {
            address: device.address(),
            host,
            flr: info.flr,
            scope,
            regions,
            interrupts: Arc::new(Interrupts::with_layout(&layout)),
            forwarder,
            iommu,
            resets,
            device,
        }
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The host device (for direct access, e.g. a benchmark's baseline).
    pub fn host_device(&self) -> &V::Device {
        &self.device
    }

    /// Where region `index` starts in the host device fd, when it exists.
    pub fn region_offset(&self, index: u32) -> Option<u64> {
        self.region(index).ok().map(|r| r.offset)
    }

    fn region(&self, index: u32) -> Result<&HostRegion, DeviceError> {
        self.regions
            .get(index as usize)
            .filter(|r| r.size > 0)
            .ok_or(DeviceError::InvalidArgument("no such region"))
    }

    fn run_reset(&self, method: &ResetMethod) -> Result<(), DeviceError> {
        match method {
            ResetMethod::Function => self.device.reset()?,
            ResetMethod::Hot { groups } => {
                self.host.hot_reset(&self.device, groups)?;
                self.resets.all_reset();
            }
        }
        info!("{}: reset ({method:?})", self.address);
        Ok(())
    }

    /// Clears Bus Master so a closed device stops DMA (as the kernel's disable does).
    fn stop_bus_master(&self) {
        let Ok(config) = self.region(CONFIG_REGION_INDEX) else {
            return;
        };
        let at = config.offset + PCI_COMMAND;
        let mut cmd = [0u8; 2];
        let result = self.device.read(at, &mut cmd).and_then(|()| {
            let value = u16::from_le_bytes(cmd) & !PCI_COMMAND_MASTER;
            self.device.write(at, &value.to_le_bytes())
        });
        if let Err(e) = result {
            warn!("{}: clearing bus master: {e}", self.address);
        }
    }
}

impl<V: HostVfio> Device for PassthroughDevice<V> {
    fn flags(&self) -> DeviceFlags {
        if self.flr || !self.scope.is_empty() {
            DeviceFlags::PCI | DeviceFlags::RESET
        } else {
            DeviceFlags::PCI
        }
    }

    fn region_info(&self, index: u32) -> RegionInfo {
        let Ok(r) = self.region(index) else {
            return RegionInfo::absent();
        };
        let mut flags = r.flags & (RegionFlags::READ | RegionFlags::WRITE);
        if index == ROM_REGION_INDEX {
            flags.remove(RegionFlags::WRITE);
        }
        let mmap_allowed = index < ROM_REGION_INDEX && r.flags.contains(RegionFlags::MMAP);
        let areas = match (&r.sparse, mmap_allowed) {
            (_, false) => Vec::new(),
            (Some(areas), true) => areas.clone(),
            (None, true) => vec![SparseArea {
                offset: 0,
                size: r.size,
            }],
        };
        let mmap = (!areas.is_empty()).then(|| {
            flags |= RegionFlags::MMAP;
            MmapBacking {
                file: self.device.file(),
                file_offset: r.offset,
                areas,
            }
        });
        RegionInfo {
            size: r.size,
            flags,
            mmap,
        }
    }

    fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let at = self.region(region)?.offset + offset;
        self.device.read(at, data)?;
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if region == ROM_REGION_INDEX {
            return Err(DeviceError::InvalidAccess {
                region,
                offset,
                len: data.len(),
            });
        }
        let at = self.region(region)?.offset + offset;
        self.device.write(at, data)?;
        Ok(())
    }

    fn open_device(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        debug!("{}: opened", self.address);
        Ok(())
    }

    fn close_device(&mut self, ctx: &SetContext) {
        self.forwarder.disable_all(&self.device);
        self.stop_bus_master();
        self.resets.set_needs_reset(self.address, true);
        if self.flr {
            match self.device.reset() {
                Ok(()) => self.resets.set_needs_reset(self.address, false),
                Err(e) => warn!("{}: reset on close: {e}", self.address),
            }
        }
        if !self.resets.any_needs_reset() {
            return;
        }
        match plan_hot_reset(&self.scope, ctx, None) {
            Ok(method) => {
                if let Err(e) = self.run_reset(&method) {
                    warn!("{}: reset of the idle set failed: {e}", self.address);
                }
            }
            Err(why) => debug!("{}: set not reset on close: {why}", self.address),
        }
    }

    fn reset(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        let method = plan_device_reset(self.flr, &self.scope, ctx, ctx.requester)?;
        self.run_reset(&method)
    }

    fn dma_map(&mut self, owner: ConnectionId, map: &DmaMapping) -> Result<(), DeviceError> {
        self.iommu.map(owner, map)
    }

    fn dma_unmap(&mut self, owner: ConnectionId, map: &DmaMapping) {
        self.iommu.unmap(owner, map);
    }

    fn irqs_changed(&mut self, _owner: ConnectionId, span: &IrqSpan) -> Result<(), DeviceError> {
        self.forwarder
            .forward(&self.device, &self.interrupts, span)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("passthrough {}", self.address)
    }
}
