//! Retention of the conflict log: like the sync log, it is bounded. A peer
//! (or a long life of concurrent edits) must not grow `conflicts` without
//! end; the user needs the recent ones. Kept: the newest
//! `ConflictRetention::max_rows` rows, none older than `max_age_ms`.

use rusqlite::Connection;

use crate::error::Result;

/// How much of the conflict log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictRetention {
    /// Rows kept at most (the newest).
    pub max_rows: u64,
    /// Rows older than this (by when they were recorded) are dropped.
    pub max_age_ms: u64,
}

impl Default for ConflictRetention {
    /// 10,000 rows and 30 days (the sync log's retention).
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_age_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// Drop what the retention does not keep; `by_age` also drops old rows (a
/// scan, so callers do it now and then; the count is checked by key on
/// every write). Returns the rows dropped.
pub fn prune_conflicts(
    c: &Connection,
    keep: ConflictRetention,
    now_ms: u64,
    by_age: bool,
) -> Result<usize> {
    let keep_rows = i64::try_from(keep.max_rows).unwrap_or(i64::MAX);
    let mut dropped = c
        .prepare_cached("DELETE FROM conflicts WHERE id <= (SELECT MAX(id) FROM conflicts) - ?1")?
        .execute([keep_rows])?;
    if by_age {
        let cutoff = now_ms.saturating_sub(keep.max_age_ms);
        let cutoff = i64::try_from(cutoff).unwrap_or(i64::MAX);
        dropped += c
            .prepare_cached("DELETE FROM conflicts WHERE at < ?1")?
            .execute([cutoff])?;
    }
    Ok(dropped)
}
