//! Bulk operations this device has seen (DESIGN §7) and the device-local state
//! of what was done about them (the node's job runner moves it on).

use uuid::Uuid;

use crate::error::Result;
use crate::sync::entry::{BulkOperation, Op};
use crate::sync::txn::Library;

/// A bulk operation this device has seen (DESIGN §7), its own or a peer's, and
/// the device-local state of what was done about it.
#[derive(Debug, Clone)]
pub struct BulkRecord {
    pub origin: Uuid,
    pub origin_seq: u64,
    pub hlc: u64,
    /// `None` when the stored payload does not decode.
    pub op: Option<BulkOperation>,
    /// `seen` when recorded; the node's job runner moves it on.
    pub state: String,
}

/// Every recorded bulk operation, oldest first (by HLC).
pub fn bulk_operations(lib: &Library) -> Result<Vec<BulkRecord>> {
    lib.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT origin, origin_seq, hlc, payload, state FROM bulk_operations \
             ORDER BY hlc, origin, origin_seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let payload: Vec<u8> = r.get(3)?;
            out.push(BulkRecord {
                origin: r.get(0)?,
                origin_seq: r.get::<_, i64>(1)? as u64,
                hlc: r.get::<_, i64>(2)? as u64,
                op: match Op::decode(&payload) {
                    Ok(Op::Bulk(b)) => Some(b),
                    _ => None,
                },
                state: r.get(4)?,
            });
        }
        Ok(out)
    })
}

/// Record what this device did about a bulk operation (`state`, e.g. indexing
/// or done). Device-local: not synced and not logged, so it bypasses
/// [`Library::commit`] but still writes in a library transaction.
pub fn set_bulk_operation_state(
    lib: &Library,
    origin: Uuid,
    origin_seq: u64,
    state: &str,
) -> Result<()> {
    lib.with_tx(|ctx| {
        ctx.sql()
            .prepare_cached(
                "UPDATE bulk_operations SET state = ?1 WHERE origin = ?2 AND origin_seq = ?3",
            )?
            .execute(rusqlite::params![state, origin, origin_seq as i64])?;
        Ok(())
    })?;
    Ok(())
}
