//! # mdev-fuzz — coverage-guided fuzz targets
//!
//! Every target is a plain function `targets::NAME::run(&[u8])` that asserts its invariants
//! (a failed assertion or any panic is a finding). Two drivers call them:
//!
//! ```text
//!  fuzz/libfuzzer (libFuzzer, instrumented build) ─┐
//!                                                  ├─► targets::{wire, server, pci_config,
//!  tests/corpus.rs (cargo test: replays corpus/) ──┘              uart, mtty_line, mbochs, mdpy, rfb}::run
//! ```
//!
//! * `wire`: framing ([`mdev::wire::MessageReader`]) and [`mdev::wire::Request::parse`] of
//!   arbitrary bytes with arbitrary fds; accepted requests re-encode to themselves.
//! * `server`: message sequences on several connections against a live in-process server of
//!   each device; replies, opens, budgets and fds are checked after every sequence.
//! * `pci_config`, `uart`, `mbochs`, `mdpy`: register files driven as a guest would.
//! * `mtty_line`: an mtty port between guest accesses and its console's channels; bytes
//!   arrive at either end only as sent, in order.
//! * `rfb`: what a VNC viewer sends, through the RFB client-message parser and a whole
//!   server session; parsed messages re-encode and parse back to themselves.
//!
//! [`seeds`] turns recorded client traffic (`MDEV_RECORD_DIR`) and the hostile tests'
//! messages into corpus files.

#![warn(missing_docs)]

pub mod alloc;
pub mod fds;
pub mod panics;
pub mod seeds;
pub mod targets;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by name: the corpus directory and the libFuzzer binary carry these names.
pub const TARGETS: [(&str, Target); 8] = [
    ("wire", targets::wire::run),
    ("server", targets::server::run),
    ("pci_config", targets::pci_config::run),
    ("uart", targets::uart::run),
    ("mtty_line", targets::mtty_line::run),
    ("mbochs", targets::mbochs::run),
    ("mdpy", targets::mdpy::run),
    ("rfb", targets::rfb::run),
];
