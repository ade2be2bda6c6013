//! SQLite files of a library: opening, pragmas, versioned migrations.

pub mod schema;

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
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -16_000)?; // 16 MB
    conn.set_prepared_statement_cache_capacity(256);
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
