//! The frame store: the latest picture, shared by the poller (which publishes) and the
//! viewers (which each take the latest when they have something to send), and the register
//! of viewers (their wake-up eventfds, their sockets for a shutdown).

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;

use crate::rfb::Picture;

/// A registered viewer.
struct Entry {
    id: u64,
    waker: Arc<EventFd>,
    stream: TcpStream,
}

struct State {
    picture: Arc<Picture>,
    /// Captures done so far.
    polls: u64,
    viewers: Vec<Entry>,
    next_id: u64,
    closed: bool,
}

/// The latest picture and the viewers waiting for it.
pub(crate) struct FrameStore {
    state: Mutex<State>,
    /// Signalled on a new viewer, a capture and a close.
    changed: Condvar,
}

/// The store was closed: the server is stopping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

impl FrameStore {
    /// A store showing `picture`.
    pub fn new(picture: Picture) -> Self {
        FrameStore {
            state: Mutex::new(State {
                picture: Arc::new(picture),
                polls: 0,
                viewers: Vec::new(),
                next_id: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking holder leaves the state consistent (every update is one assignment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest picture.
    pub fn latest(&self) -> Result<Arc<Picture>, Closed> {
        let s = self.lock();
        if s.closed {
            return Err(Closed);
        }
        Ok(s.picture.clone())
    }

    /// Makes `picture` the latest and wakes every viewer; returns the one it replaced.
    pub fn publish(&self, picture: Picture) -> Arc<Picture> {
        let mut s = self.lock();
        let old = std::mem::replace(&mut s.picture, Arc::new(picture));
        for v in &s.viewers {
            // A full eventfd counter is a pending wake-up all the same.
            let _ = v.waker.write(1);
        }
        old
    }

    /// Counts a capture (published or not) and tells whoever waits for a fresh one.
    pub fn record_poll(&self) {
        self.lock().polls += 1;
        self.changed.notify_all();
    }

    /// Registers a viewer if fewer than `max` are: returns its id and the number of captures
    /// done so far, or `None` when full or closed.
    pub fn register(
        &self,
        waker: Arc<EventFd>,
        stream: TcpStream,
        max: usize,
    ) -> Option<(u64, u64)> {
        let mut s = self.lock();
        if s.closed || s.viewers.len() >= max {
            return None;
        }
        let id = s.next_id;
        s.next_id += 1;
        s.viewers.push(Entry { id, waker, stream });
        let polls = s.polls;
        drop(s);
        self.changed.notify_all();
        Some((id, polls))
    }

    /// Forgets viewer `id`.
    pub fn unregister(&self, id: u64) {
        self.lock().viewers.retain(|v| v.id != id);
    }

    /// Viewers registered now.
    pub fn viewers(&self) -> usize {
        self.lock().viewers.len()
    }

    /// Waits until a capture after the `after`-th is done (or `timeout` passes, or the store
    /// closes): a viewer arriving after an idle spell starts from a fresh picture.
    pub fn wait_poll_after(&self, after: u64, timeout: Duration) {
        let s = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.polls <= after && !s.closed);
    }

    /// For the poller: waits until a viewer is registered (false: the store closed). Every
    /// `check` while it waits it asks `give_up`; when that says yes it returns false.
    pub fn wait_for_viewers(&self, check: Duration, mut give_up: impl FnMut() -> bool) -> bool {
        let mut s = self.lock();
        loop {
            if s.closed {
                return false;
            }
            if !s.viewers.is_empty() {
                return true;
            }
            if give_up() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, check)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// For the poller: sleeps until `deadline` unless the store closes first (false then).
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        let mut s = self.lock();
        loop {
            if s.closed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Closes the store: every viewer is woken and its socket shut down (so a viewer blocked
    /// writing to a stalled peer returns at once).
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for v in &s.viewers {
            let _ = v.stream.shutdown(Shutdown::Both);
            let _ = v.waker.write(1);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}
