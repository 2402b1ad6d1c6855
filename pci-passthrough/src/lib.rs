//! # pci-passthrough — host PCI functions served over vfio-user
//!
//! Host devices bound to `vfio-pci` are opened through the kernel's VFIO (a type1
//! container and the devices' groups) and each is served on its own vfio-user socket.
//!
//! ```text
//!  client ──vfio-user──► mdev server ──► PassthroughDevice ──► HostDevice (device fd)
//!    config / BARs ................... pread/pwrite at the region's offset (trapped)
//!    mmap-able BARs, opt-in only ..... the device fd itself, handed to the client
//!    SET_IRQS eventfds ............... VFIO_DEVICE_SET_IRQS (the kernel signals the client)
//!    DMA_MAP (fd) .................... mmap here + VFIO_IOMMU_MAP_DMA (IommuSpace, shared)
//!    DEVICE_RESET / last close ....... FLR, or a hot reset of the reset scope (reset.rs)
//! ```
//!
//! By default a client receives nothing but protocol replies: no host fd, every BAR trapped.
//! [`ClientTrust::TrustedClientMmap`] (`serve --trusted-client-mmap`) hands a trusted VMM the
//! host device fd for direct BAR mmap, with every ioctl of that fd, beyond its connection.
//!
//! Devices whose hot reset scopes are equal share one `mdev` device set, keyed by the
//! scope's sorted addresses. The kernel side sits behind [`host::HostVfio`] /
//! [`host::HostDevice`]: [`vfio_host`] is the real one, [`fake`] an in-memory one that
//! records calls, so every rule is tested without hardware. [`vfio_access`] probes which
//! VFIO interface the host offers (group + container, implemented; device cdev + iommufd,
//! detected and reported, not implemented).

#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod address;
pub mod client_trust;
pub mod device;
pub mod dma;
pub mod edu;
pub mod fake;
pub mod host;
pub mod irq;
pub mod passthrough;
pub mod reset;
pub mod vfio_access;
pub mod vfio_host;

pub use address::PciAddress;
pub use client_trust::ClientTrust;
pub use device::PassthroughDevice;
pub use passthrough::Passthrough;
