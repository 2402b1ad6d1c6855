//! What happens when a thread makes a call its list does not allow: the filter answers
//! `SECCOMP_RET_TRAP`, the kernel sends the thread SIGSYS, and [`on_sigsys`] runs with the
//! call's number and arguments in the saved registers.
//!
//! - `on`: the handler writes one line naming the thread kind and the call, then makes the
//!   same call again. The handler was installed with `SA_RESETHAND`, so SIGSYS is back to its
//!   default action; the filter traps the call again (it depends only on the number and the
//!   arguments) and the kernel's SIGSYS, now unhandled, kills the process.
//! - `log` (x86_64): the handler writes the line the first time a thread kind makes that
//!   call, then makes the call on the thread's behalf from one `syscall` instruction, the
//!   *gate*, whose address the log-mode filters allow everything from, and hands its result
//!   back as the call's return value. The thread goes on as if nothing was in the way.
//!
//! Everything here runs in a signal handler: no allocation, no lock, no `std` I/O; a line is
//! formatted into a buffer on the stack and written with write(2) to stderr.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::syscall_names::NAMES;
use super::{SeccompMode, ThreadKind};

thread_local! {
    /// The kind this thread entered (`u8::MAX`: none).
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Records the calling thread's kind for the handler's log line.
pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(kind as u8));
}

fn thread_kind_name() -> &'static str {
    let raw = KIND.try_with(Cell::get).unwrap_or(u8::MAX);
    ThreadKind::ALL
        .iter()
        .find(|k| **k as u8 == raw)
        .map_or("unconfined", |k| k.name())
}

/// System call numbers tracked for log-once (x86_64 has about 460).
const TRACKED: usize = 512;
const WORDS: usize = TRACKED / 64;

/// One bit per (thread kind, call number): the call was already logged for that kind.
static LOGGED: [[AtomicU64; WORDS]; ThreadKind::ALL.len()] =
    [const { [const { AtomicU64::new(0) }; WORDS] }; ThreadKind::ALL.len()];

/// True the first time it is asked about this thread's kind and `nr`.
fn first_time(nr: i64) -> bool {
    let raw = KIND.try_with(Cell::get).unwrap_or(u8::MAX);
    let (Some(words), Ok(n)) = (LOGGED.get(usize::from(raw)), usize::try_from(nr)) else {
        return true;
    };
    let Some(word) = words.get(n / 64) else {
        return true;
    };
    let bit = 1u64 << (n % 64);
    word.fetch_or(bit, Ordering::Relaxed) & bit == 0
}

/// A log line being formatted on the stack.
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The name of call `nr`, or "" when it has none here.
pub(super) fn syscall_name(nr: i64) -> &'static str {
    usize::try_from(nr)
        .ok()
        .and_then(|n| NAMES.get(n))
        .copied()
        .unwrap_or("")
}

/// Writes the line about call `nr` with `args` to stderr.
fn report(mode: SeccompMode, nr: i64, args: &[u64; 6]) {
    let mut line = Line {
        buf: [0; 320],
        len: 0,
    };
    let name = syscall_name(nr);
    let name = if name.is_empty() { "?" } else { name };
    let _ = write!(
        line,
        "mdev seccomp: {} thread made system call {name} ({nr}, args {:#x}, {:#x}, {:#x}), \
         which its allow-list does not have; ",
        thread_kind_name(),
        args[0],
        args[1],
        args[2],
    );
    let _ = match mode {
        SeccompMode::Log => line.write_str("allowed (--seccomp=log), logged once\n"),
        _ => line.write_str("killing the process (SIGSYS)\n"),
    };
    let mut rest = &line.buf[..line.len];
    while !rest.is_empty() {
        // SAFETY: `rest` is a live byte slice; write(2) only reads it.
        let n = unsafe {
            raw_syscall(
                libc::SYS_write,
                [2, rest.as_ptr() as u64, rest.len() as u64, 0, 0, 0],
            )
        };
        match usize::try_from(n) {
            Ok(n) if n > 0 => rest = &rest[n.min(rest.len())..],
            _ if n == -i64::from(libc::EINTR) => {}
            _ => break,
        }
    }
}

/// The mode the handler was installed for (`SeccompMode as u8`).
static HANDLER_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Installs the SIGSYS handler for `mode` (`On` or `Log`).
pub(super) fn install_handler(mode: SeccompMode) -> io::Result<()> {
    HANDLER_MODE.store(mode as u8, Ordering::SeqCst);
    let mut flags = libc::SA_SIGINFO;
    if mode == SeccompMode::On {
        // The handler runs once: the call it makes again then meets SIGSYS's default action.
        flags |= libc::SA_RESETHAND;
    }
    // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" action, then filled in;
    // the handler is an `extern "C"` function of the SA_SIGINFO signature that only uses
    // async-signal-safe operations.
    let r = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn handler_mode() -> SeccompMode {
    match HANDLER_MODE.load(Ordering::Relaxed) {
        m if m == SeccompMode::Log as u8 => SeccompMode::Log,
        _ => SeccompMode::On,
    }
}

#[cfg(target_arch = "x86_64")]
mod arch {
    //! x86_64: the call's number and arguments are in the saved registers (the kernel rolls
    //! `rax` back to the number before it sends SIGSYS), and its return value goes to `rax`.

    use std::arch::{asm, global_asm};

    // The gate: `mdev_confine_gate(nr, a0, a1, a2, a3, a4, a5) -> ret` makes one system call
    // from the `syscall` instruction just before `mdev_confine_gate_return`. Log-mode filters
    // allow every call whose instruction pointer (the address after `syscall`) is that label.
    global_asm!(
        ".pushsection .text.mdev_confine_gate,\"ax\",@progbits",
        ".globl mdev_confine_gate",
        ".hidden mdev_confine_gate",
        ".type mdev_confine_gate,@function",
        "mdev_confine_gate:",
        "mov rax, rdi",
        "mov rdi, rsi",
        "mov rsi, rdx",
        "mov rdx, rcx",
        "mov r10, r8",
        "mov r8, r9",
        "mov r9, [rsp + 8]",
        "syscall",
        ".globl mdev_confine_gate_return",
        ".hidden mdev_confine_gate_return",
        "mdev_confine_gate_return:",
        "ret",
        ".size mdev_confine_gate, . - mdev_confine_gate",
        ".popsection",
    );

    extern "C" {
        fn mdev_confine_gate(nr: i64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64;
    }

    /// The instruction pointer the kernel reports for a call made through the gate.
    pub(in super::super) fn gate_address() -> u64 {
        let address: u64;
        // SAFETY: only computes an address (rip-relative `lea`), touches no memory.
        unsafe {
            asm!(
                "lea {0}, [rip + mdev_confine_gate_return]",
                out(reg) address,
                options(nomem, nostack, preserves_flags, pure)
            );
        }
        address
    }

    /// Makes call `nr` through the gate; returns the kernel's result (`-errno` on failure).
    ///
    /// # Safety
    /// The call and its arguments must be valid for the caller, as for `libc::syscall`.
    pub(super) unsafe fn gate(nr: i64, args: [u64; 6]) -> i64 {
        // SAFETY: the caller vouches for the call; the gate is a plain System V function.
        unsafe { mdev_confine_gate(nr, args[0], args[1], args[2], args[3], args[4], args[5]) }
    }

    /// The trapped call's number and arguments, from the saved registers.
    ///
    /// # Safety
    /// `ctx` must be the `ucontext_t` the kernel passed to an SA_SIGINFO handler.
    pub(super) unsafe fn trapped_call(ctx: *mut libc::c_void) -> (i64, [u64; 6]) {
        // SAFETY: per the contract, `ctx` points to a live ucontext_t.
        let gregs = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
        #[expect(
            clippy::cast_sign_loss,
            reason = "register numbers are small non-negative constants; a register is read \
                      as the raw 64-bit value the kernel saved"
        )]
        let reg = |r: libc::c_int| gregs[r as usize] as u64;
        (
            gregs[libc::REG_RAX as usize],
            [
                reg(libc::REG_RDI),
                reg(libc::REG_RSI),
                reg(libc::REG_RDX),
                reg(libc::REG_R10),
                reg(libc::REG_R8),
                reg(libc::REG_R9),
            ],
        )
    }

    /// Sets the trapped call's return value.
    ///
    /// # Safety
    /// As for [`trapped_call`].
    pub(super) unsafe fn set_return(ctx: *mut libc::c_void, value: i64) {
        // SAFETY: per the contract, `ctx` points to a live ucontext_t the kernel restores.
        unsafe {
            (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RAX as usize] = value
        };
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use arch::gate_address;

/// Makes a system call directly (`-errno` on failure, as the kernel returns it).
///
/// # Safety
/// As for `libc::syscall`: the call and its arguments must be valid.
unsafe fn raw_syscall(nr: i64, a: [u64; 6]) -> i64 {
    #[cfg(target_arch = "x86_64")]
    if handler_mode() == SeccompMode::Log {
        // SAFETY: forwarded contract.
        return unsafe { arch::gate(nr, a) };
    }
    // SAFETY: forwarded contract.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        -i64::from(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    } else {
        r
    }
}

#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes an SA_SIGINFO handler its saved ucontext.
    let (nr, args) = unsafe { arch::trapped_call(ctx) };
    match handler_mode() {
        SeccompMode::Log => {
            if first_time(nr) {
                report(SeccompMode::Log, nr, &args);
            }
            // SAFETY: the thread made this very call with these arguments; making it for the
            // thread is what it asked for.
            let ret = unsafe { arch::gate(nr, args) };
            // SAFETY: as above, `ctx` is the saved context the kernel restores on return.
            unsafe { arch::set_return(ctx, ret) };
        }
        _ => {
            report(SeccompMode::On, nr, &args);
            die(nr, args);
        }
    }
}

/// Ends the process by SIGSYS: the same call again meets the filter and, the handler having
/// been reset, SIGSYS's default action. `abort` if somehow it returns.
fn die(nr: i64, args: [u64; 6]) -> ! {
    // SAFETY: the call was refused by the filter a moment ago and is refused again (the filter
    // is a function of the number and the arguments), so the kernel does not run it.
    unsafe {
        libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]);
        libc::abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_named_by_number() {
        assert_eq!(syscall_name(libc::SYS_getpriority), "getpriority");
        assert_eq!(syscall_name(libc::SYS_ioctl), "ioctl");
        assert_eq!(syscall_name(libc::SYS_read), "read");
        assert_eq!(syscall_name(100_000), "");
        assert_eq!(syscall_name(-1), "");
    }

    #[test]
    fn a_call_is_logged_once_per_thread_kind() {
        std::thread::spawn(|| {
            set_thread_kind(ThreadKind::Viewer);
            assert!(first_time(300));
            assert!(!first_time(300));
            assert!(first_time(301));
            set_thread_kind(ThreadKind::PtyConsole);
            assert!(first_time(300));
            assert!(first_time(100_000), "untracked numbers are always logged");
        })
        .join()
        .unwrap();
    }
}
