//! What this crate needs from the host kernel's VFIO, as two traits: [`HostVfio`] (the
//! container: opening devices, the IOMMU, hot resets that need group fds) and [`HostDevice`]
//! (one device fd). [`crate::vfio_host`] implements them with ioctls, [`crate::fake`] in
//! memory for tests.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use mdev::dma::DmaProt;
use mdev::irq::{IrqAction, IrqIndexInfo};
use mdev::region::{RegionFlags, SparseArea};

use crate::address::PciAddress;

/// `vfio_device_info` as far as passthrough cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostDeviceInfo {
    /// The device has a function-level reset (`VFIO_DEVICE_FLAGS_RESET`).
    pub flr: bool,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of interrupt indices.
    pub num_irqs: u32,
}

/// One region of the host device (`vfio_region_info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRegion {
    /// Size in bytes; 0 when the region does not exist.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
    /// READ / WRITE / MMAP as the host reports them.
    pub flags: RegionFlags,
    /// The mmap-able parts when the host lists them (sparse mmap capability); `None` means
    /// the whole region when `flags` has MMAP.
    pub sparse: Option<Vec<SparseArea>>,
}

/// A `VFIO_DEVICE_SET_IRQS` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIrqSet {
    /// Interrupt index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors (0 with `Trigger` and no eventfds disables the index).
    pub count: u32,
    /// Mask, unmask or trigger.
    pub action: IrqAction,
    /// One eventfd per vector (-1: none for that vector); `None` for DATA_NONE.
    pub eventfds: Option<Vec<RawFd>>,
}

/// A device a hot reset of this device's scope also resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AffectedDevice {
    /// Its address.
    pub address: PciAddress,
    /// Its IOMMU group.
    pub group: u32,
}

/// Why a host device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The device has no IOMMU group (not bound to vfio-pci, or no IOMMU).
    #[error("{address}: no IOMMU group ({source}); is it bound to vfio-pci?")]
    NoGroup {
        /// The device.
        address: PciAddress,
        /// The error reading its `iommu_group` link.
        #[source]
        source: io::Error,
    },
    /// The group is not viable: some device in it is bound to a host driver.
    #[error("IOMMU group {0} is not viable: bind every device in it to vfio-pci")]
    GroupNotViable(u32),
    /// The VFIO API or the type1 IOMMU is missing.
    #[error("unsupported VFIO: {0}")]
    Unsupported(&'static str),
    /// An ioctl or open failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl HostError {
    /// An [`HostError::Io`] with context.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        HostError::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<HostError> for mdev::DeviceError {
    /// A host failure as a client sees it: the errno of the failed call (EIO when none).
    fn from(e: HostError) -> Self {
        let errno = match &e {
            HostError::Io { source, .. } | HostError::NoGroup { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            HostError::GroupNotViable(_) => libc::EPERM,
            HostError::Unsupported(_) => libc::ENOTSUP,
        };
        mdev::DeviceError::Io(io::Error::from_raw_os_error(errno))
    }
}

/// One host VFIO device. Its device fd is open from [`HostVfio::open`] until
/// [`HostDevice::release`], and again after [`HostDevice::acquire`]: vfio-pci enables the
/// function on the fd's first open and disables it (and may runtime-suspend it) on its last
/// close, so a device nobody uses is released. While released, its description
/// ([`HostDevice::info`], the regions and interrupt layout read at open) stays known, and
/// every operation on the fd fails with ENODEV.
pub trait HostDevice: Send + 'static {
    /// The device's PCI address.
    fn address(&self) -> PciAddress;
    /// `VFIO_DEVICE_GET_INFO`.
    fn info(&self) -> HostDeviceInfo;
    /// `VFIO_DEVICE_GET_REGION_INFO`.
    fn region_info(&self, index: u32) -> io::Result<HostRegion>;
    /// Reads the device fd at `offset` (a region's offset plus the offset inside it).
    fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()>;
    /// Writes the device fd at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    fn irq_info(&self, index: u32) -> io::Result<IrqIndexInfo>;
    /// `VFIO_DEVICE_SET_IRQS`.
    fn set_irqs(&self, set: &HostIrqSet) -> io::Result<()>;
    /// `VFIO_DEVICE_RESET` (function-level reset).
    fn reset(&self) -> io::Result<()>;
    /// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: every device a hot reset would reset.
    fn hot_reset_info(&self) -> io::Result<Vec<AffectedDevice>>;
    /// The device fd, while it is open. It stays in this process unless the operator trusts
    /// clients with it ([`crate::ClientTrust::TrustedClientMmap`]): then it is handed to
    /// them to mmap the BARs the host allows to be mapped (and a client keeps its copy,
    /// and with it the device open, after [`HostDevice::release`]).
    fn file(&self) -> Option<Arc<File>>;
    /// Opens the device fd again (no-op while open).
    fn acquire(&mut self) -> Result<(), HostError>;
    /// Closes this process's device fd (no-op while released). The group and the container
    /// stay open.
    fn release(&mut self);
    /// Whether the device fd is open.
    fn is_open(&self) -> bool {
        self.file().is_some()
    }
}

/// The error of an operation on a released device fd.
pub fn released() -> io::Error {
    io::Error::from_raw_os_error(libc::ENODEV)
}

/// The host's VFIO container: devices, their groups and one IOMMU address space.
pub trait HostVfio: Send + Sync + 'static {
    /// The device type.
    type Device: HostDevice;
    /// Opens the device at `address` (its group joins the container).
    fn open(&self, address: PciAddress) -> Result<Self::Device, HostError>;
    /// `VFIO_DEVICE_PCI_HOT_RESET` through `device`, proving ownership with the fds of
    /// `groups` (every group of the reset scope).
    fn hot_reset(&self, device: &Self::Device, groups: &[u32]) -> io::Result<()>;
    /// `VFIO_IOMMU_MAP_DMA`: `size` bytes at `vaddr` of this process at `iova`.
    fn map_dma(&self, iova: u64, size: u64, vaddr: u64, prot: DmaProt) -> io::Result<()>;
    /// `VFIO_IOMMU_UNMAP_DMA` of exactly `iova..iova+size`.
    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()>;
}
