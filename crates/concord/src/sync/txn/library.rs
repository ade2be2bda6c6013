//! [`Library`]: an open library, its two databases and its clock, and the
//! TransactionManager's entry points (local commits, bulk writes, remote
//! entries, crash recovery, change events).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::change::{ApplyReport, Change, Receipt, ResourceChanged, Source};
use super::context::TxCtx;
use super::options::{random_incarnation, Durability, LibraryOptions};
use super::outbox::{flush_outbox, move_to_log, set_watermark, watermark, OutboxRun, OutboxSize};
use super::remote::{apply_screened, screen_remote, with_conflicting};
use crate::error::{Error, Result};
use crate::hlc::{Clock, HlcGenerator};
use crate::model::{ModelKind, Ownership, Syncable, Value};
use crate::store::legacy::{legacy_outbox_runs, LEGACY_OUTBOX_TABLES};
use crate::store::meta::{key, meta_get, meta_set};
use crate::store::sql::new_row_insert_sql;
use crate::store::{open_db, schema};
use crate::sync::apply::{prune_conflicts, Applier, ConflictRetention, Cutoffs};
use crate::sync::entry::{self, BulkOperation, LogEntry, Op};
use crate::sync::log::SyncLog;
use crate::sync::seal::{parse_node_id, verify_entries, KeySource};
use crate::sync::BULK_MODEL;

/// Capacity of the change-event channel; slow subscribers see `Lagged`.
pub const EVENT_CAPACITY: usize = 1024;

/// How often the conflict log is pruned by age (by count: on every write).
const CONFLICTS_AGED_EVERY_MS: u64 = 3600 * 1000;

struct Inner {
    lib: Connection,
    log: SyncLog,
    next_seq: u64,
    /// What the outbox holds since it was last moved into the log.
    outbox: OutboxSize,
}

/// An open library: its two databases, its clock, and its TransactionManager.
pub struct Library {
    id: Uuid,
    name: String,
    dir: PathBuf,
    device: Uuid,
    /// This open's incarnation (see [`crate::sync::entry::replica_id`]): a
    /// device restored from a backup may have given positions of its earlier
    /// incarnations to changes it lost, never positions of a new one.
    incarnation: u64,
    hlc: HlcGenerator,
    inner: Mutex<Inner>,
    events: broadcast::Sender<ResourceChanged>,
    conflicts: ConflictRetention,
    /// Whether received entries must be sealed by their origin (a key was given).
    verify: bool,
    /// When the conflict log was last pruned by age (ms; 0: not yet).
    conflicts_aged_at: std::sync::atomic::AtomicU64,
    /// Held for the library's life: one open `Library` per library, across
    /// processes (two would hand out the same `origin_seq`).
    lock: Option<std::fs::File>,
}

/// How long `open` waits for another process to close the library.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock_library(dir: &Path) -> Result<std::fs::File> {
    let file = crate::private::lock_file(&dir.join("library.lock"))?;
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

impl Inner {
    /// Move the outbox into the log (see [`flush_outbox`]).
    fn flush_outbox(&mut self) -> Result<()> {
        flush_outbox(&mut self.lib, &mut self.log)?;
        self.outbox = OutboxSize::default();
        Ok(())
    }
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
        Self::create_with(dir, id, name, device, clock, LibraryOptions::default())
    }

    /// [`Library::create`] with options (a node passes its key).
    pub fn create_with(
        dir: &Path,
        id: Uuid,
        name: &str,
        device: Uuid,
        clock: Box<dyn Clock>,
        opts: LibraryOptions,
    ) -> Result<Library> {
        crate::private::private_dir(dir)?;
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
            meta_set(&tx, key::ID, id)?;
            meta_set(&tx, key::NAME, name)?;
            meta_set(&tx, key::APPLIED_LOG_ID, 0i64)?;
            tx.commit()?;
            // Everything into the one file before it is renamed (open_db sets WAL again).
            lib.pragma_update(None, "journal_mode", "DELETE")?;
            lib.close().map_err(|(_, e)| e)?;
        }
        std::fs::rename(&partial, dir.join("library.db"))?;
        Self::open_with(dir, device, clock, opts)
    }

    /// Open an existing library and recover from any crash (see the module docs).
    pub fn open(dir: &Path, device: Uuid, clock: Box<dyn Clock>) -> Result<Library> {
        Self::open_with(dir, device, clock, LibraryOptions::default())
    }

    /// [`Library::open`] with options (a node passes its key).
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
        crate::private::private_dir(dir)?;
        let lock = lock_library(dir)?;
        let mut lib = open_db(&lib_path, false, &schema::library_migrations())?;
        schema::add_missing_columns(&mut lib)?;
        let sync_path = dir.join("sync.db");
        let mut sync = open_db(&sync_path, true, &schema::sync_migrations())?;
        // What the log holds is durable when committed (see `Durability`).
        sync.pragma_update(None, "synchronous", "FULL")?;
        if opts.durability == Durability::Full {
            lib.pragma_update(None, "synchronous", "FULL")?;
        }
        crate::store::checkpoint_in_background(&mut lib, &lib_path)?;
        crate::store::checkpoint_in_background(&mut sync, &sync_path)?;
        let id: Uuid = match meta_get(&lib, key::ID)? {
            Some(rusqlite::types::Value::Blob(b)) => Uuid::from_slice(&b)
                .map_err(|_| Error::Other("library.db has a corrupt id".into()))?,
            _ => return Err(Error::Other("library.db has no id".into())),
        };
        let name = match meta_get(&lib, key::NAME)? {
            Some(rusqlite::types::Value::Text(t)) => t,
            _ => String::new(),
        };
        let hlc = HlcGenerator::new(device, clock).with_max_drift(opts.max_clock_drift);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut log = SyncLog::open(sync)?;
        let verify = opts.key.is_some();
        if let Some(key) = opts.key {
            log.set_sealer(id, key);
        }
        let library = Library {
            lock: Some(lock),
            id,
            name,
            dir: dir.to_path_buf(),
            device,
            incarnation: opts.incarnation.unwrap_or_else(random_incarnation),
            hlc,
            inner: Mutex::new(Inner {
                lib,
                log,
                next_seq: 1,
                outbox: OutboxSize::default(),
            }),
            events,
            conflicts: opts.conflicts,
            verify,
            conflicts_aged_at: std::sync::atomic::AtomicU64::new(0),
        };
        library.recover()?;
        Ok(library)
    }

    /// Apply log entries past the watermark, move the outbox into the log, and
    /// seed the HLC and the next `origin_seq` from what is durable.
    fn recover(&self) -> Result<()> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Apply the log past the watermark before moving the outbox: the flush
        // advances the watermark to the end of the log, which would skip remote
        // entries a crash left logged but not applied.
        self.replay_log(inner)?;
        // Entries an older version left in the outbox tables before v4; from
        // here on only `outbox_segments` is used.
        let legacy = legacy_outbox_runs(&inner.lib)?;
        move_to_log(&mut inner.lib, &mut inner.log, legacy, LEGACY_OUTBOX_TABLES)?;
        inner.flush_outbox()?;
        inner.log.seal_own_unsealed(self.device)?;
        self.hlc.observe_floor(inner.log.max_hlc()?);
        inner.next_seq = inner.log.max_seq(self.replica())? + 1;
        Ok(())
    }

    /// Apply the log entries past the "applied up to" watermark: those a crash or a
    /// failed [`Library::apply_remote`] left logged but not applied. Applying is
    /// idempotent; when the watermark is at the end of the log this is one query.
    fn replay_log(&self, inner: &mut Inner) -> Result<()> {
        let mut watermark = watermark(&inner.lib)?;
        let latest = inner.log.latest_id()?;
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
            set_watermark(&tx, last, latest)?;
            tx.commit()?;
            watermark = last;
        }
        Ok(())
    }

    /// The library's UUID, the same on every member device.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The library's display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The folder holding `library.db` and `sync.db`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// This device: the origin of every local entry.
    pub fn device(&self) -> Uuid {
        self.device
    }
    /// This open's incarnation of the device (see [`LibraryOptions::incarnation`]).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    /// The replica this open numbers its entries in: the key of this device's
    /// current position in version vectors.
    pub fn replica(&self) -> Uuid {
        crate::sync::entry::replica_id(self.device, self.incarnation)
    }
    /// The library's clock, which stamps local entries above everything seen.
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
        let mut ctx = TxCtx::new(
            &tx,
            (self.device, self.incarnation),
            &self.hlc,
            inner.next_seq,
        );
        let out = f(&mut ctx)?;
        let done = ctx.finish()?;
        let n = done.receipt.entries.len();
        // The change and its entries in one `library.db` transaction (I1),
        // batches included: `sync.db` is synced once per move, not per commit.
        done.outbox.write(&tx, self.device, self.incarnation)?;
        tx.commit()?;
        inner.next_seq = done.next_seq;
        inner.outbox.add(&done.outbox);
        if inner.outbox.due() {
            // The commit stands whatever happens here: a failed move is
            // retried by the next commit, read, close or open.
            if let Err(e) = inner.flush_outbox() {
                tracing::warn!(library = %self.id, "moving the outbox into the log failed (retried): {e}");
            }
        }
        drop(guard);
        if n > 0 {
            self.announce(Source::Local, done.models, n);
        }
        Ok((out, done.receipt))
    }

    /// Send a [`ResourceChanged`] event. Nobody listening is not an error.
    fn announce(&self, source: Source, models: Vec<&'static str>, entries: usize) {
        let _ = self.events.send(ResourceChanged {
            library: self.id,
            source,
            models,
            entries,
        });
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
        let count = insert_bulk_rows(&tx, rows, owner_idx, stamp.time, self.device)?;
        let op = op.with_count(count);
        let e = LogEntry {
            origin: self.device,
            origin_seq: seq,
            incarnation: self.incarnation,
            hlc: stamp.time,
            lib_seq: None,
            epoch: None,
            model: BULK_MODEL.to_string(),
            record: op.location(),
            op: Op::Bulk(op),
            seal: None,
        };
        Applier {
            tx: &tx,
            now_ms: self.hlc.now_ms(),
        }
        .apply(&e, &entry::BULK_INFO)?;
        let mut outbox = OutboxRun::default();
        outbox.push(&e)?;
        outbox.write(&tx, self.device, self.incarnation)?;
        tx.commit()?;
        inner.next_seq = seq + 1;
        inner.outbox.add(&outbox);
        // The rows are in no entry: they must be on disk before the entry,
        // which peers act on, is in the log (`Durability`).
        crate::store::make_durable(&inner.lib)?;
        inner.flush_outbox()?;
        drop(guard);
        self.announce(Source::Local, vec![m.name], 1);
        Ok(Receipt {
            entries: vec![(self.replica(), seq)],
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
        let verified = if self.verify {
            let mut keys = MemberKeys(&inner.lib);
            let (ok, refusals) = verify_entries(self.id, entries, &mut keys)?;
            report.unverified = ok.iter().filter(|ok| !**ok).count();
            report.forged = refusals;
            Some(ok)
        } else {
            None
        };
        let cutoffs = Cutoffs::load(&inner.lib)?;
        let (mut accepted, conflicting) = screen_remote(
            entries,
            verified.as_deref(),
            &inner.log,
            &self.hlc,
            &cutoffs,
            &mut report,
        )?;
        if accepted.is_empty() && conflicting.is_empty() {
            return Ok(report);
        }
        let plain: Vec<&LogEntry> = accepted.iter().map(|(e, _)| e).collect();
        let fresh = inner.log.append_refs(&plain)?;
        report.duplicates += accepted.len() - fresh.len();
        report.own_recovered = fresh
            .iter()
            .filter(|&&i| accepted[i].0.origin == self.device)
            .count();
        if report.own_recovered > 0 {
            tracing::warn!(
                library = %self.id,
                entries = report.own_recovered,
                "rollback detected: a peer gave back entries this device wrote and had lost \
                 (data dir restored from a backup, rolled back, or cut by a power loss); \
                 they are applied again"
            );
        }
        let latest = inner.log.latest_id()?;
        let tx = inner.lib.transaction()?;
        let applier = Applier {
            tx: &tx,
            now_ms: self.hlc.now_ms(),
        };
        // Two changes under one position: both take effect by the merge rules.
        let fresh = with_conflicting(&mut accepted, fresh, conflicting);
        let models = apply_screened(&applier, &self.hlc, &accepted, &fresh, &mut report)?;
        set_watermark(&tx, latest, latest)?;
        self.prune_conflicts(&tx, applier.now_ms)?;
        tx.commit()?;
        drop(guard);
        if report.applied > 0 {
            self.announce(Source::Remote, models, report.applied);
        }
        Ok(report)
    }

    /// Keep the conflict log within its retention: by count on every apply,
    /// by age at most every [`CONFLICTS_AGED_EVERY_MS`].
    fn prune_conflicts(&self, tx: &Connection, now_ms: u64) -> Result<()> {
        use std::sync::atomic::Ordering;
        let aged_at = self.conflicts_aged_at.load(Ordering::Relaxed);
        let by_age = now_ms.saturating_sub(aged_at) >= CONFLICTS_AGED_EVERY_MS;
        prune_conflicts(tx, self.conflicts, now_ms, by_age)?;
        if by_age {
            self.conflicts_aged_at.store(now_ms, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Remote-apply path for state that does not arrive as log entries (snapshot
    /// backfill): `f` runs in one `library.db` transaction under the write lock.
    pub(crate) fn with_lib_tx<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.flush_outbox()?;
        let tx = inner.lib.transaction()?;
        let r = f(&tx)?;
        tx.commit()?;
        drop(guard);
        self.announce(Source::Remote, Vec::new(), 0);
        Ok(r)
    }

    /// Run `f` on the sync log, after moving the outbox into it.
    pub fn with_log<R>(&self, f: impl FnOnce(&mut SyncLog) -> Result<R>) -> Result<R> {
        let mut inner = self.lock();
        inner.flush_outbox()?;
        f(&mut inner.log)
    }

    /// Run `f` on the log (outbox moved in) and `library.db` with no commit
    /// in between, so the rows it reads hold exactly the log's changes (a
    /// snapshot chunk: its rows never hold a change its vector leaves out).
    pub fn read_with_log<R>(
        &self,
        f: impl FnOnce(&mut SyncLog, &Connection) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.flush_outbox()?;
        f(&mut inner.log, &inner.lib)
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
        self.lock().flush_outbox()
    }

    /// Drop the log entries `horizon` covers (see
    /// [`SyncLog::prune_covered`]), once `library.db`, then the only place
    /// their effect is kept, is durable (`Durability`).
    pub fn prune_log(&self, horizon: &crate::sync::log::VersionVector) -> Result<u64> {
        self.make_durable()?;
        self.with_log(|l| l.prune_covered(horizon))
    }

    /// Make every commit to `library.db` durable now (it commits with
    /// `synchronous=NORMAL`): before the log records state that only
    /// `library.db` holds, such as a snapshot's rows (`Durability`).
    pub fn make_durable(&self) -> Result<()> {
        crate::store::make_durable(&self.lock().lib)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = inner.flush_outbox() {
            tracing::warn!("flushing the outbox on close failed (recovered on next open): {e}");
        }
    }
}

/// Members' keys from the `devices` table of `library.db`, for verifying seals.
struct MemberKeys<'c>(&'c Connection);

impl KeySource for MemberKeys<'_> {
    fn key_of(&mut self, device: Uuid) -> Result<Option<[u8; 32]>> {
        use rusqlite::OptionalExtension;
        let node_id: Option<Option<String>> = self
            .0
            .prepare_cached("SELECT node_id FROM devices WHERE uuid = ?1")?
            .query_row([device], |r| r.get(0))
            .optional()?;
        Ok(node_id.flatten().as_deref().and_then(parse_node_id))
    }
}

/// Insert `rows` (new device-owned records of `device`) with one row clock
/// `hlc`, for [`Library::commit_bulk`]; `owner_idx` is the model's owner
/// field. Returns how many were written.
fn insert_bulk_rows<M: Syncable>(
    tx: &Transaction<'_>,
    rows: impl IntoIterator<Item = M>,
    owner_idx: usize,
    hlc: u64,
    device: Uuid,
) -> Result<u64> {
    let m = M::INFO;
    let sql = new_row_insert_sql(m, m.local_fields.len());
    let mut stmt = tx.prepare_cached(&sql)?;
    let hlc_v = Value::Int(hlc as i64);
    let dev_v = Value::Uuid(device);
    let mut all: Vec<Value> = Vec::with_capacity(m.fields.len() + m.local_fields.len() + 3);
    let mut count = 0u64;
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
    Ok(count)
}
