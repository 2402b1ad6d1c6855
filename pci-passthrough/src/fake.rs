//! An in-memory host VFIO for tests: devices whose regions live in a memfd (so BAR mmaps
//! work), an IOMMU that refuses overlapping maps as type1 does, a log of every call that
//! changes host state, and errors injected per operation.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mdev::dma::DmaProt;
use mdev::irq::{IrqIndexInfo, IrqInfoFlags};
use mdev::region::{RegionFlags, BAR0_REGION_INDEX, CONFIG_REGION_INDEX, ROM_REGION_INDEX};

use crate::address::PciAddress;
use crate::host::{
    released, AffectedDevice, HostDevice, HostDeviceInfo, HostError, HostIrqSet, HostRegion,
    HostVfio,
};

/// Distance between two regions in a fake device fd (vfio-pci uses index << 40).
pub const FAKE_REGION_STRIDE: u64 = 1 << 24;
/// Size of the fake BAR0.
pub const FAKE_BAR0_SIZE: u64 = 1 << 20;
/// Size of the fake config space.
pub const FAKE_CONFIG_SIZE: u64 = 256;
/// Size of the fake expansion ROM (when the spec has one).
pub const FAKE_ROM_SIZE: u64 = 64 << 10;
/// Number of regions of a fake device.
const FAKE_NUM_REGIONS: u32 = 9;
/// Number of interrupt indices of a fake device.
const FAKE_NUM_IRQS: u32 = 5;

/// A host call that changes state, as the fake recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A write at a device fd offset.
    Write {
        /// The device.
        device: PciAddress,
        /// Offset in the device fd.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `VFIO_DEVICE_SET_IRQS`.
    SetIrqs(PciAddress, HostIrqSet),
    /// `VFIO_DEVICE_RESET`.
    Reset(PciAddress),
    /// `VFIO_DEVICE_PCI_HOT_RESET` through a device with these groups.
    HotReset(PciAddress, Vec<u32>),
    /// `VFIO_IOMMU_MAP_DMA`.
    MapDma {
        /// IOVA.
        iova: u64,
        /// Length.
        size: u64,
        /// Our virtual address.
        vaddr: u64,
        /// Directions.
        prot: DmaProt,
    },
    /// `VFIO_IOMMU_UNMAP_DMA`.
    UnmapDma {
        /// IOVA.
        iova: u64,
        /// Length.
        size: u64,
    },
}

/// An operation an error can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Region reads.
    Read,
    /// Region writes.
    Write,
    /// `SET_IRQS`.
    SetIrqs,
    /// `DEVICE_RESET`.
    Reset,
    /// Hot reset.
    HotReset,
    /// IOMMU map.
    MapDma,
    /// IOMMU unmap.
    UnmapDma,
    /// Opening a device fd again ([`HostDevice::acquire`]).
    Acquire,
}

/// How a fake device looks.
#[derive(Clone, Debug)]
pub struct FakeSpec {
    /// Its address.
    pub address: PciAddress,
    /// Its IOMMU group.
    pub group: u32,
    /// Whether it has a function-level reset.
    pub flr: bool,
    /// Whether BAR0 may be mmap'd.
    pub bar0_mmap: bool,
    /// What a hot reset would reset; `None`: no hot reset possible (ENODEV).
    pub affected: Option<Vec<AffectedDevice>>,
    /// MSI vectors.
    pub msi_vectors: u32,
    /// Whether it has an expansion ROM (reported read-only, as vfio-pci does).
    pub rom: bool,
}

impl FakeSpec {
    /// An edu-like device: BAR0, config space, INTx and one MSI vector, no FLR, no ROM,
    /// alone in its reset scope and group 1.
    pub fn new(address: PciAddress) -> Self {
        FakeSpec {
            address,
            group: 1,
            flr: false,
            bar0_mmap: false,
            affected: Some(vec![AffectedDevice { address, group: 1 }]),
            msi_vectors: 1,
            rom: false,
        }
    }
}

impl FakeSpec {
    /// A device like [`FakeSpec::new`] whose hot reset also resets `scope` (every device of
    /// it in IOMMU group `group`, as behind one PCI bridge).
    pub fn sharing(address: PciAddress, scope: &[PciAddress], group: u32) -> Self {
        FakeSpec {
            group,
            affected: Some(
                scope
                    .iter()
                    .map(|&address| AffectedDevice { address, group })
                    .collect(),
            ),
            ..FakeSpec::new(address)
        }
    }
}

/// The hot resets recorded in `calls`.
pub fn hot_resets(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| matches!(c, Call::HotReset(..)))
        .collect()
}

/// How many device writes reached the host in `calls`.
pub fn host_writes(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Write { .. }))
        .count()
}

#[derive(Default)]
struct Kernel {
    specs: HashMap<PciAddress, FakeSpec>,
    calls: Vec<Call>,
    failures: HashMap<Op, i32>,
    iommu: BTreeMap<u64, u64>,
    /// The device fd last opened for each device (alive while someone holds it).
    files: HashMap<PciAddress, Weak<File>>,
    /// Each device's memory, which outlives its device fds (as the hardware does).
    memory: HashMap<PciAddress, Arc<File>>,
    /// How many times each device fd was opened.
    fd_opens: HashMap<PciAddress, usize>,
}

/// The fake host VFIO. Clones share one fake kernel.
#[derive(Clone, Default)]
pub struct FakeVfio {
    kernel: Arc<Mutex<Kernel>>,
}

impl FakeVfio {
    /// A kernel with no device.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Kernel> {
        self.kernel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a device the fake can open. Its memory exists from now on, as hardware's does
    /// (so a test's fd count does not change with the first open).
    pub fn add(&self, spec: FakeSpec) {
        let address = spec.address;
        self.lock().specs.insert(address, spec);
        if let Err(e) = self.memory_of(address) {
            log::warn!("fake VFIO: memory of {address}: {e}");
        }
    }

    /// The memory of `address`, made on first use.
    fn memory_of(&self, address: PciAddress) -> Result<Arc<File>, HostError> {
        let mut k = self.lock();
        if let Some(m) = k.memory.get(&address) {
            return Ok(m.clone());
        }
        // Shared memory as large as every region gives a (sealed) memfd standing for the
        // device; its mapping is sparse and not used.
        let size = u64::from(FAKE_NUM_REGIONS) * FAKE_REGION_STRIDE;
        let mem = mdev::SharedMemory::new(
            &format!("fake-{address}"),
            usize::try_from(size).unwrap_or(usize::MAX),
        )
        .map_err(|e| HostError::io("memfd", e))?;
        let file = mem.file().clone();
        k.memory.insert(address, file.clone());
        Ok(file)
    }

    /// Every recorded call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Makes every later `op` fail with `errno` (until [`FakeVfio::succeed`]).
    pub fn fail(&self, op: Op, errno: i32) {
        self.lock().failures.insert(op, errno);
    }

    /// Stops failing `op`.
    pub fn succeed(&self, op: Op) {
        self.lock().failures.remove(&op);
    }

    /// The IOVA ranges mapped in the fake IOMMU (iova → size).
    pub fn iommu(&self) -> BTreeMap<u64, u64> {
        self.lock().iommu.clone()
    }

    /// The fd of the device last opened at `address`, while the server (or a client it was
    /// handed to) still holds it: the device's memory as the host kernel sees it.
    pub fn device_file(&self, address: PciAddress) -> Option<Arc<File>> {
        self.lock().files.get(&address).and_then(Weak::upgrade)
    }

    /// Whether the device fd the server was last given for `address` is still open (with
    /// none open, vfio-pci disables the function and may runtime-suspend it).
    pub fn device_open(&self, address: PciAddress) -> bool {
        self.device_file(address).is_some()
    }

    /// How many times a device fd of `address` was opened so far.
    pub fn device_fd_opens(&self, address: PciAddress) -> usize {
        self.lock().fd_opens.get(&address).copied().unwrap_or(0)
    }

    /// The device's memory, reached behind the server's back whether or not a device fd is
    /// open.
    pub fn device_memory(&self, address: PciAddress) -> Option<Arc<File>> {
        self.lock().memory.get(&address).cloned()
    }

    /// A new device fd of `address` (a duplicate of its memory fd), recorded.
    fn open_fd(&self, address: PciAddress) -> Result<Arc<File>, HostError> {
        let memory = self.memory_of(address)?;
        let mut k = self.lock();
        let file = Arc::new(
            memory
                .try_clone()
                .map_err(|e| HostError::io("device fd", e))?,
        );
        k.files.insert(address, Arc::downgrade(&file));
        *k.fd_opens.entry(address).or_default() += 1;
        Ok(file)
    }

    fn record(&self, op: Op, call: Call) -> io::Result<()> {
        let mut k = self.lock();
        if let Some(errno) = k.failures.get(&op) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        k.calls.push(call);
        Ok(())
    }
}

/// A fake device and its fd while open.
pub struct FakeDevice {
    spec: FakeSpec,
    file: Option<Arc<File>>,
    kernel: FakeVfio,
}

impl FakeDevice {
    fn open_file(&self) -> io::Result<&File> {
        self.file.as_deref().ok_or_else(released)
    }
}

impl FakeDevice {
    fn region(&self, index: u32) -> HostRegion {
        let offset = u64::from(index) * FAKE_REGION_STRIDE;
        let rw = RegionFlags::READ | RegionFlags::WRITE;
        match index {
            BAR0_REGION_INDEX => HostRegion {
                size: FAKE_BAR0_SIZE,
                offset,
                flags: if self.spec.bar0_mmap {
                    rw | RegionFlags::MMAP
                } else {
                    rw
                },
                sparse: None,
            },
            ROM_REGION_INDEX if self.spec.rom => HostRegion {
                size: FAKE_ROM_SIZE,
                offset,
                flags: RegionFlags::READ,
                sparse: None,
            },
            CONFIG_REGION_INDEX => HostRegion {
                size: FAKE_CONFIG_SIZE,
                offset,
                flags: rw,
                sparse: None,
            },
            _ => HostRegion {
                offset,
                ..HostRegion::default()
            },
        }
    }
}

impl HostDevice for FakeDevice {
    fn address(&self) -> PciAddress {
        self.spec.address
    }

    fn info(&self) -> HostDeviceInfo {
        HostDeviceInfo {
            flr: self.spec.flr,
            num_regions: FAKE_NUM_REGIONS,
            num_irqs: FAKE_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> io::Result<HostRegion> {
        if index >= FAKE_NUM_REGIONS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(self.region(index))
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let file = self.open_file()?;
        if let Some(errno) = self.kernel.lock().failures.get(&Op::Read) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        file.read_exact_at(data, offset)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = self.open_file()?;
        self.kernel.record(
            Op::Write,
            Call::Write {
                device: self.spec.address,
                offset,
                data: data.to_vec(),
            },
        )?;
        file.write_all_at(data, offset)
    }

    fn irq_info(&self, index: u32) -> io::Result<IrqIndexInfo> {
        // As vfio-pci: INTx, the MSI vectors, no MSI-X, no ERR (conventional PCI), one REQ.
        let count = match index {
            0 | 4 => 1,
            1 => self.spec.msi_vectors,
            2 | 3 => 0,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let flags = match index {
            0 => IrqInfoFlags::EVENTFD | IrqInfoFlags::MASKABLE | IrqInfoFlags::AUTOMASKED,
            _ => IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
        };
        Ok(IrqIndexInfo { count, flags })
    }

    fn set_irqs(&self, set: &HostIrqSet) -> io::Result<()> {
        self.open_file()?;
        self.kernel
            .record(Op::SetIrqs, Call::SetIrqs(self.spec.address, set.clone()))
    }

    fn reset(&self) -> io::Result<()> {
        self.open_file()?;
        if !self.spec.flr {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        self.kernel
            .record(Op::Reset, Call::Reset(self.spec.address))
    }

    fn hot_reset_info(&self) -> io::Result<Vec<AffectedDevice>> {
        self.open_file()?;
        self.spec
            .affected
            .clone()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
    }

    fn file(&self) -> Option<Arc<File>> {
        self.file.clone()
    }

    fn acquire(&mut self) -> Result<(), HostError> {
        if self.file.is_none() {
            if let Some(errno) = self.kernel.lock().failures.get(&Op::Acquire) {
                return Err(HostError::io(
                    "get device fd",
                    io::Error::from_raw_os_error(*errno),
                ));
            }
            self.file = Some(self.kernel.open_fd(self.spec.address)?);
        }
        Ok(())
    }

    fn release(&mut self) {
        self.file = None;
    }
}

impl HostVfio for FakeVfio {
    type Device = FakeDevice;

    fn open(&self, address: PciAddress) -> Result<FakeDevice, HostError> {
        let spec = self
            .lock()
            .specs
            .get(&address)
            .cloned()
            .ok_or_else(|| HostError::NoGroup {
                address,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            })?;
        let file = self.open_fd(address)?;
        Ok(FakeDevice {
            spec,
            file: Some(file),
            kernel: self.clone(),
        })
    }

    fn hot_reset(&self, device: &FakeDevice, groups: &[u32]) -> io::Result<()> {
        // Through the device's fd, which must be open (hot_reset_info checks).
        let affected = device.hot_reset_info()?;
        if affected.iter().any(|a| !groups.contains(&a.group)) {
            // The kernel wants proof of ownership of every affected group.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.record(
            Op::HotReset,
            Call::HotReset(device.spec.address, groups.to_vec()),
        )
    }

    fn map_dma(&self, iova: u64, size: u64, vaddr: u64, prot: DmaProt) -> io::Result<()> {
        let overlaps = self
            .lock()
            .iommu
            .iter()
            .any(|(i, s)| *i < iova + size && iova < i + s);
        if overlaps {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        self.record(
            Op::MapDma,
            Call::MapDma {
                iova,
                size,
                vaddr,
                prot,
            },
        )?;
        self.lock().iommu.insert(iova, size);
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        self.record(Op::UnmapDma, Call::UnmapDma { iova, size })?;
        self.lock().iommu.remove(&iova);
        Ok(())
    }
}
