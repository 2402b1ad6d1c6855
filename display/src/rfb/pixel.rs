//! RFB pixel formats (the 16-byte PIXEL_FORMAT of ServerInit and SetPixelFormat) and the
//! conversion of framebuffer pixels into the format a viewer asked for.
#![expect(
    clippy::cast_possible_truncation,
    reason = "packing a pixel into the client's 8/16-bit format keeps the low bits on purpose; \
              channel values are already scaled to the client's maxima"
)]

use crate::format::PixelFormat;

/// Size of a PIXEL_FORMAT on the wire.
pub const PIXEL_FORMAT_LEN: usize = 16;

/// Why a viewer's pixel format is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PixelFormatError {
    /// RFB allows 8, 16 and 32 bits per pixel only.
    #[error("{0} bits per pixel (RFB allows 8, 16 or 32)")]
    BitsPerPixel(u8),
    /// Colour-map formats (true-colour flag 0) are not served.
    #[error("colour-map pixel formats are not supported (true colour only)")]
    ColourMap,
    /// A channel's maximum is not 2^n - 1 (n ≥ 1) or does not fit at its shift.
    #[error("{channel} channel: max {max} at shift {shift} does not fit {bpp} bits per pixel")]
    Channel {
        /// "red", "green" or "blue".
        channel: &'static str,
        /// The maximum the viewer sent.
        max: u16,
        /// The shift the viewer sent.
        shift: u8,
        /// The viewer's bits per pixel.
        bpp: u8,
    },
}

/// A PIXEL_FORMAT as RFB describes it: how a pixel value is laid out in bytes and where each
/// colour channel sits in the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RfbPixelFormat {
    /// 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits in a pixel value.
    pub depth: u8,
    /// Multi-byte pixel values are sent most significant byte first.
    pub big_endian: bool,
    /// Channels are packed in the value (as opposed to a colour-map index).
    pub true_colour: bool,
    /// Largest red value (2^n - 1).
    pub red_max: u16,
    /// Largest green value.
    pub green_max: u16,
    /// Largest blue value.
    pub blue_max: u16,
    /// Bit position of red in the value.
    pub red_shift: u8,
    /// Bit position of green.
    pub green_shift: u8,
    /// Bit position of blue.
    pub blue_shift: u8,
}

impl RfbPixelFormat {
    /// The server's own format (ServerInit): 32 bits, depth 24, little-endian, true colour,
    /// 8 bits a channel with red at 16, green at 8 and blue at 0 — byte for byte the XRGB8888
    /// layout of the framebuffers, so most viewers need no conversion.
    pub const SERVER: RfbPixelFormat = RfbPixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// 16-bit 5-6-5 true colour, little-endian: what many viewers ask for on slow links.
    pub const RGB565: RfbPixelFormat = RfbPixelFormat {
        bits_per_pixel: 16,
        depth: 16,
        big_endian: false,
        true_colour: true,
        red_max: 31,
        green_max: 63,
        blue_max: 31,
        red_shift: 11,
        green_shift: 5,
        blue_shift: 0,
    };

    /// Decodes the 16 wire bytes (not validated: see [`Self::validate`]).
    pub fn from_bytes(b: &[u8; PIXEL_FORMAT_LEN]) -> Self {
        RfbPixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }

    /// The 16 wire bytes (three bytes of padding at the end).
    pub fn to_bytes(&self) -> [u8; PIXEL_FORMAT_LEN] {
        let mut b = [0u8; PIXEL_FORMAT_LEN];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = u8::from(self.true_colour);
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Checks that the server can produce this format: 8, 16 or 32 bits, true colour, and
    /// every channel a run of 2^n - 1 bits that fits the pixel at its shift.
    pub fn validate(&self) -> Result<(), PixelFormatError> {
        let bpp = self.bits_per_pixel;
        if !matches!(bpp, 8 | 16 | 32) {
            return Err(PixelFormatError::BitsPerPixel(bpp));
        }
        if !self.true_colour {
            return Err(PixelFormatError::ColourMap);
        }
        for (channel, max, shift) in self.channels() {
            let bits = channel_bits(max);
            let fits = bits.is_some_and(|n| u32::from(shift) + n <= u32::from(bpp));
            if !fits {
                return Err(PixelFormatError::Channel {
                    channel,
                    max,
                    shift,
                    bpp,
                });
            }
        }
        Ok(())
    }

    /// Bytes one pixel takes on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    fn channels(&self) -> [(&'static str, u16, u8); 3] {
        [
            ("red", self.red_max, self.red_shift),
            ("green", self.green_max, self.green_shift),
            ("blue", self.blue_max, self.blue_shift),
        ]
    }

    /// The bits of a pixel value that carry colour.
    fn colour_mask(&self) -> u32 {
        self.channels()
            .iter()
            .fold(0, |m, &(_, max, shift)| m | u32::from(max) << shift)
    }

    /// Where ZRLE's compressed pixel (CPIXEL) sits in a pixel's wire bytes: `(offset, len)`.
    /// A 32-bit true-colour format of depth 24 or less whose colour bits all lie in the three
    /// least (or most) significant bytes sends only those three bytes; any other format sends
    /// the whole pixel.
    pub fn cpixel(&self) -> (usize, usize) {
        let bpp = self.bytes_per_pixel();
        if self.bits_per_pixel != 32 || self.depth > 24 || !self.true_colour {
            return (0, bpp);
        }
        let mask = self.colour_mask();
        let low = mask & 0xff00_0000 == 0;
        let high = mask & 0x0000_00ff == 0;
        match (low, high, self.big_endian) {
            // The three low-order bytes: first in little-endian order, last in big-endian.
            (true, _, false) => (0, 3),
            (true, _, true) => (1, 3),
            (false, true, false) => (1, 3),
            (false, true, true) => (0, 3),
            (false, false, _) => (0, bpp),
        }
    }
}

/// `Some(n)` when `max` is 2^n - 1 with 1 ≤ n ≤ 16.
fn channel_bits(max: u16) -> Option<u32> {
    (max != 0 && max.wrapping_add(1) & max == 0).then(|| max.count_ones())
}

/// Turns framebuffer pixels into pixel values of one viewer's format: one lookup table per
/// channel maps an 8-bit intensity to its bits in the value.
#[derive(Clone, Debug)]
pub struct PixelConverter {
    format: RfbPixelFormat,
    red: [u32; 256],
    green: [u32; 256],
    blue: [u32; 256],
    /// The format is [`RfbPixelFormat::SERVER`]: an XRGB8888 pixel is its own value.
    native: bool,
}

impl PixelConverter {
    /// A converter into `format`, which must have passed [`RfbPixelFormat::validate`].
    pub fn new(format: RfbPixelFormat) -> Self {
        let table = |max: u16, shift: u8| {
            let mut t = [0u32; 256];
            let max = u32::from(max);
            let shift = u32::from(shift).min(31);
            for (c, v) in t.iter_mut().enumerate() {
                let c = c as u32;
                // For max 2^n - 1 with n ≤ 8 the top n bits (so 5-6-5 values round-trip); wider
                // channels scale up, rounding to nearest.
                let scaled = if max <= 255 {
                    c >> (8 - max.count_ones().min(8))
                } else {
                    (c * max + 127) / 255
                };
                *v = scaled.checked_shl(shift).unwrap_or(0);
            }
            t
        };
        PixelConverter {
            format,
            red: table(format.red_max, format.red_shift),
            green: table(format.green_max, format.green_shift),
            blue: table(format.blue_max, format.blue_shift),
            native: format == RfbPixelFormat::SERVER,
        }
    }

    /// The format converted to.
    pub fn format(&self) -> &RfbPixelFormat {
        &self.format
    }

    /// The value of colour `[r, g, b]`.
    #[inline]
    pub fn value(&self, [r, g, b]: [u8; 3]) -> u32 {
        self.red[usize::from(r)] | self.green[usize::from(g)] | self.blue[usize::from(b)]
    }

    /// Converts the pixels of `src` (in framebuffer format `from`) into values, appending them
    /// to `out`.
    pub fn values(&self, from: PixelFormat, src: &[u8], out: &mut Vec<u32>) {
        let bpp = from.bytes_per_pixel();
        if self.native && from == PixelFormat::Xrgb8888 {
            out.extend(
                src.chunks_exact(4)
                    .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0])),
            );
        } else {
            out.extend(src.chunks_exact(bpp).map(|p| self.value(from.to_rgb(p))));
        }
    }

    /// Pixel `value` as the format's wire bytes: the first [`RfbPixelFormat::bytes_per_pixel`]
    /// bytes of the array.
    #[inline]
    pub fn wire(&self, value: u32) -> [u8; 4] {
        match (self.format.bits_per_pixel, self.format.big_endian) {
            (8, _) => [value as u8, 0, 0, 0],
            (16, false) => {
                let [a, b] = (value as u16).to_le_bytes();
                [a, b, 0, 0]
            }
            (16, true) => {
                let [a, b] = (value as u16).to_be_bytes();
                [a, b, 0, 0]
            }
            (_, false) => value.to_le_bytes(),
            (_, true) => value.to_be_bytes(),
        }
    }

    /// Appends pixel `value` as the format's wire bytes.
    #[inline]
    pub fn put(&self, value: u32, out: &mut Vec<u8>) {
        let bpp = self.format.bytes_per_pixel().min(4);
        out.extend_from_slice(&self.wire(value)[..bpp]);
    }

    /// Appends the pixels of `src` (framebuffer format `from`) as wire bytes.
    pub fn put_row(&self, from: PixelFormat, src: &[u8], out: &mut Vec<u8>) {
        if self.native && from == PixelFormat::Xrgb8888 {
            // Byte for byte, with the unused byte cleared.
            out.extend(src.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2], 0]));
            return;
        }
        let bpp = from.bytes_per_pixel();
        for p in src.chunks_exact(bpp) {
            self.put(self.value(from.to_rgb(p)), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RGB32_LOW_RED: RfbPixelFormat = RfbPixelFormat {
        red_shift: 0,
        blue_shift: 16,
        ..RfbPixelFormat::SERVER
    };

    #[test]
    fn the_wire_form_round_trips() {
        let f = RfbPixelFormat {
            big_endian: true,
            ..RGB32_LOW_RED
        };
        assert_eq!(RfbPixelFormat::from_bytes(&f.to_bytes()), f);
        let b = RfbPixelFormat::SERVER.to_bytes();
        assert_eq!(b, [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    }

    #[test]
    fn formats_the_server_cannot_produce_are_refused() {
        let ok = RfbPixelFormat::SERVER;
        assert_eq!(ok.validate(), Ok(()));
        for bpp in [0, 1, 4, 24, 64, 255] {
            let f = RfbPixelFormat {
                bits_per_pixel: bpp,
                ..ok
            };
            assert_eq!(f.validate(), Err(PixelFormatError::BitsPerPixel(bpp)));
        }
        let map = RfbPixelFormat {
            true_colour: false,
            ..ok
        };
        assert_eq!(map.validate(), Err(PixelFormatError::ColourMap));
        for (max, shift) in [(0, 0), (254, 0), (255, 25), (0xffff, 17), (0x8000, 0)] {
            let f = RfbPixelFormat {
                red_max: max,
                red_shift: shift,
                ..ok
            };
            assert!(
                matches!(
                    f.validate(),
                    Err(PixelFormatError::Channel { channel: "red", .. })
                ),
                "max {max} shift {shift}"
            );
        }
        let wide = RfbPixelFormat {
            red_max: 1023,
            red_shift: 20,
            green_max: 1023,
            green_shift: 10,
            blue_max: 1023,
            blue_shift: 0,
            depth: 30,
            ..ok
        };
        assert_eq!(wide.validate(), Ok(()));
    }

    #[test]
    fn values_follow_the_shifts_and_maxima() {
        let c = PixelConverter::new(RGB32_LOW_RED);
        assert_eq!(c.value([0x12, 0x34, 0x56]), 0x0056_3412);
        let bgr233 = RfbPixelFormat {
            bits_per_pixel: 8,
            depth: 8,
            red_max: 7,
            green_max: 7,
            blue_max: 3,
            red_shift: 0,
            green_shift: 3,
            blue_shift: 6,
            ..RfbPixelFormat::SERVER
        };
        let c = PixelConverter::new(bgr233);
        assert_eq!(c.value([0xff, 0, 0]), 0b00_000_111);
        assert_eq!(c.value([0, 0xff, 0]), 0b00_111_000);
        assert_eq!(c.value([0, 0, 0xff]), 0b11_000_000);
        let ten = RfbPixelFormat {
            red_max: 1023,
            red_shift: 20,
            depth: 30,
            ..RfbPixelFormat::SERVER
        };
        assert_eq!(PixelConverter::new(ten).value([0xff, 0, 0]), 1023 << 20);
    }

    #[test]
    fn sixteen_bit_pixels_round_trip_through_the_framebuffer_format() {
        let rgb565 = RfbPixelFormat::RGB565;
        let c = PixelConverter::new(rgb565);
        for v in [0u16, 1, 0x1f, 0x7e0, 0xf800, 0xffff, 0x1234, 0xabcd] {
            let mut out = Vec::new();
            c.put_row(PixelFormat::Rgb565, &v.to_le_bytes(), &mut out);
            assert_eq!(out, v.to_le_bytes(), "{v:#x}");
        }
        let be = PixelConverter::new(RfbPixelFormat {
            big_endian: true,
            ..rgb565
        });
        let mut out = Vec::new();
        be.put(0x1234, &mut out);
        assert_eq!(out, [0x12, 0x34]);
    }

    #[test]
    fn every_framebuffer_format_converts_to_the_native_format() {
        let c = PixelConverter::new(RfbPixelFormat::SERVER);
        let colour = [0x12, 0x34, 0x56];
        for from in [
            PixelFormat::Xrgb8888,
            PixelFormat::Bgrx8888,
            PixelFormat::Rgb888,
        ] {
            let mut px = from.from_rgb(colour);
            if from == PixelFormat::Xrgb8888 {
                px[3] = 0xee; // the unused byte is cleared
            }
            let mut out = Vec::new();
            c.put_row(from, &px, &mut out);
            assert_eq!(out, [0x56, 0x34, 0x12, 0], "{from:?}");
            let mut values = Vec::new();
            c.values(from, &px, &mut values);
            assert_eq!(values, [0x0012_3456], "{from:?}");
        }
    }

    #[test]
    fn compressed_pixels_take_the_three_bytes_that_hold_colour() {
        assert_eq!(RfbPixelFormat::SERVER.cpixel(), (0, 3));
        let be = RfbPixelFormat {
            big_endian: true,
            ..RfbPixelFormat::SERVER
        };
        assert_eq!(be.cpixel(), (1, 3));
        let high = RfbPixelFormat {
            red_shift: 24,
            green_shift: 16,
            blue_shift: 8,
            ..RfbPixelFormat::SERVER
        };
        assert_eq!(high.cpixel(), (1, 3));
        assert_eq!(
            RfbPixelFormat {
                big_endian: true,
                ..high
            }
            .cpixel(),
            (0, 3)
        );
        let deep = RfbPixelFormat {
            depth: 32,
            ..RfbPixelFormat::SERVER
        };
        assert_eq!(deep.cpixel(), (0, 4));
        let sixteen = RfbPixelFormat::RGB565;
        assert_eq!(sixteen.cpixel(), (0, 2));
    }
}
