//! Hybrid logical clock (DESIGN §2).
//!
//! A stamp is 48 bits of physical milliseconds and a 16-bit logical counter packed
//! into one `u64`, ordered first by that number and then by the device id that
//! issued it, which makes the order total across a library. Time enters only through
//! the [`Clock`] trait so the simulation can drive it.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Largest physical time a stamp can carry (48 bits of milliseconds, year 10889).
pub const MAX_PHYSICAL_MS: u64 = (1 << 48) - 1;
/// Default bound on how far a remote stamp may run ahead of our wall clock.
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_secs(5 * 60);

/// Source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock. The only place production code reads it.
///
/// `CONCORD_CLOCK_OFFSET_MS` (a signed number of ms, read once per process)
/// shifts it: the multi-process tests use it to run a device whose clock is
/// hours off, as a NAS without a real-time clock would be. Unset, it is 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The environment variable that shifts [`SystemClock`] (tests only).
pub const CLOCK_OFFSET_ENV: &str = "CONCORD_CLOCK_OFFSET_MS";

fn clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var(CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        wall.saturating_add_signed(clock_offset_ms())
    }
}

/// A clock the caller sets by hand: tests and the simulation.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }
    /// Jump the clock to `ms`, as a test needs to place events in time.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, AtomicOrdering::SeqCst);
    }
    /// Move the clock forward by `ms`, as a test lets time pass.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, AtomicOrdering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(AtomicOrdering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// One HLC stamp: packed time (`ms << 16 | counter`) and the issuing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub time: u64,
    pub device: Uuid,
}

impl Hlc {
    pub const fn new(time: u64, device: Uuid) -> Self {
        Self { time, device }
    }
    pub fn pack(ms: u64, counter: u16) -> u64 {
        (ms.min(MAX_PHYSICAL_MS) << 16) | counter as u64
    }
    /// The wall-clock part (ms), for comparing against real time.
    pub fn physical_ms(&self) -> u64 {
        self.time >> 16
    }
    /// The logical part, which orders stamps of one millisecond.
    pub fn counter(&self) -> u16 {
        (self.time & 0xffff) as u16
    }
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| self.device.cmp(&other.device))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            self.physical_ms(),
            self.counter(),
            self.device.simple()
        )
    }
}

/// Why a remote stamp was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HlcError {
    #[error(
        "clock of device {device} is {ahead_ms} ms ahead of ours (limit {limit_ms} ms); \
         refusing its changes until its clock is corrected"
    )]
    TooFarAhead {
        device: Uuid,
        ahead_ms: u64,
        limit_ms: u64,
    },
}

/// Issues monotonic stamps for one device and absorbs remote ones.
pub struct HlcGenerator {
    device: Uuid,
    clock: Box<dyn Clock>,
    max_drift_ms: u64,
    last: Mutex<u64>,
}

impl HlcGenerator {
    pub fn new(device: Uuid, clock: Box<dyn Clock>) -> Self {
        Self {
            device,
            clock,
            max_drift_ms: DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64,
            last: Mutex::new(0),
        }
    }

    /// Reject remote stamps more than `drift` ahead of this clock, so one
    /// device's wrong clock cannot drag every other device's clock forward.
    pub fn with_max_drift(mut self, drift: Duration) -> Self {
        self.max_drift_ms = drift.as_millis() as u64;
        self
    }

    /// The device whose stamps this generator makes (the tie-breaker of equal times).
    pub fn device(&self) -> Uuid {
        self.device
    }

    /// The wall clock behind this generator, in ms.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Raise the floor to a stamp seen before (re-seed from `sync.db` on open).
    pub fn observe_floor(&self, time: u64) {
        let mut last = self.lock();
        *last = (*last).max(time);
    }

    /// The last stamp issued or observed.
    pub fn last(&self) -> u64 {
        *self.lock()
    }

    /// A new stamp, strictly above every stamp issued or received before.
    pub fn tick(&self) -> Hlc {
        let wall = Hlc::pack(self.clock.now_ms(), 0);
        let mut last = self.lock();
        let next = if wall > *last { wall } else { *last + 1 };
        *last = next;
        Hlc::new(next, self.device)
    }

    /// Check a remote stamp against the drift bound without absorbing it.
    pub fn check(&self, remote: &Hlc) -> Result<(), HlcError> {
        let now = self.clock.now_ms();
        let remote_ms = remote.physical_ms();
        if remote_ms > now.saturating_add(self.max_drift_ms) {
            return Err(HlcError::TooFarAhead {
                device: remote.device,
                ahead_ms: remote_ms - now,
                limit_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// Absorb a remote stamp so every later local stamp is above it.
    pub fn receive(&self, remote: &Hlc) -> Result<(), HlcError> {
        self.check(remote)?;
        let mut last = self.lock();
        *last = (*last).max(remote.time);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // A poisoned lock only means another thread panicked mid-update of a u64;
        // the value itself is always valid.
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn gen(clock: Arc<ManualClock>) -> HlcGenerator {
        HlcGenerator::new(Uuid::from_u128(7), Box::new(clock))
    }

    #[test]
    fn monotonic_when_wall_clock_jumps_back_an_hour() {
        let clock = Arc::new(ManualClock::new(10_000_000));
        let g = gen(clock.clone());
        let a = g.tick();
        clock.set(10_000_000 - 3_600_000);
        let mut prev = a;
        for _ in 0..1000 {
            let b = g.tick();
            assert!(b > prev, "{b} not above {prev}");
            prev = b;
        }
        assert_eq!(
            prev.physical_ms(),
            10_000_000,
            "stays on the old physical time"
        );
    }

    #[test]
    fn receive_advances_the_clock() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let g = gen(clock.clone());
        let remote = Hlc::new(Hlc::pack(1_000_000 + 60_000, 5), Uuid::from_u128(9));
        g.receive(&remote).unwrap();
        let next = g.tick();
        assert!(next.time > remote.time);
    }

    #[test]
    fn refuses_stamp_an_hour_in_the_future() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let g = gen(clock.clone());
        let before = g.last();
        let remote = Hlc::new(Hlc::pack(1_000_000_000 + 3_600_000, 0), Uuid::from_u128(9));
        let err = g.receive(&remote).unwrap_err();
        assert!(err.to_string().contains("ahead of ours"), "{err}");
        assert_eq!(g.last(), before, "a refused stamp is not absorbed");
    }

    #[test]
    fn ties_broken_by_device() {
        let a = Hlc::new(5, Uuid::from_u128(1));
        let b = Hlc::new(5, Uuid::from_u128(2));
        assert!(a < b);
        assert!(Hlc::new(6, Uuid::from_u128(1)) > b);
    }
}
