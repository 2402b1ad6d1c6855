//! What a guest's bochs driver does to an mbochs device, over a vfio-user client: DISPI
//! register reads and writes through BAR2's MMIO window, and a mode set in the order Linux's
//! `bochs` DRM driver programs it.

use mbochs::dispi::{
    DispiEnable, INDEX_BANK, INDEX_BPP, INDEX_ENABLE, INDEX_VIRT_HEIGHT, INDEX_VIRT_WIDTH,
    INDEX_XRES, INDEX_X_OFFSET, INDEX_YRES, INDEX_Y_OFFSET,
};
use mbochs::mmio::DISPI_OFFSET;
use mdev::region::BAR2_REGION_INDEX;
use vfio_user::Client;

/// Offset of DISPI register `index` in BAR2.
fn dispi_offset(index: usize) -> u64 {
    DISPI_OFFSET + 2 * index as u64
}

/// Writes DISPI register `index`.
pub fn dispi_write(c: &mut Client, index: usize, value: u16) {
    c.region_write(BAR2_REGION_INDEX, dispi_offset(index), &value.to_le_bytes())
        .expect("dispi write");
}

/// Reads DISPI register `index`.
pub fn dispi_read(c: &mut Client, index: usize) -> u16 {
    let mut b = [0u8; 2];
    c.region_read(BAR2_REGION_INDEX, dispi_offset(index), &mut b)
        .expect("dispi read");
    u16::from_le_bytes(b)
}

/// Programs `xres`x`yres` at `bpp` the way Linux's bochs driver does (its set-mode, then the
/// scan-out base at 0), ending with the linear framebuffer enabled.
pub fn set_mode(c: &mut Client, xres: u16, yres: u16, bpp: u16) {
    for (index, value) in [
        (INDEX_ENABLE, 0),
        (INDEX_BPP, bpp),
        (INDEX_XRES, xres),
        (INDEX_YRES, yres),
        (INDEX_BANK, 0),
        (INDEX_VIRT_WIDTH, xres),
        (INDEX_VIRT_HEIGHT, yres),
        (INDEX_X_OFFSET, 0),
        (INDEX_Y_OFFSET, 0),
        (
            INDEX_ENABLE,
            (DispiEnable::ENABLED | DispiEnable::LFB_ENABLED).bits(),
        ),
    ] {
        dispi_write(c, index, value);
    }
}
