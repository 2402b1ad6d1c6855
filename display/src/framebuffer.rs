//! The framebuffer BAR of a display device: memfd-backed memory the client maps, so guest
//! pixels reach the host without a message per write. Trapped accesses (a client that does
//! not map it) go through the same memory.

use std::io;

use mdev::{RegionInfo, SharedMemory};

/// Value a read returns where no memory answers (as a PCI master abort would).
const FLOATING_BYTE: u8 = 0xff;

/// A device's framebuffer memory, shared with every client.
#[derive(Debug)]
pub struct Framebuffer {
    memory: SharedMemory,
}

impl Framebuffer {
    /// `size` zeroed bytes named `name` (visible in /proc/PID/fd).
    pub fn new(name: &str, size: u64) -> io::Result<Self> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Framebuffer {
            memory: SharedMemory::new(name, size)?,
        })
    }

    /// The size of a BAR holding `bytes`: the next power of two (PCI BARs are naturally
    /// aligned powers of two), at least one page.
    pub fn bar_size_for(bytes: u64) -> u64 {
        bytes.max(4096).next_power_of_two()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64
    }

    /// True for an empty framebuffer.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// The region as VFIO describes it: readable, writable and mmap-able as a whole.
    pub fn region_info(&self) -> RegionInfo {
        RegionInfo::shared(&self.memory)
    }

    /// A trapped read. Bytes outside the memory read as all-ones; never fails.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if self.memory.read(offset, data).is_err() {
            data.fill(FLOATING_BYTE);
        }
    }

    /// A trapped write. Bytes outside the memory are dropped; never fails.
    pub fn write(&self, offset: u64, data: &[u8]) {
        if self.memory.write(offset, data).is_err() {
            log::debug!(
                "framebuffer write of {} bytes at {offset:#x} outside {} bytes dropped",
                data.len(),
                self.len()
            );
        }
    }

    /// Zeroes every pixel.
    pub fn clear(&self) {
        self.memory.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_sizes_are_powers_of_two() {
        assert_eq!(Framebuffer::bar_size_for(640 * 480 * 4), 2 << 20);
        assert_eq!(Framebuffer::bar_size_for(1920 * 1080 * 4), 8 << 20);
        assert_eq!(Framebuffer::bar_size_for(4 << 20), 4 << 20);
        assert_eq!(Framebuffer::bar_size_for(1), 4096);
    }

    #[test]
    fn trapped_accesses_outside_never_fail() {
        let fb = Framebuffer::new("fb-test", 4096).unwrap();
        let mut buf = [0u8; 8];
        fb.read(4092, &mut buf);
        assert_eq!(buf, [0xff; 8]);
        fb.write(u64::MAX, &buf);
        fb.write(8, &[1, 2]);
        fb.read(8, &mut buf[..2]);
        assert_eq!(&buf[..2], &[1, 2]);
        let info = fb.region_info();
        assert_eq!(info.size, 4096);
        assert!(info.mmap.is_some());
    }
}
