//! What a log holds past a gap: per replica whose log lacks a position below
//! some entry it holds, the highest position held and a digest of every run
//! held past the version vector.
//!
//! A version vector counts only the contiguous prefix of each replica. Entries
//! held past a gap (pushed directly after positions that never arrived, which
//! their origin then lost for good with a rollback) are invisible to it: two
//! devices with equal vectors may hold different entries past the same gap,
//! and comparing vectors alone never makes either ask the other. Devices
//! exchange this summary next to their vectors (`HeartbeatReply`) and
//! reconcile when it differs; a reconcile sends every entry past the asker's
//! vector, so one exchange gives both sides the union.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a log holds of one replica past its vector position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastGap {
    /// The highest `origin_seq` held.
    pub highest: u64,
    /// A digest of the runs held past the vector position (`first..=last`
    /// each, in order, however they are stored): equal exactly when the same
    /// positions are held.
    pub runs: u64,
}

/// Per replica with entries held past a gap, what is held there. Replicas
/// whose log is contiguous are absent, so the map is empty in the common case.
pub type PastGaps = BTreeMap<Uuid, PastGap>;

/// Summarise the runs `(first, last)` held of one replica past its vector
/// position, in ascending order (adjacent ones merge): `None` when empty.
pub fn past_gap(runs: impl IntoIterator<Item = (u64, u64)>) -> Option<PastGap> {
    let mut hasher = blake3::Hasher::new();
    let mut current: Option<(u64, u64)> = None;
    let mut highest = 0;
    for (first, last) in runs {
        highest = highest.max(last);
        current = match current {
            Some((f, l)) if first <= l.saturating_add(1) => Some((f, l.max(last))),
            Some((f, l)) => {
                hasher.update(&f.to_le_bytes());
                hasher.update(&l.to_le_bytes());
                Some((first, last))
            }
            None => Some((first, last)),
        };
    }
    let (f, l) = current?;
    hasher.update(&f.to_le_bytes());
    hasher.update(&l.to_le_bytes());
    let digest = hasher.finalize();
    let mut runs = [0u8; 8];
    runs.copy_from_slice(&digest.as_bytes()[..8]);
    Some(PastGap {
        highest,
        runs: u64::from_le_bytes(runs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_split_or_whole_the_same_runs_give_the_same_summary() {
        let whole = past_gap([(32, 54), (61, 63)]);
        let split = past_gap([(32, 34), (35, 35), (36, 54), (61, 62), (63, 63)]);
        assert_eq!(whole, split);
        assert_eq!(whole.unwrap().highest, 63);
        assert_ne!(whole, past_gap([(32, 54), (60, 63)]));
        assert_ne!(whole, past_gap([(32, 53), (61, 63)]));
        assert_eq!(past_gap([]), None);
    }
}
