//! Where mdpy publishes its mode: a read-only vendor-specific capability at 0x40 of config
//! space holding the DRM fourcc, the width and the height. A viewer reads it back through
//! the config-space region.

use mdev::region::CONFIG_REGION_INDEX;
use mdev_display::{ClientError, Mode, ModeReader, PixelFormat, RegisterSource};

/// Config-space offset of the mode capability.
pub const MODE_CAPABILITY_OFFSET: u64 = 0x40;
/// Size of the mode capability.
pub const MODE_CAPABILITY_LEN: u64 = 0x10;
/// Config-space offset of the format (DRM fourcc, little-endian u32).
pub const FORMAT_OFFSET: u64 = 0x44;
/// Config-space offset of the width (u32).
pub const WIDTH_OFFSET: u64 = 0x48;
/// Config-space offset of the height (u32).
pub const HEIGHT_OFFSET: u64 = 0x4c;
/// Bytes from [`FORMAT_OFFSET`] to the end of the height: the three mode fields.
#[expect(clippy::cast_possible_truncation, reason = "a constant of 12")]
pub const MODE_FIELDS_LEN: usize = (HEIGHT_OFFSET + 4 - FORMAT_OFFSET) as usize;

/// The capability's bytes after its 3-byte header (ID, next, length): one pad byte, then
/// format, width and height, so the fields land at 0x44, 0x48 and 0x4c.
pub fn mode_capability_body(mode: &Mode) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&mode.format.fourcc().to_le_bytes());
    body.extend_from_slice(&mode.width.to_le_bytes());
    body.extend_from_slice(&mode.height.to_le_bytes());
    body
}

/// Decodes the 12 bytes at [`FORMAT_OFFSET`]: a packed mode, or `None` for an unknown format
/// or an empty size.
pub fn decode_mode(fields: &[u8; MODE_FIELDS_LEN]) -> Option<Mode> {
    // Every field lies inside the fixed-size array: the offsets are constants below 12.
    let word = |at: u64| {
        let i = usize::try_from(at - FORMAT_OFFSET).unwrap_or(0);
        u32::from_le_bytes([fields[i], fields[i + 1], fields[i + 2], fields[i + 3]])
    };
    let format = PixelFormat::from_fourcc(word(FORMAT_OFFSET))?;
    let (width, height) = (word(WIDTH_OFFSET), word(HEIGHT_OFFSET));
    (width > 0 && height > 0).then(|| Mode::packed(format, width, height))
}

/// Reads an mdpy instance's mode from config space.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigModeReader;

impl ModeReader for ConfigModeReader {
    fn read_mode(
        &self,
        regs: &mut dyn RegisterSource,
        framebuffer_len: u64,
    ) -> Result<Option<Mode>, ClientError> {
        let mut fields = [0u8; MODE_FIELDS_LEN];
        regs.read(CONFIG_REGION_INDEX, FORMAT_OFFSET, &mut fields)?;
        Ok(decode_mode(&fields).filter(|m| m.fits(framebuffer_len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
        let body = mode_capability_body(&mode);
        assert_eq!(body.len() as u64 + 3, MODE_CAPABILITY_LEN);
        let fields: [u8; 12] = body[1..].try_into().unwrap();
        assert_eq!(decode_mode(&fields), Some(mode));
        assert_eq!(&fields[..4], b"XR24");
        assert_eq!(decode_mode(&[0; 12]), None);
    }
}
