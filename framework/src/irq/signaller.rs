//! Delivery of interrupts to one connection's eventfds, from a thread of that connection's
//! own, so that nothing a client does to its eventfds can stall anyone else.
//!
//! An eventfd a client hands over is shared with it: the client can clear `O_NONBLOCK` on
//! the open file description and fill the counter, and then a write blocks. So the thread
//! that raises an interrupt (a device's, under its locks) never writes an eventfd itself: it
//! marks the eventfd pending and wakes the owning connection's [`Signaller`], whose thread
//! writes it. A write that blocks stalls only that connection's interrupts; when the
//! connection goes away the thread is interrupted with a signal and ends.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, info, warn};

use crate::owner::ConnectionId;

/// How often (and how far apart) a signaller whose thread is stuck in a client's eventfd is
/// interrupted before it is given up on.
const STOP_ATTEMPTS: u32 = 200;
const STOP_INTERVAL: Duration = Duration::from_millis(1);

/// The link target of an eventfd in `/proc/self/fd`.
const EVENTFD_LINK: &str = "anon_inode:[eventfd]";

/// One eventfd a client handed over for one vector.
#[derive(Debug)]
pub(crate) struct Eventfd {
    file: File,
    /// Queued for a write that has not happened yet (interrupts coalesce while pending).
    pending: AtomicBool,
    /// The last write failed: warned once, quiet until a write succeeds again.
    failing: AtomicBool,
}

impl Eventfd {
    /// Takes `file` as an interrupt eventfd. Anything that is not an eventfd (a pipe, a
    /// socket, a regular file) is refused with EINVAL: only an eventfd's write is bounded.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        if link.as_os_str() != EVENTFD_LINK {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // Its flags are left as the client set them: the file description is the client's
        // too, and a write that blocks stalls only this connection's delivery thread.
        Ok(Eventfd {
            file,
            pending: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }

    /// The raw fd (a passthrough device hands it on to the host kernel).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    fn write(&self, owner: ConnectionId) -> io::Result<()> {
        let r = (&self.file).write_all(&1u64.to_ne_bytes());
        match &r {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("interrupt eventfd of {owner} writable again");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "interrupt eventfd of {owner} not writable ({e}); \
                         dropping its interrupts until it is"
                    );
                }
            }
        }
        r
    }
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Arc<Eventfd>>,
    /// The thread is writing an eventfd it popped.
    writing: bool,
    stop: bool,
}

struct Inner {
    owner: ConnectionId,
    queue: Mutex<Queue>,
    /// Wakes the delivery thread.
    wake: Condvar,
    /// Wakes [`Signaller::wait_idle`].
    idle: Condvar,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Only pushes and pops happen under this lock; a poisoned one is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The interrupt delivery thread of one connection. Created with the connection's first
/// eventfd; dropped (thread stopped) when the connection's last eventfd goes.
pub(crate) struct Signaller {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Signaller {
    /// Starts the delivery thread of connection `owner`.
    pub(crate) fn start(owner: ConnectionId) -> io::Result<Self> {
        install_wakeup_handler();
        let inner = Arc::new(Inner {
            owner,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name(format!("irq-{}", owner.0))
            .spawn(move || {
                crate::confine::enter(crate::confine::ThreadKind::Interrupts);
                deliver(&worker)
            })?;
        Ok(Signaller {
            inner,
            thread: Some(thread),
        })
    }

    /// Queues one write of `fd`. Never blocks on anything the client controls: it takes the
    /// queue lock (held only for pushes and pops) and wakes the thread.
    pub(crate) fn fire(&self, fd: &Arc<Eventfd>) {
        if fd.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.lock().ready.push_back(fd.clone());
        self.inner.wake.notify_one();
    }

    /// Waits until every queued interrupt has been written (or found unwritable), at most
    /// `limit`. Returns whether the queue drained.
    pub(crate) fn wait_idle(&self, limit: Duration) -> bool {
        let q = self.inner.lock();
        let (q, _) = self
            .inner
            .idle
            .wait_timeout_while(q, limit, |q| !q.ready.is_empty() || q.writing)
            .unwrap_or_else(|p| p.into_inner());
        q.ready.is_empty() && !q.writing
    }
}

fn deliver(inner: &Inner) {
    loop {
        let next = {
            let mut q = inner.lock();
            loop {
                if q.stop {
                    return;
                }
                if let Some(fd) = q.ready.pop_front() {
                    q.writing = true;
                    break fd;
                }
                inner.idle.notify_all();
                q = inner.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        next.pending.store(false, Ordering::Release);
        let _ = next.write(inner.owner);
        inner.lock().writing = false;
    }
}

impl Drop for Signaller {
    fn drop(&mut self) {
        {
            let mut q = self.inner.lock();
            q.stop = true;
            q.ready.clear();
        }
        self.inner.wake.notify_one();
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A thread blocked in a client's eventfd (the client cleared O_NONBLOCK and filled
        // the counter) is woken by a signal whose handler does nothing: the write returns
        // EINTR and the loop sees `stop`.
        let pthread = thread.as_pthread_t();
        for _ in 0..STOP_ATTEMPTS {
            if thread.is_finished() {
                let _ = thread.join();
                return;
            }
            // SAFETY: `pthread` names a thread we spawned and have not joined, so it is
            // still a valid pthread_t; the signal's handler is installed and does nothing.
            unsafe { libc::pthread_kill(pthread, wakeup_signal()) };
            std::thread::sleep(STOP_INTERVAL);
        }
        error!(
            "interrupt thread of {} is stuck in a client's eventfd; leaving it",
            self.inner.owner
        );
    }
}

/// Interrupts whatever blocking call thread `pthread` of this process is in (it returns
/// EINTR): the wake-up signal, whose handler does nothing, is sent to it.
///
/// # Safety
///
/// `pthread` must name a thread of this process that has not been joined or detached and
/// ended (for instance one whose `JoinHandle` is still held).
pub(crate) unsafe fn interrupt_thread(pthread: libc::pthread_t) {
    install_wakeup_handler();
    // SAFETY: the caller guarantees `pthread` is valid; the handler is installed and does
    // nothing.
    unsafe { libc::pthread_kill(pthread, wakeup_signal()) };
}

/// The signal used to interrupt a delivery thread blocked in a write.
fn wakeup_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_wakeup(_: libc::c_int) {}

pub(super) fn install_wakeup_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" action; the
        // handler is an `extern "C"` function that does nothing, so it is async-signal-safe.
        // No SA_RESTART: a blocked write must return EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int) = on_wakeup;
            action.sa_sigaction = handler as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(wakeup_signal(), &action, std::ptr::null_mut()) != 0 {
                error!(
                    "cannot install the interrupt wake-up handler: {}",
                    io::Error::last_os_error()
                );
            }
        }
    });
}
