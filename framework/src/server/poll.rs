//! How long a connection polls its socket after a request before it blocks: a window that
//! adapts to how soon the client's next request follows, within a bound the server sets.
//!
//! A thread blocked in `recvmsg` must be woken by the kernel when the request comes, which
//! costs little on the client's own CPU and tens of microseconds on another. Polling (a
//! non-blocking receive, again and again) for a short window after each request saves that
//! wake-up when the next request comes soon, and burns the window when it does not. So,
//! as QEMU's iothreads adapt `poll-ns` and SPDK's adaptive pollers do, the window follows
//! the traffic:
//!
//! - the request came within the window: the window stays;
//! - it came after the window ended but within the bound: polling a bit longer would have
//!   caught it, so the window grows (doubles, from an eighth of the bound);
//! - it came after the bound (or never): polling was wasted, so the window shrinks (halves,
//!   and stops below a 64th of the bound).
//!
//! The window only ever runs right after a request: an idle connection blocks and costs no
//! CPU, whatever the bound.

use std::time::Duration;

/// The default bound of `serve --poll-us` and of [`poll_from_env`], in microseconds, chosen
/// in a TCG guest (`tests/e2e/bench`): a guest's register accesses follow each other by tens
/// of microseconds there, so a 50 µs bound shrank to nothing between sysfs accesses, while
/// 200 µs brought every device to 0.5–0.63× the rust-vmm peer's access time and 1000 µs did
/// no better. Between CPUs on the host it halves a round trip; on one CPU the loop yields;
/// idle it costs nothing (see the README's "Polling").
pub const DEFAULT_POLL_US: u64 = 200;

/// The environment variable that sets the poll bound in microseconds (`serve --poll-us`
/// reads it too).
pub const POLL_ENV: &str = "MDEV_POLL_US";

/// A value of [`POLL_ENV`] that is not a number of microseconds.
#[derive(Debug, thiserror::Error)]
#[error("{POLL_ENV}={0:?} is not a number of microseconds")]
pub struct PollEnvError(String);

/// The poll bound [`POLL_ENV`] gives this process, or [`DEFAULT_POLL_US`] when it is unset.
pub fn poll_from_env() -> Result<Duration, PollEnvError> {
    match std::env::var(POLL_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Duration::from_micros)
            .map_err(|_| PollEnvError(v)),
        Err(_) => Ok(Duration::from_micros(DEFAULT_POLL_US)),
    }
}

/// The poll window of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    current: Duration,
}

impl PollWindow {
    /// A window bounded by `max` (zero: never polls), starting at the bound: a client that
    /// has just connected is likely to send its next request soon.
    pub fn new(max: Duration) -> Self {
        PollWindow { max, current: max }
    }

    /// How long to poll before blocking now.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The bound.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Changes the bound (the window is clamped to it; a window of zero under a new non-zero
    /// bound starts over at the bound).
    pub fn set_max(&mut self, max: Duration) {
        if max != self.max {
            *self = PollWindow::new(max);
        }
    }

    /// The next request came `waited` after the previous reply: adapt the window.
    pub fn observe(&mut self, waited: Duration) {
        if waited <= self.current || self.max.is_zero() {
            return;
        }
        if waited <= self.max {
            let grown = self.current.saturating_mul(2).max(self.max / 8);
            self.current = grown.min(self.max);
        } else {
            self.current /= 2;
            if self.current < self.max / 64 {
                self.current = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(64);

    #[test]
    fn a_request_within_the_window_keeps_it() {
        let mut w = PollWindow::new(MAX);
        w.observe(Duration::from_micros(10));
        assert_eq!(w.current(), MAX);
    }

    #[test]
    fn requests_after_the_bound_shrink_the_window_to_nothing() {
        let mut w = PollWindow::new(MAX);
        for _ in 0..5 {
            w.observe(Duration::from_millis(5));
        }
        assert_eq!(w.current(), MAX / 32);
        w.observe(Duration::from_millis(5));
        assert_eq!(w.current(), MAX / 64);
        w.observe(Duration::from_millis(5));
        assert_eq!(w.current(), Duration::ZERO);
        w.observe(Duration::from_secs(100));
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn a_request_just_after_the_window_grows_it_up_to_the_bound() {
        let mut w = PollWindow::new(MAX);
        for _ in 0..7 {
            w.observe(Duration::from_secs(1));
        }
        assert_eq!(w.current(), Duration::ZERO);
        w.observe(Duration::from_micros(20));
        assert_eq!(w.current(), MAX / 8);
        w.observe(Duration::from_micros(20));
        assert_eq!(w.current(), MAX / 4);
        w.observe(Duration::from_micros(20));
        assert_eq!(w.current(), MAX / 2);
        w.observe(Duration::from_micros(20));
        assert_eq!(w.current(), MAX / 2, "20 us came within the 32 us window");
    }

    #[test]
    fn a_zero_bound_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        w.observe(Duration::from_nanos(1));
        w.observe(Duration::from_secs(1));
        assert_eq!(w.current(), Duration::ZERO);
    }
}
