//! The DMA mappings of one client connection: guest memory ranges the client shared with
//! `DMA_MAP` (mapped into this process when they come with an fd) and ranges announced
//! without an fd (recorded only; QEMU sends such maps for memory that is not shared).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bitflags::bitflags;
use log::debug;

use crate::error::DeviceError;
use crate::region::SharedMemory;

bitflags! {
    /// `DMA_MAP` protection flags.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DmaProt: u32 {
        /// The device may read the range.
        const READ = 1 << 0;
        /// The device may write the range.
        const WRITE = 1 << 1;
    }
}

/// One mapping a client announced.
#[derive(Clone, Debug)]
pub struct DmaMapping {
    /// I/O virtual address (guest physical address for QEMU).
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Allowed directions.
    pub prot: DmaProt,
    /// Offset of the range in `file`.
    pub file_offset: u64,
    /// The memory, when the client sent an fd; `None` for a recorded-only map.
    pub file: Option<Arc<File>>,
    /// This process's mapping of the range, made on demand by [`DmaMappings::map_memory`].
    pub memory: Option<Arc<SharedMemory>>,
}

impl DmaMapping {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.iova.saturating_add(self.size)
    }
}

/// The mappings of one connection, keyed by IOVA, never overlapping.
#[derive(Debug, Default)]
pub struct DmaMappings {
    maps: BTreeMap<u64, DmaMapping>,
    limit: usize,
}

impl DmaMappings {
    /// An empty table that refuses more than `limit` mappings.
    pub fn new(limit: usize) -> Self {
        DmaMappings {
            maps: BTreeMap::new(),
            limit,
        }
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True when there is no mapping.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Iterates the mappings in IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = &DmaMapping> {
        self.maps.values()
    }

    /// Adds a mapping. Fails with EINVAL for an empty or wrapping range and EEXIST for one that
    /// overlaps an existing mapping, ENOSPC past the limit.
    pub fn insert(&mut self, map: DmaMapping) -> Result<&DmaMapping, DeviceError> {
        if map.size == 0 || map.iova.checked_add(map.size).is_none() {
            return Err(DeviceError::InvalidArgument("empty or wrapping DMA range"));
        }
        if map.file.is_some() && map.file_offset.checked_add(map.size).is_none() {
            return Err(DeviceError::InvalidArgument("DMA file range wraps"));
        }
        if self.maps.len() >= self.limit {
            return Err(DeviceError::NoSpace(format!(
                "more than {} DMA mappings",
                self.limit
            )));
        }
        let overlaps_prev = self
            .maps
            .range(..=map.iova)
            .next_back()
            .is_some_and(|(_, m)| m.end() > map.iova);
        let overlaps_next = self
            .maps
            .range(map.iova..)
            .next()
            .is_some_and(|(start, _)| *start < map.end());
        if overlaps_prev || overlaps_next {
            return Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                libc::EEXIST,
            )));
        }
        debug!(
            "dma map iova {:#x} size {:#x} {}",
            map.iova,
            map.size,
            if map.file.is_some() {
                "with fd"
            } else {
                "without fd"
            }
        );
        let iova = map.iova;
        Ok(self.maps.entry(iova).or_insert(map))
    }

    /// Removes every mapping lying wholly inside `iova..iova+size`, returning them. A range
    /// that cuts a mapping in two is refused (EINVAL), as VFIO does.
    pub fn remove(&mut self, iova: u64, size: u64) -> Result<Vec<DmaMapping>, DeviceError> {
        let end = iova
            .checked_add(size)
            .ok_or(DeviceError::InvalidArgument("unmap range wraps"))?;
        let cuts = self
            .maps
            .values()
            .any(|m| m.iova < end && m.end() > iova && (m.iova < iova || m.end() > end));
        if cuts {
            return Err(DeviceError::InvalidArgument("unmap range splits a mapping"));
        }
        let keys: Vec<u64> = self.maps.range(iova..end).map(|(k, _)| *k).collect();
        Ok(keys
            .into_iter()
            .filter_map(|k| self.maps.remove(&k))
            .collect())
    }

    /// Removes every mapping.
    pub fn clear(&mut self) -> Vec<DmaMapping> {
        std::mem::take(&mut self.maps).into_values().collect()
    }

    /// Maps the memory behind the mapping that holds `iova` into this process (once) and returns
    /// it with the offset of `iova` inside it, for zero-copy access by a device.
    ///
    /// Only a file sealed against shrinking is mapped (QEMU's `memory-backend-memfd` seals its
    /// memfds by default), so the client can never turn an access through the mapping into a
    /// SIGBUS here: an unsealed or unsealable file is refused with EPERM, one shorter than the
    /// mapping with EINVAL ([`SharedMemory::from_sealed_file`]). [`DmaMappings::read`] and
    /// [`DmaMappings::write`] need no seal: they go through the fd.
    pub fn map_memory(&mut self, iova: u64) -> Result<(Arc<SharedMemory>, u64), DeviceError> {
        let (_, m) = self
            .maps
            .range_mut(..=iova)
            .next_back()
            .filter(|(_, m)| m.end() > iova)
            .ok_or(DeviceError::InvalidArgument("address not mapped"))?;
        if m.memory.is_none() {
            let file = m.file.as_ref().ok_or(DeviceError::NotSupported(
                "DMA to a range shared without an fd",
            ))?;
            let dup = file.try_clone()?;
            let len = usize::try_from(m.file_offset.saturating_add(m.size))
                .map_err(|_| DeviceError::InvalidArgument("DMA range too large"))?;
            m.memory = Some(Arc::new(SharedMemory::from_sealed_file(dup, len)?));
        }
        let mem = m
            .memory
            .clone()
            .ok_or(DeviceError::InvalidArgument("unmapped"))?;
        Ok((mem, m.file_offset + (iova - m.iova)))
    }

    /// Reads guest memory at `iova` (within one mapping). Goes through the client's fd rather
    /// than a mapping, so a client that shrinks its memory file afterwards gets EFAULT, not a
    /// SIGBUS in this process.
    pub fn read(&mut self, iova: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.check_span(iova, data.len(), DmaProt::READ)?;
        let (file, off) = self.file_at(iova)?;
        file.read_exact_at(data, off).map_err(dma_io_error)
    }

    /// Writes guest memory at `iova` (within one mapping), through the client's fd as
    /// [`DmaMappings::read`] does.
    pub fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check_span(iova, data.len(), DmaProt::WRITE)?;
        let (file, off) = self.file_at(iova)?;
        file.write_all_at(data, off).map_err(dma_io_error)
    }

    /// The file behind the mapping that holds `iova`, and the offset of `iova` in it.
    fn file_at(&self, iova: u64) -> Result<(Arc<File>, u64), DeviceError> {
        let (_, m) = self
            .maps
            .range(..=iova)
            .next_back()
            .filter(|(_, m)| m.end() > iova)
            .ok_or(DeviceError::InvalidArgument("address not mapped"))?;
        let file = m.file.clone().ok_or(DeviceError::NotSupported(
            "DMA to a range shared without an fd",
        ))?;
        Ok((file, m.file_offset + (iova - m.iova)))
    }

    fn check_span(&self, iova: u64, len: usize, prot: DmaProt) -> Result<(), DeviceError> {
        let end = iova
            .checked_add(len as u64)
            .ok_or(DeviceError::InvalidArgument("DMA access wraps"))?;
        let m = self
            .maps
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.end() >= end)
            .ok_or(DeviceError::InvalidArgument("DMA access outside a mapping"))?;
        if !m.prot.contains(prot) {
            return Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                libc::EPERM,
            )));
        }
        Ok(())
    }
}

/// A failed DMA through the client's file: past its end (the client shrank it) is EFAULT.
fn dma_io_error(e: std::io::Error) -> DeviceError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::WriteZero {
        log::warn!("DMA past the end of the client's memory file");
        DeviceError::Io(std::io::Error::from_raw_os_error(libc::EFAULT))
    } else {
        DeviceError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(iova: u64, size: u64, file: Option<Arc<File>>) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            prot: DmaProt::READ | DmaProt::WRITE,
            file_offset: 0,
            file,
            memory: None,
        }
    }

    #[test]
    fn overlapping_maps_are_refused_and_fdless_maps_recorded() {
        let mut t = DmaMappings::new(16);
        t.insert(map(0x1000, 0x1000, None)).unwrap();
        assert!(t.insert(map(0x1800, 0x1000, None)).is_err());
        assert!(t.insert(map(0x0800, 0x1000, None)).is_err());
        t.insert(map(0x2000, 0x1000, None)).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.insert(map(0, 0, None)).is_err());
        assert!(t.insert(map(u64::MAX - 1, 4, None)).is_err());
    }

    #[test]
    fn unmap_takes_whole_maps_only() {
        let mut t = DmaMappings::new(16);
        t.insert(map(0x1000, 0x2000, None)).unwrap();
        assert!(t.remove(0x1000, 0x1000).is_err());
        assert_eq!(t.remove(0, 0x10000).unwrap().len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn limit_is_enforced() {
        let mut t = DmaMappings::new(1);
        t.insert(map(0x1000, 0x1000, None)).unwrap();
        assert_eq!(
            t.insert(map(0x4000, 0x1000, None)).unwrap_err().errno(),
            libc::ENOSPC
        );
    }

    #[test]
    fn read_write_through_an_fd_backed_map() {
        let mem = SharedMemory::new("guest", 0x4000).unwrap();
        let file = Arc::new(mem.file().try_clone().unwrap());
        let mut t = DmaMappings::new(4);
        t.insert(DmaMapping {
            file_offset: 0x1000,
            ..map(0x10000, 0x2000, Some(file))
        })
        .unwrap();
        t.write(0x10010, b"dma!").unwrap();
        let mut back = [0u8; 4];
        mem.read(0x1010, &mut back).unwrap();
        assert_eq!(&back, b"dma!");
        assert!(t.read(0x11ffe, &mut back).is_err(), "crosses the end");
        assert!(t.read(0x9000, &mut back).is_err(), "unmapped");
    }

    /// A client's memory as a memfd without seals (QEMU with `seal=off`, or a hostile client).
    fn unsealed_memfd(size: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(
            c"unsealed",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .unwrap();
        let file = File::from(fd);
        file.set_len(size).unwrap();
        file
    }

    #[test]
    fn a_client_shrinking_its_memory_gets_efault_not_a_crash() {
        let file = unsealed_memfd(0x2000);
        let mut t = DmaMappings::new(4);
        t.insert(map(
            0x10000,
            0x2000,
            Some(Arc::new(file.try_clone().unwrap())),
        ))
        .unwrap();
        t.write(0x11000, b"ok").unwrap();
        file.set_len(0x1000).unwrap();
        let mut b = [0u8; 2];
        let e = t.read(0x11000, &mut b).unwrap_err();
        assert_eq!(e.errno(), libc::EFAULT);
        // A write there is harmless too (pwrite extends the client's file).
        t.write(0x11000, b"no").unwrap();
        t.read(0x10000, &mut b).unwrap();
    }

    #[test]
    fn memory_sealed_against_shrinking_is_mapped_for_zero_copy_access() {
        let mem = SharedMemory::new("guest", 0x4000).unwrap();
        let mut t = DmaMappings::new(4);
        t.insert(DmaMapping {
            file_offset: 0x1000,
            ..map(0x10000, 0x2000, Some(mem.file().clone()))
        })
        .unwrap();
        let (mapped, offset) = t.map_memory(0x10800).unwrap();
        assert_eq!(offset, 0x1800);
        mapped.write(offset, b"zero-copy").unwrap();
        let mut back = [0u8; 9];
        mem.read(0x1800, &mut back).unwrap();
        assert_eq!(&back, b"zero-copy");
    }

    #[test]
    fn memory_a_client_could_shrink_is_never_mapped() {
        let mut t = DmaMappings::new(4);
        t.insert(map(0x10000, 0x2000, Some(Arc::new(unsealed_memfd(0x2000)))))
            .unwrap();
        let e = t.map_memory(0x10000).unwrap_err();
        assert_eq!(e.errno(), libc::EPERM);
        // The fd path still serves it.
        t.write(0x10000, b"ok").unwrap();
    }
}
