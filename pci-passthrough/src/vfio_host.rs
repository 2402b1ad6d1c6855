//! The real host VFIO: a type1 container (`/dev/vfio/vfio`), the groups of the devices it
//! serves (`/dev/vfio/N`) and their device fds, driven with the uapi ioctls.
//!
//! Every ioctl goes through one of the small wrappers at the bottom, each with the argument
//! struct it takes; the structs come from `vfio-bindings`, the variable-length ones
//! (`SET_IRQS`, hot reset, region info capabilities) are laid out in `u32`/`u64` buffers.
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "the VFIO uapi spells struct sizes, counts and fds as 32-bit words: uapi structs \
              are small, counts are bounded by the device, fds are non-negative"
)]

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info};
use mdev::dma::DmaProt;
use mdev::irq::{IrqAction, IrqIndexInfo, IrqInfoFlags};
use mdev::region::{RegionFlags, SparseArea};
use vfio_bindings::bindings::vfio as uapi;

use crate::address::PciAddress;
use crate::host::{
    released, AffectedDevice, HostDevice, HostDeviceInfo, HostError, HostIrqSet, HostRegion,
    HostVfio,
};

/// The container device.
const CONTAINER_PATH: &str = "/dev/vfio/vfio";
/// Directory of group devices.
const GROUP_DIR: &str = "/dev/vfio";
/// Where sysfs lists PCI functions.
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The ioctl number `_IO(VFIO_TYPE, VFIO_BASE + nr)`.
const fn vfio_ioctl(nr: u32) -> libc::c_ulong {
    (((uapi::VFIO_TYPE as u32) << 8) | (uapi::VFIO_BASE + nr)) as libc::c_ulong
}

const VFIO_GET_API_VERSION: libc::c_ulong = vfio_ioctl(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_ioctl(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_ioctl(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_ioctl(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_ioctl(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_ioctl(6);
const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_ioctl(7);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_ioctl(8);
const VFIO_DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_ioctl(9);
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_ioctl(10);
const VFIO_DEVICE_RESET: libc::c_ulong = vfio_ioctl(11);
const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: libc::c_ulong = vfio_ioctl(12);
const VFIO_DEVICE_PCI_HOT_RESET: libc::c_ulong = vfio_ioctl(13);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_ioctl(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_ioctl(14);

/// Size of the fixed part of `vfio_irq_set` in `u32` words.
const IRQ_SET_WORDS: usize = size_of::<uapi::vfio_irq_set>() / size_of::<u32>();
/// Size of the fixed part of `vfio_pci_hot_reset` / `_info` in `u32` words.
const HOT_RESET_WORDS: usize = size_of::<uapi::vfio_pci_hot_reset>() / size_of::<u32>();
/// Size of one `vfio_pci_dependent_device` in `u32` words.
const DEPENDENT_WORDS: usize = size_of::<uapi::vfio_pci_dependent_device>() / size_of::<u32>();
/// The calls a served VFIO device makes after start-up (groups, container and device fds are
/// opened before): region accesses on the device fd, and the device and container ioctls
/// by request number. Opening groups, attaching them and choosing the IOMMU are not in it.
pub fn runtime_syscalls() -> mdev::confine::SyscallSet {
    mdev::confine::SyscallSet::new()
        .allow(&[libc::SYS_pread64, libc::SYS_pwrite64])
        .allow_ioctls(&[
            // The device fd follows open/close: it is opened again on a first open.
            VFIO_GROUP_GET_DEVICE_FD,
            VFIO_DEVICE_GET_INFO,
            VFIO_DEVICE_GET_REGION_INFO,
            VFIO_DEVICE_GET_IRQ_INFO,
            VFIO_DEVICE_SET_IRQS,
            VFIO_DEVICE_RESET,
            VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
            VFIO_DEVICE_PCI_HOT_RESET,
            VFIO_IOMMU_MAP_DMA,
            VFIO_IOMMU_UNMAP_DMA,
        ])
}

/// Word index of `argsz`, the first field of every VFIO ioctl argument struct.
const ARGSZ_WORD: usize = 0;
/// Word indices of the fields of `vfio_irq_set`.
const IRQ_SET_FLAGS_WORD: usize = std::mem::offset_of!(uapi::vfio_irq_set, flags) / 4;
const IRQ_SET_INDEX_WORD: usize = std::mem::offset_of!(uapi::vfio_irq_set, index) / 4;
const IRQ_SET_START_WORD: usize = std::mem::offset_of!(uapi::vfio_irq_set, start) / 4;
const IRQ_SET_COUNT_WORD: usize = std::mem::offset_of!(uapi::vfio_irq_set, count) / 4;
/// Word index of `count` in `vfio_pci_hot_reset` and `vfio_pci_hot_reset_info` (same layout).
const HOT_RESET_COUNT_WORD: usize = std::mem::offset_of!(uapi::vfio_pci_hot_reset, count) / 4;
const _: () = assert!(
    std::mem::offset_of!(uapi::vfio_pci_hot_reset, count)
        == std::mem::offset_of!(uapi::vfio_pci_hot_reset_info, count)
);
/// Word index of the group id in `vfio_pci_dependent_device`.
const DEPENDENT_GROUP_WORD: usize = 0;
/// Word index of segment (u16), bus and devfn in `vfio_pci_dependent_device`.
const DEPENDENT_LOCATION_WORD: usize =
    std::mem::offset_of!(uapi::vfio_pci_dependent_device, segment) / 4;
/// Size of `vfio_region_sparse_mmap_area`.
const SPARSE_AREA_SIZE: usize = size_of::<uapi::vfio_region_sparse_mmap_area>();
/// Offset of the area array in the sparse mmap capability.
const SPARSE_AREAS_OFFSET: usize = size_of::<uapi::vfio_region_info_cap_sparse_mmap>();
/// Offset of `cap_offset` in `vfio_region_info`.
const REGION_INFO_CAP_OFFSET: usize = std::mem::offset_of!(uapi::vfio_region_info, cap_offset);
/// Offset of `id` in `vfio_info_cap_header`.
const CAP_HEADER_ID: usize = std::mem::offset_of!(uapi::vfio_info_cap_header, id);
/// Offset of `next` in `vfio_info_cap_header`.
const CAP_HEADER_NEXT: usize = std::mem::offset_of!(uapi::vfio_info_cap_header, next);
/// Offset of `nr_areas` in the sparse mmap capability.
const SPARSE_NR_AREAS: usize =
    std::mem::offset_of!(uapi::vfio_region_info_cap_sparse_mmap, nr_areas);
/// Most capability headers followed in one chain (a loop guard).
const MAX_CAPS: usize = 64;

fn open_rw(path: &Path) -> Result<File, HostError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| HostError::io(format!("open {}", path.display()), e))
}

/// The IOMMU group of a PCI function, from its sysfs `iommu_group` link.
pub fn iommu_group(address: PciAddress) -> Result<u32, HostError> {
    let link = Path::new(SYSFS_PCI_DEVICES)
        .join(address.to_string())
        .join("iommu_group");
    let no_group = |source| HostError::NoGroup { address, source };
    let target = std::fs::read_link(&link).map_err(no_group)?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| no_group(io::Error::from_raw_os_error(libc::EINVAL)))
}

struct ContainerState {
    groups: HashMap<u32, Arc<File>>,
    iommu_set: bool,
}

/// A VFIO type1 container and its groups.
pub struct VfioContainer {
    container: File,
    iommu_type: u32,
    state: Mutex<ContainerState>,
}

impl VfioContainer {
    /// Opens `/dev/vfio/vfio` and checks the API version and the type1 IOMMU.
    pub fn new() -> Result<Self, HostError> {
        let container = open_rw(Path::new(CONTAINER_PATH))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument and touches no memory.
        let version = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) };
        if version != uapi::VFIO_API_VERSION as i32 {
            return Err(HostError::Unsupported("VFIO API version"));
        }
        let iommu_type = [uapi::VFIO_TYPE1v2_IOMMU, uapi::VFIO_TYPE1_IOMMU]
            .into_iter()
            .find(|t| {
                // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument, no memory.
                unsafe {
                    libc::ioctl(
                        container.as_raw_fd(),
                        VFIO_CHECK_EXTENSION,
                        *t as libc::c_ulong,
                    ) > 0
                }
            })
            .ok_or(HostError::Unsupported("no type1 IOMMU"))?;
        info!("VFIO container open (IOMMU type {iommu_type})");
        Ok(VfioContainer {
            container,
            iommu_type,
            state: Mutex::new(ContainerState {
                groups: HashMap::new(),
                iommu_set: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ContainerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens group `id` and attaches it to the container (setting the IOMMU on the first).
    fn group(&self, id: u32) -> Result<Arc<File>, HostError> {
        let mut st = self.lock();
        if let Some(g) = st.groups.get(&id) {
            return Ok(g.clone());
        }
        let group = open_rw(&Path::new(GROUP_DIR).join(id.to_string()))?;
        let mut status = uapi::vfio_group_status {
            argsz: size_of::<uapi::vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes a vfio_group_status into `status`, which lives across the call.
        let r = unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut status) };
        check(r).map_err(|e| HostError::io(format!("group {id} status"), e))?;
        if status.flags & uapi::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(HostError::GroupNotViable(id));
        }
        let container_fd: RawFd = self.container.as_raw_fd();
        // SAFETY: the kernel reads one int (the container fd) from the pointer.
        let r = unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &container_fd) };
        check(r).map_err(|e| HostError::io(format!("group {id} set container"), e))?;
        if !st.iommu_set {
            // SAFETY: VFIO_SET_IOMMU takes an integer argument, no memory.
            let r = unsafe {
                libc::ioctl(
                    self.container.as_raw_fd(),
                    VFIO_SET_IOMMU,
                    self.iommu_type as libc::c_ulong,
                )
            };
            check(r).map_err(|e| HostError::io("set IOMMU type", e))?;
            st.iommu_set = true;
        }
        debug!("IOMMU group {id} attached");
        let group = Arc::new(group);
        st.groups.insert(id, group.clone());
        Ok(group)
    }
}

/// A device of a group attached to the container, and its device fd while it is open.
pub struct VfioDevice {
    address: PciAddress,
    /// The group, kept open for the device's life (the fd is asked for again through it).
    group: Arc<File>,
    name: CString,
    file: Option<Arc<File>>,
    info: HostDeviceInfo,
}

/// `VFIO_GROUP_GET_DEVICE_FD` for `name`.
fn device_fd(group: &File, name: &CString, address: PciAddress) -> Result<Arc<File>, HostError> {
    // SAFETY: the kernel reads the NUL-terminated name, which outlives the call.
    let fd = unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) };
    check(fd).map_err(|e| HostError::io(format!("{address}: get device fd"), e))?;
    // SAFETY: `fd` is a fresh device fd the kernel just returned; we own it.
    Ok(Arc::new(unsafe { File::from_raw_fd(fd) }))
}

impl HostVfio for VfioContainer {
    type Device = VfioDevice;

    fn open(&self, address: PciAddress) -> Result<VfioDevice, HostError> {
        let group = self.group(iommu_group(address)?)?;
        let name = CString::new(address.to_string()).map_err(|_| {
            HostError::io("device name", io::Error::from_raw_os_error(libc::EINVAL))
        })?;
        let file = device_fd(&group, &name, address)?;
        let mut info = uapi::vfio_device_info {
            argsz: size_of::<uapi::vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel writes a vfio_device_info (argsz bytes) into `info`.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), VFIO_DEVICE_GET_INFO, &mut info) };
        check(r).map_err(|e| HostError::io(format!("{address}: device info"), e))?;
        Ok(VfioDevice {
            address,
            group,
            name,
            file: Some(file),
            info: HostDeviceInfo {
                flr: info.flags & uapi::VFIO_DEVICE_FLAGS_RESET != 0,
                num_regions: info.num_regions,
                num_irqs: info.num_irqs,
            },
        })
    }

    fn hot_reset(&self, device: &VfioDevice, groups: &[u32]) -> io::Result<()> {
        let fds: Vec<Arc<File>> = {
            let st = self.lock();
            groups
                .iter()
                .map(|g| {
                    st.groups
                        .get(g)
                        .cloned()
                        .ok_or_else(|| io::Error::from_raw_os_error(libc::EPERM))
                })
                .collect::<io::Result<_>>()?
        };
        let mut buf = vec![0u32; HOT_RESET_WORDS + fds.len()];
        buf[ARGSZ_WORD] = (buf.len() * size_of::<u32>()) as u32;
        buf[HOT_RESET_COUNT_WORD] = fds.len() as u32;
        for (slot, f) in buf[HOT_RESET_WORDS..].iter_mut().zip(&fds) {
            *slot = f.as_raw_fd() as u32;
        }
        let file = device.file.as_ref().ok_or_else(released)?;
        // SAFETY: `buf` holds a vfio_pci_hot_reset with `count` group fds (argsz bytes);
        // the kernel only reads it. The group files stay open across the call.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                VFIO_DEVICE_PCI_HOT_RESET,
                buf.as_mut_ptr(),
            )
        };
        check(r)
    }

    fn map_dma(&self, iova: u64, size: u64, vaddr: u64, prot: DmaProt) -> io::Result<()> {
        let mut flags = 0;
        if prot.contains(DmaProt::READ) {
            flags |= uapi::VFIO_DMA_MAP_FLAG_READ;
        }
        if prot.contains(DmaProt::WRITE) {
            flags |= uapi::VFIO_DMA_MAP_FLAG_WRITE;
        }
        let map = uapi::vfio_iommu_type1_dma_map {
            argsz: size_of::<uapi::vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        // SAFETY: the kernel reads the struct; `vaddr..vaddr+size` is a live mapping of this
        // process owned by the caller until the matching unmap.
        let r = unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &map) };
        check(r)
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut unmap = uapi::vfio_iommu_type1_dma_unmap {
            argsz: size_of::<uapi::vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: the kernel reads the struct and writes back the unmapped size into it.
        let r =
            unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut unmap) };
        check(r)?;
        if unmap.size != size {
            debug!(
                "IOMMU unmap of {iova:#x}: {:#x} of {size:#x} bytes",
                unmap.size
            );
        }
        Ok(())
    }
}

impl VfioDevice {
    /// The device fd, or ENODEV while released.
    fn fd(&self) -> io::Result<RawFd> {
        self.file
            .as_ref()
            .map(|f| f.as_raw_fd())
            .ok_or_else(released)
    }

    fn open_file(&self) -> io::Result<&File> {
        self.file.as_deref().ok_or_else(released)
    }

    fn ioctl_fixed<T>(&self, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        let fd = self.fd()?;
        // SAFETY: every caller passes the request's own argument struct (argsz set to its
        // size); the kernel reads and writes at most that many bytes of `arg`.
        let r = unsafe { libc::ioctl(fd, request, arg as *mut T) };
        check(r)
    }

    /// Reads the capability chain of a region whose info has `CAPS`, for sparse mmap areas.
    fn sparse_areas(&self, index: u32, argsz: u32) -> io::Result<Option<Vec<SparseArea>>> {
        // Never smaller than the fixed struct, whatever argsz the caller passes.
        let argsz = argsz.max(size_of::<uapi::vfio_region_info>() as u32);
        let words = (argsz as usize).div_ceil(size_of::<u64>());
        let mut buf = vec![0u64; words];
        let header = uapi::vfio_region_info {
            argsz,
            index,
            ..Default::default()
        };
        // SAFETY: `buf` holds at least argsz >= size_of::<vfio_region_info>() bytes (clamped
        // above), is u64-aligned (enough for the struct's u64 fields), and the struct is
        // plain integers, so writing it at the start stays inside the allocation.
        unsafe { std::ptr::write(buf.as_mut_ptr().cast(), header) };
        let fd = self.fd()?;
        // SAFETY: the kernel writes at most argsz bytes into `buf`, which has that many.
        let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, buf.as_mut_ptr()) };
        check(r)?;
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
        };
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
        };
        let u16_at = |o: usize| -> Option<u16> {
            Some(u16::from_ne_bytes(bytes.get(o..o + 2)?.try_into().ok()?))
        };
        let mut next = u32_at(REGION_INFO_CAP_OFFSET).unwrap_or(0) as usize;
        for _ in 0..MAX_CAPS {
            if next == 0 {
                break;
            }
            let id = u16_at(next + CAP_HEADER_ID).map(u32::from);
            if id == Some(uapi::VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
                let count = u32_at(next + SPARSE_NR_AREAS).unwrap_or(0) as usize;
                let areas = (0..count)
                    .filter_map(|i| {
                        let at = next + SPARSE_AREAS_OFFSET + i * SPARSE_AREA_SIZE;
                        Some(SparseArea {
                            offset: u64_at(at)?,
                            size: u64_at(at + 8)?,
                        })
                    })
                    .filter(|a| a.size > 0)
                    .collect();
                return Ok(Some(areas));
            }
            next = u32_at(next + CAP_HEADER_NEXT).unwrap_or(0) as usize;
        }
        Ok(None)
    }
}

impl HostDevice for VfioDevice {
    fn address(&self) -> PciAddress {
        self.address
    }

    fn info(&self) -> HostDeviceInfo {
        self.info
    }

    fn region_info(&self, index: u32) -> io::Result<HostRegion> {
        let mut info = uapi::vfio_region_info {
            argsz: size_of::<uapi::vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        self.ioctl_fixed(VFIO_DEVICE_GET_REGION_INFO, &mut info)?;
        let flags = RegionFlags::from_bits_truncate(
            info.flags
                & (uapi::VFIO_REGION_INFO_FLAG_READ
                    | uapi::VFIO_REGION_INFO_FLAG_WRITE
                    | uapi::VFIO_REGION_INFO_FLAG_MMAP),
        );
        let has_caps = info.flags & uapi::VFIO_REGION_INFO_FLAG_CAPS != 0;
        let fixed = size_of::<uapi::vfio_region_info>() as u32;
        let sparse = if has_caps && info.argsz > fixed && flags.contains(RegionFlags::MMAP) {
            self.sparse_areas(index, info.argsz)?
        } else {
            None
        };
        Ok(HostRegion {
            size: info.size,
            offset: info.offset,
            flags,
            sparse,
        })
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.open_file()?.read_exact_at(data, offset)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.open_file()?.write_all_at(data, offset)
    }

    fn irq_info(&self, index: u32) -> io::Result<IrqIndexInfo> {
        let mut info = uapi::vfio_irq_info {
            argsz: size_of::<uapi::vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        self.ioctl_fixed(VFIO_DEVICE_GET_IRQ_INFO, &mut info)?;
        Ok(IrqIndexInfo {
            count: info.count,
            flags: IrqInfoFlags::from_bits_truncate(info.flags),
        })
    }

    fn set_irqs(&self, set: &HostIrqSet) -> io::Result<()> {
        let action = match set.action {
            IrqAction::Mask => uapi::VFIO_IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => uapi::VFIO_IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
        };
        let (data, fds) = match &set.eventfds {
            Some(fds) => (uapi::VFIO_IRQ_SET_DATA_EVENTFD, fds.as_slice()),
            None => (uapi::VFIO_IRQ_SET_DATA_NONE, &[][..]),
        };
        let mut buf = vec![0u32; IRQ_SET_WORDS + fds.len()];
        buf[ARGSZ_WORD] = (buf.len() * size_of::<u32>()) as u32;
        buf[IRQ_SET_FLAGS_WORD] = data | action;
        buf[IRQ_SET_INDEX_WORD] = set.index;
        buf[IRQ_SET_START_WORD] = set.start;
        buf[IRQ_SET_COUNT_WORD] = set.count;
        for (slot, fd) in buf[IRQ_SET_WORDS..].iter_mut().zip(fds) {
            *slot = *fd as u32;
        }
        let fd = self.fd()?;
        // SAFETY: `buf` holds a vfio_irq_set followed by `count` eventfds (argsz bytes); the
        // kernel only reads it. The eventfds are kept open by `Interrupts` across the call.
        let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_SET_IRQS, buf.as_mut_ptr()) };
        check(r)
    }

    fn reset(&self) -> io::Result<()> {
        let fd = self.fd()?;
        // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no memory.
        let r = unsafe { libc::ioctl(fd, VFIO_DEVICE_RESET) };
        check(r)
    }

    fn hot_reset_info(&self) -> io::Result<Vec<AffectedDevice>> {
        let mut count = 0usize;
        loop {
            let mut buf = vec![0u32; HOT_RESET_WORDS + count * DEPENDENT_WORDS];
            buf[ARGSZ_WORD] = (buf.len() * size_of::<u32>()) as u32;
            let fd = self.fd()?;
            // SAFETY: the kernel writes at most argsz bytes into `buf` (a header and `count`
            // dependent devices), which has exactly that many.
            let r =
                unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, buf.as_mut_ptr()) };
            let reported = buf[HOT_RESET_COUNT_WORD] as usize;
            match check(r) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && reported > count => {
                    count = reported;
                    continue;
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            return Ok(buf[HOT_RESET_WORDS..]
                .chunks_exact(DEPENDENT_WORDS)
                .take(reported)
                .map(|d| {
                    let [segment_lo, segment_hi, bus, devfn] =
                        d[DEPENDENT_LOCATION_WORD].to_ne_bytes();
                    AffectedDevice {
                        address: PciAddress::from_devfn(
                            u16::from_ne_bytes([segment_lo, segment_hi]),
                            bus,
                            devfn,
                        ),
                        group: d[DEPENDENT_GROUP_WORD],
                    }
                })
                .collect());
        }
    }

    fn file(&self) -> Option<Arc<File>> {
        self.file.clone()
    }

    fn acquire(&mut self) -> Result<(), HostError> {
        if self.file.is_none() {
            self.file = Some(device_fd(&self.group, &self.name, self.address)?);
            debug!("{}: device fd open", self.address);
        }
        Ok(())
    }

    fn release(&mut self) {
        if self.file.take().is_some() {
            debug!("{}: device fd closed", self.address);
        }
    }
}

/// Turns an ioctl's return into a result with its errno.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
