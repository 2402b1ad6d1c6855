//! A parent runtime with one driver in a scratch socket directory: what the device crates'
//! integration tests create their instances in.

use std::path::PathBuf;
use std::sync::Arc;

use mdev::parent::{CreateParams, InstanceInfo, MdevDriver, Parent};

use crate::ScratchDir;

/// A [`Parent`] serving `driver` from a scratch directory; shut down and removed on drop.
pub struct ParentHarness<D: MdevDriver + 'static> {
    /// The driver (for its budgets).
    pub driver: Arc<D>,
    /// The parent runtime.
    pub parent: Arc<Parent>,
    /// The socket directory.
    pub dir: ScratchDir,
}

impl<D: MdevDriver + 'static> ParentHarness<D> {
    /// A parent for `driver`; `label` names the scratch directory.
    pub fn new(driver: D, label: &str) -> Self {
        crate::init_logging();
        let driver = Arc::new(driver);
        let dir = ScratchDir::new(label);
        let parent = Parent::new(driver.clone(), dir.path()).expect("parent");
        ParentHarness {
            driver,
            parent,
            dir,
        }
    }

    /// Creates an instance of `type_name` with `params`; panics on failure.
    pub fn create(&self, type_name: &str, params: &[(&str, String)]) -> InstanceInfo {
        let params: CreateParams = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.parent
            .create(type_name, None, &params)
            .expect("create")
    }

    /// Creates an instance of `type_name` without parameters; returns its socket.
    pub fn socket(&self, type_name: &str) -> PathBuf {
        self.create(type_name, &[]).socket
    }
}

impl<D: MdevDriver + 'static> Drop for ParentHarness<D> {
    fn drop(&mut self) {
        self.parent.shutdown();
    }
}
