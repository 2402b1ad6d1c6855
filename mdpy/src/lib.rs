//! # mdpy — a simple mediated display
//!
//! ```text
//!  guest ── BAR0 (framebuffer, memfd, mmap'd by the client) ─────────────► pixels
//!        └─ config space: vendor capability at 0x40 ─► fourcc / width / height (read-only)
//!  driver::MdpyDriver (types.rs, device budget) ─create─► device::MdpyDevice
//!  mode::ConfigModeReader: a viewer reads the same capability through region 7
//! ```
//!
//! The mode is fixed by the type; the guest (the project's own fbdev driver
//! `tests/guest/mdpy-fb`, on which fbcon runs, or anything that maps BAR0) draws XRGB8888
//! pixels straight into the shared framebuffer.

#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod device;
pub mod driver;
pub mod mode;
pub mod types;

pub use device::{new_mdpy, MdpyDevice};
pub use driver::MdpyDriver;
pub use mode::ConfigModeReader;
