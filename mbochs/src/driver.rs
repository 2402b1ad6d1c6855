//! The mbochs parent driver: its types and the framebuffer-megabyte pool every instance
//! draws from.

use mdev::parent::{refuse_params, Budget, CreateParams, MdevDriver, MdevType, NewDevice};
use mdev::DeviceError;
use uuid::Uuid;

use crate::device::new_mbochs;
use crate::types::{MbochsType, TYPES};

/// Default size of the framebuffer pool in MiB (the kernel sample's `max_mbytes`).
pub const DEFAULT_MAX_MBYTES: u64 = 256;

/// Name of the driver (and of its socket directory).
pub const DRIVER_NAME: &str = "mbochs";

/// The mbochs driver.
pub struct MbochsDriver {
    pool: Budget,
}

impl MbochsDriver {
    /// A driver whose instances share `max_mbytes` MiB of framebuffer memory.
    pub fn new(max_mbytes: u64) -> Self {
        MbochsDriver {
            pool: Budget::new("framebuffer MiB", max_mbytes),
        }
    }

    /// The pool (for listings and tests).
    pub fn pool(&self) -> &Budget {
        &self.pool
    }
}

impl MdevDriver for MbochsDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn types(&self) -> Vec<MdevType> {
        TYPES
            .iter()
            .map(|t| MdevType::vfio_pci(t.name, t.description(), self.pool.free() / t.mbytes))
            .collect()
    }

    fn create(
        &self,
        type_name: &str,
        uuid: Uuid,
        params: &CreateParams,
    ) -> Result<NewDevice, DeviceError> {
        let ty = MbochsType::by_name(type_name).ok_or(DeviceError::InvalidArgument(
            "unknown mbochs type (small, medium, large)",
        ))?;
        refuse_params(DRIVER_NAME, params)?;
        let reservation = self.pool.take(ty.mbytes).map_err(|e| {
            DeviceError::NoSpace(format!(
                "type {} needs {} MiB of framebuffer memory but only {} of {} MiB are free",
                ty.name, e.wanted, e.free, e.total
            ))
        })?;
        // Any failure below drops the reservation, giving the megabytes back.
        let device = new_mbochs(ty, uuid, reservation)?;
        Ok(NewDevice {
            device: Box::new(device),
            set_key: None,
        })
    }
}
