//! The mdpy PCI function: identity, the mode capability and a framebuffer BAR0, assembled
//! on the shared display function.

use mdev::parent::Reservation;
use mdev::pci::{PciConfig, VendorCapability};
use mdev::DeviceError;
use mdev_display::device::{config_error, display_config};
use mdev_display::{display_device, DisplayDevice, DisplayModel, Framebuffer, Mode};
use uuid::Uuid;

use crate::mode::{mode_capability_body, MODE_CAPABILITY_OFFSET};
use crate::types::MdpyType;

/// Vendor id (Red Hat, QEMU's PCI ids).
pub const VENDOR_ID: u16 = 0x1b36;
/// Device id.
pub const DEVICE_ID: u16 = 0x000f;
/// Revision.
pub const REVISION: u8 = 0;

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

/// The config space of an mdpy function showing `mode` (its BARs come with the device).
pub fn mdpy_config(mode: &Mode) -> Result<PciConfig, DeviceError> {
    let mut config = display_config(VENDOR_ID, DEVICE_ID, REVISION);
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
    let config = mdpy_config(&mode)?;
    let framebuffer = Framebuffer::new(&format!("mdpy-{uuid}"), bar_size)?;
    let model = Mdpy {
        name: format!("mdpy {uuid} ({})", ty.name),
        mode,
    };
    display_device(config, framebuffer, model, vec![reservation])
}
