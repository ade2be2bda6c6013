//! The `meta` table of `library.db` and `sync.db`: one owner for its keys and
//! for the SQL that reads and writes them.
//!
//! Both databases keep small named values here (the library's identity, the
//! applied-log watermark, the adopted term, floors that must survive pruning).
//! Every reader and writer goes through these functions, so the key names and
//! the upsert live in one place.

use rusqlite::types::FromSql;
use rusqlite::{Connection, OptionalExtension, ToSql};

use crate::error::Result;

/// Keys of the `meta` table, named once so that no two places spell them apart.
pub mod key {
    /// `library.db`: the library's UUID (blob).
    pub const ID: &str = "id";
    /// `library.db`: the library's display name.
    pub const NAME: &str = "name";
    /// `library.db`: the highest log position (a segment id of `sync.db`) whose
    /// entries are applied to `library.db`.
    pub const APPLIED_LOG_ID: &str = "applied_log_id";
    /// `sync.db`: epoch of the last term this device adopted.
    pub const TERM_EPOCH: &str = "term_epoch";
    /// `sync.db`: leader of the last term this device adopted.
    pub const TERM_LEADER: &str = "term_leader";
    /// `sync.db`: highest library sequence ever assigned (survives pruning).
    pub const SEQUENCED_THROUGH: &str = "sequenced_through";
    /// `sync.db`: highest HLC time absorbed outside the log (snapshot rows).
    pub const HLC_FLOOR: &str = "hlc_floor";
}

/// The value stored under `key`, `None` when absent.
pub fn meta_get<T: FromSql>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Store `value` under `key`, replacing what was there.
pub fn meta_set(conn: &Connection, key: &str, value: impl ToSql) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(rusqlite::params![key, value])?;
    Ok(())
}

/// Store `value` under `key` unless a larger value is there: for floors and
/// high-water marks that must never go back.
pub fn meta_raise(conn: &Connection, key: &str, value: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(rusqlite::params![key, value])?;
    Ok(())
}
