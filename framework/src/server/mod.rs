//! Serving one device on one UNIX socket to any number of concurrent client connections.
//! Each connection is one "open" of the device and is served by a thread of the server's
//! pool (`workers.rs`) for as long as it lives; after a request a connection may poll its
//! socket for a while before it blocks ([`PollWindow`]).

mod connection;
mod departure;
mod listener;
mod poll;
mod record;
mod shared;
mod workers;

pub use departure::{
    ask_and_wait, deadline_after, Departure, Disconnector, DEFAULT_REMOVE_TIMEOUT, DISCONNECT_LIMIT,
};
pub use listener::{DeviceServer, ServerError};
pub use poll::{poll_from_env, PollEnvError, PollWindow, DEFAULT_POLL_US, POLL_ENV};
pub use record::RECORD_DIR_ENV;
pub use shared::{ConnectionStats, DEFAULT_MAX_CONNECTIONS, DEFAULT_MESSAGE_TIMEOUT};
