//! The transaction context: one TransactionManager transaction in progress.
//! [`TxCtx::log`] checks each change against the current state, gives it a log
//! entry, applies it to `library.db` and queues the entry for the outbox.

use rusqlite::{OptionalExtension, Transaction};
use uuid::Uuid;

use super::change::{Change, ChangeOp, Receipt};
use super::outbox::OutboxRun;
use crate::error::{Error, Result};
use crate::hlc::{Hlc, HlcGenerator};
use crate::model::{registry, values_from_row, ModelInfo, ModelKind, Ownership, Value};
use crate::store::sql::new_row_insert_sql;
use crate::sync::apply::{is_tombstoned, Applier, Outcome};
use crate::sync::entry::{FieldWrite, LogEntry, Op};

/// A TM transaction in progress (see [`super::Library::with_tx`]).
pub struct TxCtx<'a, 'c> {
    tx: &'a Transaction<'c>,
    /// This device: the origin of every entry and the owner it may write as.
    device: Uuid,
    /// This open's incarnation, which numbers the entries (with `next_seq`).
    incarnation: u64,
    /// The replica of `(device, incarnation)`, computed once per transaction:
    /// it takes two BLAKE3 hashes, ~11% of a 1,000-change batch's CPU when it
    /// was computed for every entry's receipt.
    replica: Uuid,
    hlc: &'a HlcGenerator,
    next_seq: u64,
    receipt: Receipt,
    models: Vec<&'static str>,
    /// Entries for the outbox, written when the transaction commits.
    outbox: OutboxRun,
    /// Ids the transaction's fresh inserts need not tombstoned, checked in
    /// bulk (see [`TxCtx::check_tombstones`]): `(id, model named in the error)`.
    unchecked: Vec<(Uuid, &'static str)>,
    /// The highest tombstoned id (`Some(None)`: none), while known not to have
    /// changed in this transaction.
    tombstone_max: Option<Option<Uuid>>,
    /// The insert statement of the last fresh insert, kept for the next one:
    /// `(model, number of local values, statement)`.
    insert_stmt: Option<(&'static str, usize, rusqlite::CachedStatement<'a>)>,
}

/// Ids per tombstone query of [`TxCtx::check_tombstones`].
const TOMBSTONE_CHECK_CHUNK: usize = 128;

/// What a finished transaction context hands back to be committed.
pub(super) struct Finished {
    /// The `origin_seq` after the transaction's last entry.
    pub next_seq: u64,
    pub receipt: Receipt,
    /// Models the transaction wrote.
    pub models: Vec<&'static str>,
    pub outbox: OutboxRun,
}

impl<'a, 'c> TxCtx<'a, 'c> {
    /// A transaction of `device`'s `incarnation` in `tx`, its first entry
    /// numbered `next_seq`.
    pub(super) fn new(
        tx: &'a Transaction<'c>,
        (device, incarnation): (Uuid, u64),
        hlc: &'a HlcGenerator,
        next_seq: u64,
    ) -> Self {
        TxCtx {
            tx,
            device,
            incarnation,
            replica: crate::sync::entry::replica_id(device, incarnation),
            hlc,
            next_seq,
            receipt: Receipt::default(),
            models: Vec::new(),
            outbox: OutboxRun::default(),
            unchecked: Vec::new(),
            tombstone_max: None,
            insert_stmt: None,
        }
    }

    /// Settle the deferred tombstone checks and hand back what the transaction
    /// wrote. Fails (and nothing may be committed) if a check fails.
    pub(super) fn finish(mut self) -> Result<Finished> {
        self.check_tombstones()?;
        Ok(Finished {
            next_seq: self.next_seq,
            receipt: std::mem::take(&mut self.receipt),
            models: std::mem::take(&mut self.models),
            outbox: std::mem::take(&mut self.outbox),
        })
    }
}

impl<'a> TxCtx<'a, '_> {
    /// The open `library.db` transaction, for raw SQL on device-local columns.
    /// Synced columns must only change through [`TxCtx::log`].
    pub fn sql(&self) -> &Transaction<'_> {
        self.tx
    }

    /// Queue `id` for [`TxCtx::check_tombstones`] unless it is above the highest
    /// tombstoned id (read once, an index lookup): new records get time-ordered
    /// UUIDv7 ids above those of records deleted before, so most need no
    /// lookup at all. Exact: an id above the maximum is not in the table.
    fn defer_tombstone_check(&mut self, id: Uuid, model: &'static str) -> Result<()> {
        let max = match self.tombstone_max {
            Some(max) => max,
            None => {
                let max: Option<Uuid> = self
                    .tx
                    .prepare_cached("SELECT MAX(uuid) FROM tombstones")?
                    .query_row([], |r| r.get(0))?;
                self.tombstone_max = Some(max);
                max
            }
        };
        if max.is_some_and(|max| id <= max) {
            self.unchecked.push((id, model));
        }
        Ok(())
    }

    /// Fail with `Deleted` if any id a fresh insert of this transaction needs
    /// not tombstoned is: one query per `TOMBSTONE_CHECK_CHUNK` ids instead of
    /// one per insert. Runs before anything else in the transaction reads or
    /// writes tombstones and before it commits, so each insert is checked
    /// against the tombstones that existed when it was made; a failed
    /// transaction writes nothing.
    fn check_tombstones(&mut self) -> Result<()> {
        // What comes next may write tombstones.
        self.tombstone_max = None;
        if self.unchecked.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.unchecked);
        for chunk in ids.chunks(TOMBSTONE_CHECK_CHUNK) {
            let mut stmt = self.tx.prepare_cached(tombstone_query(chunk.len()))?;
            for (i, (id, _)) in chunk.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, id)?;
            }
            let mut rows = stmt.raw_query();
            if let Some(r) = rows.next()? {
                let id: Uuid = r.get(0)?;
                let model = chunk
                    .iter()
                    .find(|(x, _)| *x == id)
                    .map_or("record", |(_, m)| *m);
                return Err(Error::Deleted { model, id });
            }
        }
        Ok(())
    }

    /// Validate a change against the current state, write its log entry and apply
    /// it. Deleting a record also deletes, with entries of their own, the records
    /// that name it through non-key references (a folder's contents).
    pub fn log(&mut self, change: Change) -> Result<()> {
        let m = change.model;
        // A record insert does not look the row up: `append` writes it directly
        // and the UNIQUE index on `uuid` turns an existing row into AlreadyExists.
        let fresh_insert =
            m.kind == ModelKind::Record && matches!(change.op, ChangeOp::Insert { .. });
        let existing = if fresh_insert {
            None
        } else {
            // Anything else may read or write tombstones: settle the deferred
            // checks first, so each insert is checked against the tombstones
            // that existed when it was made.
            self.check_tombstones()?;
            load_values(self.tx, m, change.record)?
        };
        let op = match change.op {
            ChangeOp::Insert { values, local } => {
                return self.log_insert(m, change.record, values, local, existing, fresh_insert);
            }
            ChangeOp::Update(fields) => {
                let Some((row, _)) = existing else {
                    return Err(self.missing(m, change.record)?);
                };
                self.check_owner(m, change.record, m.owner_index().map(|i| &row.0[i]))?;
                match update_writes(m, &row, fields)? {
                    Some(w) => Op::Update(w),
                    None => return Ok(()),
                }
            }
            ChangeOp::Delete => {
                let Some((row, present)) = existing else {
                    if m.kind == ModelKind::Membership {
                        return Ok(()); // not a member: nothing to remove
                    }
                    return Err(self.missing(m, change.record)?);
                };
                if m.kind == ModelKind::Membership && !present {
                    return Ok(());
                }
                self.check_owner(m, change.record, m.owner_index().map(|i| &row.0[i]))?;
                if m.kind == ModelKind::Record {
                    self.delete_children(m, change.record)?;
                }
                Op::Delete(key_writes(m, &row))
            }
        };
        self.append(m, change.record, op)
    }

    /// [`TxCtx::log`] of an insert: `existing` is the row when it was looked up
    /// (not for a `fresh_insert`, a record insert written without a lookup).
    fn log_insert(
        &mut self,
        m: &'static ModelInfo,
        record: Uuid,
        values: Vec<Value>,
        local: Vec<Value>,
        existing: Option<(StoredValues, bool)>,
        fresh_insert: bool,
    ) -> Result<()> {
        if values.len() != m.fields.len() {
            return Err(Error::Invalid(format!(
                "{} takes {} fields",
                m.name,
                m.fields.len()
            )));
        }
        self.check_not_deleted(m.name, record, fresh_insert)?;
        if let Some((_, present)) = &existing {
            if m.kind == ModelKind::Record {
                return Err(Error::AlreadyExists {
                    model: m.name,
                    id: record,
                });
            }
            if *present {
                return Ok(()); // already a member
            }
        }
        self.check_owner(m, record, values.get(m.owner_index().unwrap_or(usize::MAX)))?;
        for (i, f) in m.fields.iter().enumerate() {
            if let (true, Some(target_model), Value::Uuid(target)) =
                (f.key, f.references, &values[i])
            {
                self.check_not_deleted(target_model, *target, fresh_insert)?;
            }
        }
        let writes = FieldWrite::all(values);
        if fresh_insert {
            return self.append_insert(m, record, writes, &local);
        }
        self.append(m, record, Op::Insert(writes))?;
        if !local.is_empty() && m.kind == ModelKind::Record {
            self.write_local(m, record, &local)?;
        }
        Ok(())
    }

    /// Fail with `Deleted` if `id` (of `model`) is tombstoned: checked now, or
    /// for a `fresh_insert` deferred to [`TxCtx::check_tombstones`].
    fn check_not_deleted(
        &mut self,
        model: &'static str,
        id: Uuid,
        fresh_insert: bool,
    ) -> Result<()> {
        if fresh_insert {
            self.defer_tombstone_check(id, model)
        } else if is_tombstoned(self.tx, id)? {
            Err(Error::Deleted { model, id })
        } else {
            Ok(())
        }
    }

    fn missing(&self, m: &'static ModelInfo, id: Uuid) -> Result<Error> {
        Ok(if is_tombstoned(self.tx, id)? {
            Error::Deleted { model: m.name, id }
        } else {
            Error::NotFound { model: m.name, id }
        })
    }

    fn check_owner(&self, m: &'static ModelInfo, id: Uuid, owner: Option<&Value>) -> Result<()> {
        if m.ownership != Ownership::DeviceOwned {
            return Ok(());
        }
        match owner {
            Some(Value::Uuid(o)) if *o == self.device => Ok(()),
            other => Err(Error::NotOwner {
                model: m.name,
                id,
                owner: other.and_then(Value::as_uuid).unwrap_or_default(),
            }),
        }
    }

    /// Explicit deletes for records naming `id` through a non-key reference.
    fn delete_children(&mut self, m: &'static ModelInfo, id: Uuid) -> Result<()> {
        for dep in registry() {
            if dep.kind != ModelKind::Record {
                continue;
            }
            for f in dep
                .fields
                .iter()
                .filter(|f| !f.key && f.references == Some(m.name))
            {
                let children: Vec<Uuid> = {
                    let sql = format!("SELECT uuid FROM {} WHERE {} = ?1", dep.table, f.name);
                    let mut stmt = self.tx.prepare_cached(&sql)?;
                    let rows = stmt.query_map([id], |r| r.get(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                for child in children {
                    if load_values(self.tx, dep, child)?.is_some() {
                        self.log(Change {
                            model: dep,
                            record: child,
                            op: ChangeOp::Delete,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_local(&self, m: &'static ModelInfo, id: Uuid, local: &[Value]) -> Result<()> {
        let sets: Vec<String> = m
            .local_fields
            .iter()
            .map(|f| format!("{} = ?", f.name))
            .collect();
        if sets.is_empty() {
            return Ok(());
        }
        let sql = format!("UPDATE {} SET {} WHERE uuid = ?", m.table, sets.join(", "));
        let mut params: Vec<&dyn rusqlite::ToSql> =
            local.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        params.push(&id);
        self.tx.prepare_cached(&sql)?.execute(params.as_slice())?;
        Ok(())
    }

    /// Log and write a record's first insert without looking the row up. The
    /// caller checked what [`Applier::apply`] would (record and key targets not
    /// tombstoned, owner is this device); applying an insert to an absent row is
    /// exactly this INSERT (row clock = the entry's stamp, no field clocks), and a
    /// present row fails the UNIQUE index on `uuid` (AlreadyExists, nothing
    /// written). The device-local values go into the same INSERT.
    fn append_insert(
        &mut self,
        m: &'static ModelInfo,
        record: Uuid,
        writes: Vec<FieldWrite>,
        local: &[Value],
    ) -> Result<()> {
        if !local.is_empty() && local.len() != m.local_fields.len() {
            return Err(Error::Invalid(format!(
                "{} takes {} device-local fields",
                m.name,
                m.local_fields.len()
            )));
        }
        let stamp = self.hlc.tick();
        let op = Op::Insert(writes);
        let held = matches!(&self.insert_stmt,
            Some((name, n, _)) if std::ptr::eq(*name, m.name) && *n == local.len());
        if !held {
            let sql = crate::store::cached_sql(m, "insert_fresh", local.len() as u64, || {
                new_row_insert_sql(m, local.len())
            });
            self.insert_stmt = None;
            let tx: &'a Transaction<'_> = self.tx;
            self.insert_stmt = Some((m.name, local.len(), tx.prepare_cached(sql)?));
        }
        let Some((_, _, stmt)) = self.insert_stmt.as_mut() else {
            return Err(Error::Other("insert statement missing".into()));
        };
        let mut i = 1;
        stmt.raw_bind_parameter(i, record)?;
        for w in op.writes() {
            i += 1;
            stmt.raw_bind_parameter(i, &w.value)?;
        }
        for v in local {
            i += 1;
            stmt.raw_bind_parameter(i, v)?;
        }
        stmt.raw_bind_parameter(i + 1, stamp.time as i64)?;
        stmt.raw_bind_parameter(i + 2, stamp.device)?;
        stmt.raw_execute().map_err(|err| match err {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::AlreadyExists {
                    model: m.name,
                    id: record,
                }
            }
            err => err.into(),
        })?;
        self.push_entry(m, record, stamp.time, &op)
    }

    /// This device's next log entry: a fresh stamp and the next `origin_seq`
    /// (which `finish_append` consumes).
    fn next_entry(&self, m: &'static ModelInfo, record: Uuid, op: Op) -> (Hlc, LogEntry) {
        let stamp = self.hlc.tick();
        let e = LogEntry {
            origin: self.device,
            origin_seq: self.next_seq,
            incarnation: self.incarnation,
            hlc: stamp.time,
            lib_seq: None,
            epoch: None,
            model: m.name.to_string(),
            record,
            op,
            seal: None,
        };
        (stamp, e)
    }

    fn append(&mut self, m: &'static ModelInfo, record: Uuid, op: Op) -> Result<()> {
        let (_, e) = self.next_entry(m, record, op);
        let applier = Applier {
            tx: self.tx,
            now_ms: self.hlc.now_ms(),
        };
        if applier.apply_update_fast(&e, m)? {
            return self.finish_append(m, e);
        }
        if let Outcome::Refused(why) = applier.apply(&e, m)? {
            return Err(Error::Invalid(why));
        }
        self.finish_append(m, e)
    }

    /// Queue the applied entry `e` for the outbox (written with the transaction's
    /// other entries when it commits) and account for it.
    fn finish_append(&mut self, m: &'static ModelInfo, e: LogEntry) -> Result<()> {
        self.push_entry(m, e.record, e.hlc, &e.op)
    }

    /// [`TxCtx::finish_append`] from the parts of this device's next entry.
    fn push_entry(&mut self, m: &'static ModelInfo, record: Uuid, hlc: u64, op: &Op) -> Result<()> {
        let seq = self.next_seq;
        self.outbox.push_parts(seq, hlc, m.name, &record, op)?;
        self.next_seq += 1;
        self.receipt.entries.push((self.replica, seq));
        if !self.models.contains(&m.name) {
            self.models.push(m.name);
        }
        Ok(())
    }
}

/// A record's current synced values and their effective field clock times.
type StoredValues = (Vec<Value>, Vec<u64>);

/// The field writes of an update of `row` setting `fields`: only fields whose
/// value changes, each with the clock time it had (its `base`), then the key
/// fields. `None` when nothing changes.
fn update_writes(
    m: &ModelInfo,
    row: &StoredValues,
    fields: Vec<(String, Value)>,
) -> Result<Option<Vec<FieldWrite>>> {
    let mut w = Vec::new();
    for (name, value) in fields {
        let i = m
            .field_index(&name)
            .ok_or_else(|| Error::Invalid(format!("{} has no field {name}", m.name)))?;
        let f = &m.fields[i];
        if f.key || f.owner {
            return Err(Error::Invalid(format!(
                "{}.{} cannot change",
                m.name, f.name
            )));
        }
        if value == Value::Null && !f.nullable {
            return Err(Error::Invalid(format!(
                "{}.{} cannot be empty",
                m.name, f.name
            )));
        }
        if row.0[i] == value {
            continue;
        }
        w.retain(|x: &FieldWrite| x.field as usize != i);
        w.push(FieldWrite {
            field: i as u16,
            value,
            base: row.1[i],
        });
    }
    if w.is_empty() {
        return Ok(None);
    }
    w.extend(key_writes(m, row));
    Ok(Some(w))
}

/// Writes of `row`'s key fields, which every update and delete entry carries.
fn key_writes(m: &ModelInfo, row: &StoredValues) -> Vec<FieldWrite> {
    m.key_indices()
        .map(|i| FieldWrite {
            field: i as u16,
            value: row.0[i].clone(),
            base: 0,
        })
        .collect()
}

/// `SELECT uuid FROM tombstones WHERE uuid IN (?, ..., ?) LIMIT 1` with `n`
/// parameters (1..=`TOMBSTONE_CHECK_CHUNK`), built once per `n`.
fn tombstone_query(n: usize) -> &'static str {
    static CACHE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        (0..=TOMBSTONE_CHECK_CHUNK)
            .map(|k| {
                format!(
                    "SELECT uuid FROM tombstones WHERE uuid IN ({}) LIMIT 1",
                    vec!["?"; k.max(1)].join(", ")
                )
            })
            .collect()
    });
    &all[n.clamp(1, TOMBSTONE_CHECK_CHUNK)]
}

/// Current synced values and effective field clock times of a record, and (for
/// memberships) whether it is present.
fn load_values(
    tx: &Transaction<'_>,
    m: &ModelInfo,
    id: Uuid,
) -> Result<Option<(StoredValues, bool)>> {
    let mut cols: Vec<String> = m.fields.iter().map(|f| f.name.to_string()).collect();
    let clocked: Vec<bool> = m
        .fields
        .iter()
        .map(|f| m.kind == ModelKind::Record && !f.key && !f.owner)
        .collect();
    for (f, c) in m.fields.iter().zip(&clocked) {
        cols.push(if *c {
            format!("COALESCE({}__hlc, _hlc)", f.name)
        } else {
            "_hlc".into()
        });
    }
    cols.push(if m.kind == ModelKind::Membership {
        "present".into()
    } else {
        "1".into()
    });
    let sql = format!(
        "SELECT {} FROM {} WHERE uuid = ?1",
        cols.join(", "),
        m.table
    );
    let n = m.fields.len();
    let mut stmt = tx.prepare_cached(&sql)?;
    let row = stmt
        .query_row([id], |r| {
            let values = values_from_row(m.fields, r, 0)?;
            let mut clocks = Vec::with_capacity(n);
            for i in 0..n {
                clocks.push(r.get::<_, i64>(n + i)? as u64);
            }
            let present: i64 = r.get(2 * n)?;
            Ok(((values, clocks), present != 0))
        })
        .optional()?;
    Ok(row)
}
