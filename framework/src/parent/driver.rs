//! What a sample driver (mtty, mdpy, mbochs, pci-passthrough) implements for the parent
//! runtime: its types and how to create an instance of one.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::device::Device;
use crate::device_set::DeviceSetKey;
use crate::error::DeviceError;

/// One type a parent offers (`/sys/.../mdev_supported_types/NAME`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MdevType {
    /// Type name, e.g. `mtty-2`.
    pub name: String,
    /// Human description.
    pub description: String,
    /// Device API, `vfio-pci`.
    pub device_api: String,
    /// How many more instances the budgets allow right now.
    pub available_instances: u64,
}

/// The device API every type of this project exposes.
pub const DEVICE_API_VFIO_PCI: &str = "vfio-pci";

impl MdevType {
    /// A `vfio-pci` type with `available_instances` left.
    pub fn vfio_pci(name: &str, description: String, available_instances: u64) -> Self {
        MdevType {
            name: name.to_string(),
            description,
            device_api: DEVICE_API_VFIO_PCI.to_string(),
            available_instances,
        }
    }
}

/// Refuses every create-time parameter (for drivers whose types take none), naming the first
/// one in the log and the error.
pub fn refuse_params(driver: &str, params: &CreateParams) -> Result<(), crate::DeviceError> {
    match params.keys().next() {
        None => Ok(()),
        Some(key) => {
            log::warn!("{driver}: unknown parameter '{key}' refused");
            Err(crate::DeviceError::InvalidArgument(
                "this driver takes no create parameters",
            ))
        }
    }
}

/// Options given at create time (`port0=socket:/run/x.sock`, `edid=off`, …).
pub type CreateParams = BTreeMap<String, String>;

/// A device a driver created, with the set it joins.
pub struct NewDevice {
    /// The device. Dropping it must give back every budget it took.
    pub device: Box<dyn Device>,
    /// Its device-set key; `None` for a singleton set.
    pub set_key: Option<DeviceSetKey>,
}

/// A driver of mediated devices.
pub trait MdevDriver: Send + Sync + 'static {
    /// The driver's name (`mtty`).
    fn name(&self) -> &str;

    /// The types offered, with availability computed from the budgets now.
    fn types(&self) -> Vec<MdevType>;

    /// Builds a device of `type_name` for `uuid`. Fails (taking nothing) when the type is
    /// unknown (EINVAL), a budget is short (ENOSPC) or a parameter is bad (EINVAL).
    fn create(
        &self,
        type_name: &str,
        uuid: Uuid,
        params: &CreateParams,
    ) -> Result<NewDevice, DeviceError>;
}

/// Parses `TYPE[,uuid=UUID][,KEY=VALUE…]`.
pub fn parse_create_spec(spec: &str) -> Result<(String, Option<Uuid>, CreateParams), String> {
    let mut parts = spec.split(',');
    let type_name = parts
        .next()
        .filter(|t| !t.is_empty())
        .ok_or("empty instance spec")?
        .to_string();
    let mut uuid = None;
    let mut params = CreateParams::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("'{p}' is not KEY=VALUE"))?;
        if k == "uuid" {
            uuid = Some(
                v.parse::<Uuid>()
                    .map_err(|e| format!("bad uuid '{v}': {e}"))?,
            );
        } else {
            params.insert(k.to_string(), v.to_string());
        }
    }
    Ok((type_name, uuid, params))
}
