//! Reading what the log holds past a gap in a replica (`crate::sync::gaps`):
//! the segments above each replica's vector position.

use uuid::Uuid;

use super::SyncLog;
use crate::error::Result;
use crate::sync::gaps::{past_gap, PastGaps};

impl SyncLog {
    /// Per replica, what this log holds past its version-vector position (see
    /// `crate::sync::gaps`); empty when every replica is held contiguously.
    /// Costs one indexed look-up per replica with a gap, none per entry.
    pub fn past_gaps(&self) -> Result<PastGaps> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.origin, o.contiguous, s.first_seq, s.last_seq
             FROM origins o JOIN segments s ON s.origin = o.origin AND s.last_seq > o.contiguous
             WHERE o.max_seq > o.contiguous
             ORDER BY o.origin, s.last_seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Uuid>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })?;
        let mut runs: Vec<(Uuid, u64, u64)> = Vec::new();
        for row in rows {
            let (replica, contiguous, first, last) = row?;
            runs.push((replica, first.max(contiguous + 1), last));
        }
        let mut out = PastGaps::new();
        for chunk in runs.chunk_by(|a, b| a.0 == b.0) {
            if let Some(gap) = past_gap(chunk.iter().map(|(_, f, l)| (*f, *l))) {
                out.insert(chunk[0].0, gap);
            }
        }
        Ok(out)
    }
}
