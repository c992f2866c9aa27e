//! Clocks for the adapters. The core never reads time itself; the local queue does (to decide
//! what is visible), so it takes a [`Clock`] and tests hand it a [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::{Clock, Millis};

pub use switchyard_core::time::SystemClock;

/// A clock that only moves when told to. Clones share the same time, so a test keeps one handle
/// and gives another to the queue.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start: Millis) -> ManualClock {
        ManualClock {
            now: Arc::new(AtomicU64::new(start)),
        }
    }

    pub fn set(&self, now: Millis) {
        self.now.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        // fetch_update rather than fetch_add so a huge advance saturates instead of wrapping.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        let shared = c.clone();
        assert_eq!(shared.now_ms(), 1_000);
        c.advance(250);
        assert_eq!(shared.now_ms(), 1_250);
        c.set(5);
        assert_eq!(shared.now_ms(), 5);
        c.advance(u64::MAX);
        assert_eq!(shared.now_ms(), u64::MAX);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
