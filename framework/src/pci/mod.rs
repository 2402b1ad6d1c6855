//! PCI configuration space emulation: the standard type-0 header, BAR sizing, the command and
//! status registers, and a capability chain. Devices describe their BARs and capabilities;
//! they never poke config-space bytes themselves.

mod capability;
mod config;
mod function;

pub use capability::*;
pub use config::*;
pub use function::{Bar, BarBacking, FunctionError, InterruptLayout, PciDevice, PciFunction};
