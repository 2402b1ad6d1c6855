//! The framebuffer cut into 64×64 tiles: which tiles differ between two frames, and how a set
//! of tiles becomes few rectangles.

use super::message::Rect;
use crate::format::Frame;

/// Tile edge in pixels (ZRLE's tile size too).
pub const TILE: u32 = 64;

/// A `width` × `height` framebuffer as a grid of tiles, row-major; edge tiles are smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileGrid {
    width: u32,
    height: u32,
    cols: u32,
    rows: u32,
}

impl TileGrid {
    /// The grid of a `width` × `height` framebuffer.
    pub fn new(width: u32, height: u32) -> Self {
        TileGrid {
            width,
            height,
            cols: width.div_ceil(TILE),
            rows: height.div_ceil(TILE),
        }
    }

    /// Framebuffer width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Framebuffer height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The whole framebuffer.
    pub fn screen(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.cols as usize * self.rows as usize
    }

    /// True for a grid without tiles (an empty framebuffer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pixels of tile `i` (`i < len`).
    pub fn tile(&self, i: usize) -> Rect {
        let cols = self.cols.max(1) as usize;
        // Tile coordinates are below the framebuffer's u32 width and height.
        let (x, y) = (
            u32::try_from(i % cols).unwrap_or(0) * TILE,
            u32::try_from(i / cols).unwrap_or(0) * TILE,
        );
        Rect::new(
            x,
            y,
            TILE.min(self.width.saturating_sub(x)),
            TILE.min(self.height.saturating_sub(y)),
        )
    }

    /// Indices of the tiles that meet `rect`.
    pub fn tiles_meeting(&self, rect: &Rect) -> impl Iterator<Item = usize> + '_ {
        let r = rect.intersect(&self.screen());
        let (c0, c1) = (r.x / TILE, r.right().div_ceil(TILE));
        let (r0, r1) = (r.y / TILE, r.bottom().div_ceil(TILE));
        let cols = self.cols as usize;
        let span = if r.is_empty() { 0..0 } else { r0..r1 };
        span.flat_map(move |row| (c0..c1).map(move |col| row as usize * cols + col as usize))
    }

    /// Marks in `changed` (one flag per tile, cleared first) the tiles where `new` differs
    /// from `old`. Both frames must have this grid's size; pixels are compared as bytes.
    pub fn diff(&self, old: &Frame<'_>, new: &Frame<'_>, changed: &mut Vec<bool>) {
        changed.clear();
        changed.resize(self.len(), false);
        let bpp = new.mode().format.bytes_per_pixel();
        let tile_bytes = TILE as usize * bpp;
        let cols = self.cols as usize;
        for y in 0..self.height.min(old.height()).min(new.height()) {
            let (a, b) = (old.line(y), new.line(y));
            // Most lines of most frames are equal: one comparison of the whole line first.
            if a == b {
                continue;
            }
            let row = (y / TILE) as usize * cols;
            for (col, (ta, tb)) in a.chunks(tile_bytes).zip(b.chunks(tile_bytes)).enumerate() {
                if let Some(flag) = changed.get_mut(row + col) {
                    *flag = *flag || ta != tb;
                }
            }
        }
    }

    /// The marked tiles (one flag per tile) inside `area` as rectangles: runs of marked tiles
    /// in a tile row become one rectangle, and a run directly below one with the same columns
    /// joins it. Each rectangle is clipped to `area`.
    pub fn rectangles(&self, marked: &[bool], area: &Rect) -> Vec<Rect> {
        let area = area.intersect(&self.screen());
        let mut done: Vec<Rect> = Vec::new();
        // Runs of the previous tile row still open for joining, in tile units: (c0, c1, index in done).
        let mut open: Vec<(u32, u32, usize)> = Vec::new();
        if area.is_empty() {
            return done;
        }
        let (c_lo, c_hi) = (area.x / TILE, area.right().div_ceil(TILE));
        for row in area.y / TILE..area.bottom().div_ceil(TILE) {
            let mut next_open = Vec::new();
            let mut col = c_lo;
            while col < c_hi {
                let is_marked = |c: u32| {
                    marked
                        .get((row * self.cols + c) as usize)
                        .copied()
                        .unwrap_or(false)
                };
                if !is_marked(col) {
                    col += 1;
                    continue;
                }
                let start = col;
                while col < c_hi && is_marked(col) {
                    col += 1;
                }
                let pixels = Rect::new(start * TILE, row * TILE, (col - start) * TILE, TILE)
                    .intersect(&area);
                match open.iter().find(|&&(a, b, _)| (a, b) == (start, col)) {
                    Some(&(_, _, i)) => {
                        done[i].h = pixels.bottom() - done[i].y;
                        next_open.push((start, col, i));
                    }
                    None => {
                        done.push(pixels);
                        next_open.push((start, col, done.len() - 1));
                    }
                }
            }
            open = next_open;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Mode, PixelFormat};

    #[test]
    fn edge_tiles_are_cut_to_the_framebuffer() {
        let g = TileGrid::new(130, 70);
        assert_eq!(g.len(), 3 * 2);
        assert_eq!(g.tile(0), Rect::new(0, 0, 64, 64));
        assert_eq!(g.tile(2), Rect::new(128, 0, 2, 64));
        assert_eq!(g.tile(5), Rect::new(128, 64, 2, 6));
        let meeting: Vec<_> = g.tiles_meeting(&Rect::new(63, 63, 2, 2)).collect();
        assert_eq!(meeting, [0, 1, 3, 4]);
        assert_eq!(g.tiles_meeting(&Rect::new(500, 0, 5, 5)).count(), 0);
        assert!(TileGrid::new(0, 0).is_empty());
    }

    #[test]
    fn only_tiles_with_a_changed_byte_are_marked() {
        let mode = Mode::packed(PixelFormat::Rgb565, 200, 100);
        let old = vec![0u8; 200 * 100 * 2];
        let mut new = old.clone();
        let g = TileGrid::new(200, 100);
        let mut changed = Vec::new();
        g.diff(
            &Frame::new(mode, &old).unwrap(),
            &Frame::new(mode, &new).unwrap(),
            &mut changed,
        );
        assert_eq!(changed, vec![false; 8]);
        // Pixel (64, 0): the second tile; pixel (199, 99): the last one.
        new[64 * 2] = 1;
        new[(99 * 200 + 199) * 2 + 1] = 1;
        g.diff(
            &Frame::new(mode, &old).unwrap(),
            &Frame::new(mode, &new).unwrap(),
            &mut changed,
        );
        assert_eq!(
            changed,
            [false, true, false, false, false, false, false, true]
        );
    }

    #[test]
    fn marked_tiles_merge_into_few_rectangles() {
        let g = TileGrid::new(300, 200); // 5 x 4 tiles
        let all = vec![true; g.len()];
        assert_eq!(g.rectangles(&all, &g.screen()), [g.screen()]);
        let mut m = vec![false; g.len()];
        // A 2x2 block of tiles at columns 1-2, rows 1-2, and a lone tile at the corner.
        for i in [6, 7, 11, 12, 19] {
            m[i] = true;
        }
        assert_eq!(
            g.rectangles(&m, &g.screen()),
            [Rect::new(64, 64, 128, 128), Rect::new(256, 192, 44, 8)]
        );
        // Clipped to the area asked for.
        assert_eq!(
            g.rectangles(&m, &Rect::new(100, 100, 1000, 10)),
            [Rect::new(100, 100, 92, 10)]
        );
        assert!(g.rectangles(&m, &Rect::new(0, 0, 64, 64)).is_empty());
        assert!(g.rectangles(&m, &Rect::default()).is_empty());
    }
}
