//! Regions of a VFIO PCI device and the shared memory that backs the mmap-able ones.
//!
//! Region indices follow VFIO's PCI layout: BAR0–BAR5 are 0–5, the expansion ROM is 6,
//! config space is 7 and the legacy VGA window is 8.
//!
//! Memory shared with a client is a memfd whose size is sealed: a client holding the fd can
//! write the bytes but can neither shrink the file (which would turn every access through
//! this process's mapping into a SIGBUS) nor grow it, nor change the seals. This process
//! maps only files sealed that way ([`SharedMemory::from_sealed_file`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bitflags::bitflags;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vm_memory::mmap::{MmapRegion, MmapRegionError};
use vm_memory::{FileOffset, VolatileMemory};

/// VFIO PCI region index of BAR `n` is `n`.
pub const BAR0_REGION_INDEX: u32 = 0;
/// VFIO PCI region index of BAR2.
pub const BAR2_REGION_INDEX: u32 = 2;
/// VFIO PCI region index of BAR5.
pub const BAR5_REGION_INDEX: u32 = 5;
/// VFIO PCI region index of the expansion ROM.
pub const ROM_REGION_INDEX: u32 = 6;
/// VFIO PCI region index of config space.
pub const CONFIG_REGION_INDEX: u32 = 7;
/// VFIO PCI region index of the legacy VGA window.
pub const VGA_REGION_INDEX: u32 = 8;
/// Number of regions a VFIO PCI device reports.
pub const PCI_NUM_REGIONS: u32 = 9;

/// A region of a VFIO PCI device, by what it is rather than by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciRegion {
    /// BAR `n` (0..=5).
    Bar(u8),
    /// The expansion ROM.
    Rom,
    /// Configuration space.
    Config,
    /// The legacy VGA window.
    Vga,
}

impl PciRegion {
    /// The region at VFIO index `index`, or `None` past the VGA window (device-specific
    /// regions).
    pub fn from_index(index: u32) -> Option<Self> {
        Some(match index {
            0..=5 => PciRegion::Bar(u8::try_from(index).ok()?),
            ROM_REGION_INDEX => PciRegion::Rom,
            CONFIG_REGION_INDEX => PciRegion::Config,
            VGA_REGION_INDEX => PciRegion::Vga,
            _ => return None,
        })
    }

    /// The VFIO region index.
    pub fn index(self) -> u32 {
        match self {
            PciRegion::Bar(n) => u32::from(n),
            PciRegion::Rom => ROM_REGION_INDEX,
            PciRegion::Config => CONFIG_REGION_INDEX,
            PciRegion::Vga => VGA_REGION_INDEX,
        }
    }
}

bitflags! {
    /// `vfio_region_info.flags`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RegionFlags: u32 {
        /// The region can be read with REGION_READ.
        const READ = 1 << 0;
        /// The region can be written with REGION_WRITE.
        const WRITE = 1 << 1;
        /// The region (or the sparse areas listed for it) can be mmap'd from the fd.
        const MMAP = 1 << 2;
        /// The reply carries a capability chain.
        const CAPS = 1 << 3;
    }
}

/// A part of a region a client may map directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset inside the region.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The file a mmap-able region is backed by: the client maps `file` at `file_offset` plus
/// the area's offset.
#[derive(Clone, Debug)]
pub struct MmapBacking {
    /// The file handed to the client with the region info reply.
    pub file: Arc<File>,
    /// Offset of the region's first byte in `file`.
    pub file_offset: u64,
    /// The mmap-able parts of the region.
    pub areas: Vec<SparseArea>,
}

/// What a client learns of one region.
#[derive(Clone, Debug, Default)]
pub struct RegionInfo {
    /// Size in bytes; 0 for an unimplemented region.
    pub size: u64,
    /// Access flags (`CAPS` is added by the server when it sends a capability chain).
    pub flags: RegionFlags,
    /// Present when part of the region can be mapped by the client.
    pub mmap: Option<MmapBacking>,
}

impl RegionInfo {
    /// A region that does not exist (size 0, no access).
    pub fn absent() -> Self {
        Self::default()
    }

    /// A trapped region: every access is a message.
    pub fn trapped(size: u64) -> Self {
        RegionInfo {
            size,
            flags: RegionFlags::READ | RegionFlags::WRITE,
            mmap: None,
        }
    }

    /// A region wholly backed by `memory`, mmap-able as one area.
    pub fn shared(memory: &SharedMemory) -> Self {
        RegionInfo {
            size: memory.len() as u64,
            flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP,
            mmap: Some(MmapBacking {
                file: memory.file().clone(),
                file_offset: 0,
                areas: vec![SparseArea {
                    offset: 0,
                    size: memory.len() as u64,
                }],
            }),
        }
    }
}

/// The seals every memfd this process hands out carries: its size is fixed for good and the
/// seals themselves cannot change. Write seals are left out on purpose: clients write the
/// memory (a guest's framebuffer) through their own mappings.
pub const SHARED_MEMORY_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Checks that `file` may be mapped by this process for its first `len` bytes without the
/// risk of a SIGBUS: the file must carry `F_SEAL_SHRINK` (so no holder of the fd can ever
/// cut pages from under a mapping) and be at least `len` bytes long.
///
/// Fails with EPERM for a file without that seal, including files that cannot carry seals
/// at all (a pipe, a socket, a file on a disk file system), and with EINVAL for a file
/// shorter than `len`. Each refusal is logged.
pub fn check_sealed_against_shrink(file: &File, len: u64) -> io::Result<()> {
    let seals = match fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits),
        Err(errno) => {
            log::warn!("refusing to map a file that cannot be sealed (F_GET_SEALS: {errno})");
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    };
    if !seals.contains(SealFlag::F_SEAL_SHRINK) {
        log::warn!("refusing to map a file not sealed against shrinking (seals {seals:?})");
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    // Sealed against shrinking, the length read now can only stay or grow.
    let file_len = file.metadata()?.len();
    if file_len < len {
        log::warn!("refusing to map {len} bytes of a file of {file_len} bytes");
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// Memory shared with clients through a memfd: a framebuffer BAR the guest writes without a
/// message per access, and that the server (or a viewer) reads at any time.
///
/// This is the one type that creates memory for clients; its memfd carries
/// [`SHARED_MEMORY_SEALS`], so no client can resize it.
pub struct SharedMemory {
    file: Arc<File>,
    map: MmapRegion,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("len", &self.map.size())
            .finish()
    }
}

impl SharedMemory {
    /// Creates `size` bytes of zeroed shared memory named `name` (visible in /proc/PID/fd),
    /// its size sealed with [`SHARED_MEMORY_SEALS`].
    pub fn new(name: &str, size: usize) -> io::Result<Self> {
        let cname =
            std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
        let file = File::from(memfd_create(&cname, flags).map_err(io::Error::from)?);
        file.set_len(size as u64)?;
        fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(SHARED_MEMORY_SEALS))
            .map_err(io::Error::from)?;
        Self::from_sealed_file(file, size)
    }

    /// Maps the first `size` bytes of `file` (a memfd a client sent, or one this process made)
    /// shared. The file must be sealed against shrinking and hold `size` bytes
    /// ([`check_sealed_against_shrink`]: EPERM or EINVAL otherwise), so that no access
    /// through the mapping can ever raise SIGBUS in this process.
    pub fn from_sealed_file(file: File, size: usize) -> io::Result<Self> {
        check_sealed_against_shrink(&file, size as u64)?;
        let file = Arc::new(file);
        let map = MmapRegion::from_file(FileOffset::from_arc(file.clone(), 0), size)
            .map_err(|e| mmap_error(size, e))?;
        Ok(SharedMemory { file, map })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.size()
    }

    /// True when the memory has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memfd, to hand to clients.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Copies bytes out at `offset`. Fails with EINVAL when the range does not fit.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let slice = self.slice(offset, data.len())?;
        slice.copy_to(data);
        Ok(())
    }

    /// Copies bytes in at `offset`. Fails with EINVAL when the range does not fit.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let slice = self.slice(offset, data.len())?;
        slice.copy_from(data);
        Ok(())
    }

    /// Fills the whole memory with zeroes.
    pub fn clear(&self) {
        // A zero-length or full-size slice at 0 always fits.
        if let Ok(slice) = self.map.get_slice(0, self.len()) {
            // Write in chunks to avoid a large temporary allocation.
            let zeros = [0u8; 4096];
            let mut off = 0;
            while off < self.len() {
                let n = (self.len() - off).min(zeros.len());
                if let Ok(part) = slice.subslice(off, n) {
                    part.copy_from(&zeros[..n]);
                }
                off += n;
            }
        }
    }

    fn slice(&self, offset: u64, len: usize) -> io::Result<vm_memory::VolatileSlice<'_, ()>> {
        let offset =
            usize::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.map
            .get_slice(offset, len)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// An `io::Error` for a failed mapping of `size` bytes that keeps the OS errno when there
/// is one (a client's fd that is a pipe fails its seek with ESPIPE) and says EINVAL for a
/// range the file cannot back.
fn mmap_error(size: usize, e: MmapRegionError) -> io::Error {
    let errno = match &e {
        MmapRegionError::Mmap(io)
        | MmapRegionError::SeekEnd(io)
        | MmapRegionError::SeekStart(io) => io.raw_os_error().unwrap_or(libc::EIO),
        MmapRegionError::MappingPastEof | MmapRegionError::InvalidOffsetLength => libc::EINVAL,
        _ => libc::EIO,
    };
    log::warn!("mmap of {size} bytes failed: {e}");
    io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    use vm_memory::VolatileSlice;

    /// A memfd made the way a client might: sealable or not, with `seals` added after sizing.
    fn client_memfd(size: u64, seals: Option<SealFlag>) -> File {
        let flags = match seals {
            Some(_) => MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
            None => MemFdCreateFlag::MFD_CLOEXEC,
        };
        let file = File::from(memfd_create(c"client", flags).unwrap());
        file.set_len(size).unwrap();
        if let Some(seals) = seals {
            fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        file
    }

    fn errno(r: io::Result<impl Sized>) -> Option<i32> {
        r.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn a_shared_memory_fd_cannot_be_shrunk_by_a_client() {
        let mem = SharedMemory::new("test", 8192).unwrap();
        assert_eq!(errno(mem.file().set_len(0)), Some(libc::EPERM));
        assert_eq!(errno(mem.file().set_len(4096)), Some(libc::EPERM));
        assert_eq!(mem.file().metadata().unwrap().len(), 8192);
        let mut last = [1u8; 1];
        mem.read(8191, &mut last).unwrap();
        assert_eq!(last, [0]);
    }

    #[test]
    fn a_shared_memory_fd_cannot_be_grown_by_a_client() {
        let mem = SharedMemory::new("test", 8192).unwrap();
        assert_eq!(errno(mem.file().set_len(1 << 30)), Some(libc::EPERM));
        assert_eq!(
            errno(mem.file().write_all_at(b"x", 8192)),
            Some(libc::EPERM)
        );
        assert_eq!(mem.file().metadata().unwrap().len(), 8192);
    }

    #[test]
    fn a_shared_memory_fd_takes_no_further_seals() {
        let mem = SharedMemory::new("test", 4096).unwrap();
        let fd = mem.file().as_raw_fd();
        for seal in [SealFlag::F_SEAL_WRITE, SealFlag::F_SEAL_FUTURE_WRITE] {
            let added = fcntl(fd, FcntlArg::F_ADD_SEALS(seal));
            assert_eq!(added, Err(nix::errno::Errno::EPERM), "{seal:?}");
        }
        let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS).unwrap());
        assert_eq!(seals, SHARED_MEMORY_SEALS);
    }

    #[test]
    fn a_shared_memory_fd_still_takes_client_writes_by_fd_and_by_mapping() {
        let mem = SharedMemory::new("test", 8192).unwrap();
        mem.file().write_all_at(b"by fd", 100).unwrap();
        // A client's own mapping, as QEMU makes it for the guest: shared and writable.
        let client_map = MmapRegion::<()>::build(
            Some(FileOffset::new(mem.file().try_clone().unwrap(), 4096)),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .unwrap();
        let slice: VolatileSlice<'_, ()> = client_map.get_slice(16, 10).unwrap();
        slice.copy_from(b"by mapping");
        let mut back = [0u8; 5];
        mem.read(100, &mut back).unwrap();
        assert_eq!(&back, b"by fd");
        let mut back = [0u8; 10];
        mem.read(4096 + 16, &mut back).unwrap();
        assert_eq!(&back, b"by mapping");
    }

    #[test]
    fn mapping_accepts_memory_sealed_as_qemu_seals_guest_ram() {
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        let mem = SharedMemory::from_sealed_file(client_memfd(8192, Some(seals)), 8192).unwrap();
        mem.write(8000, b"guest ram").unwrap();
        let shrink_only = client_memfd(4096, Some(SealFlag::F_SEAL_SHRINK));
        assert!(SharedMemory::from_sealed_file(shrink_only, 4096).is_ok());
    }

    #[test]
    fn mapping_refuses_a_memfd_not_sealed_against_shrinking() {
        let unsealed = client_memfd(4096, None);
        let e = SharedMemory::from_sealed_file(unsealed, 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let grow_sealed = client_memfd(4096, Some(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL));
        let e = SharedMemory::from_sealed_file(grow_sealed, 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn mapping_refuses_a_pipe() {
        let (read, write) = nix::unistd::pipe().unwrap();
        for end in [File::from(read), File::from(write)] {
            let e = SharedMemory::from_sealed_file(end, 4096).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        }
    }

    #[test]
    fn mapping_refuses_a_sealed_file_shorter_than_the_mapping() {
        let short = client_memfd(4096, Some(SealFlag::F_SEAL_SHRINK));
        let e = SharedMemory::from_sealed_file(short, 8192).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn shared_memory_is_visible_through_its_file() {
        let mem = SharedMemory::new("test", 8192).unwrap();
        mem.write(4096, b"pixels").unwrap();
        let mut buf = [0u8; 6];
        mem.file().read_exact_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"pixels");
        mem.file().write_all_at(b"guest", 10).unwrap();
        let mut back = [0u8; 5];
        mem.read(10, &mut back).unwrap();
        assert_eq!(&back, b"guest");
    }

    #[test]
    fn out_of_range_access_is_einval_not_a_panic() {
        let mem = SharedMemory::new("test", 4096).unwrap();
        let mut buf = [0u8; 8];
        let err = mem.read(4090, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(mem.write(u64::MAX, &buf).is_err());
    }

    #[test]
    fn clear_zeroes_everything() {
        let mem = SharedMemory::new("test", 3 * 4096 + 5).unwrap();
        mem.write(3 * 4096, &[0xff; 5]).unwrap();
        mem.clear();
        let mut buf = [1u8; 5];
        mem.read(3 * 4096, &mut buf).unwrap();
        assert_eq!(buf, [0; 5]);
    }
}
