//! # mbochs — a bochs-display compatible mediated device
//!
//! ```text
//!  guest ── BAR0 (framebuffer, memfd, mmap'd by the client) ──────────────┐
//!        └─ BAR2 MMIO ─► mmio::MmioRegisters ─┬─ EDID (edid.rs)           │
//!                                             ├─ VGA port shadow          │
//!                                             ├─ DISPI (dispi.rs)         ▼
//!                                             └─ QEMU ext regs ──► scanout::current_scanout ─► Mode
//!  driver::MbochsDriver (types.rs, framebuffer MiB pool) ─create─► device::MbochsDevice
//!  viewer::DispiModeReader: the same scan-out rules, read remotely by a viewer client
//! ```
//!
//! Linux's `bochs` DRM driver binds the function (1234:1111, class 0x0380), finds the DISPI
//! interface in BAR2, reads the EDID and programs modes with 16-bit MMIO writes.

#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod device;
pub mod dispi;
pub mod driver;
pub mod edid;
pub mod mmio;
pub mod scanout;
pub mod types;
pub mod viewer;

pub use device::{new_mbochs, MbochsDevice};
pub use driver::MbochsDriver;
pub use viewer::DispiModeReader;
