//! Conversions of data that older schema versions stored in shapes SQL alone
//! cannot migrate: the per-entry log of `sync.db` before v4, and the outbox
//! tables of `library.db` before v4. The versioned SQL steps are in
//! [`super::schema`]; these run when a library is opened, after them, and do
//! nothing once the old data is gone.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sync::segment::{self, Run};

/// The `library.db` outbox tables of schema v3 and earlier, emptied once their
/// entries are in the log.
pub const LEGACY_OUTBOX_TABLES: &[&str] = &["outbox", "outbox_batches"];

/// Convert a log written before segments (one row per entry, table `log`,
/// `sync.db` schema v3 and earlier) into one-entry segments that keep every
/// entry's position, library sequence and epoch, then drop the old table.
pub fn convert_v3_log(conn: &mut Connection) -> Result<()> {
    let legacy = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !legacy {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut read = tx.prepare(
            "SELECT origin, origin_seq, hlc, lib_seq, epoch, model, record, payload
             FROM log ORDER BY id",
        )?;
        let mut ins = tx.prepare(
            "INSERT INTO segments (origin, first_seq, last_seq, lib_seq, epoch, entries)
             VALUES (?1, ?2, ?2, ?3, ?4, ?5)",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let origin: Uuid = r.get(0)?;
            let seq: i64 = r.get(1)?;
            let hlc: i64 = r.get(2)?;
            let lib_seq: Option<i64> = r.get(3)?;
            let epoch: Option<i64> = r.get(4)?;
            let model: String = r.get(5)?;
            let record: Uuid = r.get(6)?;
            let payload: Vec<u8> = r.get(7)?;
            let mut blob = Vec::with_capacity(payload.len() + 48);
            segment::encode_raw(&mut blob, hlc as u64, &model, &record, &payload)?;
            ins.execute(params![origin, seq, lib_seq, epoch, blob])?;
        }
    }
    tx.execute_batch("DROP TABLE log;")?;
    tx.commit()?;
    Ok(())
}

/// A local entry as the outbox kept it before schema v4 (tables `outbox` and
/// `outbox_batches`).
#[derive(serde::Serialize, serde::Deserialize)]
struct LegacyOutboxEntry {
    origin: Uuid,
    origin_seq: u64,
    hlc: u64,
    model: String,
    record: Uuid,
    kind: i64,
    payload: Vec<u8>,
}

/// Entries an older version left in [`LEGACY_OUTBOX_TABLES`], as one-entry runs
/// in `(origin, origin_seq)` order, so that they still reach the log. The caller
/// empties the tables in the transaction that records them as logged.
pub fn legacy_outbox_runs(lib: &Connection) -> Result<Vec<Run>> {
    let mut rows: Vec<LegacyOutboxEntry> = {
        let mut stmt = lib.prepare_cached(
            "SELECT origin, origin_seq, hlc, model, record, kind, payload FROM outbox",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(LegacyOutboxEntry {
                origin: r.get(0)?,
                origin_seq: r.get::<_, i64>(1)? as u64,
                hlc: r.get::<_, i64>(2)? as u64,
                model: r.get(3)?,
                record: r.get(4)?,
                kind: r.get(5)?,
                payload: r.get(6)?,
            })
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    {
        let mut stmt = lib.prepare_cached("SELECT entries FROM outbox_batches ORDER BY id")?;
        let mut batches = stmt.query([])?;
        while let Some(b) = batches.next()? {
            let blob = b.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            let batch: Vec<LegacyOutboxEntry> = postcard::from_bytes(blob)
                .map_err(|e| Error::Other(format!("corrupt outbox batch: {e}")))?;
            rows.extend(batch);
        }
    }
    rows.sort_by_key(|e| (e.origin, e.origin_seq));
    let mut runs = Vec::with_capacity(rows.len());
    for e in rows {
        let mut blob = Vec::with_capacity(e.payload.len() + 48);
        segment::encode_raw(&mut blob, e.hlc, &e.model, &e.record, &e.payload)?;
        runs.push(Run {
            origin: e.origin,
            incarnation: 0,
            first_seq: e.origin_seq,
            last_seq: e.origin_seq,
            max_hlc: e.hlc,
            blob,
        });
    }
    Ok(runs)
}
