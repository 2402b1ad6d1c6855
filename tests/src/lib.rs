//! Shared helpers for the integration tests: a test device whose lifecycle hooks are
//! recorded, a scratch directory, and a raw vfio-user client for sending malformed messages
//! that a well-behaved client never would.

pub mod parent_harness;
pub mod probe_device;
pub mod pty;
pub mod raw_client;
pub mod scratch;

pub use parent_harness::ParentHarness;
pub use probe_device::{HookEvent, HookLog, ProbeDevice, ProbeOptions, Rendezvous};
pub use raw_client::RawClient;
pub use scratch::ScratchDir;

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
