//! Pixel formats, scan-out modes and a borrowed view of one frame.

/// DRM fourcc of XRGB8888 (`XR24`).
pub const FOURCC_XRGB8888: u32 = fourcc(b"XR24");
/// DRM fourcc of BGRX8888 (`BX24`).
pub const FOURCC_BGRX8888: u32 = fourcc(b"BX24");
/// DRM fourcc of RGB888 (`RG24`).
pub const FOURCC_RGB888: u32 = fourcc(b"RG24");
/// DRM fourcc of RGB565 (`RG16`).
pub const FOURCC_RGB565: u32 = fourcc(b"RG16");

/// Packs four ASCII characters into a DRM fourcc (first character in the low byte).
pub const fn fourcc(code: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*code)
}

/// A framebuffer pixel layout, named as DRM names them (little-endian words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 32 bits: bytes B, G, R, X.
    Xrgb8888,
    /// 32 bits: bytes X, R, G, B (the byte-swapped layout of a big-endian guest).
    Bgrx8888,
    /// 24 bits: bytes B, G, R.
    Rgb888,
    /// 16 bits, little-endian: R in bits 15–11, G in 10–5, B in 4–0.
    Rgb565,
}

impl PixelFormat {
    /// Bytes one pixel takes.
    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Xrgb8888 | PixelFormat::Bgrx8888 => 4,
            PixelFormat::Rgb888 => 3,
            PixelFormat::Rgb565 => 2,
        }
    }

    /// The DRM fourcc.
    pub const fn fourcc(self) -> u32 {
        match self {
            PixelFormat::Xrgb8888 => FOURCC_XRGB8888,
            PixelFormat::Bgrx8888 => FOURCC_BGRX8888,
            PixelFormat::Rgb888 => FOURCC_RGB888,
            PixelFormat::Rgb565 => FOURCC_RGB565,
        }
    }

    /// The format of a DRM fourcc, if it is one of ours.
    pub fn from_fourcc(code: u32) -> Option<Self> {
        [
            PixelFormat::Xrgb8888,
            PixelFormat::Bgrx8888,
            PixelFormat::Rgb888,
            PixelFormat::Rgb565,
        ]
        .into_iter()
        .find(|f| f.fourcc() == code)
    }

    /// Decodes one pixel (`px` holds at least [`Self::bytes_per_pixel`] bytes) to R, G, B.
    #[inline]
    pub fn to_rgb(self, px: &[u8]) -> [u8; 3] {
        match self {
            PixelFormat::Xrgb8888 | PixelFormat::Rgb888 => [px[2], px[1], px[0]],
            PixelFormat::Bgrx8888 => [px[1], px[2], px[3]],
            PixelFormat::Rgb565 => {
                let v = u16::from_le_bytes([px[0], px[1]]);
                let r = ((v >> 11) & 0x1f) as u8;
                let g = ((v >> 5) & 0x3f) as u8;
                let b = (v & 0x1f) as u8;
                [
                    (r << 3) | (r >> 2),
                    (g << 2) | (g >> 4),
                    (b << 3) | (b >> 2),
                ]
            }
        }
    }

    /// Encodes R, G, B as this format's bytes (for tests and pattern generators).
    pub fn from_rgb(self, [r, g, b]: [u8; 3]) -> Vec<u8> {
        match self {
            PixelFormat::Xrgb8888 => vec![b, g, r, 0],
            PixelFormat::Bgrx8888 => vec![0, r, g, b],
            PixelFormat::Rgb888 => vec![b, g, r],
            PixelFormat::Rgb565 => {
                let v = (u16::from(r >> 3) << 11) | (u16::from(g >> 2) << 5) | u16::from(b >> 3);
                v.to_le_bytes().to_vec()
            }
        }
    }
}

/// What is scanned out: a `width` × `height` picture of `format` starting `offset` bytes into
/// the framebuffer, lines `stride` bytes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode {
    /// Pixel layout.
    pub format: PixelFormat,
    /// Visible width in pixels.
    pub width: u32,
    /// Visible height in pixels.
    pub height: u32,
    /// Bytes from one line to the next.
    pub stride: u64,
    /// Byte offset of the first visible pixel.
    pub offset: u64,
}

impl Mode {
    /// A packed mode (stride = width × bytes per pixel) at offset 0.
    pub fn packed(format: PixelFormat, width: u32, height: u32) -> Self {
        Mode {
            format,
            width,
            height,
            stride: u64::from(width) * format.bytes_per_pixel() as u64,
            offset: 0,
        }
    }

    /// One past the last byte the mode reads, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        if self.height == 0 {
            return Some(self.offset);
        }
        let line = u64::from(self.width).checked_mul(self.format.bytes_per_pixel() as u64)?;
        if line > self.stride {
            return None;
        }
        self.stride
            .checked_mul(u64::from(self.height) - 1)?
            .checked_add(line)?
            .checked_add(self.offset)
    }

    /// True when the mode is non-empty and lies inside `len` bytes of framebuffer.
    pub fn fits(&self, len: u64) -> bool {
        self.width > 0 && self.height > 0 && self.end().is_some_and(|end| end <= len)
    }
}

/// One frame: a mode and the framebuffer bytes it reads (already checked to fit).
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    mode: Mode,
    bytes: &'a [u8],
    /// Framebuffer offset of `bytes[0]`.
    origin: u64,
}

impl<'a> Frame<'a> {
    /// A frame of `mode` over `framebuffer`, or `None` when the mode does not fit.
    pub fn new(mode: Mode, framebuffer: &'a [u8]) -> Option<Self> {
        mode.fits(framebuffer.len() as u64).then_some(Frame {
            mode,
            bytes: framebuffer,
            origin: 0,
        })
    }

    /// A frame of `mode` over `visible`, a copy of only the framebuffer bytes the mode scans
    /// out (from `mode.offset` to [`Mode::end`]), or `None` when they are not all there.
    pub fn from_visible(mode: Mode, visible: &'a [u8]) -> Option<Self> {
        let at_start = Mode { offset: 0, ..mode };
        at_start.fits(visible.len() as u64).then_some(Frame {
            mode,
            bytes: visible,
            origin: mode.offset,
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.mode.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.mode.height
    }

    /// The bytes of visible line `y` (`y < height`).
    #[inline]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "`new` and `from_visible` checked that every visible line lies inside `bytes`, \
                  a slice, so its offsets fit usize"
    )]
    pub fn line(&self, y: u32) -> &'a [u8] {
        let bpp = self.mode.format.bytes_per_pixel();
        // `new` and `from_visible` checked that every visible line lies inside `bytes`.
        let start = (self.mode.offset - self.origin + u64::from(y) * self.mode.stride) as usize;
        &self.bytes[start..start + self.mode.width as usize * bpp]
    }

    /// The colour of pixel (`x`, `y`), both inside the frame.
    #[inline]
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let bpp = self.mode.format.bytes_per_pixel();
        let line = self.line(y);
        let at = x as usize * bpp;
        self.mode.format.to_rgb(&line[at..at + bpp])
    }

    /// The whole frame as packed RGB8 (3 bytes per pixel, no padding).
    pub fn to_rgb8(&self) -> Vec<u8> {
        let (w, h) = (self.mode.width as usize, self.mode.height as usize);
        let mut out = vec![0u8; w * h * 3];
        let format = self.mode.format;
        let bpp = format.bytes_per_pixel();
        for (y, dst) in out.chunks_exact_mut(w * 3).enumerate() {
            let src = self.line(u32::try_from(y).unwrap_or(u32::MAX));
            match format {
                PixelFormat::Xrgb8888 => {
                    for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(4)) {
                        d[0] = s[2];
                        d[1] = s[1];
                        d[2] = s[0];
                    }
                }
                _ => {
                    for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(bpp)) {
                        d.copy_from_slice(&format.to_rgb(s));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourccs_are_drm_codes() {
        assert_eq!(FOURCC_XRGB8888, 0x3432_5258);
        assert_eq!(
            PixelFormat::from_fourcc(0x3432_5258),
            Some(PixelFormat::Xrgb8888)
        );
        assert_eq!(PixelFormat::from_fourcc(0), None);
    }

    #[test]
    fn every_format_round_trips_its_representable_colours() {
        for f in [
            PixelFormat::Xrgb8888,
            PixelFormat::Bgrx8888,
            PixelFormat::Rgb888,
        ] {
            let c = [0x12, 0x34, 0x56];
            assert_eq!(f.to_rgb(&f.from_rgb(c)), c, "{f:?}");
        }
        let f = PixelFormat::Rgb565;
        assert_eq!(f.to_rgb(&f.from_rgb([0xff, 0xff, 0xff])), [0xff; 3]);
        assert_eq!(f.to_rgb(&f.from_rgb([0xf8, 0, 0])), [0xff, 0, 0]);
    }

    #[test]
    fn a_mode_that_overflows_or_overruns_does_not_fit() {
        let m = Mode::packed(PixelFormat::Xrgb8888, 64, 64);
        assert!(m.fits(64 * 64 * 4));
        assert!(!m.fits(64 * 64 * 4 - 1));
        let huge = Mode {
            stride: u64::MAX,
            ..m
        };
        assert!(!huge.fits(u64::MAX));
        let short_stride = Mode { stride: 4, ..m };
        assert!(!short_stride.fits(1 << 20));
        assert!(Frame::new(m, &[0u8; 16]).is_none());
    }

    #[test]
    fn frames_honour_stride_and_offset() {
        let mode = Mode {
            format: PixelFormat::Rgb888,
            width: 2,
            height: 2,
            stride: 8,
            offset: 1,
        };
        let mut fb = vec![0u8; 17];
        fb[1..4].copy_from_slice(&[3, 2, 1]);
        fb[9 + 3..9 + 6].copy_from_slice(&[6, 5, 4]);
        let frame = Frame::new(mode, &fb).unwrap();
        assert_eq!(frame.pixel(0, 0), [1, 2, 3]);
        assert_eq!(frame.pixel(1, 1), [4, 5, 6]);
        assert_eq!(frame.to_rgb8(), vec![1, 2, 3, 0, 0, 0, 0, 0, 0, 4, 5, 6]);
    }

    #[test]
    fn a_frame_over_a_copy_of_its_visible_bytes_reads_as_over_the_whole_framebuffer() {
        let mode = Mode {
            format: PixelFormat::Rgb888,
            width: 2,
            height: 2,
            stride: 8,
            offset: 5,
        };
        let fb: Vec<u8> = (0..32).collect();
        let whole = Frame::new(mode, &fb).unwrap();
        let visible = &fb[5..mode.end().unwrap() as usize];
        let copy = Frame::from_visible(mode, visible).unwrap();
        assert_eq!(copy.mode(), mode);
        assert_eq!(copy.to_rgb8(), whole.to_rgb8());
        assert!(Frame::from_visible(mode, &visible[1..]).is_none());
    }
}
