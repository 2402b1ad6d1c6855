//! The targets, one module each, each with `pub fn run(data: &[u8])`.

pub mod mbochs;
pub mod mdpy;
pub mod mtty_line;
pub mod pci_config;
pub mod rfb;
pub mod server;
pub mod uart;
pub mod wire;
