//! The host IOMMU address space shared by every device this process serves (one VFIO
//! container): each client `DMA_MAP` that comes with an fd is mapped into this process and
//! then into the IOMMU at the client's IOVA; its unmap undoes exactly that.
//!
//! Devices of one IOMMU group necessarily share one address space, so two connections (one
//! per device, from the same client) may announce the same range of the same memory: the
//! window is then shared and counted, and unmapped from the IOMMU when its last user goes.
//! The same IOVA backed by different memory is refused (EEXIST), as the kernel would.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, warn};
use memmap2::{MmapOptions, MmapRaw};
use mdev::dma::{DmaMapping, DmaProt};
use mdev::{ConnectionId, DeviceError};

use crate::host::HostVfio;

/// Granule of IOMMU maps and of mmap offsets.
pub const DMA_PAGE_SIZE: u64 = 4096;

/// Which memory a window shows: the same file (device and inode), offset and directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backing {
    dev: u64,
    ino: u64,
    file_offset: u64,
    prot: DmaProt,
}

impl Backing {
    fn of(file: &File, map: &DmaMapping) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Backing {
            dev: meta.dev(),
            ino: meta.ino(),
            file_offset: map.file_offset,
            prot: map.prot,
        })
    }
}

/// One range mapped in the IOMMU, with this process's mapping of its memory.
struct Window {
    size: u64,
    backing: Backing,
    users: Vec<ConnectionId>,
    /// Unmapped (munmap) when the window drops, after the IOMMU unmap.
    _memory: MmapRaw,
}

/// The shared IOMMU address space.
pub struct IommuSpace<V: HostVfio> {
    host: Arc<V>,
    windows: Mutex<BTreeMap<u64, Window>>,
}

impl<V: HostVfio> IommuSpace<V> {
    /// An empty space on `host`'s IOMMU.
    pub fn new(host: Arc<V>) -> Self {
        IommuSpace {
            host,
            windows: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Window>> {
        // Every update is one insert or remove: a poisoned lock still holds a valid table.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of IOMMU windows.
    pub fn windows(&self) -> usize {
        self.lock().len()
    }

    /// Maps a client's `DMA_MAP` for connection `owner`. A map without an fd is accepted
    /// and skipped (it cannot be given to the IOMMU).
    pub fn map(&self, owner: ConnectionId, map: &DmaMapping) -> Result<(), DeviceError> {
        let Some(file) = &map.file else {
            debug!(
                "dma map iova {:#x} size {:#x} without fd: recorded, not in the IOMMU",
                map.iova, map.size
            );
            return Ok(());
        };
        let aligned = |v: u64| v % DMA_PAGE_SIZE == 0;
        if !aligned(map.iova) || !aligned(map.size) || !aligned(map.file_offset) {
            return Err(DeviceError::InvalidArgument(
                "DMA map not page aligned for the IOMMU",
            ));
        }
        let backing = Backing::of(file, map)?;
        let mut windows = self.lock();
        if let Some(w) = windows.get_mut(&map.iova) {
            if w.size == map.size && w.backing == backing {
                w.users.push(owner);
                debug!("dma window {:#x} shared with {owner}", map.iova);
                return Ok(());
            }
            return Err(io::Error::from_raw_os_error(libc::EEXIST).into());
        }
        let len = usize::try_from(map.size)
            .map_err(|_| DeviceError::InvalidArgument("DMA map larger than the address space"))?;
        let mut opts = MmapOptions::new();
        opts.offset(map.file_offset).len(len);
        let memory = if map.prot.contains(DmaProt::WRITE) {
            opts.map_raw(&**file)?
        } else {
            opts.map_raw_read_only(&**file)?
        };
        let vaddr = memory.as_ptr() as u64;
        // On failure `memory` drops here, undoing the mmap.
        self.host.map_dma(map.iova, map.size, vaddr, map.prot)?;
        debug!(
            "dma window iova {:#x} size {:#x} at {vaddr:#x} for {owner}",
            map.iova, map.size
        );
        windows.insert(
            map.iova,
            Window {
                size: map.size,
                backing,
                users: vec![owner],
                _memory: memory,
            },
        );
        Ok(())
    }

    /// Undoes [`IommuSpace::map`] of `map` by `owner`: the IOMMU unmap and the munmap happen
    /// when the window's last user goes. Maps never given to the IOMMU are ignored.
    pub fn unmap(&self, owner: ConnectionId, map: &DmaMapping) {
        let mut windows = self.lock();
        let Some(w) = windows.get_mut(&map.iova) else {
            return;
        };
        let Some(pos) = w.users.iter().position(|u| *u == owner) else {
            return;
        };
        if w.size != map.size {
            return;
        }
        w.users.remove(pos);
        if !w.users.is_empty() {
            return;
        }
        if let Err(e) = self.host.unmap_dma(map.iova, map.size) {
            // The kernel keeps its own reference to pinned pages: dropping our mapping stays
            // safe, the window is just leaked in the IOMMU until the container closes.
            warn!("IOMMU unmap of {:#x}+{:#x} failed: {e}", map.iova, map.size);
        }
        windows.remove(&map.iova);
        debug!("dma window {:#x} unmapped ({owner})", map.iova);
    }
}
