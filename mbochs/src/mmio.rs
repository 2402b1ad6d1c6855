//! BAR2, the 4 KiB MMIO register window of a bochs-display function:
//!
//! | range         | contents                                             |
//! |---------------|------------------------------------------------------|
//! | 0x000–0x3ff   | EDID blob (read-only)                                |
//! | 0x400–0x41f   | VGA I/O ports 0x3c0–0x3df (stored, no effect)        |
//! | 0x500–0x515   | DISPI registers, 16-bit, index = (offset − 0x500) / 2 |
//! | 0x600–0x607   | QEMU extended registers: size (8), endianness        |
//!
//! Accesses of any width at any offset are served byte by byte, so an odd or straddling
//! access behaves like the byte accesses it is made of and never fails. Undefined bytes read
//! as all-ones and ignore writes.
#![expect(
    clippy::cast_possible_truncation,
    reason = "every offset cast to an index has been matched inside its window of the 4 KiB \
              MMIO BAR first"
)]

use crate::dispi::{DispiRegisters, DISPI_REGISTERS};
use crate::edid::EDID_BLOCK_LEN;
use crate::scanout::{current_scanout, FramebufferEndianness, ScanoutLimits};
use mdev_display::Mode;

/// Size of the MMIO BAR.
pub const MMIO_BAR_SIZE: u64 = 4096;

/// Start of the EDID blob.
pub const EDID_OFFSET: u64 = 0x000;
/// Size of the EDID window.
pub const EDID_WINDOW: u64 = 0x400;
/// Start of the VGA I/O port shadow (port 0x3c0).
pub const VGA_PORTS_OFFSET: u64 = 0x400;
/// Size of the VGA I/O port shadow.
pub const VGA_PORTS_LEN: u64 = 0x20;
/// Start of the DISPI registers.
pub const DISPI_OFFSET: u64 = 0x500;
/// Size of the DISPI registers.
pub const DISPI_LEN: u64 = DISPI_REGISTERS as u64 * 2;
/// QEMU extended register: size of the extended register block (read-only).
pub const QEXT_SIZE_OFFSET: u64 = 0x600;
/// QEMU extended register: framebuffer endianness.
pub const QEXT_ENDIAN_OFFSET: u64 = 0x604;
/// Size of the QEMU extended register block, which the size register reports.
pub const QEXT_LEN: u64 = 8;
/// Endianness register value for little-endian pixels.
pub const ENDIAN_LITTLE: u32 = 0x1e1e_1e1e;
/// Endianness register value for big-endian pixels.
pub const ENDIAN_BIG: u32 = 0xbebe_bebe;

/// What an undefined byte reads as.
const UNDEFINED_BYTE: u8 = 0xff;

/// The MMIO register window's state.
#[derive(Clone, Debug)]
pub struct MmioRegisters {
    edid: [u8; EDID_BLOCK_LEN],
    vga_ports: [u8; VGA_PORTS_LEN as usize],
    dispi: DispiRegisters,
    endianness: FramebufferEndianness,
    limits: ScanoutLimits,
}

impl MmioRegisters {
    /// Registers after reset for a device with `limits`, exposing `edid`.
    pub fn new(edid: [u8; EDID_BLOCK_LEN], limits: ScanoutLimits) -> Self {
        MmioRegisters {
            edid,
            vga_ports: [0; VGA_PORTS_LEN as usize],
            dispi: DispiRegisters::after_reset(limits.memory),
            endianness: FramebufferEndianness::Little,
            limits,
        }
    }

    /// Back to the reset values (the EDID stays).
    pub fn reset(&mut self) {
        *self = Self::new(self.edid, self.limits);
    }

    /// The DISPI registers.
    pub fn dispi(&self) -> &DispiRegisters {
        &self.dispi
    }

    /// The current scan-out.
    pub fn scanout(&self) -> Option<Mode> {
        current_scanout(&self.dispi, self.endianness, &self.limits)
    }

    /// A read of `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .map_or(UNDEFINED_BYTE, |o| self.read_byte(o));
        }
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match offset {
            o if o < EDID_WINDOW => self.edid.get(o as usize).copied().unwrap_or(0),
            o if (VGA_PORTS_OFFSET..VGA_PORTS_OFFSET + VGA_PORTS_LEN).contains(&o) => {
                self.vga_ports[(o - VGA_PORTS_OFFSET) as usize]
            }
            o if (DISPI_OFFSET..DISPI_OFFSET + DISPI_LEN).contains(&o) => {
                let rel = o - DISPI_OFFSET;
                let value = self.dispi.guest_read((rel / 2) as usize, self.limits.max);
                value.to_le_bytes()[(rel % 2) as usize]
            }
            o if (QEXT_SIZE_OFFSET..QEXT_SIZE_OFFSET + 4).contains(&o) => {
                (QEXT_LEN as u32).to_le_bytes()[(o - QEXT_SIZE_OFFSET) as usize]
            }
            o if (QEXT_ENDIAN_OFFSET..QEXT_ENDIAN_OFFSET + 4).contains(&o) => {
                self.endian_value().to_le_bytes()[(o - QEXT_ENDIAN_OFFSET) as usize]
            }
            _ => UNDEFINED_BYTE,
        }
    }

    fn endian_value(&self) -> u32 {
        match self.endianness {
            FramebufferEndianness::Little => ENDIAN_LITTLE,
            FramebufferEndianness::Big => ENDIAN_BIG,
        }
    }

    /// A write of `data` at `offset`. Registers wider than a byte are updated
    /// read-modify-write with the bytes the access covers, then written once each.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut dispi: [[u8; 2]; DISPI_REGISTERS] =
            std::array::from_fn(|i| self.dispi.value(i).to_le_bytes());
        let mut dispi_touched = [false; DISPI_REGISTERS];
        let mut endian = self.endian_value().to_le_bytes();
        let mut endian_touched = false;
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            match o {
                o if (VGA_PORTS_OFFSET..VGA_PORTS_OFFSET + VGA_PORTS_LEN).contains(&o) => {
                    self.vga_ports[(o - VGA_PORTS_OFFSET) as usize] = b;
                }
                o if (DISPI_OFFSET..DISPI_OFFSET + DISPI_LEN).contains(&o) => {
                    let rel = (o - DISPI_OFFSET) as usize;
                    dispi[rel / 2][rel % 2] = b;
                    dispi_touched[rel / 2] = true;
                }
                o if (QEXT_ENDIAN_OFFSET..QEXT_ENDIAN_OFFSET + 4).contains(&o) => {
                    endian[(o - QEXT_ENDIAN_OFFSET) as usize] = b;
                    endian_touched = true;
                }
                _ => log::debug!("mbochs: write to read-only or undefined MMIO {o:#x} ignored"),
            }
        }
        for (index, bytes) in dispi.iter().enumerate() {
            if dispi_touched[index] {
                self.dispi.guest_write(index, u16::from_le_bytes(*bytes));
            }
        }
        if endian_touched {
            match u32::from_le_bytes(endian) {
                ENDIAN_LITTLE => self.endianness = FramebufferEndianness::Little,
                ENDIAN_BIG => self.endianness = FramebufferEndianness::Big,
                v => log::debug!("mbochs: endianness value {v:#x} ignored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispi::{DispiEnable, DISPI_ID5, INDEX_BPP, INDEX_ENABLE, INDEX_XRES, INDEX_YRES};
    use crate::edid::{build_edid, EDID_HEADER};
    use crate::types::TYPES;
    use mdev_display::PixelFormat;

    fn regs() -> MmioRegisters {
        let t = TYPES[1];
        MmioRegisters::new(
            build_edid(t.preferred, t.edid_max(), t.memory()),
            ScanoutLimits {
                max: t.max_resolution(),
                memory: t.memory(),
            },
        )
    }

    fn write16(r: &mut MmioRegisters, index: usize, v: u16) {
        r.write(DISPI_OFFSET + index as u64 * 2, &v.to_le_bytes());
    }

    fn read_u32(r: &MmioRegisters, off: u64) -> u32 {
        let mut b = [0u8; 4];
        r.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn what_the_linux_driver_probes_is_there() {
        let r = regs();
        let mut id = [0u8; 2];
        r.read(DISPI_OFFSET, &mut id);
        assert_eq!(u16::from_le_bytes(id), DISPI_ID5);
        let mut mem = [0u8; 2];
        r.read(DISPI_OFFSET + 20, &mut mem);
        assert_eq!(u16::from_le_bytes(mem), 256);
        let mut header = [0u8; 8];
        r.read(EDID_OFFSET, &mut header);
        assert_eq!(header, EDID_HEADER);
        assert_eq!(read_u32(&r, QEXT_SIZE_OFFSET), 8);
        assert_eq!(read_u32(&r, QEXT_ENDIAN_OFFSET), ENDIAN_LITTLE);
    }

    #[test]
    fn a_mode_programmed_with_16_bit_writes_scans_out() {
        let mut r = regs();
        write16(&mut r, INDEX_ENABLE, 0);
        write16(&mut r, INDEX_BPP, 32);
        write16(&mut r, INDEX_XRES, 1024);
        write16(&mut r, INDEX_YRES, 768);
        assert_eq!(r.scanout(), None);
        write16(
            &mut r,
            INDEX_ENABLE,
            (DispiEnable::ENABLED | DispiEnable::LFB_ENABLED).bits(),
        );
        let m = r.scanout().unwrap();
        assert_eq!(
            (m.width, m.height, m.format),
            (1024, 768, PixelFormat::Xrgb8888)
        );
        r.write(QEXT_ENDIAN_OFFSET, &ENDIAN_BIG.to_le_bytes());
        assert_eq!(r.scanout().unwrap().format, PixelFormat::Bgrx8888);
        assert_eq!(read_u32(&r, QEXT_ENDIAN_OFFSET), ENDIAN_BIG);
        r.write(QEXT_ENDIAN_OFFSET, &0x1234u32.to_le_bytes());
        assert_eq!(read_u32(&r, QEXT_ENDIAN_OFFSET), ENDIAN_BIG);
        r.reset();
        assert_eq!(r.scanout(), None);
        assert_eq!(read_u32(&r, QEXT_ENDIAN_OFFSET), ENDIAN_LITTLE);
    }

    #[test]
    fn byte_writes_update_half_a_register() {
        let mut r = regs();
        r.write(DISPI_OFFSET + 2, &[0x00]);
        r.write(DISPI_OFFSET + 3, &[0x04]);
        assert_eq!(r.dispi().value(INDEX_XRES), 0x400);
        // A 4-byte write covers XRES and YRES.
        r.write(DISPI_OFFSET + 2, &[0x20, 0x03, 0x58, 0x02]);
        assert_eq!(r.dispi().value(INDEX_XRES), 800);
        assert_eq!(r.dispi().value(INDEX_YRES), 600);
    }

    #[test]
    fn every_width_at_every_offset_is_harmless() {
        let mut r = regs();
        for width in 1..=8usize {
            for off in 0..MMIO_BAR_SIZE {
                let mut buf = vec![0u8; width];
                r.read(off, &mut buf);
                r.write(off, &buf);
            }
        }
        r.read(u64::MAX - 2, &mut [0u8; 8]);
        r.write(u64::MAX - 2, &[0u8; 8]);
        let mut vga = [0u8; 1];
        r.write(VGA_PORTS_OFFSET, &[0x20]);
        r.read(VGA_PORTS_OFFSET, &mut vga);
        assert_eq!(vga, [0x20]);
    }
}
