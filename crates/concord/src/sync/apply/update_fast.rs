//! The fast path for updates (performance; added for B2 in PERFORMANCE.md):
//! a plain sequential overwrite applied with ONE statement, leaving every other
//! case to [`super::Applier::apply`].

use super::{clocked, find, Applier};
use crate::error::Result;
use crate::model::{ModelInfo, ModelKind, Ownership, Value};
use crate::sync::entry::{FieldWrite, LogEntry, Op};

impl Applier<'_, '_> {
    /// Apply an `Update` entry with ONE statement when it is a plain sequential
    /// overwrite, or return `false` having written nothing, in which case the
    /// caller must use [`Applier::apply`].
    ///
    /// It applies only when [`Applier::apply`] would take this exact route:
    /// no tombstone for the record, a stored row, every key/owner field carried
    /// equal to the stored one, and for every mutable field written the stored
    /// effective clock is older than the entry's stamp and has the time the
    /// author saw (`base`). `merge_fields` then writes every field with the
    /// entry's stamp and records no conflict (`w.base == cur.time` means "not
    /// concurrent"), which is what the UPDATE below does. Everything else
    /// (inserts, deletes, memberships, models with key references, which may
    /// cascade, entries from a non-owner, concurrent or losing writes) is left to
    /// the general path. The UPDATE's WHERE clause re-checks each condition, so a
    /// `false` costs one index probe.
    pub fn apply_update_fast(&self, e: &LogEntry, m: &'static ModelInfo) -> Result<bool> {
        let Op::Update(writes) = &e.op else {
            return Ok(false);
        };
        // `Device` rows follow the membership rules (`device.rs`).
        if m.kind != ModelKind::Record
            || m.fields.iter().any(|f| f.key && f.references.is_some())
            || m.name == "device"
        {
            return Ok(false);
        }
        if m.ownership == Ownership::DeviceOwned {
            let owner = m.owner_index().and_then(|i| find(writes, i));
            if owner.and_then(Value::as_uuid) != Some(e.origin) {
                return Ok(false);
            }
        }
        let mut mask = 0u64;
        for w in writes {
            if w.field >= 64 {
                return Ok(false);
            }
            mask |= 1 << w.field;
        }
        if !writes.iter().any(|w| clocked(m, w.field as usize)) {
            return Ok(false);
        }
        // Writes are in the entry's order; the cached SQL lists fields in model
        // order, so bind in model order too.
        let mut ordered: Vec<&FieldWrite> = writes.iter().collect();
        ordered.sort_by_key(|w| w.field);
        let sql = crate::store::cached_sql(m, "update_fast", mask, || {
            let (mut sets, mut conds) = (Vec::new(), vec!["uuid = ?".to_string()]);
            for w in &ordered {
                let i = w.field as usize;
                let f = m.fields[i].name;
                if clocked(m, i) {
                    // Field clocks are always written as a pair (see merge_fields).
                    sets.push(format!("{f} = ?, {f}__hlc = ?, {f}__dev = ?"));
                    conds.push(format!(
                        "COALESCE({f}__hlc, _hlc) = ? AND \
                         (COALESCE({f}__hlc, _hlc), COALESCE({f}__dev, _dev)) < (?, ?)"
                    ));
                } else {
                    conds.push(format!("{f} = ?"));
                }
            }
            conds.push("NOT EXISTS (SELECT 1 FROM tombstones WHERE uuid = ?)".into());
            format!(
                "UPDATE {} SET {} WHERE {}",
                m.table,
                sets.join(", "),
                conds.join(" AND ")
            )
        });
        let stamp = e.stamp();
        let mut stmt = self.tx.prepare_cached(sql)?;
        let mut i = 0;
        let mut bind = |v: &dyn rusqlite::ToSql| -> rusqlite::Result<()> {
            i += 1;
            stmt.raw_bind_parameter(i, v)
        };
        for w in &ordered {
            if clocked(m, w.field as usize) {
                bind(&w.value)?;
                bind(&(stamp.time as i64))?;
                bind(&stamp.device)?;
            }
        }
        bind(&e.record)?;
        for w in &ordered {
            if clocked(m, w.field as usize) {
                bind(&(w.base as i64))?;
                bind(&(stamp.time as i64))?;
                bind(&stamp.device)?;
            } else {
                bind(&w.value)?;
            }
        }
        bind(&e.record)?;
        Ok(stmt.raw_execute()? == 1)
    }
}
