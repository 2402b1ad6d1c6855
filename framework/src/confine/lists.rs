//! The allow-list of every thread kind: what the kind itself calls ([`own`]), and the kinds it
//! starts threads of ([`spawns`]).
//!
//! A thread inherits the filter of the thread that started it, and a filter stacked on top can
//! only take calls away, so a kind's installed list is its own calls plus the installed lists
//! of every kind it starts ([`super::allowed`]); the started thread then narrows itself to its
//! own. The lists were found by running every test suite, the end-to-end suites and the demo
//! in `--seccomp=log` mode.

#[cfg(test)]
use libc::c_long;

use super::syscalls::SyscallSet;
use super::ThreadKind;

/// `PROT_EXEC`: memory is never mapped or made executable after start-up.
const PROT_EXEC: u32 = libc::PROT_EXEC as u32;

/// Terminal ioctls: get and set the attributes (`tcgetattr`, `tcsetattr`), the window size.
const TCGETS: libc::c_ulong = libc::TCGETS;
const TCSETS: libc::c_ulong = libc::TCSETS;
const TCSETSW: libc::c_ulong = libc::TCSETSW;
const TCSETSF: libc::c_ulong = libc::TCSETSF;
const TIOCGWINSZ: libc::c_ulong = libc::TIOCGWINSZ;
/// The same with `struct termios2` (what crossterm's terminal layer uses).
const TCGETS2: libc::c_ulong = libc::TCGETS2;
const TCSETS2: libc::c_ulong = libc::TCSETS2;
const TCSETSW2: libc::c_ulong = libc::TCSETSW2;
const TCSETSF2: libc::c_ulong = libc::TCSETSF2;
/// Every terminal-attribute ioctl (raw mode on and off).
const TERMIOS: [libc::c_ulong; 8] = [
    TCGETS, TCSETS, TCSETSW, TCSETSF, TCGETS2, TCSETS2, TCSETSW2, TCSETSF2,
];
/// Pseudo-terminal ioctls: the slave's number (`ptsname`), unlock (`unlockpt`).
const TIOCGPTN: libc::c_ulong = libc::TIOCGPTN;
const TIOCSPTLCK: libc::c_ulong = libc::TIOCSPTLCK;
/// `FIONBIO`, set non-blocking mode.
const FIONBIO: libc::c_ulong = libc::FIONBIO;

/// What every thread does to live, log and end: memory (never executable), futexes, signal
/// masks and returns (the interrupt wake-up signal, the SIGSYS handler) and the kernel's
/// restart of an interrupted call, log lines on stderr,
/// the clock, random keys for hash maps, thread exit. And the terminal's attributes: mtty's
/// panic hook restores a raw terminal from whichever thread panics.
fn base() -> SyscallSet {
    SyscallSet::new()
        .allow(&[
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            // The kernel's own restart of a call a signal interrupted (a poll with a
            // timeout, a nanosleep): whatever the call was, it was allowed.
            libc::SYS_restart_syscall,
            libc::SYS_sigaltstack,
            libc::SYS_clock_gettime,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ])
        .allow_without_bits(libc::SYS_mmap, 2, PROT_EXEC)
        .allow_without_bits(libc::SYS_mprotect, 2, PROT_EXEC)
        .allow_ioctls(&TERMIOS)
}

/// Starting a thread (in the parent) and a new thread's own start-up before it confines
/// itself: its stack and guard page, robust futex list, rseq area, CPU set (malloc's arena),
/// name, and the filter.
fn spawning() -> SyscallSet {
    SyscallSet::new()
        .allow(&[
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
        ])
        .allow_arg(
            libc::SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u32, libc::PR_SET_NO_NEW_PRIVS as u32],
        )
        .allow_arg(libc::SYS_seccomp, 0, &[libc::SECCOMP_SET_MODE_FILTER])
}

/// Waiting for fds.
fn polling() -> SyscallSet {
    SyscallSet::new().allow(&[libc::SYS_poll, libc::SYS_ppoll])
}

/// `thread::sleep`.
fn sleeping() -> SyscallSet {
    SyscallSet::new().allow(&[libc::SYS_nanosleep, libc::SYS_clock_nanosleep])
}

/// `try_clone` of a socket or file.
fn duplicating() -> SyscallSet {
    SyscallSet::new().allow_arg(libc::SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u32])
}

/// Stopping a connection's interrupt thread, which may sit in a client's eventfd: the wake-up
/// signal (`pthread_kill`) and short sleeps between tries.
fn stopping_interrupts() -> SyscallSet {
    SyscallSet::new()
        .allow(&[libc::SYS_tgkill])
        .union(&sleeping())
}

/// Memory handed over by a client (DMA) or made for clients (framebuffers), mapped from a
/// file: size and seal checks, reads and writes through the fd.
fn file_memory() -> SyscallSet {
    SyscallSet::new()
        .allow(&[
            libc::SYS_statx,
            libc::SYS_newfstatat,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
        ])
        .allow_arg(libc::SYS_fcntl, 1, &[libc::F_GET_SEALS as u32])
        .union(&duplicating())
}

/// What a kind itself calls, besides [`base`].
pub(super) fn own(kind: ThreadKind) -> SyscallSet {
    let own = match kind {
        // After start-up: waits for SIGINT/SIGTERM, then stops everything (closes
        // connections, joins threads, removes socket files).
        // Once stopping, it starts one thread that waits for a second signal to force the
        // stop; that thread keeps this list.
        ThreadKind::Main => SyscallSet::new()
            .allow(&[
                libc::SYS_rt_sigtimedwait,
                libc::SYS_shutdown,
                libc::SYS_unlink,
            ])
            .union(&stopping_interrupts())
            .union(&spawning()),
        // Waits for control clients and starts a thread for each.
        ThreadKind::Control => SyscallSet::new()
            .allow(&[libc::SYS_accept4])
            .union(&polling())
            .union(&spawning()),
        // Answers one control client (a line at a time, with a read timeout): creates
        // instances (device and console sockets bound 0600 after a stale one is checked and
        // removed, ptys, sealed memfds, eventfds, the definition `start` reads) and removes
        // them.
        ThreadKind::ControlConnection => SyscallSet::new()
            .allow(&[
                libc::SYS_read,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_setsockopt,
                libc::SYS_shutdown,
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_connect,
                libc::SYS_chmod,
                libc::SYS_unlink,
                libc::SYS_openat,
                libc::SYS_eventfd2,
                libc::SYS_dup,
                libc::SYS_memfd_create,
                libc::SYS_ftruncate,
            ])
            .allow_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u32])
            .allow_arg(
                libc::SYS_fcntl,
                1,
                &[
                    libc::F_ADD_SEALS as u32,
                    libc::F_GETFL as u32,
                    libc::F_SETFL as u32,
                ],
            )
            .allow_ioctls(&[FIONBIO, TIOCGPTN, TIOCSPTLCK])
            .union(&file_memory())
            .union(&stopping_interrupts())
            .union(&spawning()),
        // Starts the connection threads of one device (they accept the clients themselves).
        ThreadKind::Listener => SyscallSet::new().union(&spawning()),
        // Accepts a client of one device and serves its vfio-user connection, then the next
        // client: messages with fds, the peer's credentials, the eventfd check through
        // `/proc/self/fd` and its O_NONBLOCK, DMA through the client's fds, starting and
        // stopping its interrupt thread; a short sleep when accepting fails for lack of fds.
        ThreadKind::Connection => SyscallSet::new()
            .allow(&[
                libc::SYS_accept4,
                libc::SYS_recvmsg,
                libc::SYS_sendmsg,
                libc::SYS_getsockopt,
                libc::SYS_readlink,
            ])
            .allow_arg(
                libc::SYS_fcntl,
                1,
                &[libc::F_GETFL as u32, libc::F_SETFL as u32],
            )
            // Small replies without fds: `send` (no address), never raising SIGPIPE.
            .allow_arg(libc::SYS_sendto, 3, &[libc::MSG_NOSIGNAL as u32])
            .union(&polling())
            .union(&file_memory())
            .union(&stopping_interrupts())
            .union(&spawning()),
        // Writes a connection's interrupt eventfds.
        ThreadKind::Interrupts => SyscallSet::new(),
        // The host terminal: stdin, stdout, its attributes and size.
        ThreadKind::TerminalConsole => SyscallSet::new()
            .allow(&[libc::SYS_read, libc::SYS_openat])
            .allow_ioctls(&[TIOCGWINSZ])
            .union(&polling())
            .union(&sleeping()),
        // A console socket's listener and its one client.
        ThreadKind::SocketConsole => SyscallSet::new()
            .allow(&[
                libc::SYS_accept4,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_setsockopt,
                libc::SYS_shutdown,
            ])
            .union(&duplicating())
            .union(&polling())
            .union(&sleeping()),
        // A pseudo-terminal's master side.
        ThreadKind::PtyConsole => SyscallSet::new()
            .allow(&[libc::SYS_read])
            .union(&polling())
            .union(&sleeping()),
        // A snapshot or live-view client: region reads on its connection, PNG files written
        // whole then renamed, the terminal (key events, size).
        ThreadKind::Viewer => SyscallSet::new()
            .allow(&[
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_shutdown,
                libc::SYS_read,
                libc::SYS_openat,
                libc::SYS_statx,
                libc::SYS_mkdir,
                libc::SYS_rename,
                libc::SYS_unlink,
                libc::SYS_epoll_wait,
            ])
            .allow_ioctls(&[TIOCGWINSZ])
            .union(&polling())
            .union(&sleeping()),
        // The VNC viewer (`view --vnc`); its TCP listener is bound before any thread confines
        // itself, so no VNC kind opens a socket or a file.
        //
        // Main, once serving: waits for the poller (the display went away), then shuts the
        // sessions' sockets and wakes the threads to stop them.
        ThreadKind::VncMain => SyscallSet::new().allow(&[libc::SYS_shutdown]),
        // Captures frames: region reads (the mode registers) on its vfio-user connection,
        // copies out of the framebuffer mapped at start-up, wake-ups of the sessions, reads of
        // the device request eventfd; at the end the display's goodbye and, when it went away
        // or asked to be let go, the sessions' shutdown.
        ThreadKind::VncPoller => SyscallSet::new()
            .allow(&[libc::SYS_shutdown, libc::SYS_read])
            .union(&vnc_stream()),
        // Accepts viewers (the socket close-on-exec), a wake-up eventfd and a second handle
        // of each viewer's socket (for the shutdown), a session thread each; backs off
        // after a failed accept.
        ThreadKind::VncListener => SyscallSet::new()
            .allow_arg(libc::SYS_accept4, 3, &[SOCK_CLOEXEC])
            .allow_arg(libc::SYS_eventfd2, 1, &[EFD_CLOEXEC | EFD_NONBLOCK])
            .union(&duplicating())
            .union(&polling())
            .union(&sleeping())
            .union(&spawning()),
        // One viewer: its socket (no delay, a write timeout per update) and wake-up eventfd.
        ThreadKind::VncSession => SyscallSet::new()
            .allow(&[libc::SYS_read])
            .allow_arg_pairs(
                libc::SYS_setsockopt,
                (1, 2),
                &[(IPPROTO_TCP, TCP_NODELAY), (SOL_SOCKET, SO_SNDTIMEO)],
            )
            .union(&vnc_stream())
            .union(&polling()),
    };
    base().union(&own)
}

/// `accept4` flags of `TcpListener::accept`.
const SOCK_CLOEXEC: u32 = libc::SOCK_CLOEXEC as u32;
/// The flags of the VNC server's wake-up eventfds.
const EFD_CLOEXEC: u32 = libc::EFD_CLOEXEC as u32;
const EFD_NONBLOCK: u32 = libc::EFD_NONBLOCK as u32;
/// `setsockopt` levels and options of a VNC session: `set_nodelay`, `set_write_timeout`.
const IPPROTO_TCP: u32 = libc::IPPROTO_TCP as u32;
const TCP_NODELAY: u32 = libc::TCP_NODELAY as u32;
const SOL_SOCKET: u32 = libc::SOL_SOCKET as u32;
const SO_SNDTIMEO: u32 = libc::SO_SNDTIMEO as u32;

/// A connected stream socket read and written with std's `Read`/`Write` (`recv` with no
/// flags, `send` with `MSG_NOSIGNAL`, as glibc makes them: `recvfrom`, `sendto`).
fn vnc_stream() -> SyscallSet {
    SyscallSet::new()
        .allow_arg(libc::SYS_recvfrom, 3, &[0])
        .allow_arg(libc::SYS_sendto, 3, &[libc::MSG_NOSIGNAL as u32])
}

/// The kinds whose threads a kind starts after it has confined itself.
pub(super) fn spawns(kind: ThreadKind) -> &'static [ThreadKind] {
    match kind {
        ThreadKind::Control => &[ThreadKind::ControlConnection],
        ThreadKind::ControlConnection => &[
            ThreadKind::Listener,
            ThreadKind::TerminalConsole,
            ThreadKind::SocketConsole,
            ThreadKind::PtyConsole,
        ],
        ThreadKind::Listener => &[ThreadKind::Connection],
        ThreadKind::Connection => &[ThreadKind::Interrupts],
        ThreadKind::Main
        | ThreadKind::Interrupts
        | ThreadKind::TerminalConsole
        | ThreadKind::SocketConsole
        | ThreadKind::PtyConsole
        | ThreadKind::Viewer => &[],
        ThreadKind::VncListener => &[ThreadKind::VncSession],
        ThreadKind::VncMain | ThreadKind::VncPoller | ThreadKind::VncSession => &[],
    }
}

/// Whether a kind runs device code (open/close/reset hooks, region accesses, creating and
/// removing instances), and so gets the calls a driver declares for its devices.
pub(super) fn runs_device_code(kind: ThreadKind) -> bool {
    matches!(
        kind,
        ThreadKind::Main | ThreadKind::ControlConnection | ThreadKind::Connection
    )
}

/// Calls never allowed by any list: checked by a test, so that no list grows one by mistake.
#[cfg(test)]
pub(super) const NEVER: &[c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_writev,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_kexec_load,
    libc::SYS_mount,
    libc::SYS_setuid,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_getpriority,
    libc::SYS_uname,
];
