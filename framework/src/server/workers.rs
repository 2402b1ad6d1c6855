//! The connection threads of one server, kept for reuse. Each idle thread waits in `accept`
//! on the listening socket itself (the kernel wakes exactly one per client), so connecting
//! costs neither a thread creation nor a hand-over from another thread. A thread returns to
//! `accept` when its connection ends; at most [`MAX_IDLE`] wait there, the others end.
//!
//! ```text
//!  listener thread (ThreadKind::Listener): starts pool threads, one ahead of need
//!     └► pool thread (ThreadKind::Connection): accept ─► serve one connection ─► accept …
//! ```
//!
//! Every pool thread confines itself once, as a [`ThreadKind::Connection`], and only ever
//! accepts and serves connections: a seccomp filter cannot be changed after, so a thread never
//! switches kinds. Threads are started (and so confined) by the listener thread, which starts
//! one whenever no thread is left waiting in `accept`, so a client never waits for a thread to
//! be created unless clients arrive faster than threads start.
//!
//! Stopping: the flag is set, every connection is shut down, then every thread still waiting
//! in `accept` is interrupted (the wake-up signal of [`crate::irq`]; `accept` returns EINTR)
//! until it has seen the flag and ended; a thread serving a connection is never interrupted
//! (a device hook must not see EINTR) and ends with its connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, warn};

use super::connection::serve_connection;
use super::shared::Shared;
use crate::confine::{self, ThreadKind};
use crate::owner::ConnectionId;
use crate::wire::MessageReader;

/// Threads kept waiting in `accept`; more end when their connection does.
pub(crate) const MAX_IDLE: usize = 4;

/// How often, and how far apart, threads are interrupted at a stop before they are simply
/// waited for (one may be in a device hook).
const STOP_ATTEMPTS: u32 = 500;
const STOP_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Default)]
struct State {
    /// Threads waiting in `accept` (or about to).
    idle: usize,
    /// Threads asked of the listener thread and not started yet.
    wanted: usize,
    /// Every thread started and not joined yet.
    threads: Vec<PoolThread>,
}

/// One thread of the pool.
struct PoolThread {
    handle: JoinHandle<()>,
    /// The thread is waiting in `accept` (or about to): a stop interrupts it there, and never
    /// a thread serving a connection (its device hooks must not see EINTR).
    accepting: Arc<AtomicBool>,
}

/// The pool of one server's connection threads.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    listener: UnixListener,
    stop: AtomicBool,
    state: Mutex<State>,
    /// Wakes the listener thread: a thread is wanted, or the pool stops.
    want: Condvar,
}

impl Workers {
    pub(crate) fn new(shared: Arc<Shared>, listener: UnixListener) -> Arc<Self> {
        Arc::new(Workers {
            shared,
            listener,
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                wanted: 1,
                ..State::default()
            }),
            want: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only counters and the thread list change under this lock: a poisoned one is
        // consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The listener thread's life: start the pool threads asked for (one at once), until
    /// the pool stops.
    pub(crate) fn supervise(self: &Arc<Self>) {
        let mut st = self.lock();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if st.wanted == 0 {
                st = self.want.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.wanted -= 1;
            // Threads that ended (beyond the idle bound) hold nothing any more.
            st.threads.retain(|t| !t.handle.is_finished());
            let pool = self.clone();
            let accepting = Arc::new(AtomicBool::new(true));
            let flag = accepting.clone();
            // Named once for its device (renaming it for each connection would cost two
            // system calls per connection).
            let name: String = format!("conn#{}", self.shared.handle.name())
                .chars()
                .take(15)
                .collect();
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                confine::enter(ThreadKind::Connection);
                pool.work(&flag);
            });
            match spawned {
                Ok(handle) => {
                    st.idle += 1;
                    st.threads.push(PoolThread { handle, accepting });
                }
                Err(e) => {
                    warn!(
                        "{}: cannot start a connection thread: {e}",
                        self.shared.handle.name()
                    );
                    // Try again when the next connection is taken.
                }
            }
        }
    }

    /// A pool thread's life: accept a connection, serve it, and again, until the pool stops
    /// or enough threads wait already.
    fn work(&self, accepting: &AtomicBool) {
        // The receive buffer, kept from one connection to the next.
        let mut reader = MessageReader::new();
        loop {
            accepting.store(true, Ordering::SeqCst);
            let stream = self.accept();
            accepting.store(false, Ordering::SeqCst);
            let Some(stream) = stream else {
                return;
            };
            {
                let mut st = self.lock();
                st.idle = st.idle.saturating_sub(1);
                if st.idle == 0 && st.wanted == 0 {
                    // The next client needs a thread waiting: ask for one now, while this
                    // one serves.
                    st.wanted = 1;
                    self.want.notify_one();
                }
            }
            self.serve(stream, &mut reader);
            let mut st = self.lock();
            if self.stop.load(Ordering::Acquire) || st.idle >= MAX_IDLE {
                return;
            }
            st.idle += 1;
        }
    }

    /// Waits for the next client; `None` when the pool stops (or accepting fails for good).
    fn accept(&self) -> Option<UnixStream> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            match accept(&self.listener) {
                Ok(s) => return Some(s),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match e.raw_os_error() {
                    // The client went away before it was accepted; descriptors or memory
                    // are short for a moment: the next client may fare better.
                    Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOMEM) => {
                        warn!("{}: accept failed: {e}", self.shared.handle.name());
                        std::thread::sleep(STOP_INTERVAL);
                    }
                    _ => {
                        error!(
                            "{}: accept on fd {} failed: {e}",
                            self.shared.handle.name(),
                            self.listener.as_raw_fd()
                        );
                        return None;
                    }
                },
            }
        }
    }

    /// Takes the client on, or closes it at once when the server is full (the clearest
    /// answer a client that has not spoken yet can get), and serves it.
    fn serve(&self, stream: UnixStream, reader: &mut MessageReader) {
        let name = self.shared.handle.name();
        let id = ConnectionId::next();
        let stream = Arc::new(stream);
        if !self.shared.admit(id, stream.clone()) {
            return;
        }
        if self.stop.load(Ordering::Acquire) {
            // Admitted after the stop shut every connection down: close it here.
            self.shared.forget(id);
            return;
        }
        let shared = self.shared.clone();
        // The connection catches a device's panic itself; one escaping from the handshake
        // costs only that connection (its slot is released as it unwinds).
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_connection(stream, id, shared, reader)
        }))
        .is_err()
        {
            error!("{name}: {id}: panicked while connecting");
        }
    }

    /// Stops the pool and waits for every thread: no client is accepted any more, every
    /// connection is shut down (its thread ends as for a client that went away), and a
    /// thread waiting in `accept` is interrupted.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // After the flag: a connection admitted from now on sees it (see `serve`).
        self.shared.disconnect_all();
        let threads = {
            let mut st = self.lock();
            self.want.notify_all();
            std::mem::take(&mut st.threads)
        };
        for _ in 0..STOP_ATTEMPTS {
            // Threads serving a connection end with it; only those in `accept` need a nudge.
            let mut accepting = threads
                .iter()
                .filter(|t| !t.handle.is_finished() && t.accepting.load(Ordering::SeqCst))
                .peekable();
            if accepting.peek().is_none() {
                break;
            }
            for t in accepting {
                // SAFETY: `t` is a thread of this process whose handle we hold, not joined.
                unsafe { crate::irq::interrupt_thread(t.handle.as_pthread_t()) };
            }
            std::thread::sleep(STOP_INTERVAL);
        }
        for t in threads {
            let _ = t.handle.join();
        }
    }
}

/// One `accept4`, returning EINTR when a signal interrupts it (the standard library's
/// `accept` retries, and a stop could not reach a thread waiting in it).
fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    // SAFETY: `listener` is an open listening socket; no address is asked for.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 just returned `fd`, a new socket nothing else owns.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
