//! SIGINT and SIGTERM, taken synchronously: a serving binary blocks them before it starts any
//! thread, then its main thread waits for one.

use log::info;

/// The signals that stop `serve`.
pub(crate) fn shutdown_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread (and every thread it spawns later), so
/// [`wait_for_shutdown`] can take them synchronously.
pub fn block_shutdown_signals() {
    let _ = shutdown_signals().thread_block();
}

/// Waits for SIGINT or SIGTERM (blocked first with [`block_shutdown_signals`]).
pub fn wait_for_shutdown() {
    if let Ok(sig) = shutdown_signals().wait() {
        info!("{sig:?} received, shutting down");
    }
}
