//! An EDID 1.4 base block describing the modes of an mbochs type: the preferred mode as the
//! first detailed timing, the largest mode as the second, the VESA established and standard
//! timings that fit, a range-limits and a name descriptor, and the checksum.
//!
//! Timings follow the CVT reduced-blanking rules at 60 Hz (fixed 160-pixel horizontal blank,
//! at least 460 µs of vertical blank).
#![expect(
    clippy::cast_possible_truncation,
    reason = "EDID packs masked timing fields into bytes: each cast keeps the low bits on purpose; \
              the values come from the device type, never from a guest"
)]

use crate::types::Resolution;

/// Length of an EDID block.
pub const EDID_BLOCK_LEN: usize = 128;
/// The fixed header every EDID starts with.
pub const EDID_HEADER: [u8; 8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];

/// Refresh rate of every advertised mode.
pub const REFRESH_HZ: u32 = 60;
/// Dots per inch assumed for the physical size fields.
const DPI: u32 = 96;

// Offsets in the base block.
const OFF_MANUFACTURER: usize = 8;
const OFF_PRODUCT: usize = 10;
const OFF_SERIAL: usize = 12;
const OFF_WEEK: usize = 16;
const OFF_YEAR: usize = 17;
const OFF_VERSION: usize = 18;
const OFF_INPUT: usize = 20;
const OFF_SIZE_CM: usize = 21;
const OFF_GAMMA: usize = 23;
const OFF_FEATURES: usize = 24;
const OFF_CHROMA: usize = 25;
const OFF_ESTABLISHED: usize = 35;
const OFF_STANDARD: usize = 38;
const OFF_DESCRIPTORS: usize = 54;
const OFF_EXTENSIONS: usize = 126;
const OFF_CHECKSUM: usize = 127;

const DESCRIPTOR_LEN: usize = 18;
/// Number of 18-byte descriptors in the base block.
const DESCRIPTOR_SLOTS: usize = 4;
const STANDARD_SLOTS: usize = 8;
const UNUSED_STANDARD: [u8; 2] = [0x01, 0x01];
/// Standard timing byte 0: width / 8 − 31.
const STANDARD_WIDTH_UNIT: u32 = 8;
const STANDARD_WIDTH_BIAS: u32 = 31;
/// Standard timing byte 1: aspect ratio in the top two bits, refresh − 60 below.
const STANDARD_ASPECT_SHIFT: u8 = 6;
const STANDARD_REFRESH_BASE: u32 = 60;

/// Manufacturer id "MDV" (three 5-bit letters, 'A' = 1).
const MANUFACTURER: [u8; 3] = *b"MDV";
const PRODUCT_CODE: u16 = 0x0b0c;
/// Year of manufacture, stored as years since 1990.
const YEAR: u8 = (2024 - 1990) as u8;
/// Digital input, 8 bits per colour, interface not defined.
const INPUT_DIGITAL_8BPC: u8 = 0x80 | (0b010 << 4);
/// Gamma 2.2, stored as (gamma × 100) − 100.
const GAMMA_2_2: u8 = 120;
/// sRGB default colour space; the preferred timing is the native mode.
const FEATURES: u8 = 0x04 | 0x02;

const TAG_RANGE_LIMITS: u8 = 0xfd;
const TAG_PRODUCT_NAME: u8 = 0xfc;
const TAG_DUMMY: u8 = 0x10;
const PRODUCT_NAME: &[u8] = b"mdev bochs";
/// Range limits: no timing formula, limits only.
const RANGE_LIMITS_ONLY: u8 = 0x01;
/// Detailed timing flags: digital separate sync, +hsync, −vsync (CVT reduced blanking).
const SYNC_DIGITAL_SEPARATE_HPOS: u8 = 0x18 | 0x02;

/// A VESA established timing: its resolution, the byte of the bitmap and the bit.
const ESTABLISHED: [(Resolution, usize, u8); 3] = [
    (Resolution::new(640, 480), 0, 5),
    (Resolution::new(800, 600), 0, 0),
    (Resolution::new(1024, 768), 1, 3),
];

/// Aspect ratio codes of a standard timing (EDID 1.3 and later).
#[derive(Clone, Copy)]
enum Aspect {
    A16x10 = 0b00,
    A4x3 = 0b01,
    A5x4 = 0b10,
    A16x9 = 0b11,
}

impl Aspect {
    /// The aspect of a standard timing's second byte.
    fn of_standard(info: u8) -> Self {
        match info >> STANDARD_ASPECT_SHIFT {
            0b00 => Aspect::A16x10,
            0b01 => Aspect::A4x3,
            0b10 => Aspect::A5x4,
            _ => Aspect::A16x9,
        }
    }

    /// The height of a mode `width` pixels wide.
    fn height(self, width: u32) -> u32 {
        match self {
            Aspect::A16x10 => width * 10 / 16,
            Aspect::A4x3 => width * 3 / 4,
            Aspect::A5x4 => width * 4 / 5,
            Aspect::A16x9 => width * 9 / 16,
        }
    }
}

/// Candidate standard timings, in the order they are listed.
const STANDARD_CANDIDATES: [(Resolution, Aspect); 11] = [
    (Resolution::new(1152, 864), Aspect::A4x3),
    (Resolution::new(1280, 720), Aspect::A16x9),
    (Resolution::new(1280, 800), Aspect::A16x10),
    (Resolution::new(1280, 1024), Aspect::A5x4),
    (Resolution::new(1440, 900), Aspect::A16x10),
    (Resolution::new(1600, 1200), Aspect::A4x3),
    (Resolution::new(1680, 1050), Aspect::A16x10),
    (Resolution::new(1920, 1080), Aspect::A16x9),
    (Resolution::new(1920, 1200), Aspect::A16x10),
    (Resolution::new(1920, 1440), Aspect::A4x3),
    (Resolution::new(2048, 1536), Aspect::A4x3),
];

/// A mode's full timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Visible size.
    pub active: Resolution,
    /// Horizontal blank, front porch, sync width (pixels).
    pub h_blank: u32,
    /// Horizontal front porch.
    pub h_front: u32,
    /// Horizontal sync width.
    pub h_sync: u32,
    /// Vertical blank (lines).
    pub v_blank: u32,
    /// Vertical front porch.
    pub v_front: u32,
    /// Vertical sync width.
    pub v_sync: u32,
    /// Pixel clock in kHz.
    pub clock_khz: u32,
}

impl Timing {
    /// The CVT reduced-blanking timing of `active` at [`REFRESH_HZ`].
    pub fn reduced_blanking(active: Resolution) -> Self {
        const H_BLANK: u32 = 160;
        const V_FRONT: u32 = 3;
        const V_SYNC: u32 = 6;
        const MIN_V_BACK: u32 = 6;
        const MIN_V_BLANK_US: u64 = 460;
        let h = u32::from(active.height).max(1);
        // Line period in ns from the frame period less the minimum blank.
        let frame_ns = 1_000_000_000u64 / u64::from(REFRESH_HZ);
        let line_ns = ((frame_ns - MIN_V_BLANK_US * 1000) / u64::from(h)).max(1);
        let blank_lines = (MIN_V_BLANK_US * 1000).div_ceil(line_ns) as u32 + 1;
        let v_blank = blank_lines.max(V_FRONT + V_SYNC + MIN_V_BACK);
        let h_total = u64::from(active.width) + u64::from(H_BLANK);
        let v_total = u64::from(h + v_blank);
        // Rounded down to a 250 kHz step, as CVT does.
        let clock_khz = (h_total * v_total * u64::from(REFRESH_HZ) / 1000 / 250 * 250) as u32;
        Timing {
            active,
            h_blank: H_BLANK,
            h_front: 48,
            h_sync: 32,
            v_blank,
            v_front: V_FRONT,
            v_sync: V_SYNC,
            clock_khz,
        }
    }

    /// Horizontal line rate in kHz (rounded up).
    pub fn line_rate_khz(&self) -> u32 {
        let h_total = u32::from(self.active.width) + self.h_blank;
        self.clock_khz.div_ceil(h_total.max(1))
    }

    fn descriptor(&self) -> [u8; DESCRIPTOR_LEN] {
        let mut d = [0u8; DESCRIPTOR_LEN];
        let clock = (self.clock_khz / 10).min(u32::from(u16::MAX)) as u16;
        d[0..2].copy_from_slice(&clock.to_le_bytes());
        let (ha, hb) = (u32::from(self.active.width), self.h_blank);
        let (va, vb) = (u32::from(self.active.height), self.v_blank);
        d[2] = ha as u8;
        d[3] = hb as u8;
        d[4] = (((ha >> 8) & 0xf) << 4 | ((hb >> 8) & 0xf)) as u8;
        d[5] = va as u8;
        d[6] = vb as u8;
        d[7] = (((va >> 8) & 0xf) << 4 | ((vb >> 8) & 0xf)) as u8;
        d[8] = self.h_front as u8;
        d[9] = self.h_sync as u8;
        d[10] = (((self.v_front & 0xf) << 4) | (self.v_sync & 0xf)) as u8;
        d[11] = (((self.h_front >> 8) & 3) << 6
            | ((self.h_sync >> 8) & 3) << 4
            | ((self.v_front >> 4) & 3) << 2
            | ((self.v_sync >> 4) & 3)) as u8;
        let (wmm, hmm) = (mm(self.active.width), mm(self.active.height));
        d[12] = wmm as u8;
        d[13] = hmm as u8;
        d[14] = (((wmm >> 8) & 0xf) << 4 | ((hmm >> 8) & 0xf)) as u8;
        d[17] = SYNC_DIGITAL_SEPARATE_HPOS;
        d
    }
}

/// Physical size in millimetres of `px` pixels at [`DPI`].
fn mm(px: u16) -> u32 {
    u32::from(px) * 254 / (DPI * 10)
}

/// A display descriptor (not a timing): three zero bytes, the tag, a zero, 13 bytes of data.
fn display_descriptor(tag: u8, data: &[u8; 13]) -> [u8; DESCRIPTOR_LEN] {
    let mut d = [0u8; DESCRIPTOR_LEN];
    d[3] = tag;
    d[5..].copy_from_slice(data);
    d
}

/// 13 bytes of descriptor text: the text, a line feed, then spaces.
fn descriptor_text(text: &[u8]) -> [u8; 13] {
    let mut out = [b' '; 13];
    let n = text.len().min(12);
    out[..n].copy_from_slice(&text[..n]);
    out[n] = b'\n';
    out
}

/// Colour primaries (sRGB) in units of 1/1024: red x/y, green x/y, blue x/y, white x/y.
fn chromaticity() -> [u8; 10] {
    let coords: [u32; 8] = [640, 330, 300, 600, 150, 60, 3127, 3290].map(|c| {
        let scale = if c > 1000 { 10_000 } else { 1000 };
        (c * 1024 + scale / 2) / scale
    });
    let low = |a: u32, b: u32, c: u32, d: u32| {
        (((a & 3) << 6) | ((b & 3) << 4) | ((c & 3) << 2) | (d & 3)) as u8
    };
    let mut out = [0u8; 10];
    out[0] = low(coords[0], coords[1], coords[2], coords[3]);
    out[1] = low(coords[4], coords[5], coords[6], coords[7]);
    for (o, c) in out[2..].iter_mut().zip(coords) {
        *o = (c >> 2) as u8;
    }
    out
}

/// The two bytes of a standard timing, or `None` when the width cannot be encoded.
fn standard_timing(res: Resolution, aspect: Aspect) -> Option<[u8; 2]> {
    let code = (u32::from(res.width) / STANDARD_WIDTH_UNIT).checked_sub(STANDARD_WIDTH_BIAS)?;
    let code = u8::try_from(code).ok().filter(|c| *c != 0)?;
    let refresh = (REFRESH_HZ - STANDARD_REFRESH_BASE) as u8;
    Some([code, ((aspect as u8) << STANDARD_ASPECT_SHIFT) | refresh])
}

/// The EDID of a display whose preferred mode is `preferred` and largest mode `max`, within
/// `memory` bytes at 32 bits per pixel.
pub fn build_edid(preferred: Resolution, max: Resolution, memory: u64) -> [u8; EDID_BLOCK_LEN] {
    let fits = |r: Resolution| r.within(max) && r.bytes_at_32bpp() <= memory;
    let mut e = [0u8; EDID_BLOCK_LEN];
    e[..8].copy_from_slice(&EDID_HEADER);
    let [a, b, c] = MANUFACTURER.map(|l| u16::from(l - b'A' + 1));
    e[OFF_MANUFACTURER..OFF_MANUFACTURER + 2]
        .copy_from_slice(&((a << 10) | (b << 5) | c).to_be_bytes());
    e[OFF_PRODUCT..OFF_PRODUCT + 2].copy_from_slice(&PRODUCT_CODE.to_le_bytes());
    e[OFF_SERIAL..OFF_SERIAL + 4].copy_from_slice(&0u32.to_le_bytes());
    e[OFF_WEEK] = 1;
    e[OFF_YEAR] = YEAR;
    e[OFF_VERSION] = 1;
    e[OFF_VERSION + 1] = 4;
    e[OFF_INPUT] = INPUT_DIGITAL_8BPC;
    e[OFF_SIZE_CM] = mm(preferred.width).div_ceil(10).min(255) as u8;
    e[OFF_SIZE_CM + 1] = mm(preferred.height).div_ceil(10).min(255) as u8;
    e[OFF_GAMMA] = GAMMA_2_2;
    e[OFF_FEATURES] = FEATURES;
    e[OFF_CHROMA..OFF_CHROMA + 10].copy_from_slice(&chromaticity());

    for (res, byte, bit) in ESTABLISHED {
        if fits(res) {
            e[OFF_ESTABLISHED + byte] |= 1 << bit;
        }
    }

    let mut standard = STANDARD_CANDIDATES
        .iter()
        .filter(|(r, _)| fits(*r) && *r != preferred)
        .filter_map(|(r, a)| standard_timing(*r, *a));
    for slot in 0..STANDARD_SLOTS {
        let bytes = standard.next().unwrap_or(UNUSED_STANDARD);
        let at = OFF_STANDARD + slot * 2;
        e[at..at + 2].copy_from_slice(&bytes);
    }

    let preferred_timing = Timing::reduced_blanking(preferred);
    let max_timing = Timing::reduced_blanking(max);
    let second = if max != preferred && fits(max) {
        max_timing.descriptor()
    } else {
        display_descriptor(TAG_DUMMY, &[0; 13])
    };
    let fastest = if fits(max) {
        max_timing
    } else {
        preferred_timing
    };
    let mut limits = [0u8; 13];
    limits[0] = 50; // min vertical Hz
    limits[1] = 75; // max vertical Hz
    limits[2] = 30; // min horizontal kHz
    limits[3] = fastest.line_rate_khz().clamp(31, 255) as u8;
    limits[4] = fastest.clock_khz.div_ceil(10_000).clamp(1, 255) as u8;
    limits[5] = RANGE_LIMITS_ONLY;
    limits[6] = b'\n';
    limits[7..].fill(b' ');
    let descriptors = [
        preferred_timing.descriptor(),
        second,
        display_descriptor(TAG_RANGE_LIMITS, &limits),
        display_descriptor(TAG_PRODUCT_NAME, &descriptor_text(PRODUCT_NAME)),
    ];
    for (i, d) in descriptors.iter().enumerate() {
        let at = OFF_DESCRIPTORS + i * DESCRIPTOR_LEN;
        e[at..at + DESCRIPTOR_LEN].copy_from_slice(d);
    }
    e[OFF_EXTENSIONS] = 0;
    let sum = e[..OFF_CHECKSUM]
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b));
    e[OFF_CHECKSUM] = 0u8.wrapping_sub(sum);
    e
}

/// What a parser finds in an EDID block (for tests and diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdidSummary {
    /// Version and revision.
    pub version: (u8, u8),
    /// The first detailed timing's size.
    pub preferred: Resolution,
    /// Every mode listed: established, standard and detailed timings.
    pub modes: Vec<Resolution>,
}

/// Why [`parse_edid`] rejected a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EdidError {
    /// The block is not 128 bytes or the header is wrong.
    #[error("not an EDID base block")]
    BadHeader,
    /// The bytes do not sum to 0 modulo 256.
    #[error("bad checksum")]
    BadChecksum,
    /// The first descriptor is not a detailed timing.
    #[error("no preferred timing")]
    NoPreferredTiming,
}

/// Checks a base block and lists its modes.
pub fn parse_edid(e: &[u8]) -> Result<EdidSummary, EdidError> {
    if e.len() != EDID_BLOCK_LEN || e[..8] != EDID_HEADER {
        return Err(EdidError::BadHeader);
    }
    if e.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return Err(EdidError::BadChecksum);
    }
    let mut modes = Vec::new();
    for (res, byte, bit) in ESTABLISHED {
        if e[OFF_ESTABLISHED + byte] & (1 << bit) != 0 {
            modes.push(res);
        }
    }
    for slot in 0..STANDARD_SLOTS {
        let at = OFF_STANDARD + slot * 2;
        let (code, info) = (e[at], e[at + 1]);
        if [code, info] == UNUSED_STANDARD || code == 0 {
            continue;
        }
        let w = (u32::from(code) + STANDARD_WIDTH_BIAS) * STANDARD_WIDTH_UNIT;
        let h = Aspect::of_standard(info).height(w);
        modes.push(Resolution::new(w as u16, h as u16));
    }
    let mut preferred = None;
    for i in 0..DESCRIPTOR_SLOTS {
        let d = &e[OFF_DESCRIPTORS + i * DESCRIPTOR_LEN..][..DESCRIPTOR_LEN];
        if d[0] == 0 && d[1] == 0 {
            continue;
        }
        let w = u16::from(d[2]) | (u16::from(d[4] >> 4) << 8);
        let h = u16::from(d[5]) | (u16::from(d[7] >> 4) << 8);
        let r = Resolution::new(w, h);
        if i == 0 {
            preferred = Some(r);
        }
        modes.push(r);
    }
    Ok(EdidSummary {
        version: (e[OFF_VERSION], e[OFF_VERSION + 1]),
        preferred: preferred.ok_or(EdidError::NoPreferredTiming)?,
        modes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TYPES;

    #[test]
    fn every_type_has_a_valid_edid_within_its_limits() {
        for t in TYPES {
            let e = build_edid(t.preferred, t.edid_max(), t.memory());
            let s = parse_edid(&e).unwrap_or_else(|err| panic!("{}: {err}", t.name));
            assert_eq!(s.version, (1, 4));
            assert_eq!(s.preferred, t.preferred, "{}", t.name);
            assert!(s.modes.len() >= 2, "{}: {:?}", t.name, s.modes);
            for m in &s.modes {
                assert!(m.within(t.edid_max()), "{}: {m:?}", t.name);
                assert!(m.bytes_at_32bpp() <= t.memory(), "{}: {m:?}", t.name);
            }
        }
    }

    #[test]
    fn the_largest_mode_is_listed() {
        let medium = TYPES[1];
        let s = parse_edid(&build_edid(
            medium.preferred,
            medium.edid_max(),
            medium.memory(),
        ))
        .unwrap();
        assert!(s.modes.contains(&Resolution::new(1920, 1440)));
        assert!(s.modes.contains(&Resolution::new(1920, 1080)));
        assert!(!s.modes.contains(&Resolution::new(2048, 1536)));
    }

    #[test]
    fn a_corrupted_block_is_rejected() {
        let mut e = build_edid(
            Resolution::new(800, 600),
            Resolution::new(800, 600),
            4 << 20,
        );
        e[40] ^= 1;
        assert_eq!(parse_edid(&e), Err(EdidError::BadChecksum));
        assert_eq!(parse_edid(&e[..64]), Err(EdidError::BadHeader));
    }

    #[test]
    fn timings_are_sane() {
        let t = Timing::reduced_blanking(Resolution::new(1920, 1080));
        // CVT-RB 1920x1080@60 is about 138.5 MHz with 1111 total lines.
        assert!((137_000..=140_000).contains(&t.clock_khz), "{t:?}");
        assert!(t.v_blank >= 15);
        let big = Timing::reduced_blanking(Resolution::new(2560, 1600));
        assert!(big.clock_khz / 10 <= u32::from(u16::MAX));
    }
}
