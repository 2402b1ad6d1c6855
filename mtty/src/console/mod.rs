//! Where a port's bytes go on the host side. A console knows nothing of UARTs: it gets a
//! [`HostLink`] (two bounded byte channels and a way to tell the card that bytes moved) and
//! runs its own threads, so a slow or absent host side never holds the device lock.
//!
//! ```text
//!  device (register access, device lock)        console threads (may block)
//!  TX FIFO ──try_send──► to_host  ══bounded══►  writer ──► socket / pty / stdout
//!  RX FIFO ◄─try_recv── from_host ══bounded══◄  reader ◄── socket / pty / stdin
//!                        ▲                         │
//!                        └──── PortKick::kick ◄────┘  (after moving bytes)
//! ```

pub mod pty;
pub mod socket;
pub mod terminal;

use std::io;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use mdev::confine::{self, ThreadKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Bytes each direction may hold between the device and a console thread.
pub const CHANNEL_BYTES: usize = 4096;
/// How often a console thread checks whether it should stop.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What a port is connected to, chosen at create time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleSpec {
    /// Transmitted bytes come back as received bytes (the kernel sample's behaviour).
    Loopback,
    /// The host terminal, in raw mode (one port per process).
    Terminal,
    /// A UNIX socket listening at the path; one client at a time, reconnecting allowed.
    Socket(PathBuf),
    /// A new pseudo-terminal; its `/dev/pts/N` path is logged.
    Pty,
}

/// A console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console description is not one of the known forms.
    #[error("unknown console '{0}' (loopback, terminal, socket:PATH, pty)")]
    Unknown(String),
    /// The host terminal is already taken by another port.
    #[error("the host terminal is already a console")]
    TerminalBusy,
    /// The socket path is in use by a live listener or is not a socket.
    #[error("{0}: in use or not a socket")]
    SocketInUse(PathBuf),
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ConsoleError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> ConsoleError {
        move |source| ConsoleError::Io { what, source }
    }

    /// The errno a control client receives.
    pub fn errno(&self) -> i32 {
        match self {
            ConsoleError::Unknown(_) => libc::EINVAL,
            ConsoleError::TerminalBusy | ConsoleError::SocketInUse(_) => libc::EBUSY,
            ConsoleError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl std::str::FromStr for ConsoleSpec {
    type Err = ConsoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "loopback" => Ok(ConsoleSpec::Loopback),
            "terminal" => Ok(ConsoleSpec::Terminal),
            "pty" => Ok(ConsoleSpec::Pty),
            _ => match s.strip_prefix("socket:") {
                Some(p) if !p.is_empty() => Ok(ConsoleSpec::Socket(PathBuf::from(p))),
                _ => Err(ConsoleError::Unknown(s.to_string())),
            },
        }
    }
}

/// What a console thread tells the card.
pub trait PortKick: Send + Sync + 'static {
    /// Bytes moved on `port`'s channels: refill the receive FIFO (and move the TX FIFO if
    /// a full channel held it back), update the interrupt line.
    fn kick(&self, port: usize);
    /// Nothing moved for a while: send what the TX FIFO holds (a guest that wrote bytes
    /// and then left the port alone), as [`PortKick::kick`] does otherwise.
    fn flush(&self, port: usize);
    /// The host side of `port` attached or went away (drives CTS/DSR/DCD).
    fn set_carrier(&self, port: usize, on: bool);
}

/// The device's end of a port's channels.
pub struct GuestLink {
    /// Transmitted bytes, towards the console.
    pub to_host: SyncSender<u8>,
    /// Received bytes, from the console.
    pub from_host: Receiver<u8>,
}

/// A console thread's end of a port's channels.
pub struct HostLink {
    to_guest: SyncSender<u8>,
    // Only the writer thread receives; the mutex makes the link shareable with the reader.
    from_guest: Mutex<Receiver<u8>>,
    card: Weak<dyn PortKick>,
    port: usize,
    stop: Arc<AtomicBool>,
}

/// The two ends of a port's channels.
pub fn link(card: Weak<dyn PortKick>, port: usize, stop: Arc<AtomicBool>) -> (GuestLink, HostLink) {
    let (to_host, from_guest) = mpsc::sync_channel(CHANNEL_BYTES);
    let (to_guest, from_host) = mpsc::sync_channel(CHANNEL_BYTES);
    (
        GuestLink { to_host, from_host },
        HostLink {
            to_guest,
            from_guest: Mutex::new(from_guest),
            card,
            port,
            stop,
        },
    )
}

/// Waiting for transmitted bytes ended.
pub enum Outgoing {
    /// Some bytes.
    Bytes(Vec<u8>),
    /// Nothing within [`POLL_INTERVAL`].
    Idle,
    /// The device is gone or the console was told to stop.
    Closed,
}

impl HostLink {
    /// True when the console should stop (device removed).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.card.strong_count() == 0
    }

    /// Tells the card that bytes moved.
    pub fn kick(&self) {
        if let Some(card) = self.card.upgrade() {
            card.kick(self.port);
        }
    }

    /// Reports the host side's presence.
    pub fn set_carrier(&self, on: bool) {
        if let Some(card) = self.card.upgrade() {
            card.set_carrier(self.port, on);
        }
    }

    /// Waits up to [`POLL_INTERVAL`] for transmitted bytes and takes what is queued.
    pub fn next_outgoing(&self) -> Outgoing {
        if self.stopped() {
            return Outgoing::Closed;
        }
        let from_guest = self.from_guest.lock().unwrap_or_else(|p| p.into_inner());
        match from_guest.recv_timeout(POLL_INTERVAL) {
            Ok(b) => {
                let mut out = vec![b];
                out.extend(from_guest.try_iter().take(CHANNEL_BYTES));
                drop(from_guest);
                // Room freed in the channel: the TX FIFO can drain into it.
                self.kick();
                Outgoing::Bytes(out)
            }
            Err(RecvTimeoutError::Timeout) => {
                drop(from_guest);
                if let Some(card) = self.card.upgrade() {
                    card.flush(self.port);
                }
                Outgoing::Idle
            }
            Err(RecvTimeoutError::Disconnected) => Outgoing::Closed,
        }
    }

    /// Takes what the guest has transmitted so far, without waiting (for callers that must
    /// never block, such as a fuzz driver; console threads use [`Self::next_outgoing`]).
    pub fn outgoing_now(&self) -> Vec<u8> {
        let from_guest = self.from_guest.lock().unwrap_or_else(|p| p.into_inner());
        let out: Vec<u8> = from_guest.try_iter().take(CHANNEL_BYTES).collect();
        drop(from_guest);
        if !out.is_empty() {
            self.kick();
        }
        out
    }

    /// Offers one received byte to the guest without waiting: false when the channel is full
    /// or the device is gone. Call [`Self::kick`] after a batch.
    pub fn offer(&self, b: u8) -> bool {
        self.to_guest.try_send(b).is_ok()
    }

    /// Hands received bytes to the guest, waiting while the channel is full (the guest
    /// holds them back with RTS). Returns false when the device is gone.
    pub fn deliver(&self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match self.to_guest.try_send(b) {
                Ok(()) => {}
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(b)) => {
                    if !self.send_waiting(b) {
                        return false;
                    }
                }
            }
        }
        self.kick();
        true
    }

    fn send_waiting(&self, mut b: u8) -> bool {
        // While the guest drains the channel (its register accesses refill the receive FIFO)
        // a kick would only take the card's lock from it; a channel that stays full is
        // kicked, in case the guest waits for an interrupt.
        const KICK_EVERY: u32 = 100;
        let mut waited = 0u32;
        loop {
            if self.stopped() {
                return false;
            }
            match self.to_guest.try_send(b) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    b = back;
                    if waited % KICK_EVERY == 1 {
                        self.kick();
                    }
                    waited = waited.wrapping_add(1);
                    // The device pulls from the channel when the guest reads RBR; a short
                    // sleep keeps this thread from spinning while the guest is busy.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// Waits up to [`POLL_INTERVAL`] for `fd` to become readable; returns the revents.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<PollFlags> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = u16::try_from(POLL_INTERVAL.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(PollFlags::empty()),
        Ok(_) => Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
        Err(nix::errno::Errno::EINTR) => Ok(PollFlags::empty()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// A running console: its threads stop and are joined when it drops.
pub struct Console {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    description: String,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Console {
    pub(crate) fn new(
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
        description: String,
        cleanup: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Console {
            stop,
            threads,
            description,
            cleanup,
        }
    }

    /// What it is connected to (`socket /path`, `pty /dev/pts/3`).
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(c) = self.cleanup.take() {
            c();
        }
    }
}

/// Starts the console `spec` on `host` (not for [`ConsoleSpec::Loopback`], which needs no
/// thread). `name` labels threads and log lines.
pub fn start(
    spec: &ConsoleSpec,
    host: HostLink,
    name: &str,
) -> Result<Option<Console>, ConsoleError> {
    let stop = host.stop.clone();
    match spec {
        ConsoleSpec::Loopback => Ok(None),
        ConsoleSpec::Socket(path) => socket::start(path, host, stop, name).map(Some),
        ConsoleSpec::Pty => pty::start(host, stop, name).map(Some),
        ConsoleSpec::Terminal => terminal::start(host, stop, name).map(Some),
    }
}

/// Starts a console thread named `name`, confined to `kind`'s list before it runs `f`.
pub(crate) fn spawn(
    kind: ThreadKind,
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, ConsoleError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            confine::enter(kind);
            f()
        })
        .map_err(ConsoleError::io("spawn console thread"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            "loopback".parse::<ConsoleSpec>().unwrap(),
            ConsoleSpec::Loopback
        );
        assert_eq!("pty".parse::<ConsoleSpec>().unwrap(), ConsoleSpec::Pty);
        assert_eq!(
            "socket:/tmp/x".parse::<ConsoleSpec>().unwrap(),
            ConsoleSpec::Socket(PathBuf::from("/tmp/x"))
        );
        for bad in ["socket:", "tcp:1", ""] {
            assert_eq!(
                bad.parse::<ConsoleSpec>().unwrap_err().errno(),
                libc::EINVAL
            );
        }
    }
}
