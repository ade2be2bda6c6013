//! The receiving side of a snapshot: every row, tombstone and bulk operation
//! of a chunk checked against its model and merged by clocks, as entries are.

use rusqlite::{params_from_iter, OptionalExtension, Transaction};
use uuid::Uuid;

use super::columns::{clock_cols, clocked};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::model::{model_by_name, values_from_row, ModelInfo, ModelKind, Value};
use crate::service::protocol::{SnapshotRow, SnapshotTombstone};
use crate::store::sql::insert_sql;
use crate::sync::apply::{is_tombstoned, wins, Applier};
use crate::sync::entry::{self, LogEntry};
use crate::sync::txn::Library;
use crate::sync::BULK_MODEL;

/// Merge a chunk into `lib`. Untrusted input: every row is checked against its model.
pub fn apply(
    lib: &Library,
    rows: Vec<SnapshotRow>,
    tombstones: Vec<SnapshotTombstone>,
    bulk: Vec<LogEntry>,
) -> Result<()> {
    for e in &bulk {
        if e.model != BULK_MODEL || e.origin_seq == 0 || e.origin_seq > i64::MAX as u64 {
            return Err(Error::Malformed(format!(
                "snapshot bulk entry {}:{} is not a bulk operation",
                e.origin, e.origin_seq
            )));
        }
        entry::validate(e)?;
        lib.hlc().check(&e.stamp())?;
    }
    // A clock too far ahead is refused here as on the log path (DESIGN §2):
    // absorbing it would drag this device's HLC along.
    let top = tombstones
        .iter()
        .map(|t| t.hlc)
        .chain(rows.iter().flat_map(|r| r.clocks.iter().map(|c| c.0)))
        .max()
        .unwrap_or(0);
    if let Some(t) = tombstones.iter().find(|t| t.hlc == top) {
        lib.hlc().check(&Hlc::new(top, t.dev))?;
    } else if let Some(c) = rows.iter().flat_map(|r| &r.clocks).find(|c| c.0 == top) {
        lib.hlc().check(&Hlc::new(c.0, c.1))?;
    }
    // Write-ahead: the floor is durable before any row carrying it is.
    let floor = top.max(bulk.iter().map(|e| e.hlc).max().unwrap_or(0));
    lib.with_log(|l| l.raise_hlc_floor(floor))?;
    lib.with_lib_tx(|tx| {
        let applier = Applier {
            tx,
            now_ms: lib.hlc().now_ms(),
        };
        for t in &tombstones {
            let model = model_by_name(&t.model)
                .ok_or_else(|| Error::Malformed(format!("unknown model {}", t.model)))?;
            if !is_tombstoned(tx, t.uuid)? {
                let stamp = Hlc::new(t.hlc, t.dev);
                applier.tombstone(model, t.uuid, stamp)?;
                applier.cascade(model, t.uuid, stamp)?;
            }
        }
        for e in &bulk {
            applier.apply(e, &entry::BULK_INFO)?;
        }
        // The statements of each model are built once per chunk, not per row.
        let mut sqls: Vec<(&'static str, MergeSql)> = Vec::new();
        for row in &rows {
            let model = model_by_name(&row.model)
                .ok_or_else(|| Error::Malformed(format!("unknown model {}", row.model)))?;
            check_row(model, row)?;
            let i = match sqls.iter().position(|(name, _)| *name == model.name) {
                Some(i) => i,
                None => {
                    sqls.push((model.name, MergeSql::new(model)));
                    sqls.len() - 1
                }
            };
            merge_row(&applier, tx, model, row, &sqls[i].1)?;
        }
        Ok(())
    })?;
    lib.hlc().observe_floor(floor);
    Ok(())
}

/// A row fits its model: one value and clock per field, each of the field's kind.
fn check_row(model: &ModelInfo, row: &SnapshotRow) -> Result<()> {
    if row.values.len() != model.fields.len() || row.clocks.len() != model.fields.len() {
        return Err(Error::Malformed(format!(
            "snapshot row of {} has the wrong arity",
            model.name
        )));
    }
    for (i, (f, v)) in model.fields.iter().zip(&row.values).enumerate() {
        let ok = match v {
            // A partial row (an update that arrived before its insert, or a
            // bulk-written file entry its owner changed) holds no value yet in
            // the fields nobody wrote: their clock is the bottom one.
            Value::Null => f.nullable || (clocked(model, i) && row.clocks[i] == (0, Uuid::nil())),
            Value::Int(_) => matches!(
                f.kind,
                crate::model::FieldKind::Int | crate::model::FieldKind::Bool
            ),
            Value::Text(s) => {
                f.kind == crate::model::FieldKind::Text
                    && s.len() <= crate::sync::entry::MAX_TEXT_BYTES
            }
            Value::Uuid(_) => f.kind == crate::model::FieldKind::Uuid,
        };
        if !ok {
            return Err(Error::Malformed(format!(
                "snapshot row has a bad {}.{}",
                model.name, f.name
            )));
        }
    }
    Ok(())
}

/// The statements that look up and insert a snapshot row of one model.
struct MergeSql {
    select: String,
    insert: String,
}

impl MergeSql {
    /// Both statements for `model`, built once per chunk.
    fn new(model: &ModelInfo) -> MergeSql {
        let mut cols: Vec<String> = clock_cols(model);
        if model.kind == ModelKind::Membership {
            cols.push("present".into());
        } else {
            cols.push("1".into());
        }
        cols.extend(model.fields.iter().map(|f| f.name.to_string()));
        let select = format!(
            "SELECT {} FROM {} WHERE uuid = ?1",
            cols.join(", "),
            model.table
        );
        let mut names: Vec<String> = vec!["uuid".into()];
        for (i, f) in model.fields.iter().enumerate() {
            names.push(f.name.into());
            if clocked(model, i) {
                names.push(format!("{}__hlc", f.name));
                names.push(format!("{}__dev", f.name));
            }
        }
        if model.kind == ModelKind::Membership {
            names.push("present".into());
        }
        names.push("_hlc".into());
        names.push("_dev".into());
        let insert = insert_sql(model.table, &names);
        MergeSql { select, insert }
    }
}

/// Merge one checked row: nothing for a tombstoned row, a tombstone when a
/// key it references is tombstoned, else insert or merge by clocks.
fn merge_row(
    applier: &Applier<'_, '_>,
    tx: &Transaction<'_>,
    model: &'static ModelInfo,
    row: &SnapshotRow,
    sql: &MergeSql,
) -> Result<()> {
    if is_tombstoned(tx, row.uuid)? {
        return Ok(());
    }
    for (i, f) in model.fields.iter().enumerate() {
        if let (true, Some(_), Value::Uuid(target)) = (f.key, f.references, &row.values[i]) {
            if is_tombstoned(tx, *target)? {
                let (t, d) = row.clocks[i];
                applier.tombstone(model, row.uuid, Hlc::new(t, d))?;
                applier.cascade(model, row.uuid, Hlc::new(t, d))?;
                return Ok(());
            }
        }
    }
    let n = model.fields.len();
    let current: Option<Current> = tx
        .prepare_cached(&sql.select)?
        .query_row([row.uuid], |r| {
            let mut clocks = Vec::with_capacity(n);
            for i in 0..n {
                clocks.push(Hlc::new(r.get::<_, i64>(2 * i)? as u64, r.get(2 * i + 1)?));
            }
            Ok(Current {
                clocks,
                present: r.get::<_, i64>(2 * n)? != 0,
                values: values_from_row(model.fields, r, 2 * n + 1)?,
            })
        })
        .optional()?;
    let incoming: Vec<Hlc> = row.clocks.iter().map(|(t, d)| Hlc::new(*t, *d)).collect();
    let row_clock = incoming
        .iter()
        .enumerate()
        .find(|(i, _)| !clocked(model, *i))
        .map(|(_, c)| *c)
        .or_else(|| incoming.iter().min().copied())
        .unwrap_or(Hlc::new(0, Uuid::nil()));
    match (current, model.kind) {
        (None, _) => insert_row(tx, model, row, &incoming, row_clock, sql),
        (Some(cur), ModelKind::Membership) => {
            merge_presence(tx, model, row, &cur.clocks, cur.present, row_clock)
        }
        (Some(cur), ModelKind::Record) => merge_fields(tx, model, row, &cur, &incoming),
    }
}

/// A row as this device holds it: each field's clock, presence (1 for a
/// record) and each field's value.
struct Current {
    clocks: Vec<Hlc>,
    present: bool,
    values: Vec<Value>,
}

/// A row this device does not hold yet: insert it with its clocks.
fn insert_row(
    tx: &Transaction<'_>,
    model: &ModelInfo,
    row: &SnapshotRow,
    incoming: &[Hlc],
    row_clock: Hlc,
    sql: &MergeSql,
) -> Result<()> {
    // Values in the column order of `sql.insert`.
    let mut vals: Vec<Value> = Vec::with_capacity(3 * model.fields.len() + 4);
    vals.push(Value::Uuid(row.uuid));
    for (i, v) in row.values.iter().enumerate() {
        vals.push(v.clone());
        if clocked(model, i) {
            vals.push(Value::Int(incoming[i].time as i64));
            vals.push(Value::Uuid(incoming[i].device));
        }
    }
    if model.kind == ModelKind::Membership {
        vals.push(Value::Int(row.present as i64));
    }
    vals.push(Value::Int(row_clock.time as i64));
    vals.push(Value::Uuid(row_clock.device));
    tx.prepare_cached(&sql.insert)?
        .execute(params_from_iter(vals.iter()))?;
    Ok(())
}

/// A membership this device holds: the newer (clock, presence, device) wins.
fn merge_presence(
    tx: &Transaction<'_>,
    model: &ModelInfo,
    row: &SnapshotRow,
    clocks: &[Hlc],
    present: bool,
    row_clock: Hlc,
) -> Result<()> {
    let cur = (
        clocks.first().map_or(0, |c| c.time),
        present,
        clocks.first().map_or(Uuid::nil(), |c| c.device),
    );
    let inc = (row_clock.time, row.present, row_clock.device);
    if inc > cur {
        let sql = format!(
            "UPDATE {} SET present = ?1, _hlc = ?2, _dev = ?3 WHERE uuid = ?4",
            model.table
        );
        tx.prepare_cached(&sql)?.execute(rusqlite::params![
            row.present as i64,
            row_clock.time as i64,
            row_clock.device,
            row.uuid
        ])?;
    }
    Ok(())
}

/// A record this device holds: each field whose incoming clock is newer wins
/// (at an exact tie, the greater value: `apply::wins`, as for entries).
fn merge_fields(
    tx: &Transaction<'_>,
    model: &ModelInfo,
    row: &SnapshotRow,
    cur: &Current,
    incoming: &[Hlc],
) -> Result<()> {
    let mut sets = Vec::new();
    let mut vals: Vec<Value> = Vec::new();
    for (i, clock) in incoming.iter().enumerate() {
        if clocked(model, i) && wins(*clock, &row.values[i], cur.clocks[i], &cur.values[i]) {
            let f = model.fields[i].name;
            sets.push(format!("{f} = ?, {f}__hlc = ?, {f}__dev = ?"));
            vals.push(row.values[i].clone());
            vals.push(Value::Int(clock.time as i64));
            vals.push(Value::Uuid(clock.device));
        }
    }
    if !sets.is_empty() {
        vals.push(Value::Uuid(row.uuid));
        let sql = format!(
            "UPDATE {} SET {} WHERE uuid = ?",
            model.table,
            sets.join(", ")
        );
        tx.prepare_cached(&sql)?
            .execute(params_from_iter(vals.iter()))?;
    }
    Ok(())
}
