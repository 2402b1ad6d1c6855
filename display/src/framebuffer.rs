//! The framebuffer BAR of a display device: memfd-backed memory the client maps, so guest
//! pixels reach the host without a message per write. The framework serves trapped accesses
//! (a client that does not map it) from the same memory.

use std::io;
use std::sync::Arc;

use mdev::pci::{Bar, BarSpec};
use mdev::SharedMemory;

/// A display's framebuffer memory.
#[derive(Clone, Debug)]
pub struct Framebuffer {
    memory: Arc<SharedMemory>,
}

impl Framebuffer {
    /// `size` bytes of zeroed, sealed shared memory named `name`.
    pub fn new(name: &str, size: u64) -> io::Result<Self> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Framebuffer {
            memory: Arc::new(SharedMemory::new(name, size)?),
        })
    }

    /// The BAR size for `bytes` of pixels: a power of two of at least a page.
    pub fn bar_size_for(bytes: u64) -> u64 {
        bytes.max(4096).next_power_of_two()
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64
    }

    /// True when the framebuffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// The memory.
    pub fn memory(&self) -> &Arc<SharedMemory> {
        &self.memory
    }

    /// BAR `index` backed by this memory: 32-bit, prefetchable, as large as the memory.
    pub fn bar(&self, index: u8) -> Bar {
        Bar::memory(
            index,
            BarSpec::prefetchable(self.len(), false),
            self.memory.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdev::region::RegionFlags;

    #[test]
    fn bar_sizes_are_powers_of_two() {
        assert_eq!(Framebuffer::bar_size_for(640 * 480 * 4), 2 << 20);
        assert_eq!(Framebuffer::bar_size_for(1920 * 1080 * 4), 8 << 20);
        assert_eq!(Framebuffer::bar_size_for(4 << 20), 4 << 20);
        assert_eq!(Framebuffer::bar_size_for(1), 4096);
    }

    #[test]
    fn the_bar_is_the_memory() {
        let fb = Framebuffer::new("fb-test", 8192).unwrap();
        let bar = fb.bar(0);
        assert_eq!(bar.spec.size, 8192);
        assert!(bar.spec.prefetchable);
        let info = mdev::RegionInfo::shared(fb.memory());
        assert!(info.flags.contains(RegionFlags::MMAP));
    }
}
