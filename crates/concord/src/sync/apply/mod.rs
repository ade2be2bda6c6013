//! Applying one log entry to `library.db`: the merge rules of DESIGN §4.
//!
//! The same function applies local and remote entries, so a device's own state
//! is always exactly what any other device computes from the same entries:
//!
//! - **Fields**: last-writer-wins per field on `(hlc, device)`; at an exact
//!   tie between two different values the greater value wins ([`wins`]).
//! - **Tombstones**: a delete is final; any later or concurrent change to that
//!   record is refused and logged as a conflict.
//! - **Cascade**: key fields bind a record's life to the record they name; when
//!   that one is deleted (or already was when this one arrives) this one is
//!   tombstoned too, on every device, whatever the arrival order. Key fields are
//!   immutable, which is what makes this order-independent.
//! - **Memberships**: presence is last-writer-wins on `(hlc time, present, device)`,
//!   so an exact time tie between add and remove keeps the member. A membership's
//!   id is derived from its members; an entry that says otherwise is refused.
//! - **Ownership**: a device-owned record changes only by entries from its owner.
//! - **Membership** (`device.rs`): a device's own row fields are its own to
//!   write, any member may add or remove another, a removal is final and
//!   shuts out the removed device's later entries ([`Cutoffs`]).
//!
//! Applying is idempotent: an entry applied twice changes nothing the second time.

mod device;
mod retention;
mod update_fast;

pub use device::{Cutoff, Cutoffs};
pub use retention::{prune_conflicts, ConflictRetention};

use rusqlite::{params_from_iter, OptionalExtension, Transaction};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::model::{
    derived_uuid, registry, values_from_row, Device, ModelInfo, ModelKind, Ownership, Syncable,
    Value,
};
use crate::store::sql::insert_sql;
use crate::sync::entry::{FieldWrite, LogEntry, Op};

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The entry changed the library.
    Applied,
    /// Nothing to do: a duplicate, or every field lost to a newer write.
    Unchanged,
    /// The entry was valid but refused by a merge rule (deleted record, deleted
    /// key reference, wrong owner); recorded in the conflict log.
    Refused(String),
}

const BOTTOM: Hlc = Hlc::new(0, Uuid::nil());

/// Whether a field write stamped `stamp` with `value` replaces the stored
/// `(cur, cur_value)`: the newer clock wins, and at an exact clock tie the
/// greater value (`Value`'s order). Why the tie rule: one stamp can carry two
/// different values when a device went back in time (a restored backup, a
/// power cut) and stamped new changes with clocks it had already given to
/// changes it lost; without it each device would keep whichever arrived
/// first, and they would never converge. Every merge path (entries,
/// snapshots, `Device` rows) uses this one rule.
pub(crate) fn wins(stamp: Hlc, value: &Value, cur: Hlc, cur_value: &Value) -> bool {
    (stamp, value) > (cur, cur_value)
}

/// A row as stored: synced values, row clock and per-field override clocks.
struct StoredRow {
    values: Vec<Value>,
    row_clock: Hlc,
    field_clocks: Vec<Option<Hlc>>,
    present: bool,
}

impl StoredRow {
    fn clock(&self, field: usize) -> Hlc {
        self.field_clocks
            .get(field)
            .copied()
            .flatten()
            .unwrap_or(self.row_clock)
    }
}

/// Whether field `i` of `m` has its own clock columns.
fn clocked(m: &ModelInfo, i: usize) -> bool {
    let f = &m.fields[i];
    m.kind == ModelKind::Record && !f.key && !f.owner
}

fn load_row(tx: &Transaction<'_>, m: &ModelInfo, uuid: Uuid) -> Result<Option<StoredRow>> {
    let mut cols: Vec<String> = m.fields.iter().map(|f| f.name.to_string()).collect();
    cols.push("_hlc".into());
    cols.push("_dev".into());
    let clocked_fields: Vec<usize> = (0..m.fields.len()).filter(|&i| clocked(m, i)).collect();
    for &i in &clocked_fields {
        cols.push(format!("{0}__hlc, {0}__dev", m.fields[i].name));
    }
    let membership = m.kind == ModelKind::Membership;
    if membership {
        cols.push("present".into());
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE uuid = ?1",
        cols.join(", "),
        m.table
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let n = m.fields.len();
    let row = stmt
        .query_row([uuid], |r| {
            let values = values_from_row(m.fields, r, 0)?;
            let row_clock = Hlc::new(r.get::<_, i64>(n)? as u64, r.get(n + 1)?);
            let mut field_clocks = vec![None; n];
            for (k, &i) in clocked_fields.iter().enumerate() {
                let t: Option<i64> = r.get(n + 2 + 2 * k)?;
                let d: Option<Uuid> = r.get(n + 3 + 2 * k)?;
                if let (Some(t), Some(d)) = (t, d) {
                    field_clocks[i] = Some(Hlc::new(t as u64, d));
                }
            }
            let present = if membership {
                r.get::<_, i64>(n + 2 + 2 * clocked_fields.len())? != 0
            } else {
                true
            };
            Ok(StoredRow {
                values,
                row_clock,
                field_clocks,
                present,
            })
        })
        .optional()?;
    Ok(row)
}

/// Is this record tombstoned?
pub fn is_tombstoned(tx: &Transaction<'_>, uuid: Uuid) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM tombstones WHERE uuid = ?1")?
        .query_row([uuid], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Apply context: the open `library.db` transaction and the local wall time
/// (for conflict timestamps).
pub struct Applier<'a, 'c> {
    pub tx: &'a Transaction<'c>,
    pub now_ms: u64,
}

impl Applier<'_, '_> {
    /// Apply one validated entry of model `m`.
    pub fn apply(&self, e: &LogEntry, m: &'static ModelInfo) -> Result<Outcome> {
        if let Op::Bulk(_) = &e.op {
            self.tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO bulk_operations (origin, origin_seq, hlc, payload, incarnation) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(rusqlite::params![e.origin, e.origin_seq as i64, e.hlc as i64, e.op.encode(), e.incarnation as i64])?;
            return Ok(Outcome::Applied);
        }
        if let Some(outcome) = self.screen(e, m)? {
            return Ok(outcome);
        }
        let stamp = e.stamp();
        let row = load_row(self.tx, m, e.record)?;
        if let Some(row) = &row {
            if let Some(outcome) = self.check_immutable(e, m, row)? {
                return Ok(outcome);
            }
        }
        if m.name == Device::INFO.name {
            return self.apply_device(e, m, row);
        }
        match (m.kind, &e.op) {
            (ModelKind::Membership, Op::Insert(_) | Op::Update(_) | Op::Delete(_)) => {
                let add = !matches!(e.op, Op::Delete(_));
                self.apply_presence(e, m, row, add)
            }
            (ModelKind::Record, Op::Delete(_)) => {
                if let Some(row) = &row {
                    self.record_delete_conflicts(e, m, row)?;
                }
                self.tombstone(m, e.record, stamp)?;
                self.cascade(m, e.record, stamp)?;
                Ok(Outcome::Applied)
            }
            (ModelKind::Record, Op::Insert(w) | Op::Update(w)) => match row {
                None => {
                    self.insert_row(m, e.record, w, stamp, matches!(e.op, Op::Insert(_)))?;
                    Ok(Outcome::Applied)
                }
                Some(row) => self.merge_fields(e, m, &row, w),
            },
            (_, Op::Bulk(_)) => Ok(Outcome::Unchanged),
        }
    }

    /// The checks an entry passes before its row is read: a membership's id is
    /// derived from its members, a device writes only its own records, deleted
    /// records stay deleted, and a record dies with the records its keys name.
    /// `Some` is the outcome when the entry goes no further.
    fn screen(&self, e: &LogEntry, m: &'static ModelInfo) -> Result<Option<Outcome>> {
        let writes = e.op.writes();
        let stamp = e.stamp();

        // A membership is named by its members. An entry giving its id other members
        // would make the members a device keeps depend on arrival order.
        if m.kind == ModelKind::Membership {
            let members: Option<Vec<Uuid>> = m
                .key_indices()
                .map(|i| find(writes, i).and_then(Value::as_uuid))
                .collect();
            if members.map(|k| derived_uuid(m.name, &k)) != Some(e.record) {
                return self
                    .refuse(
                        e,
                        m,
                        "*",
                        format!("{} {} is not the id of its members", m.name, e.record),
                    )
                    .map(Some);
            }
        }

        // Ownership of the entry itself: the owner field it carries must be its origin.
        if m.ownership == Ownership::DeviceOwned {
            let owner = m
                .owner_index()
                .and_then(|i| find(writes, i))
                .and_then(Value::as_uuid);
            if owner != Some(e.origin) {
                return self
                    .refuse(
                        e,
                        m,
                        "*",
                        format!(
                            "device {} may not write another device's {}",
                            e.origin, m.name
                        ),
                    )
                    .map(Some);
            }
        }

        if is_tombstoned(self.tx, e.record)? {
            if matches!(e.op, Op::Delete(_)) && m.kind == ModelKind::Record {
                return Ok(Some(Outcome::Unchanged));
            }
            return self
                .refuse(e, m, "*", format!("{} {} was deleted", m.name, e.record))
                .map(Some);
        }

        // Key references to deleted records: this record dies with them.
        for i in m.key_indices() {
            let f = &m.fields[i];
            if f.references.is_none() {
                continue;
            }
            if let Some(Value::Uuid(target)) = find(writes, i) {
                if is_tombstoned(self.tx, *target)? {
                    self.tombstone(m, e.record, stamp)?;
                    self.cascade(m, e.record, stamp)?;
                    return self
                        .refuse(
                            e,
                            m,
                            f.name,
                            format!("{} {} refers to deleted {}", m.name, e.record, target),
                        )
                        .map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Refuse an entry that would change `row`'s key or owner fields, which are
    /// immutable. `Some` is the outcome when it is refused.
    fn check_immutable(
        &self,
        e: &LogEntry,
        m: &'static ModelInfo,
        row: &StoredRow,
    ) -> Result<Option<Outcome>> {
        let writes = e.op.writes();
        // Key and owner fields are immutable.
        for i in m.key_indices() {
            if let Some(v) = find(writes, i) {
                if *v != row.values[i] {
                    return self
                        .refuse(
                            e,
                            m,
                            m.fields[i].name,
                            format!(
                                "{} {} cannot change its {}",
                                m.name, e.record, m.fields[i].name
                            ),
                        )
                        .map(Some);
                }
            }
        }
        Ok(None)
    }

    fn apply_presence(
        &self,
        e: &LogEntry,
        m: &ModelInfo,
        row: Option<StoredRow>,
        add: bool,
    ) -> Result<Outcome> {
        let stamp = e.stamp();
        match row {
            None => {
                let mut names: Vec<&str> = vec!["uuid"];
                let mut vals: Vec<Value> = vec![Value::Uuid(e.record)];
                for w in e.op.writes() {
                    names.push(m.fields[w.field as usize].name);
                    vals.push(w.value.clone());
                }
                names.extend(["present", "_hlc", "_dev"]);
                vals.extend([
                    Value::Int(add as i64),
                    Value::Int(stamp.time as i64),
                    Value::Uuid(stamp.device),
                ]);
                let sql = insert_sql(m.table, &names);
                self.tx
                    .prepare_cached(&sql)?
                    .execute(params_from_iter(vals.iter()))?;
                Ok(Outcome::Applied)
            }
            Some(row) => {
                let cur = (row.row_clock.time, row.present, row.row_clock.device);
                let inc = (stamp.time, add, stamp.device);
                if inc == cur {
                    return Ok(Outcome::Unchanged);
                }
                if inc > cur {
                    if row.present != add
                        && row.row_clock.device != e.origin
                        && row.row_clock != BOTTOM
                    {
                        self.conflict(
                            e,
                            m,
                            "present",
                            &Value::Int(add as i64),
                            &Value::Int(row.present as i64),
                            stamp.time,
                            row.row_clock.time,
                        )?;
                    }
                    let sql = format!(
                        "UPDATE {} SET present = ?1, _hlc = ?2, _dev = ?3 WHERE uuid = ?4",
                        m.table
                    );
                    self.tx.prepare_cached(&sql)?.execute(rusqlite::params![
                        add as i64,
                        stamp.time as i64,
                        stamp.device,
                        e.record
                    ])?;
                    Ok(Outcome::Applied)
                } else {
                    if row.present != add && row.row_clock.device != e.origin {
                        self.conflict(
                            e,
                            m,
                            "present",
                            &Value::Int(row.present as i64),
                            &Value::Int(add as i64),
                            row.row_clock.time,
                            stamp.time,
                        )?;
                    }
                    Ok(Outcome::Unchanged)
                }
            }
        }
    }

    /// A record's first arrival. An insert sets the row clock and leaves field
    /// clocks implicit; an update arriving before its insert makes a partial row
    /// whose unknown fields stay at the bottom clock.
    fn insert_row(
        &self,
        m: &ModelInfo,
        uuid: Uuid,
        writes: &[FieldWrite],
        stamp: Hlc,
        is_insert: bool,
    ) -> Result<()> {
        let mut names: Vec<String> = vec!["uuid".into()];
        let mut vals: Vec<Value> = vec![Value::Uuid(uuid)];
        for w in writes {
            let i = w.field as usize;
            names.push(m.fields[i].name.into());
            vals.push(w.value.clone());
            if !is_insert && clocked(m, i) {
                names.push(format!("{}__hlc", m.fields[i].name));
                names.push(format!("{}__dev", m.fields[i].name));
                vals.push(Value::Int(stamp.time as i64));
                vals.push(Value::Uuid(stamp.device));
            }
        }
        let row_clock = if is_insert { stamp } else { BOTTOM };
        names.push("_hlc".into());
        names.push("_dev".into());
        vals.push(Value::Int(row_clock.time as i64));
        vals.push(Value::Uuid(row_clock.device));
        let sql = insert_sql(m.table, &names);
        self.tx
            .prepare_cached(&sql)?
            .execute(params_from_iter(vals.iter()))?;
        Ok(())
    }

    fn merge_fields(
        &self,
        e: &LogEntry,
        m: &ModelInfo,
        row: &StoredRow,
        writes: &[FieldWrite],
    ) -> Result<Outcome> {
        let stamp = e.stamp();
        let mut sets: Vec<String> = Vec::new();
        let mut vals: Vec<Value> = Vec::new();
        for w in writes {
            let i = w.field as usize;
            if !clocked(m, i) {
                continue; // key/owner: checked equal above
            }
            let cur = row.clock(i);
            let name = m.fields[i].name;
            if wins(stamp, &w.value, cur, &row.values[i]) {
                let concurrent = cur != BOTTOM && cur.device != e.origin && w.base != cur.time;
                if (concurrent || stamp == cur) && row.values[i] != w.value {
                    self.conflict(e, m, name, &w.value, &row.values[i], stamp.time, cur.time)?;
                }
                sets.push(format!("{name} = ?, {name}__hlc = ?, {name}__dev = ?"));
                vals.push(w.value.clone());
                vals.push(Value::Int(stamp.time as i64));
                vals.push(Value::Uuid(stamp.device));
            } else if (stamp < cur && cur.device != e.origin || stamp == cur)
                && row.values[i] != w.value
            {
                self.conflict(e, m, name, &row.values[i], &w.value, cur.time, stamp.time)?;
            }
        }
        if sets.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        vals.push(Value::Uuid(e.record));
        let sql = format!("UPDATE {} SET {} WHERE uuid = ?", m.table, sets.join(", "));
        self.tx
            .prepare_cached(&sql)?
            .execute(params_from_iter(vals.iter()))?;
        Ok(Outcome::Applied)
    }

    /// A delete that overrides concurrent field writes from other devices: record
    /// what the delete discarded.
    fn record_delete_conflicts(&self, e: &LogEntry, m: &ModelInfo, row: &StoredRow) -> Result<()> {
        let stamp = e.stamp();
        for i in 0..m.fields.len() {
            if !clocked(m, i) {
                continue;
            }
            let c = row.clock(i);
            if c > stamp && c.device != e.origin {
                self.conflict(
                    e,
                    m,
                    m.fields[i].name,
                    &Value::Text("<deleted>".into()),
                    &row.values[i],
                    stamp.time,
                    c.time,
                )?;
            }
        }
        Ok(())
    }

    pub(crate) fn tombstone(&self, m: &ModelInfo, uuid: Uuid, stamp: Hlc) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO tombstones (uuid, model, hlc, dev) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(rusqlite::params![
                uuid,
                m.name,
                stamp.time as i64,
                stamp.device
            ])?;
        self.tx
            .prepare_cached(&format!("DELETE FROM {} WHERE uuid = ?1", m.table))?
            .execute([uuid])?;
        Ok(())
    }

    /// Tombstone every record whose key field names `uuid` (of model `m`), and so on
    /// down the chain.
    pub(crate) fn cascade(&self, m: &ModelInfo, uuid: Uuid, stamp: Hlc) -> Result<()> {
        let mut stack = vec![(m.name, uuid)];
        let mut guard = 0usize;
        while let Some((model, target)) = stack.pop() {
            guard += 1;
            if guard > 50_000_000 {
                return Err(Error::Other("cascade did not terminate".into()));
            }
            for dep in registry() {
                for f in dep
                    .fields
                    .iter()
                    .filter(|f| f.key && f.references == Some(model))
                {
                    let sql = format!("SELECT uuid FROM {} WHERE {} = ?1", dep.table, f.name);
                    let victims: Vec<Uuid> = {
                        let mut stmt = self.tx.prepare_cached(&sql)?;
                        let rows = stmt.query_map([target], |r| r.get(0))?;
                        rows.collect::<rusqlite::Result<_>>()?
                    };
                    for v in victims {
                        self.tombstone(dep, v, stamp)?;
                        stack.push((dep.name, v));
                    }
                }
            }
        }
        Ok(())
    }

    fn refuse(&self, e: &LogEntry, m: &ModelInfo, field: &str, why: String) -> Result<Outcome> {
        let discarded = match &e.op {
            Op::Delete(_) => "<delete>".to_string(),
            op => format!(
                "{:?}",
                op.writes().iter().map(|w| &w.value).collect::<Vec<_>>()
            ),
        };
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO conflicts (model, record, field, kept, discarded, kept_hlc, discarded_hlc, origin, origin_seq, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?9)",
            )?
            .execute(rusqlite::params![
                m.name,
                e.record,
                field,
                why,
                discarded,
                e.hlc as i64,
                e.origin,
                e.origin_seq as i64,
                self.now_ms as i64
            ])?;
        Ok(Outcome::Refused(why))
    }

    #[allow(clippy::too_many_arguments)]
    fn conflict(
        &self,
        e: &LogEntry,
        m: &ModelInfo,
        field: &str,
        kept: &Value,
        discarded: &Value,
        kept_hlc: u64,
        discarded_hlc: u64,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO conflicts (model, record, field, kept, discarded, kept_hlc, discarded_hlc, origin, origin_seq, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(rusqlite::params![
                m.name,
                e.record,
                field,
                render(kept),
                render(discarded),
                kept_hlc as i64,
                discarded_hlc as i64,
                e.origin,
                e.origin_seq as i64,
                self.now_ms as i64
            ])?;
        Ok(())
    }
}

fn find(writes: &[FieldWrite], field: usize) -> Option<&Value> {
    writes
        .iter()
        .find(|w| w.field as usize == field)
        .map(|w| &w.value)
}

/// A value as people read it in the conflict log.
pub fn render(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Int(i) => i.to_string(),
        Value::Text(s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
    }
}
