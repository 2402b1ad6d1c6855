//! Helpers for tests and benchmarks of display devices: a guest-side mapping of BAR0, a
//! reproducible test picture and scratch directories.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test patterns keep the low byte of a coordinate on purpose; test frames are small"
)]

use std::io;
use std::path::PathBuf;

use memmap2::{MmapMut, MmapOptions};

use crate::client::FRAMEBUFFER_REGION;
use crate::format::Mode;

/// A desktop-like XRGB8888 picture of `w`x`h` for benchmarks: a title bar, gradients and
/// some text-like noise.
pub fn desktop_picture(w: u32, h: u32) -> Vec<u8> {
    let mut fb = Vec::with_capacity(w as usize * h as usize * 4);
    for y in 0..h {
        for x in 0..w {
            let (r, g, b) = if y < 40 {
                (0x30, 0x30, 0x38)
            } else if (x / 8 + y / 16) % 7 == 0 && (x ^ y) & 3 == 0 {
                (0xee, 0xee, 0xee)
            } else {
                ((x * 255 / w) as u8, (y * 255 / h) as u8, 0x80)
            };
            fb.extend_from_slice(&[b, g, r, 0]);
        }
    }
    fb
}

/// The colour of pixel (`x`, `y`) of the test picture: gradients with a bright grid.
pub fn pattern_colour(x: u32, y: u32) -> [u8; 3] {
    if x & 15 == 0 || y & 15 == 0 {
        [0xff, 0xff, 0xff]
    } else {
        [(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]
    }
}

/// Draws the test picture into `fb` as `mode` lays it out (as a guest would).
pub fn draw_pattern(fb: &mut [u8], mode: &Mode) {
    let bpp = mode.format.bytes_per_pixel();
    for y in 0..mode.height {
        let line = (mode.offset + u64::from(y) * mode.stride) as usize;
        for x in 0..mode.width {
            let at = line + x as usize * bpp;
            fb[at..at + bpp].copy_from_slice(&mode.format.from_rgb(pattern_colour(x, y)));
        }
    }
}

/// The test picture as packed RGB8, after a round trip through `mode`'s format.
pub fn expected_rgb(mode: &Mode) -> Vec<u8> {
    let f = mode.format;
    (0..mode.height)
        .flat_map(|y| (0..mode.width).map(move |x| (x, y)))
        .flat_map(|(x, y)| f.to_rgb(&f.from_rgb(pattern_colour(x, y))))
        .collect()
}

/// Maps BAR0 of `client` read-write through the region's file, as a guest (QEMU) does.
pub fn map_framebuffer_rw(client: &vfio_user::Client) -> io::Result<MmapMut> {
    let region = client
        .region(FRAMEBUFFER_REGION)
        .ok_or_else(|| io::Error::other("no BAR0"))?;
    let backing = region
        .file_offset
        .as_ref()
        .ok_or_else(|| io::Error::other("BAR0 has no file"))?;
    let len = usize::try_from(region.size).map_err(io::Error::other)?;
    let end = backing
        .start()
        .checked_add(region.size)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    mdev::region::check_sealed_against_shrink(backing.file(), end)?;
    // SAFETY: a shared mapping of a file just checked to be sealed against shrinking and to
    // hold the whole region, so its pages stay for the life of the mapping; the test owns what
    // it writes through the `&mut [u8]` and reads it back only through the device or another
    // mapping.
    unsafe {
        MmapOptions::new()
            .offset(backing.start())
            .len(len)
            .map_mut(backing.file())
    }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4().simple()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
