//! The connection threads of one server, kept for reuse: a connection is handed to a thread
//! that waits idle, so connecting costs no thread creation once the server has served a
//! connection or two. A thread returns to the pool when its connection ends; at most
//! [`MAX_IDLE`] wait, the others end.
//!
//! Every thread of the pool confines itself once, as a [`ThreadKind::Connection`], and only
//! ever serves connections: a seccomp filter cannot be changed after, so a thread never
//! switches kinds. Threads are started (and so confined) by the listener thread, as before.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use log::error;

use super::connection::serve_connection;
use super::shared::Shared;
use crate::confine::{self, ThreadKind};
use crate::owner::ConnectionId;

/// Threads kept waiting for the next connection.
pub(crate) const MAX_IDLE: usize = 4;

/// The name of a thread waiting for a connection (one serving is named after its connection).
const IDLE_NAME: &str = "conn-idle";

/// A connection waiting for its thread.
struct Job {
    stream: UnixStream,
    id: ConnectionId,
}

#[derive(Default)]
struct State {
    /// Connections handed over, each already promised to one waiting thread.
    queue: VecDeque<Job>,
    /// Threads waiting that no queued connection is promised to.
    idle: usize,
    /// Every thread started and not joined yet.
    threads: Vec<JoinHandle<()>>,
    stop: bool,
}

/// The pool of one server's connection threads.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    state: Mutex<State>,
    wake: Condvar,
}

impl Workers {
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Workers {
            shared,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    /// The server this pool serves.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only queue and counter updates happen under this lock: a poisoned one is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts one thread that waits for a connection (so that the first client does not wait
    /// for a thread to be created).
    pub(crate) fn prestart(self: &Arc<Self>) -> io::Result<()> {
        let mut st = self.lock();
        self.spawn(&mut st, None)
    }

    /// Serves connection `id` on `stream` from a waiting thread, or from a new one when none
    /// waits.
    pub(crate) fn hand_over(
        self: &Arc<Self>,
        stream: UnixStream,
        id: ConnectionId,
    ) -> io::Result<()> {
        let mut st = self.lock();
        if st.idle > 0 {
            st.idle -= 1;
            st.queue.push_back(Job { stream, id });
            drop(st);
            self.wake.notify_one();
            return Ok(());
        }
        self.spawn(&mut st, Some(Job { stream, id }))
    }

    fn spawn(self: &Arc<Self>, st: &mut State, first: Option<Job>) -> io::Result<()> {
        // Threads that ended (beyond the idle bound) hold nothing any more.
        st.threads.retain(|t| !t.is_finished());
        let pool = self.clone();
        let thread = std::thread::Builder::new()
            .name(IDLE_NAME.into())
            .spawn(move || {
                confine::enter(ThreadKind::Connection);
                pool.work(first);
            })?;
        st.threads.push(thread);
        Ok(())
    }

    /// A thread's life: serve `first`, then whatever is handed over, until the pool stops
    /// or enough threads wait already.
    fn work(&self, first: Option<Job>) {
        let mut job = first;
        loop {
            if let Some(Job { stream, id }) = job.take() {
                set_thread_name(&id.to_string());
                let shared = self.shared.clone();
                // The connection catches a device's panic itself; one escaping from the
                // handshake costs only that connection (its slot is released as it unwinds).
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve_connection(stream, id, shared)
                }))
                .is_err()
                {
                    error!(
                        "{}: {id}: panicked while connecting",
                        self.shared.handle.name()
                    );
                }
                set_thread_name(IDLE_NAME);
            }
            let mut st = self.lock();
            if st.stop || st.idle >= MAX_IDLE {
                return;
            }
            st.idle += 1;
            loop {
                if let Some(next) = st.queue.pop_front() {
                    job = Some(next);
                    break;
                }
                if st.stop {
                    return;
                }
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Stops the pool and waits for every thread: a thread serving a connection ends when
    /// its connection does (the caller shuts the sockets down first).
    pub(crate) fn stop(&self) {
        let (threads, queued) = {
            let mut st = self.lock();
            st.stop = true;
            (
                std::mem::take(&mut st.threads),
                std::mem::take(&mut st.queue),
            )
        };
        self.wake.notify_all();
        for job in queued {
            // Never served: its slot goes, and its socket closes.
            self.shared.forget(job.id);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Names the calling thread (as `ps` and `/proc/PID/task/*/comm` show it): 15 bytes at most.
fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    for (d, s) in buf.iter_mut().take(15).zip(name.bytes()) {
        *d = s;
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from the pointer;
    // `buf` is 16 bytes whose last is always 0 and lives across the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}
