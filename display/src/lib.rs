//! # mdev-display — what the display devices (mdpy, mbochs) share
//!
//! ```text
//!  guest writes pixels ──► BAR0 (memfd, framebuffer::Framebuffer) ◄── mmap (read-only) ──┐
//!                                                                                        │
//!  device registers (config space / DISPI) ──region_read──► client::ModeReader ──► Mode  │
//!                                                                                        ▼
//!                                                     client::DisplayClient ──► format::Frame
//!                                                                   │                │
//!                                                   snapshot::save_png      terminal::TerminalRenderer
//! ```
//!
//! The device crates own their registers and say how a mode is read from them (a
//! [`client::ModeReader`]); everything that turns framebuffer bytes into pictures lives here.
//! A viewer is one more vfio-user client of the instance: it never resets the device and
//! closing it leaves the guest undisturbed.

#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod cli;
pub mod client;
pub mod device;
pub mod format;
pub mod framebuffer;
pub mod rfb;
pub mod snapshot;
pub mod terminal;
pub mod testing;
pub mod vnc;

pub use client::{ClientError, DisplayClient, ModeReader, RegisterSource};
pub use device::{display_device, Display, DisplayDevice, DisplayModel};
pub use format::{Frame, Mode, PixelFormat};
pub use framebuffer::Framebuffer;
