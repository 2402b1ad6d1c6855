//! A view-only VNC server for a display instance: the pure [`crate::rfb`] protocol wired to
//! TCP and to a frame source (the viewer client, [`crate::DisplayClient`]).
//!
//! ```text
//!  DisplayClient ─capture─► poller thread ──Picture::successor──► FrameStore (latest Arc<Picture>)
//!   (one vfio-user         (every 1/fps s while a viewer is        │  publish wakes every viewer
//!    connection, BAR0       connected; idle otherwise)             │  (an eventfd each)
//!    mapped read-only)                                             ▼
//!  TcpListener ─accept─► one thread per viewer: poll(socket, eventfd) ─► Session::receive
//!   (loopback by default)                                         └──► Session::update ─► write
//! ```
//!
//! Bounds: a viewer's thread holds at most one picture (the latest: a slow viewer skips the
//! ones in between, never queues them), one update's bytes and one incomplete message; an
//! update the viewer has not taken within [`VncConfig::write_timeout`] drops that viewer, a
//! handshake not done within [`VncConfig::handshake_timeout`] too, and at most [`VncConfig::max_viewers`] are
//! served at once. Viewers never block one another: each writes from its own thread, and the
//! store's lock is held only to swap an `Arc`.

mod server;
mod store;
mod viewer;

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

pub use server::VncServer;
pub use viewer::ConnectionError;

use crate::client::{ClientError, DisplayClient};
use crate::format::Mode;

/// The port a bare `--vnc` address defaults to (display :0).
pub const DEFAULT_PORT: u16 = 5900;

/// Something frames can be captured from: the viewer client, or a fake in tests and benches.
pub trait FrameSource: Send + 'static {
    /// Copies the bytes the current mode scans out into `into` (resized to fit) and returns
    /// the mode; `None` when nothing valid is scanned out.
    fn capture(&mut self, into: &mut Vec<u8>) -> Result<Option<Mode>, ClientError>;

    /// Whether the device asked its viewers to let go (it is being removed): the server then
    /// stops serving.
    fn release_requested(&self) -> bool {
        false
    }
}

impl FrameSource for DisplayClient {
    fn capture(&mut self, into: &mut Vec<u8>) -> Result<Option<Mode>, ClientError> {
        DisplayClient::capture(self, into)
    }

    fn release_requested(&self) -> bool {
        DisplayClient::release_requested(self)
    }
}

/// How a [`VncServer`] serves.
#[derive(Clone, Debug)]
pub struct VncConfig {
    /// The desktop name viewers show.
    pub name: String,
    /// Captures per second while a viewer is connected.
    pub fps: u32,
    /// Viewers served at once; more are closed at once.
    pub max_viewers: usize,
    /// A viewer that has not taken a whole update within this long is dropped.
    pub write_timeout: Duration,
    /// A viewer must finish the handshake within this.
    pub handshake_timeout: Duration,
}

impl Default for VncConfig {
    fn default() -> Self {
        VncConfig {
            name: "mdev display".into(),
            fps: 30,
            max_viewers: 16,
            write_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the VNC server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// A listen address off the loopback without the explicit opt-in.
    #[error("{0} is not a loopback address: RFB without a password or encryption shows the display to anyone who can connect; pass --vnc-listen-any to listen there anyway")]
    NotLoopback(SocketAddr),
    /// Binding the listen address failed.
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, #[source] io::Error),
    /// The display could not be read (at start, or later: the instance went away).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Setting up the server (threads, eventfds, the listener) failed.
    #[error("setting up the VNC server: {0}")]
    Setup(#[source] io::Error),
}

/// Parses a listen address: `PORT` (on 127.0.0.1), `IP:PORT`, `[IPv6]:PORT` or
/// `localhost:PORT`.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match s.rsplit_once(':') {
        Some(("localhost", port)) => port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|_| format!("bad port in '{s}'")),
        Some(_) => s
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("cannot resolve '{s}' (use IP:PORT)")),
        None => Err(format!("'{s}' is neither PORT nor ADDR:PORT")),
    }
}

/// Binds the listener of a VNC server: `addr` must be a loopback address unless `listen_any`
/// (the operator's explicit opt-in to serve the display to the network).
pub fn bind(addr: SocketAddr, listen_any: bool) -> Result<TcpListener, VncError> {
    if !addr.ip().is_loopback() && !listen_any {
        return Err(VncError::NotLoopback(addr));
    }
    TcpListener::bind(addr).map_err(|e| VncError::Bind(addr, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback() {
        let p = |s| parse_listen_address(s);
        assert_eq!(p("5901"), Ok("127.0.0.1:5901".parse().unwrap()));
        assert_eq!(p("127.0.0.2:0"), Ok("127.0.0.2:0".parse().unwrap()));
        assert_eq!(p("[::1]:5900"), Ok("[::1]:5900".parse().unwrap()));
        assert_eq!(p("localhost:5902"), Ok("127.0.0.1:5902".parse().unwrap()));
        assert!(p("localhost:x").is_err());
        assert!(p("nonsense").is_err());
        assert!(p("99999").is_err());
    }

    #[test]
    fn a_non_loopback_address_needs_the_opt_in() {
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(bind(any, false), Err(VncError::NotLoopback(a)) if a == any));
        let l = bind("127.0.0.1:0".parse().unwrap(), false).expect("loopback");
        assert!(l.local_addr().unwrap().ip().is_loopback());
    }
}
