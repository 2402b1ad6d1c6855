//! Serving one device on one UNIX socket to any number of concurrent client connections.
//! Each connection is one "open" of the device and runs on its own thread.

mod connection;
mod departure;
mod listener;
mod record;

pub use connection::ConnectionStats;
pub use departure::{
    ask_and_wait, deadline_after, Departure, Disconnector, DEFAULT_REMOVE_TIMEOUT, DISCONNECT_LIMIT,
};
pub use listener::{DeviceServer, ServerError, DEFAULT_MAX_CONNECTIONS, DEFAULT_MESSAGE_TIMEOUT};
pub use record::RECORD_DIR_ENV;
