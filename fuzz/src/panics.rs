//! Panics on any thread, counted. The server catches a panic in a connection thread (it costs
//! that one connection), so a target cannot see it unwind: it compares this count instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Installs the counting hook (once; it chains to the hook installed before it, so
/// libFuzzer's abort-on-panic still runs) and returns the panics counted so far.
pub fn count() -> usize {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}
