//! The TransactionManager: the only code path that writes syncable data.
//!
//! ## Atomicity across two files (invariant I1)
//!
//! SQLite cannot commit one transaction atomically across two WAL databases, so
//! nothing here relies on it:
//!
//! - **Small local transactions** (and any that write device-local values) are
//!   applied to `library.db` together with their log entries, written to the
//!   outbox of the same database (`outbox_segments`: one row holding every entry
//!   of the transaction, encoded as a log segment), in one transaction. The
//!   outbox is moved into `sync.db` (skipping entries the log already holds) in
//!   bulk, whenever the log is read, and on open. A crash at any point leaves
//!   the change and its entries both committed or both absent.
//! - **Large local transactions** (`LOG_FIRST_AT` entries or more, nothing
//!   device-local) are logged first, as DESIGN §3 describes: the entries are
//!   committed to `sync.db`, then the change to `library.db` with the
//!   watermark past them. A crash in between leaves entries logged and not
//!   applied, which are applied on open like remote ones; the entries carry
//!   the whole change, so nothing of it is lost.
//! - **Remote entries** are appended to `sync.db` first, then applied to
//!   `library.db` in one transaction that also advances the `applied_log_id`
//!   watermark. On open, and at the next `apply_remote` after one failed, log
//!   entries past the watermark are applied again (applying is idempotent), and
//!   nothing moves the watermark past entries not applied yet.
//!
//! Every write holds one mutex, so the log position and the watermark move in step.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hlc::{Clock, HlcGenerator};
use crate::model::{registry, ModelInfo, ModelKind, Ownership, Syncable, Value};
use crate::store::{open_db, schema};
use crate::sync::apply::{is_tombstoned, Applier, Outcome};
use crate::sync::entry::{self, BulkOperation, FieldWrite, LogEntry, Op};
use crate::sync::log::{Run, SyncLog, MERGE_SEGMENT_ENTRIES};
use crate::sync::segment;
use crate::sync::BULK_MODEL;

/// Local entries kept in the outbox before they are moved to `sync.db`.
const OUTBOX_FLUSH_AT: usize = 512;
/// Transactions with at least this many entries and no device-local writes are
/// logged first (DESIGN §3) instead of going through the outbox: their entries
/// are written once, to `sync.db`, not also to `library.db` and moved later.
/// Smaller ones keep the outbox: one commit each, moved in bulk.
const LOG_FIRST_AT: usize = 64;
/// Capacity of the change-event channel; slow subscribers see `Lagged`.
pub const EVENT_CAPACITY: usize = 1024;

/// A change to one record, built by the caller and committed by the TM.
#[derive(Debug, Clone)]
pub struct Change {
    pub model: &'static ModelInfo,
    pub record: Uuid,
    pub op: ChangeOp,
}

#[derive(Debug, Clone)]
pub enum ChangeOp {
    Insert {
        values: Vec<Value>,
        local: Vec<Value>,
    },
    Update(Vec<(String, Value)>),
    Delete,
}

impl Change {
    /// Create `record` (for memberships: add it).
    pub fn insert<M: Syncable>(record: &M) -> Self {
        Self {
            model: M::INFO,
            record: record.id(),
            op: ChangeOp::Insert {
                values: record.to_values(),
                local: record.to_local_values(),
            },
        }
    }
    /// Change fields of an existing record; add them with [`Change::set`].
    pub fn update<M: Syncable>(id: Uuid) -> Self {
        Self {
            model: M::INFO,
            record: id,
            op: ChangeOp::Update(Vec::new()),
        }
    }
    /// Set a field in an update (ignored on other kinds of change).
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        if let ChangeOp::Update(fields) = &mut self.op {
            fields.push((field.to_string(), value.into()));
        }
        self
    }
    /// Delete a record for good (memberships: remove it).
    pub fn delete<M: Syncable>(id: Uuid) -> Self {
        Self {
            model: M::INFO,
            record: id,
            op: ChangeOp::Delete,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Int(b as i64)
    }
}
impl From<Uuid> for Value {
    fn from(u: Uuid) -> Self {
        Value::Uuid(u)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Remote,
}

/// Emitted after every commit that changed the library.
#[derive(Debug, Clone)]
pub struct ResourceChanged {
    pub library: Uuid,
    pub source: Source,
    /// Models touched, in no particular order, without duplicates.
    pub models: Vec<&'static str>,
    /// Number of log entries committed.
    pub entries: usize,
}

/// What a commit wrote.
#[derive(Debug, Clone, Default)]
pub struct Receipt {
    /// `(origin, origin_seq)` of each log entry written, in order.
    pub entries: Vec<(Uuid, u64)>,
}

/// What applying remote entries did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub unchanged: usize,
    pub duplicates: usize,
    /// Refused by a merge rule (recorded in the conflict log).
    pub refused: usize,
    /// Rejected as invalid (malformed, clock too far ahead); not logged, not applied.
    pub rejected: Vec<String>,
}

/// Settings of an open library.
#[derive(Debug, Clone)]
pub struct LibraryOptions {
    pub max_clock_drift: std::time::Duration,
}

impl Default for LibraryOptions {
    fn default() -> Self {
        Self {
            max_clock_drift: crate::hlc::DEFAULT_MAX_CLOCK_DRIFT,
        }
    }
}

struct Inner {
    lib: Connection,
    log: SyncLog,
    next_seq: u64,
    outbox_len: usize,
}

/// An open library: its two databases, its clock, and its TransactionManager.
pub struct Library {
    id: Uuid,
    name: String,
    dir: PathBuf,
    device: Uuid,
    hlc: HlcGenerator,
    inner: Mutex<Inner>,
    events: broadcast::Sender<ResourceChanged>,
    /// Held for the library's life: one open `Library` per library, across
    /// processes (two would hand out the same `origin_seq`).
    lock: Option<std::fs::File>,
}

/// How long `open` waits for another process to close the library.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock_library(dir: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("library.lock"))?;
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Other(format!(
                    "library {} is in use by another concord process; if a node runs for this \
                     data dir, run commands while it is up (they go through it)",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<rusqlite::types::Value>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn meta_set(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

impl Library {
    /// Create a new library in `dir` (which must not hold one yet).
    pub fn create(
        dir: &Path,
        id: Uuid,
        name: &str,
        device: Uuid,
        clock: Box<dyn Clock>,
    ) -> Result<Library> {
        std::fs::create_dir_all(dir)?;
        if dir.join("library.db").exists() {
            return Err(Error::Other(format!(
                "{} already holds a library",
                dir.display()
            )));
        }
        // Build library.db under another name and rename it into place, so that a
        // crash leaves a complete library or none (a leftover is started over).
        let partial = dir.join("library.db.creating");
        for suffix in ["", "-wal", "-shm"] {
            let f = dir.join(format!("library.db.creating{suffix}"));
            if f.exists() {
                std::fs::remove_file(f)?;
            }
        }
        {
            let mut lib = open_db(&partial, true, &schema::library_migrations())?;
            let tx = lib.transaction()?;
            meta_set(&tx, "id", id)?;
            meta_set(&tx, "name", name)?;
            meta_set(&tx, "applied_log_id", 0i64)?;
            tx.commit()?;
            // Everything into the one file before it is renamed (open_db sets WAL again).
            lib.pragma_update(None, "journal_mode", "DELETE")?;
            lib.close().map_err(|(_, e)| e)?;
        }
        std::fs::rename(&partial, dir.join("library.db"))?;
        Self::open_with(dir, device, clock, LibraryOptions::default())
    }

    /// Open an existing library and recover from any crash (see the module docs).
    pub fn open(dir: &Path, device: Uuid, clock: Box<dyn Clock>) -> Result<Library> {
        Self::open_with(dir, device, clock, LibraryOptions::default())
    }

    pub fn open_with(
        dir: &Path,
        device: Uuid,
        clock: Box<dyn Clock>,
        opts: LibraryOptions,
    ) -> Result<Library> {
        let lib_path = dir.join("library.db");
        if !lib_path.exists() {
            return Err(Error::LibraryNotFound(dir.display().to_string()));
        }
        let lock = lock_library(dir)?;
        let mut lib = open_db(&lib_path, false, &schema::library_migrations())?;
        let sync_path = dir.join("sync.db");
        let mut sync = open_db(&sync_path, true, &schema::sync_migrations())?;
        crate::store::checkpoint_in_background(&mut lib, &lib_path)?;
        crate::store::checkpoint_in_background(&mut sync, &sync_path)?;
        let id: Uuid = match meta_get(&lib, "id")? {
            Some(rusqlite::types::Value::Blob(b)) => Uuid::from_slice(&b)
                .map_err(|_| Error::Other("library.db has a corrupt id".into()))?,
            _ => return Err(Error::Other("library.db has no id".into())),
        };
        let name = match meta_get(&lib, "name")? {
            Some(rusqlite::types::Value::Text(t)) => t,
            _ => String::new(),
        };
        let hlc = HlcGenerator::new(device, clock).with_max_drift(opts.max_clock_drift);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let library = Library {
            lock: Some(lock),
            id,
            name,
            dir: dir.to_path_buf(),
            device,
            hlc,
            inner: Mutex::new(Inner {
                lib,
                log: SyncLog::open(sync)?,
                next_seq: 1,
                outbox_len: 0,
            }),
            events,
        };
        library.recover()?;
        Ok(library)
    }

    /// Apply log entries past the watermark, move the outbox into the log, and
    /// seed the HLC and the next `origin_seq` from what is durable.
    fn recover(&self) -> Result<()> {
        let mut inner = self.lock();
        // Apply the log past the watermark before moving the outbox: the flush
        // advances the watermark to the end of the log, which would skip remote
        // entries a crash left logged but not applied.
        self.replay_log(&mut inner)?;
        // Entries an older version left in the outbox tables before v4; from
        // here on only `outbox_segments` is used.
        let legacy = legacy_outbox(&inner.lib)?;
        move_to_log(&mut inner, legacy, &["outbox", "outbox_batches"])?;
        flush_outbox(&mut inner)?;
        self.hlc.observe_floor(inner.log.max_hlc()?);
        inner.next_seq = inner.log.max_seq(self.device)? + 1;
        Ok(())
    }

    /// Apply the log entries past the "applied up to" watermark: those a crash or a
    /// failed [`Library::apply_remote`] left logged but not applied. Applying is
    /// idempotent; when the watermark is at the end of the log this is one query.
    fn replay_log(&self, inner: &mut Inner) -> Result<()> {
        let mut watermark: i64 = match meta_get(&inner.lib, "applied_log_id")? {
            Some(rusqlite::types::Value::Integer(i)) => i,
            _ => 0,
        };
        loop {
            let batch = inner.log.fetch_after_id(watermark, 1000)?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            let tx = inner.lib.transaction()?;
            let applier = Applier {
                tx: &tx,
                now_ms: self.hlc.now_ms(),
            };
            for (_, e) in &batch {
                if let Ok(m) = entry::validate(e) {
                    applier.apply(e, m)?;
                }
                // Later local stamps must be above what was applied.
                self.hlc.observe_floor(e.hlc);
            }
            meta_set(&tx, "applied_log_id", last)?;
            tx.commit()?;
            watermark = last;
        }
        Ok(())
    }

    pub fn id(&self) -> Uuid {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn device(&self) -> Uuid {
        self.device
    }
    pub fn hlc(&self) -> &HlcGenerator {
        &self.hlc
    }

    /// Subscribe to `ResourceChanged` events.
    pub fn subscribe(&self) -> broadcast::Receiver<ResourceChanged> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite transactions rolled back,
        // so the guarded state is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commit one change with its log entry.
    pub fn commit(&self, change: Change) -> Result<Receipt> {
        self.commit_batch(vec![change])
    }

    /// Commit many changes in one transaction, one log entry per change (plus one
    /// per cascaded delete).
    pub fn commit_batch(&self, changes: Vec<Change>) -> Result<Receipt> {
        self.with_tx(|ctx| {
            for c in changes {
                ctx.log(c)?;
            }
            Ok(())
        })
        .map(|(_, r)| r)
    }

    /// Run `f` inside one TM transaction. `f` may run raw SQL on
    /// [`TxCtx::sql`] (device-local columns only) and must pass every synced
    /// change through [`TxCtx::log`]. Nothing is written if `f` fails.
    pub fn with_tx<R>(
        &self,
        f: impl FnOnce(&mut TxCtx<'_, '_>) -> Result<R>,
    ) -> Result<(R, Receipt)> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let tx = inner.lib.transaction()?;
        let mut ctx = TxCtx {
            tx: &tx,
            library: self,
            next_seq: inner.next_seq,
            receipt: Receipt::default(),
            models: Vec::new(),
            outbox: OutboxRun::default(),
            device_local: std::cell::Cell::new(false),
            unchecked: Vec::new(),
            tombstone_max: None,
            insert_stmt: None,
        };
        let out = f(&mut ctx)?;
        ctx.check_tombstones()?;
        let next_seq = ctx.next_seq;
        let receipt = std::mem::take(&mut ctx.receipt);
        let models = std::mem::take(&mut ctx.models);
        let outbox = std::mem::take(&mut ctx.outbox);
        let device_local = ctx.device_local.get();
        drop(ctx);
        let n = receipt.entries.len();
        if n >= LOG_FIRST_AT && !device_local {
            // Log first (DESIGN §3): the entries (and any outbox entries before
            // them) are committed to `sync.db`, then the domain change with the
            // watermark past them. A crash in between leaves them logged and
            // not applied, and they are applied again from the log on open.
            let mut runs = pending_outbox(&tx)?;
            runs.push(outbox.into_run(self.device));
            let before = inner.log.latest_id()?;
            inner.log.append_runs(runs)?;
            // Logged: these sequence numbers are used, whatever happens next.
            inner.next_seq = next_seq;
            inner.outbox_len = 0;
            let latest = inner.log.latest_id()?;
            let done = clear_outbox(&tx)
                .and_then(|()| advance_watermark(&tx, before, latest))
                .and_then(|()| Ok(tx.commit()?));
            if let Err(e) = done {
                // The entries are in the log but not applied: apply them now if
                // possible, else on the next `apply_remote` or open.
                let _ = self.replay_log(inner);
                return Err(e);
            }
        } else {
            outbox.write(&tx, self.device)?;
            tx.commit()?;
            inner.next_seq = next_seq;
            inner.outbox_len += n;
            if inner.outbox_len >= OUTBOX_FLUSH_AT {
                flush_outbox(inner)?;
            }
        }
        drop(guard);
        if n > 0 {
            let _ = self.events.send(ResourceChanged {
                library: self.id,
                source: Source::Local,
                models,
                entries: n,
            });
        }
        Ok((out, receipt))
    }

    /// Write many device-owned rows with ONE `bulk_operation` log entry (DESIGN §7),
    /// in one transaction. The rows themselves do not travel through the log.
    pub fn commit_bulk<M: Syncable>(
        &self,
        rows: impl IntoIterator<Item = M>,
        op: BulkOperation,
    ) -> Result<Receipt> {
        let m = M::INFO;
        if m.ownership != Ownership::DeviceOwned || m.kind != ModelKind::Record {
            return Err(Error::Invalid(format!(
                "commit_bulk takes device-owned records, not {}",
                m.name
            )));
        }
        let owner_idx = m
            .owner_index()
            .ok_or_else(|| Error::Invalid(format!("{} has no owner field", m.name)))?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let tx = inner.lib.transaction()?;
        let stamp = self.hlc.tick();
        let seq = inner.next_seq;
        let mut cols: Vec<&str> = vec!["uuid"];
        cols.extend(m.fields.iter().map(|f| f.name));
        cols.extend(m.local_fields.iter().map(|f| f.name));
        cols.extend(["_hlc", "_dev"]);
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            m.table,
            cols.join(", "),
            vec!["?"; cols.len()].join(", ")
        );
        let mut count = 0u64;
        {
            let mut stmt = tx.prepare_cached(&sql)?;
            let hlc_v = Value::Int(stamp.time as i64);
            let dev_v = Value::Uuid(self.device);
            let mut all: Vec<Value> = Vec::with_capacity(cols.len());
            for row in rows {
                all.clear();
                all.push(Value::Uuid(row.id()));
                all.extend(row.to_values());
                if all.get(owner_idx + 1) != Some(&dev_v) {
                    return Err(Error::NotOwner {
                        model: m.name,
                        id: row.id(),
                        owner: all
                            .get(owner_idx + 1)
                            .and_then(Value::as_uuid)
                            .unwrap_or_default(),
                    });
                }
                all.extend(row.to_local_values());
                all.push(hlc_v.clone());
                all.push(dev_v.clone());
                stmt.execute(rusqlite::params_from_iter(all.iter()))
                    .map_err(|e| match e {
                        rusqlite::Error::SqliteFailure(f, _)
                            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                        {
                            Error::AlreadyExists {
                                model: m.name,
                                id: row.id(),
                            }
                        }
                        e => e.into(),
                    })?;
                count += 1;
            }
        }
        let op = op.with_count(count);
        let location = op.location();
        let e = LogEntry {
            origin: self.device,
            origin_seq: seq,
            hlc: stamp.time,
            lib_seq: None,
            epoch: None,
            model: BULK_MODEL.to_string(),
            record: location,
            op: Op::Bulk(op),
        };
        Applier {
            tx: &tx,
            now_ms: self.hlc.now_ms(),
        }
        .apply(&e, &entry::BULK_INFO)?;
        let mut outbox = OutboxRun::default();
        outbox.push(&e)?;
        outbox.write(&tx, self.device)?;
        tx.commit()?;
        inner.next_seq = seq + 1;
        inner.outbox_len += 1;
        flush_outbox(inner)?;
        drop(guard);
        let _ = self.events.send(ResourceChanged {
            library: self.id,
            source: Source::Local,
            models: vec![m.name],
            entries: 1,
        });
        Ok(Receipt {
            entries: vec![(self.device, seq)],
        })
    }

    /// Apply entries received from peers: append the new ones to the log, then
    /// apply them with the watermark in one transaction. Invalid entries (bad
    /// shape, clock too far ahead) are rejected one by one and change nothing.
    pub fn apply_remote(&self, entries: &[LogEntry]) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Entries an earlier failed call logged come first: the watermark set below
        // must not pass over them.
        self.replay_log(inner)?;
        let mut accepted: Vec<(LogEntry, &'static ModelInfo)> = Vec::new();
        let mut held_through: Vec<(Uuid, u64)> = Vec::new();
        for e in entries {
            if e.origin_seq == 0 || e.origin_seq > i64::MAX as u64 || e.hlc > i64::MAX as u64 {
                report.rejected.push(format!(
                    "entry {}:{} has out-of-range numbers",
                    e.origin, e.origin_seq
                ));
                continue;
            }
            let m = match entry::validate(e) {
                Ok(m) => m,
                Err(err) => {
                    report
                        .rejected
                        .push(format!("entry {}:{}: {err}", e.origin, e.origin_seq));
                    continue;
                }
            };
            if let Err(err) = self.hlc.check(&e.stamp()) {
                report.rejected.push(err.to_string());
                continue;
            }
            // Entries at or below their origin's contiguous position are held (or
            // were, before pruning). The rest are deduplicated by `append` itself
            // (INSERT OR IGNORE), so no per-entry lookup is needed here.
            let held = match held_through.iter().find(|(o, _)| *o == e.origin) {
                Some(&(_, c)) => c,
                None => {
                    let c = inner.log.contiguous(e.origin)?;
                    held_through.push((e.origin, c));
                    c
                }
            };
            if e.origin_seq <= held {
                report.duplicates += 1;
                continue;
            }
            accepted.push((e.clone(), m));
        }
        if accepted.is_empty() {
            return Ok(report);
        }
        let plain: Vec<&LogEntry> = accepted.iter().map(|(e, _)| e).collect();
        let fresh = inner.log.append_refs(&plain)?;
        report.duplicates += accepted.len() - fresh.len();
        let latest = inner.log.latest_id()?;
        let mut models: Vec<&'static str> = Vec::new();
        let tx = inner.lib.transaction()?;
        {
            let applier = Applier {
                tx: &tx,
                now_ms: self.hlc.now_ms(),
            };
            for &i in &fresh {
                let (e, m) = &accepted[i];
                let outcome = if applier.apply_update_fast(e, m)? {
                    Outcome::Applied
                } else {
                    applier.apply(e, m)?
                };
                match outcome {
                    Outcome::Applied => {
                        report.applied += 1;
                        if !models.contains(&m.name) {
                            models.push(m.name);
                        }
                    }
                    Outcome::Unchanged => report.unchanged += 1,
                    Outcome::Refused(_) => report.refused += 1,
                }
                // Cannot fail: checked above.
                let _ = self.hlc.receive(&e.stamp());
            }
        }
        meta_set(&tx, "applied_log_id", latest)?;
        tx.commit()?;
        drop(guard);
        if report.applied > 0 {
            let _ = self.events.send(ResourceChanged {
                library: self.id,
                source: Source::Remote,
                models,
                entries: report.applied,
            });
        }
        Ok(report)
    }

    /// Remote-apply path for state that does not arrive as log entries (snapshot
    /// backfill): `f` runs in one `library.db` transaction under the write lock.
    pub(crate) fn with_lib_tx<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        flush_outbox(inner)?;
        let tx = inner.lib.transaction()?;
        let r = f(&tx)?;
        tx.commit()?;
        drop(guard);
        let _ = self.events.send(ResourceChanged {
            library: self.id,
            source: Source::Remote,
            models: Vec::new(),
            entries: 0,
        });
        Ok(r)
    }

    /// Run `f` on the sync log, after moving the outbox into it.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut SyncLog) -> Result<R>) -> Result<R> {
        let mut inner = self.lock();
        flush_outbox(&mut inner)?;
        f(&mut inner.log)
    }

    /// Run a read-only query on `library.db`.
    pub fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let inner = self.lock();
        f(&inner.lib)
    }

    /// Leave without closing cleanly, as a crash would: the outbox is not
    /// flushed, but the lock is released as the dying process would release it.
    /// For crash tests.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        drop(self.lock.take());
        std::mem::forget(self);
    }

    /// Move pending local entries into `sync.db` now.
    pub fn flush(&self) -> Result<()> {
        flush_outbox(&mut self.lock())
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = flush_outbox(inner) {
            tracing::warn!("flushing the outbox on close failed (recovered on next open): {e}");
        }
    }
}

/// A local entry as the outbox kept it before schema v4 (tables `outbox` and
/// `outbox_batches`): still read, so entries an older version left there reach
/// the log.
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

/// The entries one transaction writes, encoded as a log segment
/// (`sync::segment`) as they are made, and stored in the outbox as ONE row
/// when the transaction commits: a batch of 1,000 changes costs one insert
/// here and one row when moved into `sync.db`, where it becomes a segment
/// without being decoded.
#[derive(Default)]
struct OutboxRun {
    blob: Vec<u8>,
    first_seq: u64,
    last_seq: u64,
    max_hlc: u64,
}

impl OutboxRun {
    fn push(&mut self, e: &LogEntry) -> Result<()> {
        self.push_parts(e.origin_seq, e.hlc, &e.model, &e.record, &e.op)
    }

    fn push_parts(
        &mut self,
        seq: u64,
        hlc: u64,
        model: &str,
        record: &Uuid,
        op: &Op,
    ) -> Result<()> {
        segment::encode_entry(&mut self.blob, hlc, model, record, op)?;
        if self.first_seq == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.max_hlc = self.max_hlc.max(hlc);
        Ok(())
    }

    fn into_run(self, origin: Uuid) -> Run {
        Run {
            origin,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            max_hlc: self.max_hlc,
            blob: self.blob,
        }
    }

    /// Store the run in the outbox, in the transaction that made it (I1).
    fn write(&self, tx: &Transaction<'_>, origin: Uuid) -> Result<()> {
        if self.first_seq == 0 {
            return Ok(());
        }
        tx.prepare_cached(
            "INSERT INTO outbox_segments (origin, first_seq, last_seq, max_hlc, entries)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            origin,
            self.first_seq as i64,
            self.last_seq as i64,
            self.max_hlc as i64,
            self.blob
        ])?;
        Ok(())
    }
}

/// Outbox entries left in the tables of schema v3 and earlier, as one-entry runs.
fn legacy_outbox(lib: &Connection) -> Result<Vec<Run>> {
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
            first_seq: e.origin_seq,
            last_seq: e.origin_seq,
            max_hlc: e.hlc,
            blob,
        });
    }
    Ok(runs)
}

/// Every entry waiting in the outbox, as runs in `origin_seq` order: runs of
/// consecutive transactions are merged into one segment (up to
/// `MERGE_SEGMENT_ENTRIES`), their blobs being concatenations of entries.
fn pending_outbox(lib: &Connection) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    let mut stmt = lib.prepare_cached(
        "SELECT origin, first_seq, last_seq, max_hlc, entries FROM outbox_segments ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let origin: Uuid = r.get(0)?;
        let first_seq = r.get::<_, i64>(1)? as u64;
        let last_seq = r.get::<_, i64>(2)? as u64;
        let max_hlc = r.get::<_, i64>(3)? as u64;
        let blob = r.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?;
        match runs.last_mut() {
            Some(prev)
                if prev.origin == origin
                    && prev.last_seq.checked_add(1) == Some(first_seq)
                    && prev.last_seq + 1 - prev.first_seq < MERGE_SEGMENT_ENTRIES =>
            {
                prev.blob.extend_from_slice(blob);
                prev.last_seq = last_seq;
                prev.max_hlc = prev.max_hlc.max(max_hlc);
            }
            _ => runs.push(Run {
                origin,
                first_seq,
                last_seq,
                max_hlc,
                blob: blob.to_vec(),
            }),
        }
    }
    Ok(runs)
}

fn clear_outbox(lib: &Connection) -> Result<()> {
    clear_tables(lib, &["outbox_segments"])
}

fn clear_tables(lib: &Connection, tables: &[&str]) -> Result<()> {
    for t in tables {
        lib.prepare_cached(&format!("DELETE FROM {t}"))?
            .execute([])?;
    }
    Ok(())
}

/// After appending log positions `before + 1 ..= latest` whose entries are
/// applied in this transaction: move the watermark over them, unless entries
/// before them are logged but not applied yet (a failed `apply_remote`): those
/// are replayed from the watermark, and these again with them.
fn advance_watermark(lib: &Connection, before: i64, latest: i64) -> Result<()> {
    let watermark = match meta_get(lib, "applied_log_id")? {
        Some(rusqlite::types::Value::Integer(i)) => i,
        _ => 0,
    };
    if watermark >= before {
        meta_set(lib, "applied_log_id", latest)?;
    }
    Ok(())
}

/// Move every outbox entry into `sync.db`, then clear the outbox and advance the
/// watermark (every log entry is applied at this point: local ones were applied
/// when committed, remote ones before the lock was released).
fn flush_outbox(inner: &mut Inner) -> Result<()> {
    inner.outbox_len = 0;
    let runs = pending_outbox(&inner.lib)?;
    move_to_log(inner, runs, &["outbox_segments"])
}

/// Append `runs` (applied local entries) to the log, then empty `tables`, the
/// `library.db` tables they came from, and advance the watermark over them.
fn move_to_log(inner: &mut Inner, runs: Vec<Run>, tables: &[&str]) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let before = inner.log.latest_id()?;
    inner.log.append_runs(runs)?;
    let latest = inner.log.latest_id()?;
    let tx = inner.lib.transaction()?;
    clear_tables(&tx, tables)?;
    advance_watermark(&tx, before, latest)?;
    tx.commit()?;
    Ok(())
}

/// A TM transaction in progress (see [`Library::with_tx`]).
pub struct TxCtx<'a, 'c> {
    tx: &'a Transaction<'c>,
    library: &'a Library,
    next_seq: u64,
    receipt: Receipt,
    models: Vec<&'static str>,
    /// Entries for the outbox, written when the transaction commits.
    outbox: OutboxRun,
    /// Whether the transaction wrote device-local values (raw SQL, local
    /// fields): those are not in its log entries, so it must commit in one
    /// `library.db` transaction with its entries (the outbox), never log-first.
    device_local: std::cell::Cell<bool>,
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

impl<'a> TxCtx<'a, '_> {
    /// The open `library.db` transaction, for raw SQL on device-local columns.
    /// Synced columns must only change through [`TxCtx::log`].
    pub fn sql(&self) -> &Transaction<'_> {
        self.device_local.set(true);
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
        let writes: Vec<FieldWrite>;
        let op = match change.op {
            ChangeOp::Insert { values, local } => {
                if values.len() != m.fields.len() {
                    return Err(Error::Invalid(format!(
                        "{} takes {} fields",
                        m.name,
                        m.fields.len()
                    )));
                }
                if fresh_insert {
                    self.defer_tombstone_check(change.record, m.name)?;
                } else if is_tombstoned(self.tx, change.record)? {
                    return Err(Error::Deleted {
                        model: m.name,
                        id: change.record,
                    });
                }
                if let Some((_, present)) = &existing {
                    if m.kind == ModelKind::Record {
                        return Err(Error::AlreadyExists {
                            model: m.name,
                            id: change.record,
                        });
                    }
                    if *present {
                        return Ok(()); // already a member
                    }
                }
                self.check_owner(
                    m,
                    change.record,
                    values.get(m.owner_index().unwrap_or(usize::MAX)),
                )?;
                for (i, f) in m.fields.iter().enumerate() {
                    if let (true, Some(_), Value::Uuid(target)) = (f.key, f.references, &values[i])
                    {
                        if fresh_insert {
                            self.defer_tombstone_check(*target, f.references.unwrap_or("record"))?;
                        } else if is_tombstoned(self.tx, *target)? {
                            return Err(Error::Deleted {
                                model: f.references.unwrap_or("record"),
                                id: *target,
                            });
                        }
                    }
                }
                writes = values
                    .into_iter()
                    .enumerate()
                    .map(|(i, value)| FieldWrite {
                        field: i as u16,
                        value,
                        base: 0,
                    })
                    .collect();
                if fresh_insert {
                    return self.append_insert(m, change.record, writes, &local);
                }
                self.append(m, change.record, Op::Insert(writes))?;
                if !local.is_empty() && m.kind == ModelKind::Record {
                    self.write_local(m, change.record, &local)?;
                }
                return Ok(());
            }
            ChangeOp::Update(fields) => {
                let Some((row, _)) = existing else {
                    return Err(self.missing(m, change.record)?);
                };
                self.check_owner(m, change.record, m.owner_index().map(|i| &row.0[i]))?;
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
                    return Ok(());
                }
                for i in m.key_indices() {
                    w.push(FieldWrite {
                        field: i as u16,
                        value: row.0[i].clone(),
                        base: 0,
                    });
                }
                Op::Update(w)
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
                let w = m
                    .key_indices()
                    .map(|i| FieldWrite {
                        field: i as u16,
                        value: row.0[i].clone(),
                        base: 0,
                    })
                    .collect();
                Op::Delete(w)
            }
        };
        self.append(m, change.record, op)
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
            Some(Value::Uuid(o)) if *o == self.library.device => Ok(()),
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
        self.device_local.set(true);
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
        if local.iter().any(|v| *v != Value::Null) {
            self.device_local.set(true);
        }
        if !local.is_empty() && local.len() != m.local_fields.len() {
            return Err(Error::Invalid(format!(
                "{} takes {} device-local fields",
                m.name,
                m.local_fields.len()
            )));
        }
        let stamp = self.library.hlc.tick();
        let op = Op::Insert(writes);
        let held = matches!(&self.insert_stmt,
            Some((name, n, _)) if std::ptr::eq(*name, m.name) && *n == local.len());
        if !held {
            let sql = crate::store::cached_sql(m, "insert_fresh", local.len() as u64, || {
                let mut cols: Vec<&str> = vec!["uuid"];
                cols.extend(m.fields.iter().map(|f| f.name));
                cols.extend(m.local_fields.iter().take(local.len()).map(|f| f.name));
                cols.extend(["_hlc", "_dev"]);
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    m.table,
                    cols.join(", "),
                    vec!["?"; cols.len()].join(", ")
                )
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
    fn next_entry(
        &self,
        m: &'static ModelInfo,
        record: Uuid,
        op: Op,
    ) -> (crate::hlc::Hlc, LogEntry) {
        let stamp = self.library.hlc.tick();
        let e = LogEntry {
            origin: self.library.device,
            origin_seq: self.next_seq,
            hlc: stamp.time,
            lib_seq: None,
            epoch: None,
            model: m.name.to_string(),
            record,
            op,
        };
        (stamp, e)
    }

    fn append(&mut self, m: &'static ModelInfo, record: Uuid, op: Op) -> Result<()> {
        let (_, e) = self.next_entry(m, record, op);
        let applier = Applier {
            tx: self.tx,
            now_ms: self.library.hlc.now_ms(),
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
        self.receipt.entries.push((self.library.device, seq));
        if !self.models.contains(&m.name) {
            self.models.push(m.name);
        }
        Ok(())
    }
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
#[allow(clippy::type_complexity)]
fn load_values(
    tx: &Transaction<'_>,
    m: &ModelInfo,
    id: Uuid,
) -> Result<Option<((Vec<Value>, Vec<u64>), bool)>> {
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
            let mut values = Vec::with_capacity(n);
            for (i, f) in m.fields.iter().enumerate() {
                values.push(Value::from_sql(f.kind, r.get_ref(i)?).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Null,
                        Box::new(e),
                    )
                })?);
            }
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
