//! Snapshot backfill (DESIGN §8): the current state as rows with their field
//! clocks and tombstones, in resumable chunks, merged into the receiver by the
//! same rules as entries (per-field LWW, membership presence, final tombstones).

use rusqlite::{params_from_iter, OptionalExtension, Transaction};
use uuid::Uuid;

use super::protocol::{Msg, SnapshotCursor, SnapshotRow, SnapshotTombstone, MAX_SNAPSHOT_ROWS};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::model::{model_by_name, registry, ModelInfo, ModelKind, Value};
use crate::sync::apply::{is_tombstoned, Applier};
use crate::sync::txn::Library;

fn clocked(m: &ModelInfo, i: usize) -> bool {
    let f = &m.fields[i];
    m.kind == ModelKind::Record && !f.key && !f.owner
}

fn clock_cols(m: &ModelInfo) -> Vec<String> {
    (0..m.fields.len())
        .map(|i| {
            if clocked(m, i) {
                let n = m.fields[i].name;
                format!("COALESCE({n}__hlc, _hlc), COALESCE({n}__dev, _dev)")
            } else {
                "_hlc, _dev".into()
            }
        })
        .collect()
}

/// One chunk of the state of `lib` from `cursor` on.
pub fn chunk(lib: &Library, cursor: &SnapshotCursor) -> Result<Msg> {
    let models = registry();
    let vv = lib.with_log(|l| l.version_vector())?;
    lib.read(|c| {
        let part = cursor.part as usize;
        if part < models.len() {
            let m = models[part];
            let mut cols: Vec<String> = vec!["uuid".into()];
            cols.extend(m.fields.iter().map(|f| f.name.to_string()));
            cols.extend(clock_cols(m));
            cols.push(if m.kind == ModelKind::Membership {
                "present".into()
            } else {
                "1".into()
            });
            let sql = format!(
                "SELECT {} FROM {} WHERE uuid > ?1 ORDER BY uuid LIMIT {}",
                cols.join(", "),
                m.table,
                MAX_SNAPSHOT_ROWS
            );
            let after = cursor.after.unwrap_or_default();
            let mut stmt = c.prepare_cached(&sql)?;
            let n = m.fields.len();
            let mut rows = Vec::new();
            let mut q = stmt.query([after])?;
            while let Some(r) = q.next()? {
                let uuid: Uuid = r.get(0)?;
                let mut values = Vec::with_capacity(n);
                for (i, f) in m.fields.iter().enumerate() {
                    values.push(Value::from_sql(f.kind, r.get_ref(1 + i)?)?);
                }
                let mut clocks = Vec::with_capacity(n);
                for i in 0..n {
                    clocks.push((r.get::<_, i64>(1 + n + 2 * i)? as u64, r.get::<_, Uuid>(2 + n + 2 * i)?));
                }
                let present: i64 = r.get(1 + 3 * n)?;
                rows.push(SnapshotRow {
                    model: m.name.to_string(),
                    uuid,
                    values,
                    clocks,
                    present: present != 0,
                });
            }
            let next = if rows.len() == MAX_SNAPSHOT_ROWS {
                SnapshotCursor {
                    part: cursor.part,
                    after: rows.last().map(|r| r.uuid),
                }
            } else {
                SnapshotCursor {
                    part: cursor.part + 1,
                    after: None,
                }
            };
            Ok(Msg::SnapshotChunk {
                rows,
                tombstones: Vec::new(),
                next: Some(next),
                vv,
            })
        } else if part == models.len() {
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
            let next = (tombstones.len() == MAX_SNAPSHOT_ROWS).then(|| SnapshotCursor {
                part: cursor.part,
                after: tombstones.last().map(|t| t.uuid),
            });
            Ok(Msg::SnapshotChunk {
                rows: Vec::new(),
                tombstones,
                next,
                vv,
            })
        } else {
            Err(Error::Invalid(format!("snapshot part {part} does not exist")))
        }
    })
}

/// Merge a chunk into `lib`. Untrusted input: every row is checked against its model.
pub fn apply(
    lib: &Library,
    rows: Vec<SnapshotRow>,
    tombstones: Vec<SnapshotTombstone>,
) -> Result<()> {
    let mut top = 0u64;
    lib.with_lib_tx(|tx| {
        let applier = Applier {
            tx,
            now_ms: lib.hlc().now_ms(),
        };
        for t in &tombstones {
            let m = model_by_name(&t.model)
                .ok_or_else(|| Error::Malformed(format!("unknown model {}", t.model)))?;
            top = top.max(t.hlc);
            if !is_tombstoned(tx, t.uuid)? {
                let stamp = Hlc::new(t.hlc, t.dev);
                applier.tombstone(m, t.uuid, stamp)?;
                applier.cascade(m, t.uuid, stamp)?;
            }
        }
        for row in &rows {
            let m = model_by_name(&row.model)
                .ok_or_else(|| Error::Malformed(format!("unknown model {}", row.model)))?;
            check_row(m, row)?;
            top = top.max(row.clocks.iter().map(|c| c.0).max().unwrap_or(0));
            merge_row(&applier, tx, m, row)?;
        }
        Ok(())
    })?;
    lib.hlc().observe_floor(top);
    Ok(())
}

fn check_row(m: &ModelInfo, row: &SnapshotRow) -> Result<()> {
    if row.values.len() != m.fields.len() || row.clocks.len() != m.fields.len() {
        return Err(Error::Malformed(format!(
            "snapshot row of {} has the wrong arity",
            m.name
        )));
    }
    for (f, v) in m.fields.iter().zip(&row.values) {
        let ok = match v {
            Value::Null => f.nullable,
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
                m.name, f.name
            )));
        }
    }
    Ok(())
}

fn merge_row(
    applier: &Applier<'_, '_>,
    tx: &Transaction<'_>,
    m: &'static ModelInfo,
    row: &SnapshotRow,
) -> Result<()> {
    if is_tombstoned(tx, row.uuid)? {
        return Ok(());
    }
    for (i, f) in m.fields.iter().enumerate() {
        if let (true, Some(_), Value::Uuid(target)) = (f.key, f.references, &row.values[i]) {
            if is_tombstoned(tx, *target)? {
                let (t, d) = row.clocks[i];
                applier.tombstone(m, row.uuid, Hlc::new(t, d))?;
                applier.cascade(m, row.uuid, Hlc::new(t, d))?;
                return Ok(());
            }
        }
    }
    let n = m.fields.len();
    let mut cols: Vec<String> = clock_cols(m);
    if m.kind == ModelKind::Membership {
        cols.push("present".into());
    } else {
        cols.push("1".into());
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE uuid = ?1",
        cols.join(", "),
        m.table
    );
    let current: Option<(Vec<Hlc>, bool)> = tx
        .prepare_cached(&sql)?
        .query_row([row.uuid], |r| {
            let mut clocks = Vec::with_capacity(n);
            for i in 0..n {
                clocks.push(Hlc::new(r.get::<_, i64>(2 * i)? as u64, r.get(2 * i + 1)?));
            }
            Ok((clocks, r.get::<_, i64>(2 * n)? != 0))
        })
        .optional()?;
    let incoming: Vec<Hlc> = row.clocks.iter().map(|(t, d)| Hlc::new(*t, *d)).collect();
    let row_clock = incoming
        .iter()
        .enumerate()
        .find(|(i, _)| !clocked(m, *i))
        .map(|(_, c)| *c)
        .or_else(|| incoming.iter().min().copied())
        .unwrap_or(Hlc::new(0, Uuid::nil()));
    match (current, m.kind) {
        (None, _) => {
            let mut names: Vec<String> = vec!["uuid".into()];
            let mut vals: Vec<Value> = vec![Value::Uuid(row.uuid)];
            for (i, f) in m.fields.iter().enumerate() {
                names.push(f.name.into());
                vals.push(row.values[i].clone());
                if clocked(m, i) {
                    names.push(format!("{}__hlc", f.name));
                    names.push(format!("{}__dev", f.name));
                    vals.push(Value::Int(incoming[i].time as i64));
                    vals.push(Value::Uuid(incoming[i].device));
                }
            }
            if m.kind == ModelKind::Membership {
                names.push("present".into());
                vals.push(Value::Int(row.present as i64));
            }
            names.push("_hlc".into());
            names.push("_dev".into());
            vals.push(Value::Int(row_clock.time as i64));
            vals.push(Value::Uuid(row_clock.device));
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                m.table,
                names.join(", "),
                vec!["?"; names.len()].join(", ")
            );
            tx.prepare_cached(&sql)?
                .execute(params_from_iter(vals.iter()))?;
        }
        (Some((clocks, present)), ModelKind::Membership) => {
            let cur = (
                clocks.first().map_or(0, |c| c.time),
                present,
                clocks.first().map_or(Uuid::nil(), |c| c.device),
            );
            let inc = (row_clock.time, row.present, row_clock.device);
            if inc > cur {
                let sql = format!(
                    "UPDATE {} SET present = ?1, _hlc = ?2, _dev = ?3 WHERE uuid = ?4",
                    m.table
                );
                tx.prepare_cached(&sql)?.execute(rusqlite::params![
                    row.present as i64,
                    row_clock.time as i64,
                    row_clock.device,
                    row.uuid
                ])?;
            }
        }
        (Some((clocks, _)), ModelKind::Record) => {
            let mut sets = Vec::new();
            let mut vals: Vec<Value> = Vec::new();
            for i in 0..n {
                if clocked(m, i) && incoming[i] > clocks[i] {
                    let f = m.fields[i].name;
                    sets.push(format!("{f} = ?, {f}__hlc = ?, {f}__dev = ?"));
                    vals.push(row.values[i].clone());
                    vals.push(Value::Int(incoming[i].time as i64));
                    vals.push(Value::Uuid(incoming[i].device));
                }
            }
            if !sets.is_empty() {
                vals.push(Value::Uuid(row.uuid));
                let sql = format!("UPDATE {} SET {} WHERE uuid = ?", m.table, sets.join(", "));
                tx.prepare_cached(&sql)?
                    .execute(params_from_iter(vals.iter()))?;
            }
        }
    }
    Ok(())
}
