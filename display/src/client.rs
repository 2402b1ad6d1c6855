//! The viewer client: one more vfio-user connection to a display instance. It maps BAR0
//! read-only through the region's file and reads the current mode from the device's
//! registers; it never resets the device, and closing it leaves the guest undisturbed.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

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
    map: Mmap,
    reader: Box<dyn ModeReader>,
}

impl DisplayClient {
    /// Connects to the instance served on `socket` and maps its framebuffer.
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
        Ok(DisplayClient {
            client,
            map,
            reader,
        })
    }

    /// The mode scanned out now.
    pub fn mode(&mut self) -> Result<Option<Mode>, ClientError> {
        let len = self.map.len() as u64;
        self.reader.read_mode(&mut self.client, len)
    }

    /// The framebuffer as this process sees it (the guest keeps writing it).
    pub fn framebuffer(&self) -> &[u8] {
        &self.map
    }

    /// The current frame, or `None` when nothing valid is scanned out.
    pub fn frame(&mut self) -> Result<Option<Frame<'_>>, ClientError> {
        let mode = self.mode()?;
        Ok(mode.and_then(|m| Frame::new(m, &self.map)))
    }
}

impl Drop for DisplayClient {
    fn drop(&mut self) {
        // A clean goodbye: the server sees EOF and closes only this connection.
        let _ = self.client.shutdown();
    }
}

fn map_read_only(file: &File, offset: u64, len: usize) -> Result<Mmap, ClientError> {
    // Pages past the end of the file would fault (SIGBUS) on the first read: refuse a
    // region the file does not back instead.
    let file_len = file.metadata().map_err(ClientError::Map)?.len();
    let backed = offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= file_len);
    if !backed {
        return Err(ClientError::NotMappable(
            "BAR0 reaches past the end of its file",
        ));
    }
    // SAFETY: the mapping is shared memory the device and the guest write concurrently; we
    // only ever read it as plain bytes (a torn frame is acceptable for a viewer), and the
    // file is a memfd whose size the server fixed before handing it out, so the mapping
    // never loses its pages underneath us.
    unsafe { MmapOptions::new().offset(offset).len(len).map(file) }.map_err(ClientError::Map)
}
