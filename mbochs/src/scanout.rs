//! What the DISPI registers scan out, decided in one place: [`current_scanout`] validates every
//! register and returns `None` for anything inconsistent. The device, the viewer and the
//! tests all use it.

use mdev_display::{Mode, PixelFormat};

use crate::dispi::{
    DispiEnable, DispiRegisters, INDEX_BPP, INDEX_VIRT_WIDTH, INDEX_XRES, INDEX_X_OFFSET,
    INDEX_YRES, INDEX_Y_OFFSET,
};
use crate::types::Resolution;

/// Smallest width or height scanned out.
pub const MIN_RESOLUTION: u16 = 64;

/// Byte order the guest announced for 32-bit pixels (QEMU extended register 0x604).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FramebufferEndianness {
    /// XRGB8888 (the reset value).
    #[default]
    Little,
    /// BGRX8888.
    Big,
}

/// What bounds a scan-out: the type's largest mode and the framebuffer memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanoutLimits {
    /// Largest width and height.
    pub max: Resolution,
    /// Framebuffer bytes.
    pub memory: u64,
}

/// The pixel format of a DISPI bits-per-pixel value.
pub fn format_of(bpp: u16, endianness: FramebufferEndianness) -> Option<PixelFormat> {
    match (bpp, endianness) {
        (32, FramebufferEndianness::Little) => Some(PixelFormat::Xrgb8888),
        (32, FramebufferEndianness::Big) => Some(PixelFormat::Bgrx8888),
        (24, _) => Some(PixelFormat::Rgb888),
        (16, _) => Some(PixelFormat::Rgb565),
        _ => None,
    }
}

/// The current scan-out, or `None` when the display is disabled or any register is
/// inconsistent: XRES/YRES below [`MIN_RESOLUTION`] or above the limit, an unsupported BPP,
/// or a picture (offset + stride × YRES) past the memory.
///
/// stride = max(VIRT_WIDTH, XRES) × bytes per pixel;
/// offset = X_OFFSET × bytes per pixel + Y_OFFSET × stride.
pub fn current_scanout(
    regs: &DispiRegisters,
    endianness: FramebufferEndianness,
    limits: &ScanoutLimits,
) -> Option<Mode> {
    if !regs.enable().contains(DispiEnable::ENABLED) {
        return None;
    }
    let xres = regs.value(INDEX_XRES);
    let yres = regs.value(INDEX_YRES);
    let size_ok = |v: u16, max: u16| (MIN_RESOLUTION..=max).contains(&v);
    if !size_ok(xres, limits.max.width) || !size_ok(yres, limits.max.height) {
        return None;
    }
    let format = format_of(regs.value(INDEX_BPP), endianness)?;
    let bytes_pp = format.bytes_per_pixel() as u64;
    let stride = u64::from(regs.value(INDEX_VIRT_WIDTH).max(xres)) * bytes_pp;
    let offset = u64::from(regs.value(INDEX_X_OFFSET)) * bytes_pp
        + u64::from(regs.value(INDEX_Y_OFFSET)) * stride;
    // All terms are products of 16-bit values and small constants: no overflow in u64.
    if offset + stride * u64::from(yres) > limits.memory {
        return None;
    }
    Some(Mode {
        format,
        width: u32::from(xres),
        height: u32::from(yres),
        stride,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispi::{INDEX_ENABLE, INDEX_VIRT_HEIGHT};

    const LIMITS: ScanoutLimits = ScanoutLimits {
        max: Resolution::new(1920, 1440),
        memory: 16 << 20,
    };

    fn regs(xres: u16, yres: u16, bpp: u16) -> DispiRegisters {
        let mut r = DispiRegisters::after_reset(LIMITS.memory);
        r.guest_write(INDEX_XRES, xres);
        r.guest_write(INDEX_YRES, yres);
        r.guest_write(INDEX_BPP, bpp);
        r.guest_write(INDEX_VIRT_WIDTH, xres);
        r.guest_write(INDEX_VIRT_HEIGHT, yres);
        r.guest_write(
            INDEX_ENABLE,
            (DispiEnable::ENABLED | DispiEnable::LFB_ENABLED).bits(),
        );
        r
    }

    #[test]
    fn the_linux_driver_mode_scans_out() {
        let m = current_scanout(&regs(1024, 768, 32), FramebufferEndianness::Little, &LIMITS);
        assert_eq!(m, Some(Mode::packed(PixelFormat::Xrgb8888, 1024, 768)));
        let m = current_scanout(&regs(1024, 768, 32), FramebufferEndianness::Big, &LIMITS);
        assert_eq!(m.map(|m| m.format), Some(PixelFormat::Bgrx8888));
    }

    #[test]
    fn every_supported_depth_has_its_stride() {
        for (bpp, bytes) in [(32, 4), (24, 3), (16, 2)] {
            let m = current_scanout(&regs(640, 480, bpp), FramebufferEndianness::Little, &LIMITS)
                .unwrap();
            assert_eq!(m.stride, 640 * bytes);
        }
    }

    #[test]
    fn inconsistent_registers_scan_nothing_out() {
        let little = FramebufferEndianness::Little;
        let mut disabled = regs(640, 480, 32);
        disabled.guest_write(INDEX_ENABLE, 0);
        assert_eq!(current_scanout(&disabled, little, &LIMITS), None);
        assert_eq!(current_scanout(&regs(63, 480, 32), little, &LIMITS), None);
        assert_eq!(current_scanout(&regs(640, 63, 32), little, &LIMITS), None);
        assert_eq!(current_scanout(&regs(1921, 480, 32), little, &LIMITS), None);
        assert_eq!(current_scanout(&regs(640, 1441, 32), little, &LIMITS), None);
        assert_eq!(current_scanout(&regs(640, 480, 8), little, &LIMITS), None);
        assert_eq!(current_scanout(&regs(640, 480, 15), little, &LIMITS), None);
        let mut panned = regs(1920, 1440, 32);
        panned.guest_write(INDEX_Y_OFFSET, 1440);
        assert_eq!(current_scanout(&panned, little, &LIMITS), None);
        let mut wide = regs(1920, 1440, 32);
        wide.guest_write(INDEX_VIRT_WIDTH, u16::MAX);
        assert_eq!(current_scanout(&wide, little, &LIMITS), None);
    }

    #[test]
    fn panning_moves_the_offset() {
        let mut r = regs(640, 480, 32);
        r.guest_write(INDEX_VIRT_WIDTH, 1024);
        r.guest_write(INDEX_X_OFFSET, 2);
        r.guest_write(INDEX_Y_OFFSET, 3);
        let m = current_scanout(&r, FramebufferEndianness::Little, &LIMITS).unwrap();
        assert_eq!(m.stride, 4096);
        assert_eq!(m.offset, 8 + 3 * 4096);
        assert!(m.fits(LIMITS.memory));
    }
}
