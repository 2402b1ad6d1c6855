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
//!
//! Polling only pays when the client runs on another CPU. When it shares this thread's CPU,
//! its next request can only come after this thread lost the CPU to it (the reply's wake-up
//! preempted this thread, or the poll loop's yield handed the CPU over), and then the polls
//! and yields cost more than sleeping would. So a window also judges, now and then, where its
//! client runs ([`Sharing`]): over a sample of requests, it counts those that came only after
//! this thread was switched out involuntarily (the thread's own `ru_nivcsw`, the kernel's
//! count, not a timing). Few of them: the client runs elsewhere, and polling goes on. Nearly
//! all: the client may share the CPU, but another thread of its process may as well have
//! preempted the poller (QEMU's iothread, woken by the reply, while its vCPU thread runs on
//! the other CPU; polling still saves the vCPU's request a wake-up then). So a trial settles
//! it: the next sample's requests are taken without polling, and polling pauses only if they
//! came no less often (median time from request to request) than the polled ones. A judgement holds
//! for some thousands of requests; a client that moves is noticed at the next sample.

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    current: Duration,
    sharing: Sharing,
}

impl PollWindow {
    /// A window bounded by `max` (zero: never polls), starting at the bound: a client that
    /// has just connected is likely to send its next request soon.
    pub fn new(max: Duration) -> Self {
        PollWindow {
            max,
            current: max,
            sharing: Sharing::new(),
        }
    }

    /// How long to poll before blocking now (zero while polling pauses, see
    /// [`PollWindow::observe`]).
    pub fn current(&self) -> Duration {
        if self.sharing.pauses() {
            Duration::ZERO
        } else {
            self.current
        }
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

    /// Whether the caller should read [`involuntary_switches`] when each request arrives and
    /// tell [`PollWindow::observe`] whether it changed since the previous one.
    pub fn sampling(&self) -> bool {
        !self.max.is_zero() && matches!(self.sharing, Sharing::Sampling { .. })
    }

    /// The next request came `waited` after the previous reply and `cycle` after the
    /// previous request; `handed` is whether this thread was switched out involuntarily since
    /// the previous request arrived (`None`: not known). Adapts the window and the judgement
    /// of where the client runs; returns the judgement when one has just been made (`true`:
    /// polling pauses, the client shares this thread's CPU).
    pub fn observe(
        &mut self,
        waited: Duration,
        cycle: Duration,
        handed: Option<bool>,
    ) -> Option<bool> {
        if self.max.is_zero() {
            return None;
        }
        let polled = self.current();
        if polled.is_zero() && self.sharing.pauses() {
            // No poll ran: nothing to learn about the window.
            return self.sharing.observe(cycle, None);
        }
        let caught = !polled.is_zero() && waited <= polled;
        let judged = self.sharing.observe(cycle, handed.map(|h| h && caught));
        if waited > self.current {
            self.adapt(waited);
        }
        judged
    }

    /// The request came after the window, `waited` after the reply: grow or shrink it.
    fn adapt(&mut self, waited: Duration) {
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

/// Requests a sample (and a trial) judges by.
const SAMPLE: usize = 64;
/// Of a sample, how many must have been caught after an involuntary switch for a trial:
/// nearly all (a client on another CPU hands over only when something else preempts the
/// poller).
const HANDED_FOR_TRIAL: usize = SAMPLE * 7 / 8;
/// Requests a judgement holds for before the next sample.
const HOLD: u32 = 4096;

/// Where a connection's client runs, as far as polling is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sharing {
    /// Polling, and sampling: the cycles (request to request) so far, and how many of the
    /// requests were caught after this thread was switched out.
    Sampling {
        cycles: Vec<Duration>,
        handed: usize,
    },
    /// Not polling, for a trial: the cycles so far, and the polled sample's median.
    Trial {
        cycles: Vec<Duration>,
        polled: Duration,
    },
    /// Judged, for `left` more requests: `shared`, polling pauses.
    Judged { shared: bool, left: u32 },
}

impl Sharing {
    fn new() -> Self {
        Sharing::Sampling {
            cycles: Vec::with_capacity(SAMPLE),
            handed: 0,
        }
    }

    /// Whether polling pauses now (for a trial, or judged useless).
    fn pauses(&self) -> bool {
        matches!(
            self,
            Sharing::Trial { .. } | Sharing::Judged { shared: true, .. }
        )
    }

    /// One more request, `cycle` after the previous one; while sampling, `handed` is whether
    /// it was caught polling after this thread was switched out (`None`: not known, not
    /// counted). Returns the judgement when one is made.
    fn observe(&mut self, cycle: Duration, handed: Option<bool>) -> Option<bool> {
        match self {
            Sharing::Sampling { cycles, handed: n } => {
                *n += usize::from(handed?);
                cycles.push(cycle);
                if cycles.len() < SAMPLE {
                    return None;
                }
                if *n < HANDED_FOR_TRIAL {
                    *self = Sharing::Judged {
                        shared: false,
                        left: HOLD,
                    };
                    return Some(false);
                }
                let polled = median(cycles);
                *self = Sharing::Trial {
                    cycles: Vec::with_capacity(SAMPLE),
                    polled,
                };
                None
            }
            Sharing::Trial { cycles, polled } => {
                cycles.push(cycle);
                if cycles.len() < SAMPLE {
                    return None;
                }
                let shared = median(cycles) <= *polled;
                *self = Sharing::Judged { shared, left: HOLD };
                Some(shared)
            }
            Sharing::Judged { left: 0, .. } => {
                *self = Sharing::new();
                None
            }
            Sharing::Judged { left, .. } => {
                *left -= 1;
                None
            }
        }
    }
}

/// The median of `v` (which it sorts); zero if empty.
fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// How many times the kernel has switched the calling thread out while it could still run
/// (preempted, or handed the CPU over by a yield): its `ru_nivcsw`. `None` if the kernel
/// does not say.
pub fn involuntary_switches() -> Option<i64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` only writes a `rusage` to the pointer, which points to one that
    // lives across the call.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: the call succeeded, so it filled the struct (which was zeroed besides).
    let usage = unsafe { usage.assume_init() };
    Some(usage.ru_nivcsw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(64);

    #[test]
    fn a_request_within_the_window_keeps_it() {
        let mut w = PollWindow::new(MAX);
        w.observe(Duration::from_micros(10), Duration::from_micros(10), None);
        assert_eq!(w.current(), MAX);
    }

    #[test]
    fn requests_after_the_bound_shrink_the_window_to_nothing() {
        let mut w = PollWindow::new(MAX);
        for _ in 0..5 {
            w.observe(Duration::from_millis(5), Duration::from_millis(5), None);
        }
        assert_eq!(w.current(), MAX / 32);
        w.observe(Duration::from_millis(5), Duration::from_millis(5), None);
        assert_eq!(w.current(), MAX / 64);
        w.observe(Duration::from_millis(5), Duration::from_millis(5), None);
        assert_eq!(w.current(), Duration::ZERO);
        w.observe(Duration::from_secs(100), Duration::from_secs(100), None);
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn a_request_just_after_the_window_grows_it_up_to_the_bound() {
        let mut w = PollWindow::new(MAX);
        for _ in 0..7 {
            w.observe(Duration::from_secs(1), Duration::from_secs(1), None);
        }
        assert_eq!(w.current(), Duration::ZERO);
        w.observe(Duration::from_micros(20), Duration::from_micros(20), None);
        assert_eq!(w.current(), MAX / 8);
        w.observe(Duration::from_micros(20), Duration::from_micros(20), None);
        assert_eq!(w.current(), MAX / 4);
        w.observe(Duration::from_micros(20), Duration::from_micros(20), None);
        assert_eq!(w.current(), MAX / 2);
        w.observe(Duration::from_micros(20), Duration::from_micros(20), None);
        assert_eq!(w.current(), MAX / 2, "20 us came within the 32 us window");
    }

    #[test]
    fn a_zero_bound_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        w.observe(Duration::from_nanos(1), Duration::from_nanos(1), None);
        w.observe(Duration::from_secs(1), Duration::from_secs(1), None);
        assert_eq!(w.current(), Duration::ZERO);
    }

    /// Feeds `n` requests `waited` after the reply, `handed` of them caught after a switch:
    /// what the last one's `observe` returned.
    fn feed(w: &mut PollWindow, n: usize, handed: usize, waited: Duration) -> Option<bool> {
        (0..n)
            .map(|i| w.observe(waited, waited, Some(i < handed)))
            .last()
            .flatten()
    }

    const FAST: Duration = Duration::from_micros(10);
    const SLOWER: Duration = Duration::from_micros(11);

    #[test]
    fn a_client_that_only_comes_after_a_switch_and_no_later_unpolled_pauses_polling() {
        let mut w = PollWindow::new(MAX);
        assert!(w.sampling());
        assert_eq!(feed(&mut w, SAMPLE - 1, HANDED_FOR_TRIAL, SLOWER), None);
        assert_eq!(feed(&mut w, 1, 1, SLOWER), None, "a trial, not a judgement");
        assert_eq!(w.current(), Duration::ZERO, "the trial does not poll");
        assert!(!w.sampling());
        assert_eq!(w.observe(FAST, FAST, None), None);
        assert_eq!(feed(&mut w, SAMPLE - 1, 0, FAST), Some(true));
        assert_eq!(w.current(), Duration::ZERO, "judged to share the CPU");
        // Unpolled requests count down the judgement, and leave the window.
        for _ in 0..HOLD {
            w.observe(Duration::from_secs(1), Duration::from_secs(1), Some(true));
            assert_eq!(w.current(), Duration::ZERO);
        }
        w.observe(FAST, FAST, None);
        assert!(w.sampling(), "sampled again");
        assert_eq!(w.current(), MAX, "polling again at the window it had");
    }

    #[test]
    fn a_client_that_comes_later_unpolled_keeps_polling_though_handed() {
        let mut w = PollWindow::new(MAX);
        assert_eq!(feed(&mut w, SAMPLE, SAMPLE, FAST), None);
        assert_eq!(w.current(), Duration::ZERO, "on trial");
        assert_eq!(feed(&mut w, SAMPLE, 0, SLOWER), Some(false));
        assert_eq!(w.current(), MAX);
    }

    #[test]
    fn a_client_caught_while_spinning_keeps_polling_without_a_trial() {
        let mut w = PollWindow::new(MAX);
        assert_eq!(
            feed(&mut w, SAMPLE, HANDED_FOR_TRIAL - 1, FAST),
            Some(false)
        );
        assert_eq!(w.current(), MAX);
        assert!(
            !w.sampling(),
            "judged: no more counting until the next sample"
        );
        for _ in 0..=HOLD {
            w.observe(FAST, FAST, None);
        }
        assert!(w.sampling());
        // The client has moved onto this CPU: the next sample notices.
        assert_eq!(feed(&mut w, SAMPLE, SAMPLE, SLOWER), None);
        assert_eq!(feed(&mut w, SAMPLE, 0, FAST), Some(true));
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn requests_with_an_unknown_switch_count_or_after_the_window_are_not_handed() {
        let mut w = PollWindow::new(MAX);
        for _ in 0..100 {
            w.observe(FAST, FAST, None);
        }
        assert!(w.sampling(), "unknown: not sampled");
        // Came after the window: blocking, not polling, took them.
        assert_eq!(
            feed(&mut w, SAMPLE, SAMPLE, Duration::from_millis(1)),
            Some(false)
        );
        assert!(
            !PollWindow::new(Duration::ZERO).sampling(),
            "no polling, nothing to judge"
        );
    }

    #[test]
    fn a_yield_that_hands_the_cpu_over_counts_as_an_involuntary_switch() {
        let before = involuntary_switches().expect("getrusage(RUSAGE_THREAD)");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Pin this thread and a spinning one to one CPU, so a yield hands it over.
        let cpu = {
            // SAFETY: `sched_getcpu` takes no arguments.
            let c = unsafe { libc::sched_getcpu() };
            usize::try_from(c).unwrap_or(0)
        };
        let pin = move || {
            // SAFETY: a zeroed `cpu_set_t` is an empty set; `CPU_SET` and
            // `sched_setaffinity` read and write only the set passed.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
            }
        };
        assert_eq!(pin(), 0);
        let spinner = std::thread::spawn(move || {
            assert_eq!(pin(), 0);
            while rx.try_recv().is_err() {
                std::thread::yield_now();
            }
        });
        for _ in 0..100 {
            std::thread::yield_now();
        }
        let after = involuntary_switches().expect("getrusage(RUSAGE_THREAD)");
        tx.send(()).unwrap();
        spinner.join().unwrap();
        assert!(after > before, "{before} -> {after}");
    }
}
