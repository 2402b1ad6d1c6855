//! Confinement: a seccomp-bpf allow-list on every thread of a serving process, one list per
//! [`ThreadKind`], so that a bug in a device (a parser fed by a client or a guest) can at
//! worst kill its own process, never make a system call the device has no use for.
//!
//! ```text
//!  binary: confine::configure(Policy::new(--seccomp).with_device_syscalls(…))   (once)
//!     │        compiles every kind's program, installs the SIGSYS handler, NO_NEW_PRIVS
//!     ▼
//!  each spawned thread, first thing: confine::enter(ThreadKind::Connection)   (and so on)
//!  main thread, once start-up (binding, opening consoles) is done: enter(ThreadKind::Main)
//!
//!  thread tree of `serve` (a filter is inherited and a stacked one only narrows, so each
//!  kind's list includes the lists of the kinds it starts; see `lists.rs`):
//!    main ─► control ─► control-connection ─► listener ─► connection ─► interrupts
//!                                           └► terminal / socket / pty console
//!
//!  thread tree of `view --vnc` (main confines itself once bound, connected and started):
//!    main ─► vnc-poller
//!         └► vnc-listener ─► vnc-session
//! ```
//!
//! [`SeccompMode`] `On` (the default of every binary) traps a call off the list: the SIGSYS
//! handler logs the thread kind and the call, and the process dies by SIGSYS. `Log` lets the
//! call through and logs it once per thread kind and call (for finding what a new device
//! needs). `Off` installs nothing. A process that never calls [`configure`] (a library user,
//! a test) is not confined: [`enter`] does nothing there.
//!
//! Limits: the lists bound what each kind of thread may ask the kernel, not what it may do to
//! the memory it shares with the other threads of its process; a thread that runs code of an
//! attacker's choosing could reach another thread's wider list through shared memory, so the
//! process as a whole is bounded by the union of its lists.

mod lists;
mod syscall_names;
mod syscalls;
#[cfg(target_arch = "x86_64")]
mod trap;

use std::io;
use std::sync::{Arc, PoisonError, RwLock};

use seccompiler::{BpfProgram, SeccompAction};

pub use syscalls::SyscallSet;

/// What a forbidden system call does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[repr(u8)]
pub enum SeccompMode {
    /// A call off the thread's list is logged (thread kind and call) and kills the process
    /// with SIGSYS.
    #[default]
    On,
    /// A call off the list is allowed and logged once per thread kind and call.
    Log,
    /// No filter.
    Off,
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompMode::On => "on",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// The kinds of thread a serving process (or a viewer) runs, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ThreadKind {
    /// A serving process's main thread after start-up: waits for SIGINT/SIGTERM, then stops
    /// everything.
    Main,
    /// Accepts control-socket clients.
    Control,
    /// Answers one control client: creates instances (sockets, consoles, memory) and removes
    /// them.
    ControlConnection,
    /// Starts the connection threads of one device socket (they accept its clients).
    Listener,
    /// Accepts and serves vfio-user connections of one device, one at a time (runs the
    /// device's hooks and register accesses).
    Connection,
    /// Writes one connection's interrupt eventfds.
    Interrupts,
    /// The host terminal as a serial console.
    TerminalConsole,
    /// A UNIX socket as a serial console.
    SocketConsole,
    /// A pseudo-terminal as a serial console.
    PtyConsole,
    /// A snapshot or live-view client of a display.
    Viewer,
    /// The main thread of a VNC viewer (`view --vnc`) once serving: waits for the capture
    /// thread, then stops the listener and the sessions.
    VncMain,
    /// Captures the display of a VNC viewer: region reads on its vfio-user connection, copies
    /// out of the mapped framebuffer.
    VncPoller,
    /// Accepts the TCP connections of VNC clients and starts a session thread for each.
    VncListener,
    /// Serves one VNC client: RFB messages in, encoded updates out.
    VncSession,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 14] = [
        ThreadKind::Main,
        ThreadKind::Control,
        ThreadKind::ControlConnection,
        ThreadKind::Listener,
        ThreadKind::Connection,
        ThreadKind::Interrupts,
        ThreadKind::TerminalConsole,
        ThreadKind::SocketConsole,
        ThreadKind::PtyConsole,
        ThreadKind::Viewer,
        ThreadKind::VncMain,
        ThreadKind::VncPoller,
        ThreadKind::VncListener,
        ThreadKind::VncSession,
    ];

    /// The name the log uses.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Control => "control",
            ThreadKind::ControlConnection => "control-connection",
            ThreadKind::Listener => "listener",
            ThreadKind::Connection => "connection",
            ThreadKind::Interrupts => "interrupts",
            ThreadKind::TerminalConsole => "terminal-console",
            ThreadKind::SocketConsole => "socket-console",
            ThreadKind::PtyConsole => "pty-console",
            ThreadKind::Viewer => "viewer",
            ThreadKind::VncMain => "vnc-main",
            ThreadKind::VncPoller => "vnc-poller",
            ThreadKind::VncListener => "vnc-listener",
            ThreadKind::VncSession => "vnc-session",
        }
    }

    /// The kinds whose threads this kind starts after confining itself.
    pub fn spawns(self) -> &'static [ThreadKind] {
        lists::spawns(self)
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Confinement could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// A kind's list did not compile into a BPF program.
    #[error("seccomp filter of {kind} threads: {source}")]
    Compile {
        /// The kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused a filter.
    #[error("installing the seccomp filter of a {kind} thread: {source}")]
    Install {
        /// The kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(#[source] io::Error),
    /// The SIGSYS handler could not be installed.
    #[error("SIGSYS handler: {0}")]
    Handler(#[source] io::Error),
}

/// What a process confines its threads with: the mode, and the calls its devices make
/// beyond the framework's (pci-passthrough's VFIO ioctls).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    mode: SeccompMode,
    device: SyscallSet,
}

impl Policy {
    /// Confinement in `mode`, for devices that need no call of their own.
    pub fn new(mode: SeccompMode) -> Self {
        Policy {
            mode,
            device: SyscallSet::new(),
        }
    }

    /// Adds the calls device code makes (open/close/reset hooks, register accesses), allowed
    /// in the threads that run it.
    pub fn with_device_syscalls(mut self, calls: SyscallSet) -> Self {
        self.device = self.device.union(&calls);
        self
    }

    /// The mode.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// The full list a thread of `kind` is given: its own calls, those of device code when
    /// it runs some, and the lists of the kinds it starts.
    pub fn allowed(&self, kind: ThreadKind) -> SyscallSet {
        let mut set = lists::own(kind);
        if lists::runs_device_code(kind) {
            set = set.union(&self.device);
        }
        kind.spawns()
            .iter()
            .fold(set, |set, child| set.union(&self.allowed(*child)))
    }
}

/// The compiled programs of the process, one per kind.
struct Installed {
    mode: SeccompMode,
    programs: Vec<BpfProgram>,
}

static ACTIVE: RwLock<Option<Arc<Installed>>> = RwLock::new(None);

/// Sets the process's confinement: sets `PR_SET_NO_NEW_PRIVS` (whatever the mode: nothing
/// this process runs may gain privileges), compiles every kind's program and installs the
/// SIGSYS handler. Threads that [`enter`] a kind from now on are confined by it; a later call
/// replaces the policy for threads started after it.
pub fn configure(policy: Policy) -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(io::Error::last_os_error()));
    }
    let installed = match policy.mode {
        SeccompMode::Off => None,
        mode => {
            crate::irq::prepare_for_confinement();
            #[cfg(target_env = "gnu")]
            fix_malloc_arena_limit();
            #[cfg(target_env = "gnu")]
            settle_malloc_heap_shrinking();
            #[cfg(target_arch = "x86_64")]
            trap::install_handler(mode).map_err(ConfineError::Handler)?;
            let programs = ThreadKind::ALL
                .iter()
                .map(|&kind| compile(&policy, kind))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Arc::new(Installed { mode, programs }))
        }
    };
    *ACTIVE.write().unwrap_or_else(PoisonError::into_inner) = installed;
    Ok(())
}

/// glibc's malloc works out its arena limit (8 per CPU) the first time a thread would make a
/// ninth arena, by reading `/sys/devices/system/cpu/online`: an `openat` that could fall in
/// any thread, confined or not. Setting the same limit now means no thread ever has to.
#[cfg(target_env = "gnu")]
fn fix_malloc_arena_limit() {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity fills it and reads
    // nothing else.
    let cpus = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set).max(1)
        } else {
            1
        }
    };
    // SAFETY: mallopt only sets one of malloc's parameters.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, cpus.saturating_mul(8)) };
}

/// glibc's malloc, the first time a thread's arena (any but the main one) gives back memory
/// at the top of its heap, reads `/proc/sys/vm/overcommit_memory` to choose how: an `openat`
/// no list has, in whichever thread frees then (a VNC session after a large update, say). The
/// answer is kept for the process, so a short-lived thread that frees two megabytes of small
/// blocks now (each block below the mmap threshold, so they come from its arena's heap and
/// merge into its top when freed) has that read made before any filter is on.
#[cfg(target_env = "gnu")]
fn settle_malloc_heap_shrinking() {
    const BLOCK: usize = 64 * 1024;
    const BLOCKS: usize = 32;
    let settle = || {
        let blocks: Vec<Vec<u8>> = (0..BLOCKS)
            .map(|_| std::hint::black_box(Vec::with_capacity(BLOCK)))
            .collect();
        drop(std::hint::black_box(blocks));
    };
    match std::thread::Builder::new()
        .name("malloc-settle".into())
        .spawn(settle)
    {
        Ok(thread) => {
            let _ = thread.join();
        }
        Err(e) => log::warn!("confinement: no thread to settle malloc with: {e}"),
    }
}

fn compile(policy: &Policy, kind: ThreadKind) -> Result<BpfProgram, ConfineError> {
    let compile_error = |source| ConfineError::Compile { kind, source };
    let allowed = policy.allowed(kind);
    #[cfg(target_arch = "x86_64")]
    {
        if policy.mode == SeccompMode::Log {
            // Thread creation cannot be made from a signal handler on the thread's behalf
            // (the new thread would start in the handler's frame): allowed, not logged.
            let allowed =
                allowed.union(&SyscallSet::new().allow(&[libc::SYS_clone, libc::SYS_clone3]));
            let body = allowed
                .compile(SeccompAction::Trap)
                .map_err(compile_error)?;
            return Ok(gate_prelude(trap::gate_address(), body));
        }
        allowed.compile(SeccompAction::Trap).map_err(compile_error)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // No handler here: `on` kills at once (the kernel's audit log names the call),
        // `log` is the kernel's own SECCOMP_RET_LOG.
        let action = match policy.mode {
            SeccompMode::Log => SeccompAction::Log,
            _ => SeccompAction::KillProcess,
        };
        allowed.compile(action).map_err(compile_error)
    }
}

/// Log mode: allow every call made from the gate (its instruction pointer is `address`), then
/// the kind's own program.
#[cfg(target_arch = "x86_64")]
#[expect(
    clippy::cast_possible_truncation,
    reason = "a BPF load takes 32-bit words: the address is split into its low and high halves"
)]
fn gate_prelude(address: u64, body: BpfProgram) -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    // struct seccomp_data: nr (u32), arch (u32), instruction_pointer (u64), args.
    const IP_LOW: u32 = 8;
    const IP_HIGH: u32 = 12;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut program = vec![
        op(LD_W_ABS, 0, 0, IP_LOW),
        op(JEQ_K, 0, 3, address as u32),
        op(LD_W_ABS, 0, 0, IP_HIGH),
        op(JEQ_K, 0, 1, (address >> 32) as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    program.extend(body);
    program
}

/// The mode threads entering a kind now get (`Off` before [`configure`]).
pub fn mode() -> SeccompMode {
    active().map_or(SeccompMode::Off, |i| i.mode)
}

fn active() -> Option<Arc<Installed>> {
    ACTIVE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Confines the calling thread to `kind`'s list; nothing when the process is not confined.
pub fn try_enter(kind: ThreadKind) -> Result<(), ConfineError> {
    let Some(installed) = active() else {
        return Ok(());
    };
    let Some(program) = installed.programs.get(kind as usize) else {
        return Ok(());
    };
    #[cfg(target_arch = "x86_64")]
    trap::set_thread_kind(kind);
    seccompiler::apply_filter(program).map_err(|source| ConfineError::Install { kind, source })
}

/// [`try_enter`], logging a failure. For the first line of a spawned thread: the thread is
/// then still bounded by the list of the thread that started it.
pub fn enter(kind: ThreadKind) {
    if let Err(e) = try_enter(kind) {
        log::error!("{e}");
    }
}

/// Reads the `Seccomp:` field of `/proc/self/task/TID/status` of the calling thread: 0 none,
/// 1 strict, 2 filter.
pub fn current_thread_seccomp() -> io::Result<u8> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Seccomp: field"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_allows_what_the_kinds_it_starts_allow() {
        let policy = Policy::new(SeccompMode::On)
            .with_device_syscalls(SyscallSet::new().allow_ioctls(&[0x3b6a]));
        for kind in ThreadKind::ALL {
            let mine = policy.allowed(kind);
            for child in kind.spawns() {
                assert!(
                    policy.allowed(*child).is_subset_of(&mine),
                    "{kind} starts {child} threads but does not allow all they do"
                );
            }
        }
    }

    #[test]
    fn device_calls_reach_the_threads_that_run_device_code_only() {
        let vfio_reset = 0x3b6f;
        let policy = Policy::new(SeccompMode::On)
            .with_device_syscalls(SyscallSet::new().allow_ioctls(&[vfio_reset]));
        let has = |kind| {
            SyscallSet::new()
                .allow_ioctls(&[vfio_reset])
                .is_subset_of(&policy.allowed(kind))
        };
        assert!(has(ThreadKind::Connection));
        assert!(has(ThreadKind::Main));
        assert!(has(ThreadKind::Listener), "it starts connection threads");
        assert!(!has(ThreadKind::Interrupts));
        assert!(!has(ThreadKind::PtyConsole));
        assert!(!has(ThreadKind::Viewer));
    }

    #[test]
    fn no_list_has_a_call_no_device_needs() {
        let policy = Policy::new(SeccompMode::On);
        for kind in ThreadKind::ALL {
            let set = policy.allowed(kind);
            for &nr in lists::NEVER {
                assert!(
                    !set.contains(nr),
                    "{kind} allows {}",
                    trap::syscall_name(nr)
                );
            }
            assert!(
                !set.allows_any_arguments(libc::SYS_ioctl),
                "{kind}: ioctl by request"
            );
            assert!(
                !set.allows_any_arguments(libc::SYS_socket),
                "{kind}: AF_UNIX only"
            );
            assert!(
                !set.allows_any_arguments(libc::SYS_mmap),
                "{kind}: no PROT_EXEC"
            );
        }
    }

    #[test]
    fn vnc_threads_open_no_file_and_make_no_socket() {
        // The VNC kinds face the network: the listener is bound and the display mapped
        // before any of them confines itself.
        let policy = Policy::new(SeccompMode::On);
        for kind in [
            ThreadKind::VncMain,
            ThreadKind::VncPoller,
            ThreadKind::VncListener,
            ThreadKind::VncSession,
        ] {
            let set = policy.allowed(kind);
            for nr in [
                libc::SYS_socket,
                libc::SYS_bind,
                libc::SYS_listen,
                libc::SYS_connect,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_memfd_create,
                libc::SYS_sendmsg,
                libc::SYS_recvmsg,
            ] {
                assert!(
                    !set.contains(nr),
                    "{kind} allows {}",
                    trap::syscall_name(nr)
                );
            }
            assert!(
                !set.allows_any_arguments(libc::SYS_setsockopt),
                "{kind}: setsockopt by level and option"
            );
        }
        assert!(
            policy
                .allowed(ThreadKind::VncSession)
                .is_subset_of(&policy.allowed(ThreadKind::VncListener)),
            "the listener starts the sessions"
        );
    }

    #[test]
    fn every_kind_compiles_in_every_mode() {
        for mode in [SeccompMode::On, SeccompMode::Log] {
            let policy = Policy::new(mode);
            for kind in ThreadKind::ALL {
                let program = compile(&policy, kind).unwrap();
                assert!(
                    program.len() < 4096,
                    "{kind}: {} instructions",
                    program.len()
                );
            }
        }
    }
}
