//! The bochs DISPI register file (VBE "display interface"): eleven 16-bit registers.

use bitflags::bitflags;

use crate::types::Resolution;

/// Number of DISPI registers.
pub const DISPI_REGISTERS: usize = 11;

/// Index of the ID register (interface version).
pub const INDEX_ID: usize = 0;
/// Index of the horizontal resolution.
pub const INDEX_XRES: usize = 1;
/// Index of the vertical resolution.
pub const INDEX_YRES: usize = 2;
/// Index of bits per pixel.
pub const INDEX_BPP: usize = 3;
/// Index of the enable register ([`DispiEnable`]).
pub const INDEX_ENABLE: usize = 4;
/// Index of the bank register (banked VGA window; unused with a linear framebuffer).
pub const INDEX_BANK: usize = 5;
/// Index of the virtual width (pixels per line).
pub const INDEX_VIRT_WIDTH: usize = 6;
/// Index of the virtual height.
pub const INDEX_VIRT_HEIGHT: usize = 7;
/// Index of the horizontal panning offset (pixels).
pub const INDEX_X_OFFSET: usize = 8;
/// Index of the vertical panning offset (lines).
pub const INDEX_Y_OFFSET: usize = 9;
/// Index of the memory size in 64 KiB units (read-only).
pub const INDEX_VIDEO_MEMORY_64K: usize = 10;

/// Oldest interface version a guest may select.
pub const DISPI_ID0: u16 = 0xb0c0;
/// The interface version this device implements (the value after reset).
pub const DISPI_ID5: u16 = 0xb0c5;

/// The unit of `VIDEO_MEMORY_64K`.
pub const VIDEO_MEMORY_UNIT: u64 = 64 * 1024;

bitflags! {
    /// Bits of the ENABLE register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DispiEnable: u16 {
        /// The display is on.
        const ENABLED = 0x01;
        /// Reads of XRES, YRES and BPP return the maxima.
        const GETCAPS = 0x02;
        /// 8-bit DAC (palette modes; no effect here).
        const DAC_8BIT = 0x20;
        /// Linear framebuffer.
        const LFB_ENABLED = 0x40;
        /// Do not clear memory on enable.
        const NO_CLEAR_MEM = 0x80;
    }
}

/// Largest bits-per-pixel value reported under GETCAPS.
pub const MAX_BPP: u16 = 32;

/// The register values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispiRegisters {
    regs: [u16; DISPI_REGISTERS],
}

impl DispiRegisters {
    /// The values after reset for a device with `memory` bytes: ID = [`DISPI_ID5`],
    /// VIDEO_MEMORY_64K = memory / 64 KiB, the rest 0.
    pub fn after_reset(memory: u64) -> Self {
        let mut regs = [0; DISPI_REGISTERS];
        regs[INDEX_ID] = DISPI_ID5;
        regs[INDEX_VIDEO_MEMORY_64K] =
            u16::try_from(memory / VIDEO_MEMORY_UNIT).unwrap_or(u16::MAX);
        DispiRegisters { regs }
    }

    /// Register values as read from a device (a viewer rebuilding the state).
    pub fn from_values(regs: [u16; DISPI_REGISTERS]) -> Self {
        DispiRegisters { regs }
    }

    /// The stored value of register `index` (0 for an index past the file).
    pub fn value(&self, index: usize) -> u16 {
        self.regs.get(index).copied().unwrap_or(0)
    }

    /// The ENABLE register's known bits.
    pub fn enable(&self) -> DispiEnable {
        DispiEnable::from_bits_truncate(self.regs[INDEX_ENABLE])
    }

    /// What a guest reads from register `index`: with GETCAPS set, XRES/YRES/BPP report the
    /// maxima (`max`).
    pub fn guest_read(&self, index: usize, max: Resolution) -> u16 {
        if self.enable().contains(DispiEnable::GETCAPS) {
            match index {
                INDEX_XRES => return max.width,
                INDEX_YRES => return max.height,
                INDEX_BPP => return MAX_BPP,
                _ => {}
            }
        }
        self.value(index)
    }

    /// A guest write of `value` to register `index`. ID accepts only interface versions
    /// [`DISPI_ID0`]..=[`DISPI_ID5`]; VIDEO_MEMORY_64K and unknown indices ignore writes.
    /// Mode values are stored as written; [`crate::scanout`] judges them.
    pub fn guest_write(&mut self, index: usize, value: u16) {
        match index {
            INDEX_ID if (DISPI_ID0..=DISPI_ID5).contains(&value) => self.regs[INDEX_ID] = value,
            INDEX_ID | INDEX_VIDEO_MEMORY_64K => {
                log::debug!("DISPI: write {value:#x} to read-only register {index} ignored")
            }
            i if i < DISPI_REGISTERS => self.regs[i] = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_values_identify_a_bochs_interface() {
        let r = DispiRegisters::after_reset(16 << 20);
        assert_eq!(r.value(INDEX_ID), DISPI_ID5);
        assert_eq!(r.value(INDEX_VIDEO_MEMORY_64K), 256);
        assert_eq!(r.value(INDEX_XRES), 0);
        assert_eq!(r.value(99), 0);
    }

    #[test]
    fn read_only_registers_keep_their_values() {
        let mut r = DispiRegisters::after_reset(4 << 20);
        r.guest_write(INDEX_VIDEO_MEMORY_64K, 1);
        r.guest_write(INDEX_ID, 0x1234);
        r.guest_write(42, 1);
        assert_eq!(r.value(INDEX_VIDEO_MEMORY_64K), 64);
        assert_eq!(r.value(INDEX_ID), DISPI_ID5);
        r.guest_write(INDEX_ID, DISPI_ID0 + 2);
        assert_eq!(r.value(INDEX_ID), DISPI_ID0 + 2);
    }

    #[test]
    fn getcaps_reports_the_maxima() {
        let mut r = DispiRegisters::after_reset(4 << 20);
        r.guest_write(INDEX_XRES, 640);
        let max = Resolution::new(800, 600);
        assert_eq!(r.guest_read(INDEX_XRES, max), 640);
        r.guest_write(INDEX_ENABLE, DispiEnable::GETCAPS.bits());
        assert_eq!(r.guest_read(INDEX_XRES, max), 800);
        assert_eq!(r.guest_read(INDEX_YRES, max), 600);
        assert_eq!(r.guest_read(INDEX_BPP, max), 32);
    }
}
