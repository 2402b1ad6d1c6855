//! The process-wide side of passthrough: one host VFIO (container), the IOMMU space its
//! devices share, and the reset state of each reset scope. Opening a device through it
//! gives the device and the key of the set it belongs to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use log::{info, warn};
use mdev::DeviceSetKey;

use crate::address::PciAddress;
use crate::client_trust::ClientTrust;
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

    /// Opens `address` for clients trusted with nothing but protocol replies
    /// ([`ClientTrust::ProtocolOnly`]): the device, and the key of its reset scope (`None`
    /// when the host offers no hot reset for it: a singleton set).
    pub fn open(
        &self,
        address: PciAddress,
    ) -> Result<(PassthroughDevice<V>, Option<DeviceSetKey>), HostError> {
        self.open_with(address, ClientTrust::default())
    }

    /// Opens `address` as [`Passthrough::open`] does, its clients trusted with `trust`.
    pub fn open_with(
        &self,
        address: PciAddress,
        trust: ClientTrust,
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
            trust,
        );
        Ok((device, key))
    }
}

#[cfg(test)]
mod tests {
    use mdev::DeviceSets;

    use super::*;
    use crate::fake::{FakeSpec, FakeVfio};

    fn addr(bus: u8, dev: u8) -> PciAddress {
        PciAddress::from_devfn(0, bus, dev << 3)
    }

    #[test]
    fn devices_sharing_a_reset_scope_form_one_set_keyed_by_the_sorted_scope() {
        let fake = FakeVfio::new();
        // Listed out of order: the key must not depend on the order the kernel reports.
        let scope = [addr(1, 2), addr(1, 1)];
        for a in scope {
            fake.add(FakeSpec::sharing(a, &scope, 7));
        }
        let passthrough = Passthrough::new(Arc::new(fake));
        let sets = DeviceSets::new();
        let mut handles = Vec::new();
        for a in scope {
            let (device, key) = passthrough.open(a).unwrap();
            assert_eq!(key, Some(DeviceSetKey("0000:01:01.0,0000:01:02.0".into())));
            handles.push(sets.register(&a.to_string(), Box::new(device), key));
        }
        assert!(Arc::ptr_eq(handles[0].set(), handles[1].set()));
        assert_eq!(handles[0].set().len(), 2);
        assert_eq!(sets.keyed_sets(), 1);
    }

    #[test]
    fn a_device_alone_in_its_scope_or_without_one_is_a_set_of_its_own() {
        let fake = FakeVfio::new();
        fake.add(FakeSpec::new(addr(2, 0)));
        fake.add(FakeSpec {
            affected: None, // no slot or bus reset possible
            ..FakeSpec::new(addr(3, 0))
        });
        let passthrough = Passthrough::new(Arc::new(fake));
        let sets = DeviceSets::new();
        let (alone, alone_key) = passthrough.open(addr(2, 0)).unwrap();
        let (no_scope, no_key) = passthrough.open(addr(3, 0)).unwrap();
        assert_eq!(alone_key, Some(DeviceSetKey("0000:02:00.0".into())));
        assert_eq!(no_key, None);
        let a = sets.register("alone", Box::new(alone), alone_key);
        let b = sets.register("no-scope", Box::new(no_scope), no_key);
        assert!(!Arc::ptr_eq(a.set(), b.set()));
        assert_eq!((a.set().len(), b.set().len()), (1, 1));
    }

    #[test]
    fn opening_a_device_the_host_does_not_offer_fails_cleanly() {
        let passthrough = Passthrough::new(Arc::new(FakeVfio::new()));
        let err = passthrough.open(addr(9, 0)).err().expect("no such device");
        assert!(matches!(err, HostError::NoGroup { .. }), "{err}");
    }
}
