//! Parents, types and instances: the kernel's mdev model as a small runtime every sample
//! binary uses. A [`Parent`] owns a driver's types, creates and removes instances by UUID
//! (each served on `DIR/UUID.sock`) and answers a control socket (`DIR/control.sock`) that
//! speaks the typed messages of [`protocol`]. Definitions ([`DefinitionStore`], one
//! `UUID.json` per instance) make instances persistent: `serve` starts the `auto` ones.
//!
//! ```text
//!  CLI (cli.rs) ── define/undefine/list --defined ──► definitions.rs (DIR/UUID.json)
//!     │                                                    ▲
//!     └── ControlClient ── Request/Reply ──► ControlServer ─┤ start UUID
//!                                                 │         │
//!                                                 ▼         │
//!                      serve.rs ─ start-up ─► Parent ◄──────┘  (instances, sockets)
//! ```

pub mod activation;
mod budget;
#[cfg(feature = "cli")]
pub mod cli;
mod control;
mod definitions;
mod driver;
mod instances;
pub mod protocol;
#[cfg(feature = "cli")]
mod serve;
#[cfg(feature = "cli")]
mod shell_docs;
mod signals;

pub use budget::{Budget, BudgetExhausted, Reservation};
pub use control::{control_request, ControlClient, ControlServer, ControlSocket, CONTROL_SOCKET};
pub use definitions::{Definition, DefinitionError, DefinitionStore, Scan};
pub use driver::{
    parse_create_spec, refuse_params, CreateParams, MdevDriver, MdevType, NewDevice,
    DEVICE_API_VFIO_PCI,
};
pub use instances::{BusyReason, Holder, InstanceInfo, Parent, ParentError};
pub use protocol::{ControlError, Reply, Request};
#[cfg(feature = "cli")]
pub use shell_docs::{write_shell_docs, GenerateDocs, ShellDocsError};
pub use signals::{block_shutdown_signals, wait_for_shutdown};
