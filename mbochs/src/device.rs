//! The mbochs PCI function: bochs-display identity, a framebuffer BAR0 and the BAR2 register
//! window, assembled on the shared display function.

use mdev::parent::Reservation;
use mdev::pci::{Bar, BarSpec, PciConfig};
use mdev::DeviceError;
use mdev_display::device::display_config;
use mdev_display::{display_device, DisplayDevice, DisplayModel, Framebuffer, Mode};
use uuid::Uuid;

use crate::edid::build_edid;
use crate::mmio::{MmioRegisters, MMIO_BAR_SIZE};
use crate::scanout::ScanoutLimits;
use crate::types::MbochsType;

/// Vendor id of bochs-display (QEMU).
pub const VENDOR_ID: u16 = 0x1234;
/// Device id of bochs-display.
pub const DEVICE_ID: u16 = 0x1111;
/// Revision. Linux reads the QEMU extended registers only from revision 2 on; revision 1
/// keeps the guest on little-endian pixels.
pub const REVISION: u8 = 0x01;
/// Index of the MMIO register BAR.
pub const MMIO_BAR: u8 = 2;

/// The device-specific half of an mbochs function: its BAR2 registers.
pub struct Mbochs {
    name: String,
    registers: MmioRegisters,
}

impl DisplayModel for Mbochs {
    fn register_bar(&self) -> Option<Bar> {
        Some(Bar::trapped(MMIO_BAR, BarSpec::memory32(MMIO_BAR_SIZE)))
    }

    fn read_registers(&mut self, offset: u64, data: &mut [u8]) {
        self.registers.read(offset, data);
    }

    fn write_registers(&mut self, offset: u64, data: &[u8]) {
        let before = self.registers.scanout();
        self.registers.write(offset, data);
        let after = self.registers.scanout();
        if before != after {
            log::info!("{}: scan-out {}", self.name, describe_mode(after));
        }
    }

    fn reset(&mut self) {
        self.registers.reset();
    }

    fn scanout(&self) -> Option<Mode> {
        self.registers.scanout()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

impl Mbochs {
    /// The registers.
    pub fn registers(&self) -> &MmioRegisters {
        &self.registers
    }
}

fn describe_mode(mode: Option<Mode>) -> String {
    mode.map_or_else(
        || String::from("off"),
        |m| {
            format!(
                "{}x{} {:?} stride {} offset {:#x}",
                m.width, m.height, m.format, m.stride, m.offset
            )
        },
    )
}

/// An mbochs device.
pub type MbochsDevice = DisplayDevice<Mbochs>;

/// The config space of an mbochs function (its BARs come with the device).
pub fn mbochs_config() -> PciConfig {
    display_config(VENDOR_ID, DEVICE_ID, REVISION)
}

/// Builds an mbochs device of type `ty` for `uuid`, holding `reservation` (its framebuffer
/// megabytes) until it drops. On error the reservation is dropped, returning the megabytes.
pub fn new_mbochs(
    ty: &MbochsType,
    uuid: Uuid,
    reservation: Reservation,
) -> Result<MbochsDevice, DeviceError> {
    let memory = ty.memory();
    let config = mbochs_config();
    let framebuffer = Framebuffer::new(&format!("mbochs-{uuid}"), memory)?;
    let edid = build_edid(ty.preferred, ty.edid_max(), memory);
    let limits = ScanoutLimits {
        max: ty.max_resolution(),
        memory,
    };
    let model = Mbochs {
        name: format!("mbochs {uuid} ({})", ty.name),
        registers: MmioRegisters::new(edid, limits),
    };
    display_device(config, framebuffer, model, vec![reservation])
}
