//! SQLite files of a library: opening, pragmas, versioned migrations, and the
//! one owner of the SQL shared across the crate (the `meta` table, INSERT
//! builders, conversions of data older versions left).

pub(crate) mod legacy;
pub mod meta;
pub mod schema;
pub mod sql;

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// Open (creating if asked) a database in WAL mode with `synchronous=NORMAL`, and
/// bring its schema up to date with `migrations`.
pub fn open_db(path: &Path, create: bool, migrations: &[String]) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = Connection::open_with_flags(path, flags)?;
    // 0600 before the first write, so the `-wal` and `-shm` SQLite creates
    // take the same mode; existing ones are tightened too.
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        crate::private::restrict(Path::new(&file))?;
    }
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -16_000)?; // 16 MB
    conn.set_prepared_statement_cache_capacity(256);
    // Write transactions take the write lock when they begin, where a busy
    // lock is waited for (`busy_timeout`). A deferred transaction that reads
    // first and then writes gets SQLITE_BUSY at once, without waiting, if
    // another connection (a checkpointer, another process) holds a lock then.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, migrations: &[String]) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let target = migrations.len() as i64;
    if version > target {
        return Err(Error::Other(format!(
            "database schema version {version} is newer than this build supports ({target}); \
             upgrade concord"
        )));
    }
    for (i, step) in migrations.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Generated SQL text, built once per `(model, statement kind, field set)` and kept
/// for the life of the process, so hot paths neither format nor allocate it again.
/// The number of distinct keys is bounded by the models and the field sets their
/// writes use.
pub(crate) fn cached_sql(
    model: &'static crate::model::ModelInfo,
    kind: &'static str,
    fields: u64,
    build: impl FnOnce() -> String,
) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (&'static str, &'static str, u64);
    static CACHE: OnceLock<Mutex<HashMap<Key, &'static str>>> = OnceLock::new();
    let key = (model.name, kind, fields);
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key)
        .or_insert_with(|| Box::leak(build().into_boxed_str()))
}

/// Make every commit of `conn`'s database durable now, whatever its
/// `synchronous` setting: a FULL checkpoint (SQLite syncs the WAL before it
/// copies it into the database). For state that another file or another
/// device will count on (ARCHITECTURE.md, "Durability"). An error when a
/// reader kept it from completing within the busy timeout, tried a few
/// times: a reader of another thread (a sync answer, a status query) holds
/// its snapshot only briefly, so a loaded machine should not fail a join.
pub(crate) fn make_durable(conn: &Connection) -> Result<()> {
    const ATTEMPTS: u32 = 8;
    for attempt in 1..=ATTEMPTS {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(std::time::Duration::from_millis(25 << attempt.min(5)));
        }
    }
    Err(Error::Other(
        "library.db could not be synced to disk (busy); try again".into(),
    ))
}

/// WAL pages after which a commit asks for a checkpoint (SQLite's default
/// autocheckpoint threshold).
const CHECKPOINT_PAGES: i32 = 1000;
/// WAL pages after which the committing connection checkpoints itself: the
/// background thread cannot finish while commits keep coming faster than it
/// copies (the WAL restarts only when a writer finds it fully copied), which
/// a stream of small commits does.
const INLINE_CHECKPOINT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// Checkpoint `conn`'s WAL on a background thread instead of in the commit that
/// crossed the threshold (SQLite's autocheckpoint copies the WAL into the
/// database inside that commit). A writer's commits then do not wait for the
/// copy: on a multi-core machine it runs alongside them (B1 in
/// PERFORMANCE.md). The thread, with its own connection to `path`, is started
/// at the first checkpoint needed and ends when `conn` closes. A PASSIVE
/// checkpoint neither blocks nor waits for the writer; if the WAL still grows
/// past `INLINE_CHECKPOINT_PAGES` the writer checkpoints it itself, and if the
/// thread cannot start, every checkpoint runs inline (at that size). Durability is
/// unchanged: a commit is in the WAL either way.
pub(crate) fn checkpoint_in_background(conn: &mut Connection, path: &Path) -> Result<()> {
    let path = path.to_path_buf();
    let mut worker: Option<Option<Checkpointer>> = None;
    // WAL size at the last poke: a stream of small commits pokes again only
    // after another `CHECKPOINT_PAGES / 4` pages, not after every commit.
    let mut poked_at = 0;
    conn.wal_hook(Some(
        move |wal: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            if pages < poked_at {
                poked_at = 0; // the WAL restarted
            }
            if pages < CHECKPOINT_PAGES || pages < poked_at + CHECKPOINT_PAGES / 4 {
                return Ok(());
            }
            let w = worker.get_or_insert_with(|| Checkpointer::spawn(&path));
            match w {
                Some(w) if pages < INLINE_CHECKPOINT_PAGES => {
                    poked_at = pages;
                    w.poke();
                }
                // Never an error from here: SQLite would report the commit,
                // which has happened, as failed. A busy checkpoint is retried
                // at the next commit.
                _ => {
                    let _ = wal.checkpoint();
                }
            }
            Ok(())
        },
    ))?;
    Ok(())
}

/// A thread that runs PASSIVE checkpoints on its own connection when poked.
struct Checkpointer {
    poke: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> Option<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("concord-checkpoint".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!("background checkpoint failed (retried later): {e}");
                    }
                }
            })
            .ok()?;
        Some(Checkpointer {
            poke: Some(tx),
            thread: Some(thread),
        })
    }

    fn poke(&self) {
        if let Some(tx) = &self.poke {
            // Full: a checkpoint is already due, which covers this commit too.
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.poke.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
