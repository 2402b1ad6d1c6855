//! How a viewer reads an mbochs instance's mode: the DISPI registers and the endianness
//! register through BAR2, judged by the device's own [`current_scanout`].

use mdev::region::BAR2_REGION_INDEX;
use mdev_display::{ClientError, Mode, ModeReader, RegisterSource};

use crate::dispi::{DispiRegisters, DISPI_REGISTERS, INDEX_VIDEO_MEMORY_64K, VIDEO_MEMORY_UNIT};
use crate::mmio::{DISPI_LEN, DISPI_OFFSET, ENDIAN_BIG, QEXT_ENDIAN_OFFSET};
use crate::scanout::{current_scanout, FramebufferEndianness, ScanoutLimits};
use crate::types::{MbochsType, DISPI_MAX_RESOLUTION};

/// Reads the scan-out of an mbochs device from its registers.
#[derive(Clone, Copy, Debug, Default)]
pub struct DispiModeReader;

impl ModeReader for DispiModeReader {
    fn read_mode(
        &self,
        regs: &mut dyn RegisterSource,
        framebuffer_len: u64,
    ) -> Result<Option<Mode>, ClientError> {
        #[expect(clippy::cast_possible_truncation, reason = "a constant of 22")]
        let mut bytes = [0u8; DISPI_LEN as usize];
        regs.read(BAR2_REGION_INDEX, DISPI_OFFSET, &mut bytes)?;
        let mut endian = [0u8; 4];
        regs.read(BAR2_REGION_INDEX, QEXT_ENDIAN_OFFSET, &mut endian)?;
        let values: [u16; DISPI_REGISTERS] =
            std::array::from_fn(|i| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]));
        let dispi = DispiRegisters::from_values(values);
        let endianness = if u32::from_le_bytes(endian) == ENDIAN_BIG {
            FramebufferEndianness::Big
        } else {
            FramebufferEndianness::Little
        };
        let memory = (u64::from(dispi.value(INDEX_VIDEO_MEMORY_64K)) * VIDEO_MEMORY_UNIT)
            .min(framebuffer_len);
        // The type follows from the memory size; an unknown size is judged by memory alone.
        let max =
            MbochsType::by_memory(memory).map_or(DISPI_MAX_RESOLUTION, MbochsType::max_resolution);
        Ok(current_scanout(
            &dispi,
            endianness,
            &ScanoutLimits { max, memory },
        ))
    }
}
