//! Cadences: which conduits of this device are due for a cycle.
//! **Decision**: `instant` is a cycle at most every [`INSTANT_POLL`] while
//! the conduit is idle (a cycle that finds nothing changed stats the trees,
//! hashes nothing and writes nothing to the library); a period runs a cycle
//! once per period; `manual` only on `conduit run`. Pure, so it is tested
//! without a node.

use std::time::Duration;

use concord::conduit::settings::{Cadence, Settings};
use concord::model::Conduit;

/// How often an `instant` conduit looks for changes.
pub const INSTANT_POLL: Duration = Duration::from_secs(2);

/// Whether `c` is due at `now_ms`, its last cycle here having started at
/// `last_ms` (0: none since the node started).
pub fn due(c: &Conduit, last_ms: i64, now_ms: i64) -> bool {
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
            return now_ms.saturating_sub(last_ms) >= INSTANT_POLL.as_millis() as i64
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

    #[test]
    fn cadences_decide_when_a_cycle_is_due() {
        assert!(!due(&conduit("manual"), 0, 1_000_000));
        assert!(due(&conduit("instant"), 0, 1_000_000));
        assert!(!due(&conduit("instant"), 999_000, 1_000_000));
        let mut hourly = conduit("1h");
        assert!(due(&hourly, 0, 10_000_000));
        hourly.last_run = Some(10_000_000);
        assert!(!due(&hourly, 0, 10_000_000 + 3_599_000));
        assert!(due(&hourly, 0, 10_000_000 + 3_600_000));
        // A cycle started here counts as well as the synced last run.
        assert!(!due(
            &hourly,
            10_000_000 + 3_000_000,
            10_000_000 + 3_600_000
        ));
        let mut paused = conduit("instant");
        paused.paused = Some("user".into());
        assert!(!due(&paused, 0, 1_000_000));
    }
}
