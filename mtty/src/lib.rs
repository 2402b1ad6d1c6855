//! # mtty — a mediated PCI serial card
//!
//! ```text
//!  guest ── BARn (8-byte I/O, trapped) ─► device::MttyDevice ─► card::Card ─► uart::Uart (port n)
//!                                                                  │  pump: bounded channels
//!                                                                  ▼
//!                                  console::{socket, pty, terminal} threads ◄─► host side
//!  interrupt line = OR of the ports' conditions ─► mdev::Interrupts (INTx or MSI eventfd)
//!  driver::MttyDriver (types.rs, global port budget) ─create─► MttyDevice
//! ```
//!
//! Identity and BAR layout follow the kernel's mtty sample, so a guest's stock `8250_pci`
//! driver binds. Each port is a 16550A ([`uart`]) that knows nothing of sockets; each port's
//! host side ([`console`]) runs on its own threads and never holds the device lock.

#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

pub mod card;
pub mod console;
pub mod device;
pub mod driver;
pub mod types;
pub mod uart;

pub use console::ConsoleSpec;
pub use device::{new_mtty, Mtty, MttyDevice};
pub use driver::MttyDriver;
pub use uart::Uart;
