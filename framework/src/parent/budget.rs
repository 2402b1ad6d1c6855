//! A global resource budget (ports, devices, framebuffer megabytes) taken atomically and given
//! back exactly: a [`Reservation`] returns its units when it drops, on every path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A budget could not cover a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {wanted} wanted but only {free} of {total} free")]
pub struct BudgetExhausted {
    /// What the budget counts.
    pub name: String,
    /// Units asked for.
    pub wanted: u64,
    /// Units free at the time.
    pub free: u64,
    /// The budget's size.
    pub total: u64,
}

#[derive(Debug)]
struct Inner {
    name: String,
    total: u64,
    used: AtomicU64,
}

/// A counted resource with a fixed total, shared by every instance of a parent.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

impl Budget {
    /// A budget of `total` units named `name` (e.g. "ports", "framebuffer MiB").
    pub fn new(name: &str, total: u64) -> Self {
        Budget {
            inner: Arc::new(Inner {
                name: name.to_string(),
                total,
                used: AtomicU64::new(0),
            }),
        }
    }

    /// The total.
    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Units not taken.
    pub fn free(&self) -> u64 {
        self.inner.total - self.inner.used.load(Ordering::Acquire)
    }

    /// Units taken.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Takes `units` with a compare-and-swap, or fails naming the numbers.
    pub fn take(&self, units: u64) -> Result<Reservation, BudgetExhausted> {
        let mut used = self.inner.used.load(Ordering::Acquire);
        loop {
            let free = self.inner.total - used;
            if units > free {
                return Err(BudgetExhausted {
                    name: self.inner.name.clone(),
                    wanted: units,
                    free,
                    total: self.inner.total,
                });
            }
            match self.inner.used.compare_exchange_weak(
                used,
                used + units,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        budget: self.clone(),
                        units,
                    })
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Units taken from a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    units: u64,
}

impl Reservation {
    /// Units held.
    pub fn units(&self) -> u64 {
        self.units
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .inner
            .used
            .fetch_sub(self.units, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_return_exactly_what_they_took() {
        let b = Budget::new("ports", 24);
        let r1 = b.take(2).unwrap();
        let r2 = b.take(22).unwrap();
        let err = b.take(1).unwrap_err();
        assert_eq!((err.wanted, err.free, err.total), (1, 0, 24));
        assert!(err.to_string().contains("ports"));
        drop(r1);
        assert_eq!(b.free(), 2);
        drop(r2);
        assert_eq!(b.free(), 24);
    }

    #[test]
    fn concurrent_takers_never_oversubscribe() {
        let b = Budget::new("mb", 256);
        let held: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..100).filter_map(|_| b.take(4).ok()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.len(), 64);
        assert_eq!(b.free(), 0);
        drop(held);
        assert_eq!(b.free(), 256);
    }
}
