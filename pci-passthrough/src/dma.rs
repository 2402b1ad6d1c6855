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
use mdev::dma::{DmaMapping, DmaProt};
use mdev::{ConnectionId, DeviceError};
use memmap2::{MmapOptions, MmapRaw};

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
        // DMA_PAGE_SIZE is a power of two.
        let aligned = |v: u64| v & (DMA_PAGE_SIZE - 1) == 0;
        if !aligned(map.iova) || !aligned(map.size) || !aligned(map.file_offset) {
            return Err(DeviceError::InvalidArgument(
                "DMA map not page aligned for the IOMMU",
            ));
        }
        let backing = Backing::of(file, map)?;
        // A mapping past the end of the file would fault (SIGBUS) on the first touch.
        let file_len = file.metadata()?.len();
        let inside = map
            .file_offset
            .checked_add(map.size)
            .is_some_and(|end| end <= file_len);
        if !inside {
            return Err(DeviceError::InvalidArgument(
                "DMA map reaches past the end of its file",
            ));
        }
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

#[cfg(test)]
mod tests {
    use mdev::SharedMemory;

    use super::*;
    use crate::fake::{Call, FakeVfio, Op};

    const IOVA: u64 = 0x10_0000;
    const SIZE: u64 = 4 * DMA_PAGE_SIZE;

    fn space() -> (FakeVfio, IommuSpace<FakeVfio>) {
        let fake = FakeVfio::new();
        (fake.clone(), IommuSpace::new(Arc::new(fake)))
    }

    fn mapping(memory: Option<&SharedMemory>, iova: u64, size: u64) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            prot: DmaProt::READ | DmaProt::WRITE,
            file_offset: 0,
            file: memory.map(|m| m.file().clone()),
            memory: None,
        }
    }

    #[test]
    fn a_client_map_is_mirrored_to_the_iommu_and_its_unmap_undoes_it() {
        let (fake, space) = space();
        let ram = SharedMemory::new("ram", SIZE as usize).unwrap();
        let c = ConnectionId::next();
        space.map(c, &mapping(Some(&ram), IOVA, SIZE)).unwrap();
        assert_eq!(fake.iommu().into_iter().collect::<Vec<_>>(), [(IOVA, SIZE)]);
        let Some(Call::MapDma { vaddr, prot, .. }) = fake.calls().pop() else {
            panic!("no IOMMU map");
        };
        assert_ne!(vaddr, 0, "mapped into this process first");
        assert_eq!(prot, DmaProt::READ | DmaProt::WRITE);
        space.unmap(c, &mapping(Some(&ram), IOVA, SIZE));
        assert!(fake.iommu().is_empty());
        assert_eq!(space.windows(), 0);
        assert_eq!(
            fake.calls().pop(),
            Some(Call::UnmapDma {
                iova: IOVA,
                size: SIZE
            })
        );
    }

    #[test]
    fn the_same_memory_announced_for_two_devices_shares_one_window() {
        let (fake, space) = space();
        let ram = SharedMemory::new("ram", SIZE as usize).unwrap();
        let (c1, c2) = (ConnectionId::next(), ConnectionId::next());
        let m = mapping(Some(&ram), IOVA, SIZE);
        space.map(c1, &m).unwrap();
        space.map(c2, &m).unwrap();
        assert_eq!(space.windows(), 1);
        space.unmap(c1, &m);
        assert_eq!(fake.iommu().len(), 1, "c2 still uses the window");
        space.unmap(c2, &m);
        assert!(fake.iommu().is_empty());
        let maps = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::MapDma { .. }))
            .count();
        assert_eq!(maps, 1);
    }

    #[test]
    fn other_memory_at_a_mapped_iova_is_refused_with_eexist() {
        let (fake, space) = space();
        let ram = SharedMemory::new("ram", SIZE as usize).unwrap();
        let other = SharedMemory::new("other", SIZE as usize).unwrap();
        space
            .map(ConnectionId::next(), &mapping(Some(&ram), IOVA, SIZE))
            .unwrap();
        let err = space
            .map(ConnectionId::next(), &mapping(Some(&other), IOVA, SIZE))
            .unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
        // Overlapping at another IOVA: the IOMMU itself refuses.
        let err = space
            .map(
                ConnectionId::next(),
                &mapping(Some(&other), IOVA + DMA_PAGE_SIZE, SIZE),
            )
            .unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
        assert_eq!(fake.iommu().len(), 1);
    }

    #[test]
    fn hostile_or_fdless_maps_never_reach_the_iommu() {
        let (fake, space) = space();
        let ram = SharedMemory::new("ram", SIZE as usize).unwrap();
        let c = ConnectionId::next();
        // No fd: recorded by the framework, nothing to give the IOMMU.
        space.map(c, &mapping(None, IOVA, SIZE)).unwrap();
        // Not page aligned.
        let err = space
            .map(c, &mapping(Some(&ram), IOVA + 1, SIZE))
            .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        // Past the end of the file (touching it would fault).
        let err = space
            .map(c, &mapping(Some(&ram), IOVA, 1 << 40))
            .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        // An unmap of something never mapped, or by someone else, is ignored.
        space.unmap(c, &mapping(Some(&ram), IOVA, SIZE));
        assert!(fake.iommu().is_empty());
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }

    #[test]
    fn an_iommu_error_is_returned_with_its_errno_and_leaves_nothing() {
        let (fake, space) = space();
        let ram = SharedMemory::new("ram", SIZE as usize).unwrap();
        fake.fail(Op::MapDma, libc::ENOMEM);
        let err = space
            .map(ConnectionId::next(), &mapping(Some(&ram), IOVA, SIZE))
            .unwrap_err();
        assert_eq!(err.errno(), libc::ENOMEM);
        assert_eq!(space.windows(), 0);
    }
}
