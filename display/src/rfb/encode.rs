//! Rectangle encodings: Raw (pixels as they are) and ZRLE (64×64 tiles, each solid, packed
//! palette, run-length or raw, whichever is smallest, all through one zlib stream per
//! connection).
#![expect(
    clippy::cast_possible_truncation,
    reason = "ZRLE bytes: palette sizes and indices are at most 127 and run-length bytes are \
              reduced below 256 before each cast"
)]

use flate2::{Compress, Compression, FlushCompress};

use super::message::Rect;
use super::pixel::PixelConverter;
use super::tiles::TILE;
use crate::format::Frame;

/// zlib level of ZRLE: fast (the tiles are run-length encoded already).
pub const ZRLE_ZLIB_LEVEL: u32 = 1;

/// Largest palette a ZRLE tile may use (palette RLE).
const MAX_PALETTE: usize = 127;
/// Largest palette of a packed-palette tile.
const MAX_PACKED_PALETTE: usize = 16;

/// ZRLE subencodings.
const SUB_RAW: u8 = 0;
const SUB_SOLID: u8 = 1;
const SUB_PLAIN_RLE: u8 = 128;

/// Why a rectangle could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The zlib stream failed.
    #[error("zlib: {0}")]
    Zlib(#[from] flate2::CompressError),
    /// One rectangle compressed to more than 4 GiB.
    #[error("ZRLE data too long")]
    TooLong,
}

/// Appends the pixels of `rect` (inside `frame`) as Raw encoding data.
pub fn encode_raw(frame: &Frame<'_>, rect: &Rect, conv: &PixelConverter, out: &mut Vec<u8>) {
    let format = frame.mode().format;
    let bpp = format.bytes_per_pixel();
    out.reserve(rect.w as usize * rect.h as usize * conv.format().bytes_per_pixel());
    for y in rect.y..rect.bottom() {
        let line = frame.line(y);
        let (a, b) = (rect.x as usize * bpp, rect.right() as usize * bpp);
        if let Some(src) = line.get(a..b) {
            conv.put_row(format, src, out);
        }
    }
}

/// The ZRLE encoder of one connection: its zlib stream (RFB requires one per connection,
/// carried from rectangle to rectangle) and scratch memory.
pub struct ZrleEncoder {
    deflate: Compress,
    plain: Vec<u8>,
    tile: Vec<u32>,
    palette: Palette,
}

impl Default for ZrleEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ZrleEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZrleEncoder")
            .field("total_in", &self.deflate.total_in())
            .field("total_out", &self.deflate.total_out())
            .finish()
    }
}

impl ZrleEncoder {
    /// A fresh zlib stream.
    pub fn new() -> Self {
        ZrleEncoder {
            deflate: Compress::new(Compression::new(ZRLE_ZLIB_LEVEL), true),
            plain: Vec::new(),
            tile: Vec::with_capacity((TILE * TILE) as usize),
            palette: Palette::new(),
        }
    }

    /// Appends `rect` (inside `frame`) as ZRLE encoding data: a u32 length and the zlib
    /// bytes of its tiles, flushed to a byte boundary.
    pub fn encode(
        &mut self,
        frame: &Frame<'_>,
        rect: &Rect,
        conv: &PixelConverter,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let format = frame.mode().format;
        let bpp = format.bytes_per_pixel();
        let cpixel = conv.format().cpixel();
        self.plain.clear();
        for ty in (rect.y..rect.bottom()).step_by(TILE as usize) {
            for tx in (rect.x..rect.right()).step_by(TILE as usize) {
                let tw = TILE.min(rect.right() - tx);
                let th = TILE.min(rect.bottom() - ty);
                self.tile.clear();
                for y in ty..ty + th {
                    let (a, b) = (tx as usize * bpp, (tx + tw) as usize * bpp);
                    if let Some(src) = frame.line(y).get(a..b) {
                        conv.values(format, src, &mut self.tile);
                    }
                }
                // A frame shorter than the rectangle (never, for a checked rectangle): black.
                self.tile.resize((tw * th) as usize, 0);
                encode_tile(
                    &self.tile,
                    tw as usize,
                    conv,
                    cpixel,
                    &mut self.palette,
                    &mut self.plain,
                );
            }
        }
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        self.deflate_sync(out)?;
        let len = u32::try_from(out.len() - at - 4).map_err(|_| EncodeError::TooLong)?;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Compresses `self.plain` into `out` and flushes the stream to a byte boundary, so the
    /// viewer can decode this rectangle before the next one arrives.
    fn deflate_sync(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let input = &self.plain;
        let mut used = 0usize;
        loop {
            out.reserve((input.len() - used) / 2 + 4096);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&input[used..], out, FlushCompress::Sync)?;
            used += usize::try_from(self.deflate.total_in() - before).unwrap_or(0);
            // Done once all input went in and the flush left room to spare.
            if used >= input.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// The distinct colours of a tile (up to [`MAX_PALETTE`]) with an index lookup.
struct Palette {
    colours: Vec<u32>,
    slots: [Option<(u32, u8)>; 256],
}

impl Palette {
    fn new() -> Self {
        Palette {
            colours: Vec::with_capacity(MAX_PALETTE),
            slots: [None; 256],
        }
    }

    fn clear(&mut self) {
        self.colours.clear();
        self.slots = [None; 256];
    }

    fn slot(v: u32) -> usize {
        (v.wrapping_mul(0x9e37_79b1) >> 24) as usize
    }

    /// The index of `v`, adding it if there is room; `None` when the palette is full.
    fn index(&mut self, v: u32) -> Option<u8> {
        let mut s = Self::slot(v);
        loop {
            match self.slots[s] {
                Some((c, i)) if c == v => return Some(i),
                Some(_) => s = (s + 1) & 0xff,
                None => {
                    if self.colours.len() >= MAX_PALETTE {
                        return None;
                    }
                    let i = self.colours.len() as u8;
                    self.colours.push(v);
                    self.slots[s] = Some((v, i));
                    return Some(i);
                }
            }
        }
    }
}

/// Bytes a run length takes: (len - 1) as a sum of bytes, all 255 but the last.
fn run_length_bytes(len: usize) -> usize {
    (len - 1) / 255 + 1
}

fn put_run_length(len: usize, out: &mut Vec<u8>) {
    let mut rest = len - 1;
    while rest >= 255 {
        out.push(255);
        rest -= 255;
    }
    out.push(rest as u8);
}

fn put_cpixel(conv: &PixelConverter, (at, len): (usize, usize), v: u32, out: &mut Vec<u8>) {
    if let Some(c) = conv.wire(v).get(at..at + len) {
        out.extend_from_slice(c);
    }
}

/// Appends one ZRLE tile of `values` (`width` pixels a row) in its smallest subencoding.
fn encode_tile(
    values: &[u32],
    width: usize,
    conv: &PixelConverter,
    cpixel: (usize, usize),
    palette: &mut Palette,
    out: &mut Vec<u8>,
) {
    let cp = cpixel.1;
    let height = values.len() / width.max(1);
    palette.clear();
    let mut fits_palette = true;
    // Sizes of the run-length forms, counted over the runs.
    let (mut plain_rle, mut palette_runs) = (0usize, 0usize);
    for run in values.chunk_by(|a, b| a == b) {
        let len_bytes = run_length_bytes(run.len());
        plain_rle += cp + len_bytes;
        palette_runs += 1 + if run.len() > 1 { len_bytes } else { 0 };
        if fits_palette {
            fits_palette = palette.index(run[0]).is_some();
        }
    }
    let colours = palette.colours.len();
    if fits_palette && colours == 1 {
        out.push(SUB_SOLID);
        put_cpixel(conv, cpixel, values[0], out);
        return;
    }
    let raw = values.len() * cp;
    let palette_rle = fits_palette.then(|| colours * cp + palette_runs);
    let bits = match colours {
        2 => 1,
        3..=4 => 2,
        _ => 4,
    };
    let packed = (fits_palette && colours <= MAX_PACKED_PALETTE)
        .then(|| colours * cp + height * (width * bits).div_ceil(8));
    let best = [Some(raw), packed, Some(plain_rle), palette_rle]
        .into_iter()
        .enumerate()
        .filter_map(|(i, size)| size.map(|s| (s, i)))
        .min()
        .map_or(0, |(_, i)| i);
    match best {
        1 => {
            out.push(colours as u8);
            for &c in &palette.colours {
                put_cpixel(conv, cpixel, c, out);
            }
            for row in values.chunks(width.max(1)) {
                let (mut byte, mut used) = (0u8, 0);
                for &v in row {
                    let i = palette.index(v).unwrap_or(0);
                    byte |= i << (8 - bits - used);
                    used += bits;
                    if used == 8 {
                        out.push(byte);
                        (byte, used) = (0, 0);
                    }
                }
                if used > 0 {
                    out.push(byte);
                }
            }
        }
        2 => {
            out.push(SUB_PLAIN_RLE);
            for run in values.chunk_by(|a, b| a == b) {
                put_cpixel(conv, cpixel, run[0], out);
                put_run_length(run.len(), out);
            }
        }
        3 => {
            out.push(SUB_PLAIN_RLE | colours as u8);
            for &c in &palette.colours {
                put_cpixel(conv, cpixel, c, out);
            }
            for run in values.chunk_by(|a, b| a == b) {
                let i = palette.index(run[0]).unwrap_or(0);
                if run.len() == 1 {
                    out.push(i);
                } else {
                    out.push(i | 0x80);
                    put_run_length(run.len(), out);
                }
            }
        }
        _ => {
            out.push(SUB_RAW);
            for &v in values {
                put_cpixel(conv, cpixel, v, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Mode, PixelFormat};
    use crate::rfb::pixel::RfbPixelFormat;
    use flate2::{Decompress, FlushDecompress};

    /// A ZRLE tile decoder written from the specification, for checking the encoder.
    fn decode_tile(data: &[u8], at: &mut usize, w: usize, h: usize, cp: usize) -> Vec<[u8; 3]> {
        let mut take = |n: usize| {
            let s = &data[*at..*at + n];
            *at += n;
            s.to_vec()
        };
        let px = |b: Vec<u8>| [b[2], b[1], b[0]];
        let sub = take(1)[0];
        let n = w * h;
        let run_len = |take: &mut dyn FnMut(usize) -> Vec<u8>| {
            let mut len = 1;
            loop {
                let b = take(1)[0] as usize;
                len += b;
                if b != 255 {
                    return len;
                }
            }
        };
        match sub {
            0 => (0..n).map(|_| px(take(cp))).collect(),
            1 => vec![px(take(cp)); n],
            2..=16 => {
                let pal: Vec<_> = (0..sub).map(|_| px(take(cp))).collect();
                let bits = match sub {
                    2 => 1,
                    3 | 4 => 2,
                    _ => 4,
                };
                let mut out = Vec::new();
                for _ in 0..h {
                    let row = take((w * bits).div_ceil(8));
                    for x in 0..w {
                        let bit = x * bits;
                        let i = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                        out.push(pal[i as usize]);
                    }
                }
                out
            }
            128 => {
                let mut out = Vec::new();
                while out.len() < n {
                    let c = px(take(cp));
                    let len = run_len(&mut take);
                    out.extend(std::iter::repeat_n(c, len));
                }
                out
            }
            130.. => {
                let pal: Vec<_> = (0..sub - 128).map(|_| px(take(cp))).collect();
                let mut out = Vec::new();
                while out.len() < n {
                    let i = take(1)[0];
                    let len = if i & 0x80 != 0 { run_len(&mut take) } else { 1 };
                    out.extend(std::iter::repeat_n(pal[(i & 0x7f) as usize], len));
                }
                out
            }
            other => panic!("subencoding {other}"),
        }
    }

    fn decode_rect(z: &mut Decompress, data: &[u8], rect: &Rect) -> Vec<[u8; 3]> {
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        assert_eq!(data.len(), 4 + len, "one rectangle, nothing after it");
        let mut plain = Vec::with_capacity(1 << 22);
        z.decompress_vec(&data[4..], &mut plain, FlushDecompress::Sync)
            .unwrap();
        let (w, h) = (rect.w as usize, rect.h as usize);
        let mut pixels = vec![[0u8; 3]; w * h];
        let mut at = 0;
        for ty in (0..h).step_by(64) {
            for tx in (0..w).step_by(64) {
                let (tw, th) = (64.min(w - tx), 64.min(h - ty));
                let tile = decode_tile(&plain, &mut at, tw, th, 3);
                for (i, p) in tile.into_iter().enumerate() {
                    pixels[(ty + i / tw) * w + tx + i % tw] = p;
                }
            }
        }
        assert_eq!(at, plain.len(), "every byte belongs to a tile");
        pixels
    }

    /// A picture with flat areas, few-colour text-like areas, and noise.
    fn picture(w: u32, h: u32) -> Vec<u8> {
        let mut fb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let c: [u8; 3] = match (x / 64 + y / 64) % 4 {
                    0 => [10, 20, 30],
                    1 => [if (x ^ y) & 4 == 0 { 0xff } else { 0 }, 0, 0],
                    2 => [(x * 7) as u8, (y * 3) as u8, (x * y) as u8],
                    _ => [[1, 2, 3], [4, 5, 6], [7, 8, 9]][((x + y) % 3) as usize],
                };
                fb.extend(PixelFormat::Xrgb8888.from_rgb(c));
            }
        }
        fb
    }

    #[test]
    fn zrle_rectangles_decode_to_the_frame_through_one_stream() {
        let (w, h) = (300, 200);
        let fb = picture(w, h);
        let frame = Frame::new(Mode::packed(PixelFormat::Xrgb8888, w, h), &fb).unwrap();
        let conv = PixelConverter::new(RfbPixelFormat::SERVER);
        let mut enc = ZrleEncoder::new();
        let mut z = Decompress::new(true);
        for rect in [
            Rect::new(0, 0, w, h),
            Rect::new(10, 5, 77, 130),
            Rect::new(299, 199, 1, 1),
        ] {
            let mut out = Vec::new();
            enc.encode(&frame, &rect, &conv, &mut out).unwrap();
            let got = decode_rect(&mut z, &out, &rect);
            for (i, p) in got.iter().enumerate() {
                let (x, y) = (rect.x + i as u32 % rect.w, rect.y + i as u32 / rect.w);
                assert_eq!(*p, frame.pixel(x, y), "{rect:?} at ({x}, {y})");
            }
        }
    }

    #[test]
    fn each_tile_takes_its_smallest_form() {
        let conv = PixelConverter::new(RfbPixelFormat::SERVER);
        let cp = RfbPixelFormat::SERVER.cpixel();
        let mut pal = Palette::new();
        let mut out = Vec::new();
        encode_tile(&[7; 64 * 64], 64, &conv, cp, &mut pal, &mut out);
        assert_eq!(out, [SUB_SOLID, 7, 0, 0]);
        // Two colours alternating every pixel: packed, one bit a pixel.
        let two: Vec<u32> = (0..64 * 64).map(|i| i & 1).collect();
        out.clear();
        encode_tile(&two, 64, &conv, cp, &mut pal, &mut out);
        assert_eq!(out[0], 2);
        assert_eq!(out.len(), 1 + 2 * 3 + 64 * 8);
        // Two long runs: plain RLE (no palette to send).
        let runs: Vec<u32> = (0..64 * 64).map(|i| u32::from(i >= 1000)).collect();
        out.clear();
        encode_tile(&runs, 64, &conv, cp, &mut pal, &mut out);
        assert_eq!(
            out,
            [
                SUB_PLAIN_RLE,
                0,
                0,
                0,
                255,
                255,
                255,
                234,
                1,
                0,
                0,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                35
            ]
        );
        // Twenty colours in runs of ten: palette RLE.
        let many: Vec<u32> = (0..64 * 64).map(|i| (i / 10) % 20).collect();
        out.clear();
        encode_tile(&many, 64, &conv, cp, &mut pal, &mut out);
        assert_eq!(out[0], SUB_PLAIN_RLE + 20);
        let mut at = 0;
        let decoded = decode_tile(&out, &mut at, 64, 64, 3);
        assert_eq!((at, decoded[4095]), (out.len(), [0, 0, 9]));
        // All different: raw.
        let noise: Vec<u32> = (0..64 * 64).map(|i| i * 2654435761u32).collect();
        out.clear();
        encode_tile(&noise, 64, &conv, cp, &mut pal, &mut out);
        assert_eq!((out[0], out.len()), (SUB_RAW, 1 + 64 * 64 * 3));
        let mut at = 0;
        let decoded = decode_tile(&out, &mut at, 64, 64, 3);
        assert_eq!(decoded[5], {
            let v = 5u32.wrapping_mul(2654435761).to_le_bytes();
            [v[2], v[1], v[0]]
        });
    }

    #[test]
    fn run_lengths_use_255_continuation_bytes() {
        let mut out = Vec::new();
        for len in [1, 2, 255, 256, 257, 511, 4096] {
            out.clear();
            put_run_length(len, &mut out);
            assert_eq!(out.len(), run_length_bytes(len), "{len}");
            assert_eq!(out.iter().map(|&b| b as usize).sum::<usize>() + 1, len);
            assert!(out[..out.len() - 1].iter().all(|&b| b == 255));
            assert_ne!(*out.last().unwrap(), 255);
        }
    }

    #[test]
    fn raw_rectangles_carry_the_clients_pixels() {
        let mode = Mode::packed(PixelFormat::Rgb888, 3, 2);
        let fb: Vec<u8> = (0..18).collect();
        let frame = Frame::new(mode, &fb).unwrap();
        let mut out = Vec::new();
        let conv = PixelConverter::new(RfbPixelFormat::SERVER);
        encode_raw(&frame, &Rect::new(1, 1, 2, 1), &conv, &mut out);
        assert_eq!(out, [12, 13, 14, 0, 15, 16, 17, 0]);
    }
}
