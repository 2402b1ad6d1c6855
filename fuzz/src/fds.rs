//! File descriptors for the targets: a small pool of each kind a client may pass (eventfds,
//! memfds sealed and not, pipes), created once per process, and a count of this process's
//! open fds for leak checks.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Size of the pool's memfds.
pub const MEMFD_SIZE: u64 = 64 * 1024;

/// What kind of fd a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// An eventfd, as interrupts need.
    EventFd,
    /// A memfd sealed against shrinking, as QEMU's guest RAM is.
    SealedMemfd,
    /// A memfd that may shrink.
    Memfd,
    /// The read end of a pipe.
    Pipe,
}

impl FdKind {
    /// The kind coded by two bits.
    pub fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => FdKind::EventFd,
            1 => FdKind::SealedMemfd,
            2 => FdKind::Memfd,
            _ => FdKind::Pipe,
        }
    }

    /// The two bits coding this kind.
    pub fn bits(self) -> u8 {
        match self {
            FdKind::EventFd => 0,
            FdKind::SealedMemfd => 1,
            FdKind::Memfd => 2,
            FdKind::Pipe => 3,
        }
    }
}

/// One fd of each kind, kept open for the whole process.
pub struct FdPool {
    eventfd: File,
    sealed: File,
    memfd: File,
    pipe: (File, File),
}

fn memfd(name: &std::ffi::CStr, sealed: bool) -> File {
    let flags = if sealed {
        MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC
    } else {
        MemFdCreateFlag::MFD_CLOEXEC
    };
    let f = File::from(memfd_create(name, flags).expect("memfd"));
    f.set_len(MEMFD_SIZE).expect("memfd size");
    if sealed {
        fcntl(
            f.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
        )
        .expect("seal");
    }
    f
}

/// The process's pool.
pub fn pool() -> &'static FdPool {
    static POOL: OnceLock<FdPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .expect("eventfd");
        // SAFETY: `efd` owns its fd; `dup` gives a new fd that the File then owns alone.
        let eventfd = unsafe {
            use std::os::fd::FromRawFd;
            File::from_raw_fd(libc::dup(efd.as_raw_fd()))
        };
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .expect("pipe");
        FdPool {
            eventfd,
            sealed: memfd(c"fuzz-sealed", true),
            memfd: memfd(c"fuzz-memfd", false),
            pipe: (File::from(r), File::from(w)),
        }
    })
}

impl FdPool {
    /// The pool's fd of `kind` (not owned by the caller).
    pub fn raw(&self, kind: FdKind) -> RawFd {
        match kind {
            FdKind::EventFd => self.eventfd.as_raw_fd(),
            FdKind::SealedMemfd => self.sealed.as_raw_fd(),
            FdKind::Memfd => self.memfd.as_raw_fd(),
            FdKind::Pipe => self.pipe.0.as_raw_fd(),
        }
    }

    /// `count` owned copies of the fd of `kind`.
    pub fn owned(&self, kind: FdKind, count: usize) -> Vec<File> {
        let f = match kind {
            FdKind::EventFd => &self.eventfd,
            FdKind::SealedMemfd => &self.sealed,
            FdKind::Memfd => &self.memfd,
            FdKind::Pipe => &self.pipe.0,
        };
        (0..count).map(|_| f.try_clone().expect("dup")).collect()
    }
}

/// The number of fds open in this process now.
pub fn open_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// What this process's fds point at (for a leak report).
pub fn describe_open() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to `limit`) for the open fd count to come back to `baseline`: threads of the
/// server close what they hold as they end. Returns the count it settled at.
pub fn settle_to(baseline: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        let n = open_count();
        if n <= baseline || Instant::now() >= deadline {
            return n;
        }
        tries += 1;
        if tries < 50 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
