//! What each peer acknowledged holding, and when: the input to the pruning
//! horizon.

use rusqlite::params;
use uuid::Uuid;

use super::SyncLog;
use crate::error::{Error, Result};
use crate::sync::version_vector::VersionVector;

impl SyncLog {
    /// Record what a peer acknowledged and when.
    pub fn record_ack(&mut self, device: Uuid, vv: &VersionVector, at_ms: u64) -> Result<()> {
        let bytes = postcard::to_allocvec(vv).map_err(|e| Error::Other(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO peer_acks (device, vv, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device) DO UPDATE SET vv = excluded.vv, at = excluded.at",
            )?
            .execute(params![device, bytes, at_ms as i64])?;
        Ok(())
    }

    /// Every peer's last acknowledgement: `(device, vv, at_ms)`.
    pub fn acks(&self) -> Result<Vec<(Uuid, VersionVector, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device, vv, at FROM peer_acks")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Uuid>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (d, b, at) = row?;
            let vv: VersionVector = postcard::from_bytes(&b).unwrap_or_default();
            out.push((d, vv, at as u64));
        }
        Ok(out)
    }
}
