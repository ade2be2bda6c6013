//! Cadences: which conduits of this device are due for a cycle.
//! **Decision**: `instant` follows changes: a cycle when a file of the
//! library changed since its last cycle here started (the library's change
//! events, `changes.rs`, debounced by the scheduler), and a safety rescan
//! every [`INSTANT_RESCAN`] for what the events miss (a cycle that finds
//! nothing changed stats the trees, hashes nothing and writes nothing to the
//! library); a period runs a cycle once per period; `manual` only on
//! `conduit run`. Pure, so it is tested without a node.

use std::time::Duration;

use concord::conduit::settings::{Cadence, Settings};
use concord::model::Conduit;

/// How often an `instant` conduit rescans with no change seen: the safety
/// net for changes no event announced (a file changed while its device's
/// watcher was not running, a missed event).
pub const INSTANT_RESCAN: Duration = Duration::from_secs(60);

/// How long the scheduler waits after a change before it looks which
/// conduits are due, so that a burst of changes makes one cycle.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// [`INSTANT_RESCAN`], or `CONCORD_CONDUIT_RESCAN_MS` when set (tests make
/// it long to prove that changes alone trigger cycles).
pub fn instant_rescan() -> Duration {
    std::env::var("CONCORD_CONDUIT_RESCAN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(INSTANT_RESCAN, Duration::from_millis)
}

/// When things happened, for [`due`] (ms since the epoch; 0: not since the
/// node started).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// The conduit's last cycle here started.
    pub last: i64,
    /// A file of its library last changed.
    pub changed: i64,
    pub now: i64,
    pub rescan: Duration,
}

/// Whether `c` is due at `t.now`.
pub fn due(c: &Conduit, t: Times) -> bool {
    let (last_ms, now_ms) = (t.last, t.now);
    let Ok(settings) = Settings::from_record(c) else {
        return false;
    };
    if settings.paused.is_some() {
        return false;
    }
    let last = last_ms.max(c.last_run.unwrap_or(0));
    let period = match settings.cadence {
        Cadence::Manual => return false,
        Cadence::Instant => {
            return last_ms == 0
                || t.changed >= last_ms
                || now_ms.saturating_sub(last_ms) >= t.rescan.as_millis() as i64
        }
        Cadence::Every(d) => d,
    };
    now_ms.saturating_sub(last) >= period.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord::Uuid;

    fn conduit(cadence: &str) -> Conduit {
        Conduit {
            id: Uuid::from_u128(1),
            source: Uuid::from_u128(2),
            source_dir: String::new(),
            destination: Uuid::from_u128(3),
            destination_dir: String::new(),
            policy: "replicate".into(),
            propagate_deletes: false,
            cadence: cadence.into(),
            min_free: None,
            pin_tag: None,
            paused: None,
            allow_deletes: false,
            last_run: None,
            last_error: None,
        }
    }

    fn at(last: i64, now: i64) -> Times {
        Times {
            last,
            changed: 0,
            now,
            rescan: INSTANT_RESCAN,
        }
    }

    #[test]
    fn an_instant_conduit_follows_changes_and_rescans_slowly() {
        let c = conduit("instant");
        assert!(due(&c, at(0, 1_000_000)), "first cycle");
        assert!(!due(&c, at(999_000, 1_000_000)));
        assert!(!due(&c, at(999_000, 999_000 + 59_000)), "no poll");
        assert!(due(&c, at(999_000, 999_000 + 60_000)), "rescan");
        let changed = Times {
            changed: 999_500,
            ..at(999_000, 999_800)
        };
        assert!(due(&c, changed), "a change after the last start");
        let before = Times {
            changed: 998_000,
            ..at(999_000, 999_800)
        };
        assert!(!due(&c, before), "a change the last cycle saw");
    }

    #[test]
    fn cadences_decide_when_a_cycle_is_due() {
        assert!(!due(&conduit("manual"), at(0, 1_000_000)));
        let mut hourly = conduit("1h");
        assert!(due(&hourly, at(0, 10_000_000)));
        hourly.last_run = Some(10_000_000);
        assert!(!due(&hourly, at(0, 10_000_000 + 3_599_000)));
        assert!(due(&hourly, at(0, 10_000_000 + 3_600_000)));
        // A cycle started here counts as well as the synced last run.
        assert!(!due(
            &hourly,
            at(10_000_000 + 3_000_000, 10_000_000 + 3_600_000)
        ));
        let mut paused = conduit("instant");
        paused.paused = Some("user".into());
        assert!(!due(&paused, at(0, 1_000_000)));
    }
}
