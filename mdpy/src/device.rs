//! The mdpy PCI function: identity, the mode capability and a framebuffer BAR0, assembled
//! on the shared [`DisplayDevice`].

use mdev::parent::Reservation;
use mdev::pci::{
    BarKind, BarSpec, CommandRegister, PciConfig, PciIdentity, StatusRegister, VendorCapability,
};
use mdev::DeviceError;
use mdev_display::device::config_error;
use mdev_display::{DisplayDevice, DisplayModel, Framebuffer, Mode};
use uuid::Uuid;

use crate::mode::{mode_capability_body, MODE_CAPABILITY_OFFSET};
use crate::types::MdpyType;

/// Vendor id (Red Hat, QEMU's PCI ids).
pub const VENDOR_ID: u16 = 0x1b36;
/// Device id.
pub const DEVICE_ID: u16 = 0x000f;
/// Subsystem vendor id.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem id.
pub const SUBSYSTEM_ID: u16 = 0x1100;
/// Class: display controller.
pub const CLASS_DISPLAY: u8 = 0x03;
/// Subclass: other display controller.
pub const SUBCLASS_OTHER: u8 = 0x80;
/// Index of the framebuffer BAR.
pub const FRAMEBUFFER_BAR: u8 = 0;

/// The device-specific half of an mdpy function: only its fixed mode.
pub struct Mdpy {
    name: String,
    mode: Mode,
}

impl DisplayModel for Mdpy {
    fn scanout(&self) -> Option<Mode> {
        Some(self.mode)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// An mdpy device.
pub type MdpyDevice = DisplayDevice<Mdpy>;

/// The config space of an mdpy function showing `mode` with a framebuffer of `bar_size`.
pub fn mdpy_config(mode: &Mode, bar_size: u64) -> Result<PciConfig, DeviceError> {
    let mut config = PciConfig::new(&PciIdentity {
        vendor_id: VENDOR_ID,
        device_id: DEVICE_ID,
        subsystem_vendor_id: SUBSYSTEM_VENDOR_ID,
        subsystem_id: SUBSYSTEM_ID,
        revision: 0,
        class: CLASS_DISPLAY,
        subclass: SUBCLASS_OTHER,
        prog_if: 0,
        interrupt_pin: 0,
        command: CommandRegister::IO | CommandRegister::MEMORY,
        status: StatusRegister::empty(),
    });
    config
        .add_bar(
            FRAMEBUFFER_BAR as usize,
            BarSpec {
                size: bar_size,
                kind: BarKind::Memory32,
                prefetchable: true,
            },
        )
        .map_err(config_error("framebuffer BAR"))?;
    let at = config
        .add_capability(&VendorCapability {
            body: mode_capability_body(mode),
        })
        .map_err(config_error("mode capability"))?;
    if u64::from(at) != MODE_CAPABILITY_OFFSET {
        log::error!("mdpy: mode capability placed at {at:#x}, not {MODE_CAPABILITY_OFFSET:#x}");
        return Err(DeviceError::InvalidArgument("mode capability not at 0x40"));
    }
    Ok(config)
}

/// Builds an mdpy device of type `ty` for `uuid`, holding `reservation` (its slot in the
/// device budget) until it drops.
pub fn new_mdpy(
    ty: &MdpyType,
    uuid: Uuid,
    reservation: Reservation,
) -> Result<MdpyDevice, DeviceError> {
    let mode = ty.mode();
    let bar_size = Framebuffer::bar_size_for(mode.stride * u64::from(mode.height));
    let config = mdpy_config(&mode, bar_size)?;
    let framebuffer = Framebuffer::new(&format!("mdpy-{uuid}"), bar_size)?;
    let model = Mdpy {
        name: format!("mdpy {uuid} ({})", ty.name),
        mode,
    };
    Ok(DisplayDevice::new(
        config,
        framebuffer,
        model,
        vec![reservation],
    ))
}
