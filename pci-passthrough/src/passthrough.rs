//! The process-wide side of passthrough: one host VFIO (container), the IOMMU space its
//! devices share, and the reset state of each reset scope. Opening a device through it
//! gives the device and the key of the set it belongs to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use log::{info, warn};
use mdev::DeviceSetKey;

use crate::address::PciAddress;
use crate::device::PassthroughDevice;
use crate::dma::IommuSpace;
use crate::host::{HostDevice, HostError, HostVfio};
use crate::reset::{scope_key, ResetState};

/// Opens host devices for serving.
pub struct Passthrough<V: HostVfio> {
    host: Arc<V>,
    iommu: Arc<IommuSpace<V>>,
    scopes: Mutex<HashMap<DeviceSetKey, Weak<ResetState>>>,
}

impl<V: HostVfio> Passthrough<V> {
    /// Passthrough on `host`.
    pub fn new(host: Arc<V>) -> Self {
        Passthrough {
            iommu: Arc::new(IommuSpace::new(host.clone())),
            host,
            scopes: Mutex::new(HashMap::new()),
        }
    }

    /// The shared IOMMU space.
    pub fn iommu(&self) -> &Arc<IommuSpace<V>> {
        &self.iommu
    }

    /// Opens `address`: the device, and the key of its reset scope (`None` when the host
    /// offers no hot reset for it: a singleton set).
    pub fn open(
        &self,
        address: PciAddress,
    ) -> Result<(PassthroughDevice<V>, Option<DeviceSetKey>), HostError> {
        let device = self.host.open(address)?;
        let scope = device.hot_reset_info().unwrap_or_else(|e| {
            warn!("{address}: no hot reset scope ({e}); the device is a set of its own");
            Vec::new()
        });
        let key = scope_key(&scope);
        let resets = match &key {
            Some(k) => {
                let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
                match scopes.get(k).and_then(Weak::upgrade) {
                    Some(r) => r,
                    None => {
                        let r = Arc::new(ResetState::default());
                        scopes.insert(k.clone(), Arc::downgrade(&r));
                        r
                    }
                }
            }
            None => Arc::new(ResetState::default()),
        };
        info!(
            "{address}: opened (flr: {}, reset scope: {})",
            device.info().flr,
            key.as_ref().map_or("none", |k| k.0.as_str())
        );
        let device = PassthroughDevice::new(
            self.host.clone(),
            device,
            scope,
            self.iommu.clone(),
            resets,
        );
        Ok((device, key))
    }
}
