//! Graceful removal of a served device: the kernel's `vfio_device_unregister` rebuilt over
//! vfio-user. In the kernel, unregistering a device that is in use asks its users to let go
//! (the driver's `request` op, the VFIO REQ interrupt, and QEMU hot-unplugs the device from
//! its guest) and waits. Here:
//!
//! 1. [`DeviceServer::depart`] refuses new opens (ENODEV at VERSION) and notes who holds the
//!    device, and whether each holder's connection routed REQ (can be asked);
//! 2. [`Departure::ask`] signals REQ once to every connection that routed it;
//! 3. [`Departure::wait`] waits, up to a deadline, for the asked connections to close;
//! 4. [`Departure::disconnect`] closes whatever still holds the device (a forced removal);
//! 5. [`Departure::complete`] keeps the device leaving, for the caller to stop serving it.
//!
//! Dropping a `Departure` that was not completed undoes step 1: the device accepts opens
//! again, as it was (a removal refused with EBUSY leaves nothing half-removed).
//!
//! ```text
//!  depart ──► ask (REQ) ──► wait ──┬─ all closed ─────────────► complete ─► shutdown
//!                                  ├─ held, forced ─► disconnect ┘
//!                                  └─ held ─► drop (device serves again) ─► EBUSY
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::listener::DeviceServer;
use super::shared::Shared;
use crate::device_set::{DeviceHandle, Open};
use crate::owner::ConnectionId;

/// How long a forced removal waits for the connections it closed to finish closing (their
/// `close_device` to run). Closing a socket ends its connection thread at once unless a
/// device hook is stuck.
pub const DISCONNECT_LIMIT: Duration = Duration::from_secs(5);

/// The default time clients get to let a device go once asked (`--remove-timeout`).
pub const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A device on its way out; see the module documentation.
pub struct Departure {
    handle: Arc<DeviceHandle>,
    closer: Disconnector,
    /// Who held the device when it started leaving, and whether each can be asked (REQ).
    holders: Vec<(Open, bool)>,
    /// The opens that were asked.
    asked: Vec<Open>,
    started: Instant,
    completed: bool,
}

impl DeviceServer {
    /// Starts removing this device gracefully: new opens are refused from now on. See
    /// [`Departure`].
    pub fn depart(&self) -> Departure {
        let handle = self.handle().clone();
        let holders = handle.begin_leaving();
        Departure {
            handle,
            closer: self.disconnector(),
            holders,
            asked: Vec::new(),
            started: Instant::now(),
            completed: false,
        }
    }

    /// A handle that closes every connection of this server from any thread (a second
    /// SIGTERM cutting a graceful shutdown short).
    pub fn disconnector(&self) -> Disconnector {
        Disconnector {
            shared: self.shared().clone(),
        }
    }
}

impl Departure {
    /// The device.
    pub fn handle(&self) -> &Arc<DeviceHandle> {
        &self.handle
    }

    /// Who held the device when it started leaving and cannot be asked to let go: their
    /// connections routed no device request interrupt (a viewer, a test client).
    pub fn unaskable(&self) -> Vec<Open> {
        self.holders
            .iter()
            .filter(|(_, askable)| !askable)
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// Asks every client that routed the device request interrupt to let go (REQ, once per
    /// connection); returns the opens asked.
    pub fn ask(&mut self) -> &[Open] {
        self.asked = self.handle.request_release();
        &self.asked
    }

    /// The opens [`Departure::ask`] asked.
    pub fn asked(&self) -> &[Open] {
        &self.asked
    }

    /// Waits until every asked connection has closed, at most until `deadline`; returns
    /// whether they all did. Logs how long each took.
    pub fn wait(&self, deadline: Instant) -> bool {
        let conns: Vec<ConnectionId> = self.asked.iter().map(|o| o.conn).collect();
        let done = self.handle.wait_closed(&conns, deadline);
        if done && !conns.is_empty() {
            info!(
                "{}: every asked client let go after {:.1} s",
                self.handle.name(),
                self.started.elapsed().as_secs_f64()
            );
        }
        done
    }

    /// Who holds the device now.
    pub fn holders(&self) -> Vec<Open> {
        self.handle.opens()
    }

    /// Closes every connection that still holds the device (their closes run as for a
    /// client that went away, `close_device` on the last) and waits for them, at most
    /// [`DISCONNECT_LIMIT`]. Returns whether nothing holds the device any more.
    pub fn disconnect(&self) -> bool {
        let left = self.holders();
        if left.is_empty() {
            return true;
        }
        for o in &left {
            warn!(
                "{}: closing {} ({}) which still holds the device",
                self.handle.name(),
                o.conn,
                o.owner
            );
        }
        self.closer.disconnect_all();
        let conns: Vec<ConnectionId> = left.iter().map(|o| o.conn).collect();
        self.handle
            .wait_closed(&conns, deadline_after(DISCONNECT_LIMIT))
    }

    /// Ends the departure with the device still leaving (no new open), for the caller to
    /// stop serving it.
    pub fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for Departure {
    fn drop(&mut self) {
        if !self.completed {
            self.handle.stay();
            info!(
                "{}: removal abandoned; the device accepts clients again",
                self.handle.name()
            );
        }
    }
}

/// Closes every connection of one server, from any thread.
#[derive(Clone)]
pub struct Disconnector {
    shared: Arc<Shared>,
}

impl Disconnector {
    /// Shuts down the socket of every live connection (each connection's thread then ends
    /// and its close runs). Accepting goes on; a device that is leaving refuses newcomers.
    pub fn disconnect_all(&self) {
        self.shared.disconnect_all();
    }
}

/// Asks the clients of every departure, then waits for them all with one deadline
/// (`timeout` from now): the departures proceed side by side. Returns whether every asked
/// client let go.
pub fn ask_and_wait(departures: &mut [Departure], timeout: Duration) -> bool {
    for d in departures.iter_mut() {
        d.ask();
    }
    let deadline = deadline_after(timeout);
    // Waiting one after the other with a common deadline bounds the whole by `timeout`;
    // every departure is waited for, whatever the others did.
    let still_held = departures.iter().filter(|d| !d.wait(deadline)).count();
    still_held == 0
}

/// The instant `timeout` from now; a timeout too large for the clock waits a day.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}
