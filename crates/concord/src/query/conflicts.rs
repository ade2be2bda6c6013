//! The conflict log: writes this device overrode while applying concurrent
//! changes (DESIGN §5), kept so that a user can see what was lost.

use uuid::Uuid;

use crate::error::Result;
use crate::sync::txn::Library;

/// One overridden write: on `field` of `record` (a `model`), the value `kept`
/// won over `discarded`. `at` is when this device recorded it (wall clock, ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRecord {
    pub model: String,
    pub record: Uuid,
    pub field: String,
    pub kept: String,
    pub discarded: String,
    pub at: u64,
}

/// The `limit` newest recorded conflicts, newest first (by `at`, then by the
/// order they were recorded), for showing to the user.
pub fn conflicts(lib: &Library, limit: usize) -> Result<Vec<ConflictRecord>> {
    lib.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT model, record, field, kept, discarded, at FROM conflicts \
             ORDER BY at DESC, id DESC LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], |r| {
            Ok(ConflictRecord {
                model: r.get(0)?,
                record: r.get(1)?,
                field: r.get(2)?,
                kept: r.get(3)?,
                discarded: r.get(4)?,
                at: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    })
}

/// How many conflicts are recorded, for status displays.
pub fn conflict_count(lib: &Library) -> Result<u64> {
    lib.read(|c| {
        Ok(c.prepare_cached("SELECT COUNT(*) FROM conflicts")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    })
}
