//! The mdpy parent driver: its types and the device-count budget.

use mdev::parent::{refuse_params, Budget, CreateParams, MdevDriver, MdevType, NewDevice};
use mdev::DeviceError;
use uuid::Uuid;

use crate::device::new_mdpy;
use crate::types::{MdpyType, TYPES};

/// Default number of instances (the kernel sample's `count`).
pub const DEFAULT_MAX_DEVICES: u64 = 4;

/// Name of the driver (and of its socket directory).
pub const DRIVER_NAME: &str = "mdpy";

/// The mdpy driver.
pub struct MdpyDriver {
    devices: Budget,
}

impl MdpyDriver {
    /// A driver allowing `max_devices` instances at once.
    pub fn new(max_devices: u64) -> Self {
        MdpyDriver {
            devices: Budget::new("mdpy devices", max_devices),
        }
    }

    /// The device budget.
    pub fn budget(&self) -> &Budget {
        &self.devices
    }
}

impl MdevDriver for MdpyDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn types(&self) -> Vec<MdevType> {
        TYPES
            .iter()
            .map(|t| MdevType::vfio_pci(t.name, t.description(), self.devices.free()))
            .collect()
    }

    fn create(
        &self,
        type_name: &str,
        uuid: Uuid,
        params: &CreateParams,
    ) -> Result<NewDevice, DeviceError> {
        let ty = MdpyType::by_name(type_name).ok_or(DeviceError::InvalidArgument(
            "unknown mdpy type (vga, xga, hd)",
        ))?;
        refuse_params(DRIVER_NAME, params)?;
        let reservation = self.devices.take(1).map_err(|e| {
            DeviceError::NoSpace(format!(
                "all {} mdpy devices are in use ({} free)",
                e.total, e.free
            ))
        })?;
        let device = new_mdpy(ty, uuid, reservation)?;
        Ok(NewDevice {
            device: Box::new(device),
            set_key: None,
        })
    }
}
