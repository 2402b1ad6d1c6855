//! Shared helpers for the integration tests: a test device whose lifecycle hooks are
//! recorded, a scratch directory, and a raw vfio-user client for sending malformed messages
//! that a well-behaved client never would.

pub mod bochs_guest;
pub mod open_fds;
pub mod parent_harness;
pub mod probe_device;
pub mod pty;
pub mod raw_client;
pub mod rfb_client;
pub mod scratch;
pub mod served_parent;
pub mod thread_status;

pub use parent_harness::ParentHarness;
pub use probe_device::{HookEvent, HookLog, ProbeDevice, ProbeOptions, Rendezvous};
pub use raw_client::RawClient;
pub use scratch::ScratchDir;
pub use served_parent::ServedParent;
pub use thread_status::{threads, ThreadStatus};

/// Installs a test logger once (honours RUST_LOG).
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Waits for `cond` to hold, checking every millisecond, and panics with `what` after 20 s.
/// For conditions another thread makes true (a server noticing a closed connection).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Waits (up to 10 s, then fails) for an eventfd to be signalled and consumes it. Interrupts
/// reach a client's eventfd from the server's delivery thread, so a client waits on the
/// eventfd as QEMU does, never reads it once.
pub fn wait_event(e: &vmm_sys_util::eventfd::EventFd) -> u64 {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: e.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; the eventfd outlives it.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "interrupt not delivered within 10 s");
    e.read().expect("eventfd read")
}

/// Asserts that `e` holds no interrupt once every interrupt `irqs` raised so far has been
/// delivered (`why` says what should have kept it quiet).
pub fn assert_no_event(irqs: &mdev::Interrupts, e: &vmm_sys_util::eventfd::EventFd, why: &str) {
    assert!(
        irqs.wait_delivered(std::time::Duration::from_secs(10)),
        "interrupt delivery stuck"
    );
    assert!(e.read().is_err(), "unexpected interrupt: {why}");
}
