//! A picture to serve: one captured frame with its history in tiles, so that each viewer,
//! whatever picture it saw last, can tell which tiles changed since.

use super::tiles::TileGrid;
use crate::format::{Frame, Mode, PixelFormat};

/// The largest framebuffer side RFB can describe.
pub const MAX_SIDE: u32 = u16::MAX as u32;

/// Size of the blank picture shown before anything was ever scanned out.
pub const BLANK_SIZE: (u32, u32) = (640, 480);

/// One captured frame: its mode, a copy of the bytes it scans out, its generation (one more
/// than the picture it follows) and, per tile, the generation at which the tile last changed.
#[derive(Debug)]
pub struct Picture {
    mode: Mode,
    bytes: Vec<u8>,
    grid: TileGrid,
    generation: u64,
    /// Generation at which the mode (size or format) last changed.
    reshaped_at: u64,
    changed_at: Vec<u64>,
    scanned_out: bool,
}

/// What a new capture makes of the current picture.
#[derive(Debug)]
pub enum Successor {
    /// Something changed: the next picture.
    Changed(Picture),
    /// Nothing changed: the capture buffer, handed back for the next capture.
    Unchanged(Vec<u8>),
}

impl Picture {
    /// A black picture of `width` × `height` at generation `generation`, standing for "nothing
    /// scanned out". `bytes` is reused as its memory.
    pub fn blank(width: u32, height: u32, generation: u64, mut bytes: Vec<u8>) -> Picture {
        let (width, height) = (width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE));
        let mode = Mode::packed(PixelFormat::Xrgb8888, width, height);
        bytes.clear();
        bytes.resize(width as usize * height as usize * 4, 0);
        let grid = TileGrid::new(width, height);
        Picture {
            mode,
            bytes,
            grid,
            generation,
            reshaped_at: generation,
            changed_at: vec![generation; grid.len()],
            scanned_out: false,
        }
    }

    /// The picture of a first capture: `mode` scanning out `bytes` (a copy of exactly the
    /// bytes from `mode.offset` to [`Mode::end`]), or a blank one when there is no (servable)
    /// scan-out.
    pub fn first(mode: Option<Mode>, bytes: Vec<u8>) -> Picture {
        match mode.and_then(|m| servable(m, &bytes)) {
            Some(mode) => Self::of(mode, bytes, 1, 1, None),
            None => Self::blank(BLANK_SIZE.0, BLANK_SIZE.1, 1, bytes),
        }
    }

    fn of(
        mode: Mode,
        bytes: Vec<u8>,
        generation: u64,
        reshaped_at: u64,
        changed_at: Option<Vec<u64>>,
    ) -> Picture {
        let grid = TileGrid::new(mode.width, mode.height);
        Picture {
            mode,
            bytes,
            grid,
            generation,
            reshaped_at,
            changed_at: changed_at.unwrap_or_else(|| vec![generation; grid.len()]),
            scanned_out: true,
        }
    }

    /// What a capture of `mode` (or no scan-out) into `bytes` makes of this picture. With
    /// nothing (servable) scanned out, the next picture is black at this picture's size.
    pub fn successor(&self, mode: Option<Mode>, bytes: Vec<u8>) -> Successor {
        let next = self.generation + 1;
        let Some(mode) = mode.and_then(|m| servable(m, &bytes)) else {
            if !self.scanned_out {
                return Successor::Unchanged(bytes);
            }
            let mut blank = Self::blank(self.grid.width(), self.grid.height(), next, bytes);
            if self.grid == blank.grid {
                blank.reshaped_at = self.reshaped_at;
            }
            return Successor::Changed(blank);
        };
        let same_shape = self.scanned_out && mode == self.mode;
        if !same_shape {
            return Successor::Changed(Self::of(mode, bytes, next, next, None));
        }
        let (Some(old), Some(new)) = (self.frame(), Frame::from_visible(mode, &bytes)) else {
            return Successor::Changed(Self::of(mode, bytes, next, next, None));
        };
        let mut changed = Vec::new();
        self.grid.diff(&old, &new, &mut changed);
        if !changed.contains(&true) {
            return Successor::Unchanged(bytes);
        }
        let changed_at = self
            .changed_at
            .iter()
            .zip(&changed)
            .map(|(&at, &c)| if c { next } else { at })
            .collect();
        Successor::Changed(Self::of(
            mode,
            bytes,
            next,
            self.reshaped_at,
            Some(changed_at),
        ))
    }

    /// The frame (always there: a picture is made only of bytes its mode fits).
    pub fn frame(&self) -> Option<Frame<'_>> {
        Frame::from_visible(self.mode, &self.bytes)
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Width in pixels (at most [`MAX_SIDE`]).
    pub fn width(&self) -> u32 {
        self.mode.width
    }

    /// Height in pixels (at most [`MAX_SIDE`]).
    pub fn height(&self) -> u32 {
        self.mode.height
    }

    /// The tile grid.
    pub fn grid(&self) -> TileGrid {
        self.grid
    }

    /// The generation (1 for the first picture, one more for each change).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation at which the mode last changed: a viewer that saw an older picture
    /// needs every tile.
    pub fn reshaped_at(&self) -> u64 {
        self.reshaped_at
    }

    /// Per tile, the generation at which it last changed.
    pub fn changed_at(&self) -> &[u64] {
        &self.changed_at
    }

    /// False for a blank picture standing for "nothing scanned out".
    pub fn is_scanned_out(&self) -> bool {
        self.scanned_out
    }

    /// Gives the picture's memory back (for the next capture).
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// `mode` with its offset made relative to the copy, if RFB can serve it and `bytes` holds it.
fn servable(mode: Mode, bytes: &[u8]) -> Option<Mode> {
    let fits = mode.width <= MAX_SIDE
        && mode.height <= MAX_SIDE
        && Frame::from_visible(mode, bytes).is_some();
    fits.then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xrgb(w: u32, h: u32) -> (Mode, Vec<u8>) {
        let mode = Mode::packed(PixelFormat::Xrgb8888, w, h);
        (mode, vec![0x40; (w * h * 4) as usize])
    }

    fn changed(s: Successor) -> Picture {
        match s {
            Successor::Changed(p) => p,
            Successor::Unchanged(_) => panic!("expected a change"),
        }
    }

    #[test]
    fn an_unchanged_capture_hands_its_buffer_back() {
        let (mode, bytes) = xrgb(100, 70);
        let p = Picture::first(Some(mode), bytes.clone());
        assert_eq!((p.generation(), p.width(), p.height()), (1, 100, 70));
        assert!(matches!(
            p.successor(Some(mode), bytes),
            Successor::Unchanged(b) if b.len() == 100 * 70 * 4
        ));
    }

    #[test]
    fn a_change_dates_only_its_tiles() {
        let (mode, bytes) = xrgb(100, 70);
        let p1 = Picture::first(Some(mode), bytes.clone());
        let mut b2 = bytes;
        b2[(65 * 100 + 70) * 4] = 1; // pixel (70, 65): tile 3 of 2 x 2
        let p2 = changed(p1.successor(Some(mode), b2));
        assert_eq!(p2.generation(), 2);
        assert_eq!(p2.changed_at(), [1, 1, 1, 2]);
        assert_eq!(p2.reshaped_at(), 1);
    }

    #[test]
    fn a_new_mode_dates_every_tile_and_no_scan_out_goes_black_at_the_same_size() {
        let (mode, bytes) = xrgb(100, 70);
        let p1 = Picture::first(Some(mode), bytes);
        let (small, b2) = xrgb(50, 50);
        let p2 = changed(p1.successor(Some(small), b2));
        assert_eq!(
            (p2.width(), p2.reshaped_at(), p2.changed_at()),
            (50, 2, &[2][..])
        );
        let p3 = changed(p2.successor(None, Vec::new()));
        assert!(!p3.is_scanned_out());
        assert_eq!((p3.width(), p3.height(), p3.reshaped_at()), (50, 50, 2));
        assert!(p3.frame().unwrap().to_rgb8().iter().all(|&b| b == 0));
        assert!(matches!(
            p3.successor(None, Vec::new()),
            Successor::Unchanged(_)
        ));
        // A mode RFB cannot describe, or bytes too short for the mode, is no scan-out.
        let huge = Mode::packed(PixelFormat::Rgb565, 70_000, 1);
        let p = Picture::first(Some(huge), vec![0; 140_000]);
        assert_eq!(
            (p.width(), p.height(), p.is_scanned_out()),
            (640, 480, false)
        );
        let p = Picture::first(Some(mode), vec![0; 10]);
        assert!(!p.is_scanned_out());
    }
}
