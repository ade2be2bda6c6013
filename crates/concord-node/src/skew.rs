//! How far this device's clock is from its peers' (DESIGN §2, §13). Peers
//! refuse entries stamped more than the drift bound ahead of their own clock,
//! and this device refuses theirs when its clock is that far behind; pairing
//! does not depend on the clocks (the inviter alone judges a ticket's expiry,
//! by its own clock). So a device with a wrong clock pairs, and is told
//! plainly — in `pair join` and `sync status` — that sync will refuse changes
//! until its clock is corrected.
//!
//! Peers tell their clock in pairing (`Challenge`) and presence (`Pong`); the
//! offset is measured on arrival (a round trip is noise next to the bound).

use std::collections::BTreeMap;
use std::sync::Mutex;

use concord::hlc::DEFAULT_MAX_CLOCK_DRIFT;
use concord::Uuid;

/// The last clock offset measured against each peer.
#[derive(Debug, Default)]
pub struct ClockSkew {
    /// Peer → (its name, this device's clock minus the peer's, in ms).
    offsets: Mutex<BTreeMap<Uuid, (String, i64)>>,
}

impl ClockSkew {
    /// `peer` said its clock read `their_ms` when ours read `our_ms`.
    pub fn record(&self, peer: Uuid, name: &str, our_ms: u64, their_ms: u64) {
        let offset = (our_ms as i128 - their_ms as i128).clamp(i64::MIN as i128, i64::MAX as i128);
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, (name.to_string(), offset as i64));
    }

    /// This device's clock minus `peer`'s, as last measured.
    pub fn offset(&self, peer: Uuid) -> Option<i64> {
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .map(|(_, o)| *o)
    }

    /// A plain warning when this device's clock is beyond the drift bound of
    /// any peer's, naming the worst one; `None` when every clock agrees.
    pub fn warning(&self) -> Option<String> {
        let offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        let (name, offset) = offsets.values().max_by_key(|(_, o)| o.unsigned_abs())?;
        warning_for(name, *offset)
    }
}

/// The warning for an offset of `offset_ms` against the peer `name`, if it
/// is beyond the drift bound.
pub fn warning_for(name: &str, offset_ms: i64) -> Option<String> {
    let limit = DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64;
    if offset_ms.unsigned_abs() <= limit {
        return None;
    }
    let by = human(offset_ms.unsigned_abs());
    let limit = human(limit);
    Some(if offset_ms > 0 {
        format!(
            "this device's clock is {by} ahead of {name}'s (sync allows {limit}): \
             {name} will refuse this device's changes until the clocks agree; \
             correct this device's clock if it is wrong"
        )
    } else {
        format!(
            "this device's clock is {by} behind {name}'s (sync allows {limit}): \
             this device will refuse {name}'s changes until the clocks agree; \
             correct this device's clock if it is wrong"
        )
    })
}

/// `3 h 5 min`, `7 min`, `42 s` (to the nearest minute from a minute up).
fn human(ms: u64) -> String {
    if ms < 60_000 {
        return format!("{} s", ms / 1000);
    }
    let minutes = ms.saturating_add(30_000) / 60_000;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}
