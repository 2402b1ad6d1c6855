//! The viewer client: one more vfio-user connection to a display instance. It maps BAR0
//! read-only through the region's file and reads the current mode from the device's
//! registers; it never resets the device, and closing it leaves the guest undisturbed.
//!
//! The guest (and the device) write the framebuffer while the viewer reads it, from other
//! processes: the viewer never forms a `&[u8]` over the mapping, it copies the scanned-out
//! bytes out with volatile reads. It maps only a file sealed against shrinking, so no one
//! holding the fd can make those reads fault.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use mdev::irq::{IrqIndex, SetIrqsFlags};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vm_memory::mmap::{MmapRegion, MmapRegionError};
use vm_memory::{FileOffset, VolatileMemory};

use crate::format::{Frame, Mode};

/// VFIO region index of BAR0, the framebuffer.
pub const FRAMEBUFFER_REGION: u32 = 0;

/// Why the viewer could not read the display.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the device failed.
    #[error("vfio-user: {0}")]
    VfioUser(#[from] vfio_user::Error),
    /// The framebuffer region is missing or cannot be mapped.
    #[error("framebuffer region: {0}")]
    NotMappable(&'static str),
    /// BAR0's file is not sealed against shrinking: whoever holds it could make every read of
    /// a mapping fault (SIGBUS), so the viewer does not map it.
    #[error("framebuffer region: its file is not sealed against shrinking, not mapping it ({0})")]
    NotSealed(#[source] io::Error),
    /// Mapping the framebuffer failed.
    #[error("mapping the framebuffer: {0}")]
    Map(#[source] io::Error),
    /// A register source failed.
    #[error("register read: {0}")]
    Register(#[source] io::Error),
    /// The terminal of a live view failed (or there is none).
    #[error("terminal: {0}")]
    Terminal(#[source] io::Error),
}

/// Something a mode can be read from: region reads of a device.
pub trait RegisterSource {
    /// Reads `data.len()` bytes at `offset` of region `region`.
    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), ClientError>;
}

impl RegisterSource for vfio_user::Client {
    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), ClientError> {
        Ok(self.region_read(region, offset, data)?)
    }
}

/// How a device type exposes its current scan-out. Implemented by each device crate, from
/// the same validation code the device itself uses.
pub trait ModeReader: Send + Sync {
    /// The mode now, or `None` when nothing (valid) is scanned out. `framebuffer_len` is the
    /// size of BAR0.
    fn read_mode(
        &self,
        regs: &mut dyn RegisterSource,
        framebuffer_len: u64,
    ) -> Result<Option<Mode>, ClientError>;
}

/// A read-only view of a display instance.
pub struct DisplayClient {
    client: vfio_user::Client,
    /// Signalled by the server when it asks this client to let the device go (REQ).
    request: Option<EventFd>,
    /// Whether the server has asked (the eventfd's count is read once; the answer sticks).
    released: AtomicBool,
    map: MmapRegion,
    /// The scanned-out bytes of the last frame, copied out of `map`.
    visible: Vec<u8>,
    reader: Box<dyn ModeReader>,
}

impl DisplayClient {
    /// Connects to the instance served on `socket` and maps its framebuffer. Refuses
    /// ([`ClientError::NotSealed`]) a framebuffer whose file is not sealed against shrinking.
    pub fn connect(socket: &Path, reader: Box<dyn ModeReader>) -> Result<Self, ClientError> {
        let client = vfio_user::Client::new(socket)?;
        let region = client
            .region(FRAMEBUFFER_REGION)
            .ok_or(ClientError::NotMappable("the device has no BAR0"))?;
        let backing = region
            .file_offset
            .as_ref()
            .ok_or(ClientError::NotMappable("BAR0 comes without a file"))?;
        let len = usize::try_from(region.size)
            .map_err(|_| ClientError::NotMappable("BAR0 is too large"))?;
        if len == 0 {
            return Err(ClientError::NotMappable("BAR0 is empty"));
        }
        let map = map_read_only(backing.file(), backing.start(), len)?;
        log::info!("viewer: {} mapped, {len} bytes", socket.display());
        let mut client = client;
        let request = route_request(&mut client);
        Ok(DisplayClient {
            client,
            request,
            released: AtomicBool::new(false),
            map,
            visible: Vec::new(),
            reader,
        })
    }

    /// Whether the server has asked this client to let the device go (the instance is being
    /// removed, or its parent stops): a viewer should then close.
    pub fn release_requested(&self) -> bool {
        if self.released.load(Ordering::Relaxed) {
            return true;
        }
        let asked = self
            .request
            .as_ref()
            .is_some_and(|e| e.read().is_ok_and(|n| n > 0));
        if asked {
            self.released.store(true, Ordering::Relaxed);
        }
        asked
    }

    /// The mode scanned out now.
    pub fn mode(&mut self) -> Result<Option<Mode>, ClientError> {
        let len = self.map.size() as u64;
        self.reader.read_mode(&mut self.client, len)
    }

    /// Copies framebuffer bytes at `offset` into `data` (the guest keeps writing them).
    /// Fails with [`ClientError::NotMappable`] for a range outside BAR0.
    pub fn read_framebuffer(&self, offset: u64, data: &mut [u8]) -> Result<(), ClientError> {
        let slice = usize::try_from(offset)
            .ok()
            .and_then(|offset| self.map.get_slice(offset, data.len()).ok())
            .ok_or(ClientError::NotMappable("read outside BAR0"))?;
        slice.copy_to(data);
        Ok(())
    }

    /// The current frame, or `None` when nothing valid is scanned out. The frame is a copy of
    /// the scanned-out bytes taken now; a frame the guest is drawing may come out torn.
    pub fn frame(&mut self) -> Result<Option<Frame<'_>>, ClientError> {
        let Some(mode) = self.mode()? else {
            return Ok(None);
        };
        if !copy_visible(&self.map, &mode, &mut self.visible) {
            return Ok(None);
        }
        Ok(Frame::from_visible(mode, &self.visible))
    }

    /// Copies the bytes the current mode scans out (from its offset to [`Mode::end`]) into
    /// `into`, resized to fit, and returns the mode; `None` when nothing valid is scanned out.
    /// For viewers that keep their own frames ([`Frame::from_visible`] reads them).
    pub fn capture(&mut self, into: &mut Vec<u8>) -> Result<Option<Mode>, ClientError> {
        let Some(mode) = self.mode()? else {
            return Ok(None);
        };
        Ok(copy_visible(&self.map, &mode, into).then_some(mode))
    }
}

/// Copies the window of `map` that `mode` scans out into `into`; false when the mode does not
/// fit the mapping.
fn copy_visible(map: &MmapRegion, mode: &Mode, into: &mut Vec<u8>) -> bool {
    let window = mode
        .end()
        .filter(|_| mode.fits(map.size() as u64))
        .and_then(|end| {
            let start = usize::try_from(mode.offset).ok()?;
            let len = usize::try_from(end - mode.offset).ok()?;
            map.get_slice(start, len).ok()
        });
    let Some(window) = window else {
        return false;
    };
    into.resize(window.len(), 0);
    window.copy_to(into.as_mut_slice());
    true
}

impl Drop for DisplayClient {
    fn drop(&mut self) {
        // A clean goodbye: the server sees EOF and closes only this connection.
        let _ = self.client.shutdown();
    }
}

/// Routes the device request interrupt (REQ) to a fresh eventfd, when the device offers
/// one; `None` (the viewer then stays until closed) otherwise.
fn route_request(client: &mut vfio_user::Client) -> Option<EventFd> {
    let info = client.get_irq_info(IrqIndex::Req as u32).ok()?;
    if info.count < 1 {
        return None;
    }
    let event = EventFd::new(EFD_NONBLOCK).ok()?;
    let flags = (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits();
    match client.set_irqs(IrqIndex::Req as u32, flags, 0, 1, &[event.as_raw_fd()]) {
        Ok(()) => Some(event),
        Err(e) => {
            log::warn!("viewer: the device request interrupt could not be routed: {e}");
            None
        }
    }
}

/// Maps `len` bytes of `file` at `offset` read-only and shared, once the file is known to be
/// sealed against shrinking and long enough: otherwise a peer holding the fd could cut pages
/// from under the mapping and the next read would kill this process with SIGBUS.
fn map_read_only(file: &std::fs::File, offset: u64, len: usize) -> Result<MmapRegion, ClientError> {
    let end = offset
        .checked_add(len as u64)
        .ok_or(ClientError::NotMappable(
            "BAR0 reaches past the end of its file",
        ))?;
    mdev::region::check_sealed_against_shrink(file, end).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => ClientError::NotMappable("BAR0 reaches past the end of its file"),
        _ => ClientError::NotSealed(e),
    })?;
    let file = file.try_clone().map_err(ClientError::Map)?;
    MmapRegion::build(
        Some(FileOffset::new(file, offset)),
        len,
        libc::PROT_READ,
        libc::MAP_SHARED,
    )
    .map_err(|e| {
        ClientError::Map(match e {
            MmapRegionError::Mmap(io) => io,
            other => {
                log::warn!("viewer: mapping {len} bytes of BAR0 failed: {other}");
                io::Error::from_raw_os_error(libc::EINVAL)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

    #[test]
    fn the_viewer_refuses_a_framebuffer_file_a_peer_could_shrink() {
        let file = File::from(memfd_create(c"unsealed-fb", MemFdCreateFlag::MFD_CLOEXEC).unwrap());
        file.set_len(8192).unwrap();
        let err = map_read_only(&file, 0, 8192).expect_err("refused");
        assert!(matches!(&err, ClientError::NotSealed(e) if e.raw_os_error() == Some(libc::EPERM)));
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    #[test]
    fn the_viewer_maps_a_sealed_framebuffer_and_refuses_one_too_short() {
        let fb = mdev::SharedMemory::new("viewer-test", 8192).unwrap();
        fb.file().write_all_at(b"pixels", 4096 + 10).unwrap();
        let map = map_read_only(fb.file(), 4096, 4096).unwrap();
        let mut back = [0u8; 6];
        map.get_slice(10, 6).unwrap().copy_to(&mut back[..]);
        assert_eq!(&back, b"pixels");
        assert!(matches!(
            map_read_only(fb.file(), 4096, 8192),
            Err(ClientError::NotMappable(_))
        ));
    }
}
