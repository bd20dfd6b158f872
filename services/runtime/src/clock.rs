//! Wall-clock time in milliseconds since the Unix epoch, read through a [`Clock`] so that tests
//! move time by hand instead of sleeping.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};
use std::time::Duration;

/// The time source of a service: the system clock, or a hand-moved one in tests.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock standing at `start_ms` until [`Clock::advance`] or [`Clock::set`] moves it.
    pub fn manual(start_ms: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => crate::ids::now_ms(),
            Some(at) => at.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward by `by` (every clone sees it); the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(at) = &self.0 {
            at.fetch_add(
                i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
                Ordering::SeqCst,
            );
        }
    }

    /// Sets a manual clock to `ms`; the system clock ignores it.
    pub fn set(&self, ms: i64) {
        if let Some(at) = &self.0 {
            at.store(ms, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_all_clones_follow() {
        let clock = Clock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        other.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        clock.set(10);
        assert_eq!(other.now_ms(), 10);
        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        assert!((system.now_ms() - crate::ids::now_ms()).abs() < 60_000);
    }
}
