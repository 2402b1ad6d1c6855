//! What a server's listener, its connection threads and its departures share: the device, the
//! live connections (for an orderly shutdown), the limits new connections get, and counters.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::device_set::DeviceHandle;
use crate::owner::ConnectionId;

/// Connections one device serves at once by default. Each holds a thread while it lives;
/// QEMU needs one, a viewer or a test a few more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How long a client may take to finish a message it has begun, and to complete the VERSION
/// handshake after connecting. Between messages a connection may stay idle for ever. QEMU's
/// own reply timeout is 5 s by default.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters over all connections of one server.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Commands answered with an error.
    pub errors: AtomicU64,
    /// Connections closed because the stream could not be kept in sync.
    pub dropped: AtomicU64,
    /// Connections refused because the device already served its maximum.
    pub refused: AtomicU64,
}

/// Which of `streams` have a client that hung up (closed its end, or shut down both
/// directions): their threads have yet to see the end of the stream and close, and nothing
/// can hold them any more (a receive ends, a reply fails with EPIPE). Such a connection does
/// not count against the limit: on a CPU that clients and server share, a client that
/// connects, asks and goes again and again can run ahead of the threads that would see its
/// earlier connections end (a thread that polled for its client's next request waits
/// longest for the CPU), and it would be refused for connections that are over in all but
/// name. A client that only shut down its sending side still counts: it may leave its
/// thread blocked in sending it replies it never reads.
fn hung_up(streams: &[(ConnectionId, Arc<UnixStream>)]) -> Vec<ConnectionId> {
    // POLLHUP is reported whatever is asked for; a zero timeout never waits.
    let mut fds: Vec<PollFd> = streams
        .iter()
        .map(|(_, s)| PollFd::new(s.as_fd(), PollFlags::empty()))
        .collect();
    if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) <= 0 {
        return Vec::new();
    }
    fds.iter()
        .zip(streams)
        .filter(|(f, _)| f.revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)))
        .map(|(_, (id, _))| *id)
        .collect()
}

/// The state of one server that its threads share.
pub(crate) struct Shared {
    pub(crate) handle: Arc<DeviceHandle>,
    /// The socket of every live connection (shared with its thread), to shut it down from
    /// outside.
    live: Mutex<HashMap<ConnectionId, Arc<UnixStream>>>,
    pub(crate) stats: ConnectionStats,
    /// Connections served at once; more are refused.
    max_connections: AtomicUsize,
    /// Milliseconds a started message (and the whole VERSION handshake) may take.
    message_timeout_ms: AtomicU64,
    /// Longest time a connection polls its socket after a request before it blocks, in
    /// nanoseconds (0: never polls).
    poll_max_ns: AtomicU64,
    /// Where connections record what they receive (off: `None`).
    record_dir: Mutex<Option<PathBuf>>,
}

impl Shared {
    pub(crate) fn new(handle: Arc<DeviceHandle>) -> Self {
        Shared {
            handle,
            live: Mutex::new(HashMap::new()),
            stats: ConnectionStats::default(),
            max_connections: AtomicUsize::new(DEFAULT_MAX_CONNECTIONS),
            message_timeout_ms: AtomicU64::new(millis(DEFAULT_MESSAGE_TIMEOUT)),
            poll_max_ns: AtomicU64::new(0),
            record_dir: Mutex::new(super::record::dir_from_env()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Arc<UnixStream>>> {
        // Only inserts and removals happen under this lock: a poisoned map is consistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_message_timeout(&self, limit: Duration) {
        self.message_timeout_ms
            .store(millis(limit).max(1), Ordering::Relaxed);
    }

    /// The longest poll window of a connection (zero: polling off).
    pub(crate) fn poll_max(&self) -> Duration {
        Duration::from_nanos(self.poll_max_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn set_poll_max(&self, max: Duration) {
        let ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        self.poll_max_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn set_max_connections(&self, n: usize) {
        self.max_connections.store(n, Ordering::Relaxed);
    }

    /// Number of live connections.
    pub(crate) fn connections(&self) -> usize {
        self.live().len()
    }

    /// Takes connection `id` on (its socket is `stream`) unless the server is full; `false`
    /// when it is refused (counted, and warned of now and then).
    pub(crate) fn admit(&self, id: ConnectionId, stream: Arc<UnixStream>) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        // Only when full are the clients' sockets looked at, and outside the lock every
        // connection's start and end takes.
        let full = {
            let live = self.live();
            (live.len() >= max).then(|| {
                live.iter()
                    .map(|(id, s)| (*id, s.clone()))
                    .collect::<Vec<_>>()
            })
        };
        let gone = full.as_deref().map_or_else(Vec::new, hung_up);
        let mut live = self.live();
        // Those that hung up and are still there (some may have ended meanwhile).
        let going = gone.iter().filter(|id| live.contains_key(id)).count();
        if live.len() - going >= max {
            let refused = self.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                log::warn!(
                    "{}: {max} connections already open; refusing more (refused so far: {refused})",
                    self.handle.name(),
                );
            }
            return false;
        }
        live.insert(id, stream);
        true
    }

    /// Shuts down the socket of every live connection: each connection's thread sees the
    /// end of its stream, and its close runs as for a client that went away.
    pub(crate) fn disconnect_all(&self) {
        for stream in self.live().values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The directory connections record into, if recording is on.
    pub(crate) fn record_dir(&self) -> Option<PathBuf> {
        self.record_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_record_dir(&self, dir: Option<PathBuf>) {
        *self.record_dir.lock().unwrap_or_else(|p| p.into_inner()) = dir;
    }

    /// Called as connection `id` ends: it leaves `live`, and only now is its socket closed
    /// for good (the last reference goes with the entry), so the client sees the end of the
    /// stream.
    pub(crate) fn forget(&self, id: ConnectionId) {
        let gone = self.live().remove(&id);
        drop(gone);
    }
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
