//! `mbochs`: the BAR2 register window of a bochs-display (EDID, VGA port shadow, DISPI, QEMU
//! extended registers) driven by arbitrary reads and writes of any width, and EDIDs built for
//! arbitrary modes and memory sizes.
//!
//! Invariants: the EDID window reads the EDID built for the type (then zeros) and ignores
//! writes; the EDID of any mode parses, with a valid header and checksum; the VGA shadow and
//! the DISPI registers read back what was last written (byte-wise, as the access covered
//! them), except ID (a supported version only) and VIDEO_MEMORY_64K (fixed) and XRES, YRES,
//! BPP under GETCAPS (the maxima); the extended size register reads 8 and endianness is one of
//! its two values; undefined bytes read 0xff; a scan-out exists only for a mode that lies
//! inside the framebuffer within the type's limits.

use arbitrary::{Arbitrary, Unstructured};
use mbochs::dispi::{
    DispiEnable, DISPI_ID0, DISPI_ID5, DISPI_REGISTERS, INDEX_BPP, INDEX_ENABLE, INDEX_ID,
    INDEX_VIDEO_MEMORY_64K, INDEX_XRES, INDEX_YRES, MAX_BPP, VIDEO_MEMORY_UNIT,
};
use mbochs::edid::{build_edid, parse_edid, Timing, EDID_BLOCK_LEN, EDID_HEADER};
use mbochs::mmio::{
    MmioRegisters, DISPI_OFFSET, EDID_WINDOW, ENDIAN_BIG, ENDIAN_LITTLE, MMIO_BAR_SIZE,
    QEXT_ENDIAN_OFFSET, QEXT_LEN, QEXT_SIZE_OFFSET, VGA_PORTS_LEN, VGA_PORTS_OFFSET,
};
use mbochs::scanout::{ScanoutLimits, MIN_RESOLUTION};
use mbochs::types::{Resolution, TYPES};

#[derive(Arbitrary, Debug)]
enum Step {
    Read { offset: u16, len: u8 },
    Write { offset: u16, data: Vec<u8> },
    Dispi { index: u8, value: u16 },
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Plan {
    ty: u8,
    edid: (u16, u16, u16, u16, u32),
    steps: Vec<Step>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    any_edid(plan.edid);
    let ty = TYPES[usize::from(plan.ty) % TYPES.len()];
    let limits = ScanoutLimits {
        max: ty.max_resolution(),
        memory: ty.memory(),
    };
    let edid = build_edid(ty.preferred, ty.edid_max(), ty.memory());
    let mut regs = MmioRegisters::new(edid, limits);
    let mut model = Model::new(limits.memory);
    for step in plan.steps.iter().take(512) {
        match step {
            Step::Read { offset, len } => {
                let (off, len) = fit(*offset, usize::from(*len % 9));
                let mut buf = vec![0u8; len];
                regs.read(off, &mut buf);
                for (i, b) in buf.iter().enumerate() {
                    let o = off + i as u64;
                    check_byte(&regs, &model, &edid, limits, o, *b);
                }
            }
            Step::Write { offset, data } => {
                let (off, len) = fit(*offset, data.len().min(8));
                regs.write(off, &data[..len]);
                model.write(off, &data[..len]);
            }
            Step::Dispi { index, value } => {
                let index = usize::from(*index) % DISPI_REGISTERS;
                let off = DISPI_OFFSET + 2 * index as u64;
                regs.write(off, &value.to_le_bytes());
                model.write(off, &value.to_le_bytes());
            }
            Step::Reset => {
                regs.reset();
                model = Model::new(limits.memory);
            }
        }
        check(&regs, &model, limits);
    }
}

/// An access clipped to the BAR, as the server would have refused anything else.
fn fit(offset: u16, len: usize) -> (u64, usize) {
    let off = u64::from(offset) % MMIO_BAR_SIZE;
    (off, len.min((MMIO_BAR_SIZE - off) as usize))
}

/// The registers as the guest left them.
struct Model {
    vga: [u8; VGA_PORTS_LEN as usize],
    dispi: [u16; DISPI_REGISTERS],
    big_endian: bool,
}

impl Model {
    fn new(memory: u64) -> Self {
        let mut dispi = [0; DISPI_REGISTERS];
        dispi[INDEX_ID] = DISPI_ID5;
        dispi[INDEX_VIDEO_MEMORY_64K] =
            u16::try_from(memory / VIDEO_MEMORY_UNIT).unwrap_or(u16::MAX);
        Model {
            vga: [0; VGA_PORTS_LEN as usize],
            dispi,
            big_endian: false,
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let mut dispi = self.dispi.map(u16::to_le_bytes);
        let mut touched = [false; DISPI_REGISTERS];
        let mut endian = if self.big_endian {
            ENDIAN_BIG
        } else {
            ENDIAN_LITTLE
        }
        .to_le_bytes();
        let mut endian_touched = false;
        for (i, &b) in data.iter().enumerate() {
            let o = off + i as u64;
            if (VGA_PORTS_OFFSET..VGA_PORTS_OFFSET + VGA_PORTS_LEN).contains(&o) {
                self.vga[(o - VGA_PORTS_OFFSET) as usize] = b;
            } else if (DISPI_OFFSET..DISPI_OFFSET + 2 * DISPI_REGISTERS as u64).contains(&o) {
                let r = (o - DISPI_OFFSET) as usize;
                dispi[r / 2][r % 2] = b;
                touched[r / 2] = true;
            } else if (QEXT_ENDIAN_OFFSET..QEXT_ENDIAN_OFFSET + 4).contains(&o) {
                endian[(o - QEXT_ENDIAN_OFFSET) as usize] = b;
                endian_touched = true;
            }
        }
        for (i, bytes) in dispi.iter().enumerate() {
            if !touched[i] {
                continue;
            }
            let v = u16::from_le_bytes(*bytes);
            match i {
                INDEX_ID if (DISPI_ID0..=DISPI_ID5).contains(&v) => self.dispi[i] = v,
                INDEX_ID | INDEX_VIDEO_MEMORY_64K => {}
                _ => self.dispi[i] = v,
            }
        }
        if endian_touched {
            match u32::from_le_bytes(endian) {
                ENDIAN_LITTLE => self.big_endian = false,
                ENDIAN_BIG => self.big_endian = true,
                _ => {}
            }
        }
    }

    fn dispi_read(&self, index: usize, max: Resolution) -> u16 {
        if DispiEnable::from_bits_truncate(self.dispi[INDEX_ENABLE]).contains(DispiEnable::GETCAPS)
        {
            match index {
                INDEX_XRES => return max.width,
                INDEX_YRES => return max.height,
                INDEX_BPP => return MAX_BPP,
                _ => {}
            }
        }
        self.dispi[index]
    }
}

fn check_byte(
    regs: &MmioRegisters,
    m: &Model,
    edid: &[u8; EDID_BLOCK_LEN],
    limits: ScanoutLimits,
    o: u64,
    b: u8,
) {
    let want = if o < EDID_WINDOW {
        edid.get(o as usize).copied().unwrap_or(0)
    } else if (VGA_PORTS_OFFSET..VGA_PORTS_OFFSET + VGA_PORTS_LEN).contains(&o) {
        m.vga[(o - VGA_PORTS_OFFSET) as usize]
    } else if (DISPI_OFFSET..DISPI_OFFSET + 2 * DISPI_REGISTERS as u64).contains(&o) {
        let r = (o - DISPI_OFFSET) as usize;
        m.dispi_read(r / 2, limits.max).to_le_bytes()[r % 2]
    } else if (QEXT_SIZE_OFFSET..QEXT_SIZE_OFFSET + 4).contains(&o) {
        (QEXT_LEN as u32).to_le_bytes()[(o - QEXT_SIZE_OFFSET) as usize]
    } else if (QEXT_ENDIAN_OFFSET..QEXT_ENDIAN_OFFSET + 4).contains(&o) {
        let v = if m.big_endian {
            ENDIAN_BIG
        } else {
            ENDIAN_LITTLE
        };
        v.to_le_bytes()[(o - QEXT_ENDIAN_OFFSET) as usize]
    } else {
        0xff
    };
    assert_eq!(b, want, "MMIO byte {o:#x}");
    let _ = regs;
}

fn check(regs: &MmioRegisters, m: &Model, limits: ScanoutLimits) {
    let d = regs.dispi();
    assert!(
        (DISPI_ID0..=DISPI_ID5).contains(&d.value(INDEX_ID)),
        "ID is a supported version"
    );
    assert_eq!(
        d.value(INDEX_VIDEO_MEMORY_64K),
        m.dispi[INDEX_VIDEO_MEMORY_64K]
    );
    for i in 0..DISPI_REGISTERS {
        assert_eq!(d.value(i), m.dispi[i], "DISPI register {i}");
    }
    if let Some(mode) = regs.scanout() {
        assert!(
            DispiEnable::from_bits_truncate(m.dispi[INDEX_ENABLE]).contains(DispiEnable::ENABLED)
        );
        assert!(
            mode.fits(limits.memory),
            "scan-out {mode:?} inside the framebuffer"
        );
        let (w, h) = (mode.width, mode.height);
        assert!(w >= u32::from(MIN_RESOLUTION) && w <= u32::from(limits.max.width));
        assert!(h >= u32::from(MIN_RESOLUTION) && h <= u32::from(limits.max.height));
        assert!(mode.stride >= u64::from(w) * mode.format.bytes_per_pixel() as u64);
    }
}

/// The EDID of any preferred and largest mode and memory size is built without a panic, with
/// a valid header and checksum; for a mode a detailed timing can describe (each side at least
/// the smallest scan-out and below 4096, a pixel clock below 655.36 MHz) it parses with that
/// mode as the preferred timing.
fn any_edid((pw, ph, mw, mh, mem): (u16, u16, u16, u16, u32)) {
    let preferred = Resolution::new(pw, ph);
    let e = build_edid(preferred, Resolution::new(mw, mh), u64::from(mem) << 12);
    assert_eq!(e[..8], EDID_HEADER);
    assert_eq!(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
    let describable = (MIN_RESOLUTION..4096).contains(&pw)
        && (MIN_RESOLUTION..4096).contains(&ph)
        && Timing::reduced_blanking(preferred).clock_khz < 655_360;
    if describable {
        let summary = parse_edid(&e).expect("our own EDID parses");
        assert_eq!(summary.version, (1, 4));
        assert_eq!(summary.preferred, preferred, "preferred timing first");
    }
}
