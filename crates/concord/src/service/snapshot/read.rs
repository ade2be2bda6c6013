//! The sending side of a snapshot: one chunk of this device's state per
//! request, resumable by cursor.

use rusqlite::Connection;
use uuid::Uuid;

use super::columns::{read_row, row_columns};
use crate::error::Result;
use crate::model::{registry, ModelInfo, ModelKind};
use crate::service::protocol::{Msg, SnapshotCursor, SnapshotTombstone, MAX_SNAPSHOT_ROWS};
use crate::sync::entry::{LogEntry, Op};
use crate::sync::log::VersionVector;
use crate::sync::txn::Library;
use crate::sync::BULK_MODEL;

/// One chunk of the state of `lib` from `cursor` on: the parts are each
/// model's rows in registry order, then the tombstones, then the bulk
/// operations.
pub fn chunk(lib: &Library, cursor: &SnapshotCursor) -> Result<Msg> {
    let models = registry();
    lib.read_with_log(|log, c| {
        let vv = log.version_vector()?;
        let part = cursor.part as usize;
        if part < models.len() {
            rows_chunk(c, models[part], cursor, vv)
        } else if part == models.len() {
            tombstones_chunk(c, cursor, vv)
        } else {
            bulk_chunk(c, part - models.len() - 1, cursor, vv)
        }
    })
}

/// A page of `model`'s rows after `cursor.after`.
fn rows_chunk(
    c: &Connection,
    model: &ModelInfo,
    cursor: &SnapshotCursor,
    vv: VersionVector,
) -> Result<Msg> {
    let mut cols = row_columns(model);
    cols.push(if model.kind == ModelKind::Membership {
        "present".into()
    } else {
        "1".into()
    });
    let sql = format!(
        "SELECT {} FROM {} WHERE uuid > ?1 ORDER BY uuid LIMIT {}",
        cols.join(", "),
        model.table,
        MAX_SNAPSHOT_ROWS
    );
    let after = cursor.after.unwrap_or_default();
    let mut stmt = c.prepare_cached(&sql)?;
    let present_col = 1 + 3 * model.fields.len();
    let mut rows = Vec::new();
    let mut q = stmt.query([after])?;
    while let Some(r) = q.next()? {
        let present: i64 = r.get(present_col)?;
        rows.push(read_row(model, r, present != 0)?);
    }
    let next = next_cursor(cursor, rows.len(), rows.last().map(|r| r.uuid));
    Ok(Msg::SnapshotChunk {
        rows,
        tombstones: Vec::new(),
        bulk: Vec::new(),
        next: Some(next),
        vv,
    })
}

/// A page of tombstones after `cursor.after`.
fn tombstones_chunk(c: &Connection, cursor: &SnapshotCursor, vv: VersionVector) -> Result<Msg> {
    let after = cursor.after.unwrap_or_default();
    let mut stmt = c.prepare_cached(&format!(
        "SELECT model, uuid, hlc, dev FROM tombstones WHERE uuid > ?1 ORDER BY uuid LIMIT {MAX_SNAPSHOT_ROWS}"
    ))?;
    let tombstones: Vec<SnapshotTombstone> = stmt
        .query_map([after], |r| {
            Ok(SnapshotTombstone {
                model: r.get(0)?,
                uuid: r.get(1)?,
                hlc: r.get::<_, i64>(2)? as u64,
                dev: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let next = next_cursor(cursor, tombstones.len(), tombstones.last().map(|t| t.uuid));
    Ok(Msg::SnapshotChunk {
        rows: Vec::new(),
        tombstones,
        bulk: Vec::new(),
        next: Some(next),
        vv,
    })
}

/// Bulk operations, one page per part (they are keyed by origin and sequence,
/// not by UUID; a page that shifts under a concurrent insert only repeats
/// rows, and rows newer than `vv` come through the log).
fn bulk_chunk(
    c: &Connection,
    page: usize,
    cursor: &SnapshotCursor,
    vv: VersionVector,
) -> Result<Msg> {
    let page = page as i64;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT origin, origin_seq, hlc, payload, incarnation FROM bulk_operations
         ORDER BY origin, incarnation, origin_seq LIMIT {MAX_SNAPSHOT_ROWS} OFFSET ?1"
    ))?;
    let raw: Vec<(Uuid, i64, i64, Vec<u8>, i64)> = stmt
        .query_map([page * MAX_SNAPSHOT_ROWS as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut bulk = Vec::with_capacity(raw.len());
    for (origin, seq, hlc, payload, incarnation) in raw {
        let op = Op::decode(&payload)?;
        let Op::Bulk(bulk_op) = &op else { continue };
        let record = bulk_op.location();
        bulk.push(LogEntry {
            origin,
            origin_seq: seq as u64,
            incarnation: incarnation as u64,
            hlc: hlc as u64,
            lib_seq: None,
            epoch: None,
            model: BULK_MODEL.to_string(),
            record,
            op,
            seal: None,
        });
    }
    let next = (bulk.len() == MAX_SNAPSHOT_ROWS).then(|| SnapshotCursor {
        part: cursor.part + 1,
        after: None,
    });
    Ok(Msg::SnapshotChunk {
        rows: Vec::new(),
        tombstones: Vec::new(),
        bulk,
        next,
        vv,
    })
}

/// Where the chunk after a page of `count` items keyed by UUID (the last is
/// `last`) starts: past `last` in the same part while pages come full, else
/// at the start of the next part.
fn next_cursor(cursor: &SnapshotCursor, count: usize, last: Option<Uuid>) -> SnapshotCursor {
    if count == MAX_SNAPSHOT_ROWS {
        SnapshotCursor {
            part: cursor.part,
            after: last,
        }
    } else {
        SnapshotCursor {
            part: cursor.part + 1,
            after: None,
        }
    }
}
