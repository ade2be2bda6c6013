//! A device's wall clock in simulated time: tokio's paused clock plus a
//! per-device offset the simulation skews and jumps (DESIGN §2).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use concord::hlc::Clock;
use tokio::time::Instant;

/// Wall-clock milliseconds at the start of every run (2023-11-14).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// One device's wall clock: shared with its library as its `Clock`, skewed
/// by the run.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    offset_ms: AtomicI64,
}

impl SimClock {
    /// A clock showing [`EPOCH_MS`] at `start`, not skewed.
    pub fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self {
            start,
            offset_ms: AtomicI64::new(0),
        })
    }

    /// Milliseconds of simulated time since the run started (no skew).
    pub fn true_ms(&self) -> u64 {
        EPOCH_MS + Instant::now().duration_since(self.start).as_millis() as u64
    }

    /// How far this clock is off the simulated time, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// Skew this clock (negative: behind); it may jump back.
    pub fn set_offset_ms(&self, ms: i64) {
        self.offset_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.true_ms().saturating_add_signed(self.offset_ms())
    }
}
