//! Which userspace VFIO interface the host kernel offers a device through: the legacy
//! group + container path (`/dev/vfio/N` with `/dev/vfio/vfio`), which this crate
//! implements, or the device cdev (`/dev/vfio/devices/vfioX`, bound to an iommufd at
//! `/dev/iommu`), which it does not. `serve` and `bench` probe first and say which path they
//! use, so a host that offers only the cdev gets a clear refusal instead of a failed open.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::address::PciAddress;

/// Where sysfs lists PCI functions.
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// The root of VFIO's device nodes.
const DEV_VFIO: &str = "/dev/vfio";
/// The legacy container node, under [`DEV_VFIO`].
const CONTAINER_NODE: &str = "vfio";
/// The directory of device cdevs, under [`DEV_VFIO`].
const CDEV_DIR: &str = "devices";
/// A function's cdev directory in sysfs (holds one `vfioX` entry).
const SYSFS_VFIO_DEV: &str = "vfio-dev";
/// The iommufd node a cdev must be bound to.
const IOMMUFD_NODE: &str = "/dev/iommu";

/// What the host offers for one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioAccess {
    /// The function.
    pub address: PciAddress,
    /// Its IOMMU group, when its group node exists (`/dev/vfio/N`).
    pub group: Option<u32>,
    /// Whether the legacy container (`/dev/vfio/vfio`) exists.
    pub container: bool,
    /// Its cdev node, when the kernel offers one (`/dev/vfio/devices/vfioX`).
    pub cdev: Option<PathBuf>,
    /// Whether `/dev/iommu` (iommufd) exists.
    pub iommufd: bool,
}

/// The path a function is opened through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfioPath {
    /// Group + type1 container (implemented).
    Group(u32),
}

/// Why a function cannot be opened through an implemented path.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Only the cdev/iommufd interface is offered.
    #[error(
        "{address}: the host offers this function only as the VFIO device cdev {} \
         (iommufd{}); the cdev/iommufd path is not implemented, only group + container \
         (needs CONFIG_VFIO_GROUP and CONFIG_VFIO_CONTAINER)",
        cdev.display(),
        if *iommufd { "" } else { ", and /dev/iommu is missing" }
    )]
    CdevOnly {
        /// The function.
        address: PciAddress,
        /// Its cdev node.
        cdev: PathBuf,
        /// Whether `/dev/iommu` exists.
        iommufd: bool,
    },
    /// Neither interface is offered.
    #[error(
        "{address}: no VFIO interface for this function (no group node{}, no cdev); \
         is it bound to vfio-pci, with an IOMMU?",
        if *container { "" } else { ", no /dev/vfio/vfio" }
    )]
    NotOffered {
        /// The function.
        address: PciAddress,
        /// Whether the legacy container exists.
        container: bool,
    },
}

impl VfioAccess {
    /// Probes the running host.
    pub fn probe(address: PciAddress) -> Self {
        Self::probe_in(
            Path::new(SYSFS_PCI_DEVICES),
            Path::new(DEV_VFIO),
            Path::new(IOMMUFD_NODE),
            address,
        )
    }

    /// Probes with explicit roots (tests use a scratch tree).
    pub fn probe_in(
        sysfs_pci: &Path,
        dev_vfio: &Path,
        iommufd: &Path,
        address: PciAddress,
    ) -> Self {
        let function = sysfs_pci.join(address.to_string());
        let group = std::fs::read_link(function.join("iommu_group"))
            .ok()
            .and_then(|t| t.file_name()?.to_str()?.parse::<u32>().ok())
            .filter(|g| dev_vfio.join(g.to_string()).exists());
        let cdev = first_entry(&function.join(SYSFS_VFIO_DEV))
            .ok()
            .flatten()
            .map(|name| dev_vfio.join(CDEV_DIR).join(name))
            .filter(|node| node.exists());
        VfioAccess {
            address,
            group,
            container: dev_vfio.join(CONTAINER_NODE).exists(),
            cdev,
            iommufd: iommufd.exists(),
        }
    }

    /// The implemented path to use, or why there is none.
    pub fn choose(&self) -> Result<VfioPath, AccessError> {
        match (self.group, self.container, &self.cdev) {
            (Some(group), true, _) => Ok(VfioPath::Group(group)),
            (_, _, Some(cdev)) => Err(AccessError::CdevOnly {
                address: self.address,
                cdev: cdev.clone(),
                iommufd: self.iommufd,
            }),
            _ => Err(AccessError::NotOffered {
                address: self.address,
                container: self.container,
            }),
        }
    }
}

impl fmt::Display for VfioAccess {
    /// One line for the log: what is offered, and which path is taken.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: VFIO ", self.address)?;
        match self.group {
            Some(g) => write!(f, "group {g} ({DEV_VFIO}/{g})")?,
            None => write!(f, "no group node")?,
        }
        if !self.container {
            write!(f, ", no container")?;
        }
        match &self.cdev {
            Some(c) => write!(
                f,
                ", cdev {} (iommufd {})",
                c.display(),
                if self.iommufd { "present" } else { "absent" }
            )?,
            None => write!(f, ", no cdev")?,
        }
        match self.choose() {
            Ok(VfioPath::Group(_)) if self.cdev.is_some() => write!(
                f,
                ": using the group + type1 container path (cdev/iommufd not implemented)"
            ),
            Ok(VfioPath::Group(_)) => write!(f, ": using the group + type1 container path"),
            Err(_) => write!(f, ": no implemented path"),
        }
    }
}

/// The first entry name of `dir`, `None` when it is empty or absent.
fn first_entry(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries
            .next()
            .transpose()?
            .and_then(|e| e.file_name().into_string().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch sysfs + /dev tree.
    struct Tree {
        root: PathBuf,
    }

    impl Tree {
        fn new(label: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("pt-access-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("sys")).unwrap();
            fs::create_dir_all(root.join("dev/vfio")).unwrap();
            Tree { root }
        }
        fn sys(&self) -> PathBuf {
            self.root.join("sys")
        }
        fn dev(&self) -> PathBuf {
            self.root.join("dev/vfio")
        }
        fn iommufd(&self) -> PathBuf {
            self.root.join("dev/iommu")
        }
        fn touch(&self, path: PathBuf) {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"").unwrap();
        }
        fn function(&self, a: PciAddress, group: Option<u32>, cdev: Option<&str>) {
            let f = self.sys().join(a.to_string());
            fs::create_dir_all(&f).unwrap();
            if let Some(g) = group {
                symlink(
                    format!("../../../kernel/iommu_groups/{g}"),
                    f.join("iommu_group"),
                )
                .unwrap();
                self.touch(self.dev().join(g.to_string()));
            }
            if let Some(c) = cdev {
                fs::create_dir_all(f.join(SYSFS_VFIO_DEV).join(c)).unwrap();
                self.touch(self.dev().join(CDEV_DIR).join(c));
            }
        }
        fn probe(&self, a: PciAddress) -> VfioAccess {
            VfioAccess::probe_in(&self.sys(), &self.dev(), &self.iommufd(), a)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn addr() -> PciAddress {
        PciAddress::from_devfn(0, 1, 1 << 3)
    }

    #[test]
    fn a_group_with_the_container_is_used_even_when_a_cdev_is_offered_too() {
        let t = Tree::new("both");
        t.function(addr(), Some(5), Some("vfio0"));
        t.touch(t.dev().join(CONTAINER_NODE));
        t.touch(t.iommufd());
        let access = t.probe(addr());
        assert_eq!(access.choose().unwrap(), VfioPath::Group(5));
        let line = access.to_string();
        assert!(line.contains("group 5"), "{line}");
        assert!(line.contains("cdev/iommufd not implemented"), "{line}");
    }

    #[test]
    fn a_function_offered_only_as_a_cdev_is_refused_naming_the_cdev() {
        let t = Tree::new("cdev");
        t.function(addr(), None, Some("vfio3"));
        t.touch(t.iommufd());
        let err = t.probe(addr()).choose().unwrap_err();
        assert!(
            matches!(err, AccessError::CdevOnly { iommufd: true, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("devices/vfio3") && msg.contains("not implemented"),
            "{msg}"
        );
    }

    #[test]
    fn a_group_without_the_container_or_nothing_at_all_is_refused() {
        let t = Tree::new("none");
        t.function(addr(), Some(5), None); // CONFIG_VFIO_CONTAINER off: no /dev/vfio/vfio
        let err = t.probe(addr()).choose().unwrap_err();
        assert!(
            matches!(
                err,
                AccessError::NotOffered {
                    container: false,
                    ..
                }
            ),
            "{err}"
        );
        let other = PciAddress::from_devfn(0, 2, 0);
        let err = t.probe(other).choose().unwrap_err();
        assert!(matches!(err, AccessError::NotOffered { .. }), "{err}");
    }

    #[test]
    fn a_group_link_without_its_node_is_not_a_group() {
        let t = Tree::new("stale");
        t.function(addr(), Some(5), None);
        t.touch(t.dev().join(CONTAINER_NODE));
        fs::remove_file(t.dev().join("5")).unwrap();
        assert_eq!(t.probe(addr()).group, None);
    }
}
