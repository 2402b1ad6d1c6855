//! # mdev — userspace mediated devices over vfio-user
//!
//! This crate rebuilds the Linux VFIO "device set" model and the mdev parent/type/instance
//! runtime in userspace, and serves each device to clients (QEMU's `vfio-user-pci`, a test
//! client, a viewer) over the vfio-user protocol.
//!
//! ## Data flow
//!
//! ```text
//!  client (QEMU, viewer, test)            one UNIX socket per device
//!        │  vfio-user messages + fds
//!        ▼
//!  server::Listener ──accept──► server::Connection  (one "open"; served by a pooled thread)
//!        │                        │ wire::  (framing, validation, replies; no device knowledge)
//!        │                        │ per-connection: DmaMappings, eventfds it handed over
//!        ▼                        ▼
//!  device_set::DeviceSet ── set lock ──► open_device (0→1) / close_device (1→0) / reset
//!        │
//!        ▼
//!  device::Device (trait) ◄── implemented by mtty, mdpy, mbochs, pci-passthrough
//!        uses pci::PciConfig, region::SharedMemory, irq::Interrupts
//!        ▲
//!  parent::Parent (types, budgets, instances by UUID, control socket)
//! ```
//!
//! ## What is shared and what belongs to a connection
//!
//! As in kernel VFIO, where every file descriptor of a device reaches the same device state:
//! registers, framebuffers, config space and interrupt *routing* (which index is enabled,
//! masks, the INTx level) are device state, shared by every connection. A connection's DMA
//! mappings and the eventfds it handed over through `SET_IRQS` are its own: when it closes
//! they are dropped, and the other connections are not disturbed (a device that passed
//! eventfds on is told through `Device::connection_closed`). `open_device` runs when the
//! first connection opens the device and `close_device` when the last one closes.
//!
//! ## Confinement
//!
//! A binary calls [`confine::configure`] once with its `--seccomp` mode; from then on every
//! thread the framework starts (listener, connection, interrupt delivery, control) confines
//! itself to its kind's seccomp allow-list as it starts, and the binary confines its main
//! thread once start-up is done. A process that never configures (a test, a library user)
//! runs unconfined.
//!
//! ## Lock order
//!
//! `DeviceSets` registry → a set's lock → a device's mutex → `Interrupts`' internal mutex.
//! Region accesses take only the device mutex (and then `Interrupts`). Code that locks more
//! than one device of a set always holds that set's lock first. No lock is held while
//! blocking on a socket.

#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod confine;
pub mod device;
pub mod device_set;
pub mod dma;
pub mod error;
pub mod irq;
pub mod owner;
pub mod parent;
pub mod pci;
pub mod region;
pub mod server;
pub mod set_context;
pub mod wire;

pub use device::{Device, DeviceFlags};
pub use device_set::{
    DeviceHandle, DeviceId, DeviceSetKey, DeviceSets, MemberState, Open, SetContext,
};
pub use error::DeviceError;
pub use irq::{Interrupts, IrqIndex};
pub use owner::{ConnectionId, OwnerId};
pub use region::{RegionFlags, RegionInfo, SharedMemory};
