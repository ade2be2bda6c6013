//! Read-only queries over a library's domain tables, shared by the CLI, the node
//! and the indexer.
//!
//! Rows come back as the model structs (rebuilt with [`Syncable::from_values`]),
//! so callers never depend on the table layout. Memberships count only when
//! present. Nothing here writes synced data: synced writes go through
//! [`Library::commit`]; the one write here is device-local bookkeeping
//! ([`set_bulk_operation_state`]).

use std::collections::HashMap;

use rusqlite::{Connection, ToSql};
use uuid::Uuid;

use crate::error::Result;
use crate::model::{
    values_from_row, Album, Conduit, Device, FileEntry, Location, Syncable, Tag, Volume,
};
use crate::sync::txn::Library;

mod bulk;
mod conflicts;
pub mod members;

pub use bulk::{bulk_operations, set_bulk_operation_state, BulkRecord};
pub use conflicts::{conflict_count, conflicts, ConflictRecord};

/// `SELECT uuid, <synced fields>, <local fields> FROM <table> <tail>` as models.
fn load<M: Syncable>(conn: &Connection, tail: &str, params: &[&dyn ToSql]) -> Result<Vec<M>> {
    let m = M::INFO;
    let cols: Vec<&str> = m
        .fields
        .iter()
        .chain(m.local_fields)
        .map(|f| f.name)
        .collect();
    let sql = format!("SELECT uuid, {} FROM {} {tail}", cols.join(", "), m.table);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params)?;
    let n = m.fields.len();
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: Uuid = r.get(0)?;
        let values = values_from_row(m.fields, r, 1)?;
        let local = values_from_row(m.local_fields, r, n + 1)?;
        out.push(M::from_values(id, &values, &local)?);
    }
    Ok(out)
}

/// Every member device of the library, by name.
pub fn devices(lib: &Library) -> Result<Vec<Device>> {
    lib.read(|c| load(c, "ORDER BY name, uuid", &[]))
}

/// Every tag, by name.
pub fn tags(lib: &Library) -> Result<Vec<Tag>> {
    lib.read(|c| load(c, "ORDER BY name, uuid", &[]))
}

/// An album and the number of file entries in it.
#[derive(Debug, Clone)]
pub struct AlbumSummary {
    pub album: Album,
    pub entries: u64,
}

/// Every album with its number of (present) items, by name.
pub fn albums(lib: &Library) -> Result<Vec<AlbumSummary>> {
    load_counted(
        lib,
        "ORDER BY name, uuid",
        "SELECT album, COUNT(*) FROM album_items WHERE present = 1 GROUP BY album",
        |album: Album, entries| AlbumSummary { album, entries },
    )
}

/// Every volume of every device.
pub fn volumes(lib: &Library) -> Result<Vec<Volume>> {
    lib.read(|c| load(c, "ORDER BY uuid", &[]))
}

/// A location and the number of its file entries this device holds.
#[derive(Debug, Clone)]
pub struct LocationSummary {
    pub location: Location,
    pub entries: u64,
}

/// Every location of every device, by path.
pub fn locations(lib: &Library) -> Result<Vec<LocationSummary>> {
    load_counted(
        lib,
        "ORDER BY path, uuid",
        "SELECT location, COUNT(*) FROM file_entries GROUP BY location",
        |location: Location, entries| LocationSummary { location, entries },
    )
}

/// One location by UUID.
pub fn location(lib: &Library, id: Uuid) -> Result<Option<Location>> {
    lib.read(|c| Ok(load(c, "WHERE uuid = ?1", &[&id])?.into_iter().next()))
}

/// Every conduit of the library (`conduit list`).
pub fn conduits(lib: &Library) -> Result<Vec<Conduit>> {
    lib.read(|c| load(c, "ORDER BY uuid", &[]))
}

/// One conduit, if it exists (and was not removed).
pub fn conduit(lib: &Library, id: Uuid) -> Result<Option<Conduit>> {
    lib.read(|c| Ok(load(c, "WHERE uuid = ?1", &[&id])?.into_iter().next()))
}

/// Which file entries [`file_entries`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryFilter {
    pub location: Option<Uuid>,
    pub device: Option<Uuid>,
}

/// A file entry and the names of its tags (sorted).
#[derive(Debug, Clone)]
pub struct EntryWithTags {
    pub entry: FileEntry,
    pub tags: Vec<String>,
}

/// File entries matching `filter`, by location then path, with their tags.
pub fn file_entries(lib: &Library, filter: EntryFilter) -> Result<Vec<EntryWithTags>> {
    lib.read(|c| {
        let mut clauses = Vec::new();
        let mut params: Vec<&dyn ToSql> = Vec::new();
        if let Some(l) = &filter.location {
            params.push(l);
            clauses.push(format!("location = ?{}", params.len()));
        }
        if let Some(d) = &filter.device {
            params.push(d);
            clauses.push(format!("device = ?{}", params.len()));
        }
        let mut tail = String::new();
        if !clauses.is_empty() {
            tail = format!("WHERE {} ", clauses.join(" AND "));
        }
        tail.push_str("ORDER BY location, path, uuid");
        let entries: Vec<FileEntry> = load(c, &tail, &params)?;
        let mut tags: HashMap<Uuid, Vec<String>> = HashMap::new();
        {
            let mut stmt = c.prepare_cached(
                "SELECT a.entry, t.name FROM tag_assignments a JOIN tags t ON t.uuid = a.tag \
                 WHERE a.present = 1 ORDER BY t.name, t.uuid",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                tags.entry(r.get(0)?).or_default().push(r.get(1)?);
            }
        }
        Ok(entries
            .into_iter()
            .map(|entry| EntryWithTags {
                tags: tags.remove(&entry.id).unwrap_or_default(),
                entry,
            })
            .collect())
    })
}

/// Every file entry of one location (no tags), for diffing on rescan.
pub fn location_entries(lib: &Library, location: Uuid) -> Result<Vec<FileEntry>> {
    lib.read(|c| load(c, "WHERE location = ?1", &[&location]))
}

/// One file entry by UUID.
pub fn file_entry(lib: &Library, id: Uuid) -> Result<Option<FileEntry>> {
    lib.read(|c| Ok(load(c, "WHERE uuid = ?1", &[&id])?.into_iter().next()))
}

/// The file entry at `path` (relative to the location root, `/`-separated).
pub fn file_entry_by_path(lib: &Library, location: Uuid, path: &str) -> Result<Option<FileEntry>> {
    lib.read(|c| {
        Ok(
            load(c, "WHERE location = ?1 AND path = ?2", &[&location, &path])?
                .into_iter()
                .next(),
        )
    })
}

/// The file entries directly inside a folder of a location (`parent` `None`: the
/// location root), for refreshing one folder's listing.
pub fn child_entries(
    lib: &Library,
    location: Uuid,
    parent: Option<Uuid>,
) -> Result<Vec<FileEntry>> {
    lib.read(|c| match parent {
        Some(p) => load(c, "WHERE parent = ?1 AND location = ?2", &[&p, &location]),
        None => load(c, "WHERE location = ?1 AND parent IS NULL", &[&location]),
    })
}

/// How many file entries of a location lie strictly below `path` (a folder's
/// contents, at any depth).
pub fn count_below(lib: &Library, location: Uuid, path: &str) -> Result<u64> {
    // Paths below `p` sort between `p/` and `p0` ('0' follows '/').
    let (lo, hi) = (format!("{path}/"), format!("{path}0"));
    lib.read(|c| {
        Ok(c.prepare_cached(
            "SELECT COUNT(*) FROM file_entries WHERE location = ?1 AND path >= ?2 AND path < ?3",
        )?
        .query_row(rusqlite::params![location, lo, hi], |r| r.get::<_, i64>(0))? as u64)
    })
}

/// Paths (relative to the location root) of the entries of `location` that
/// carry `tag`, files and folders alike, by path: an Offload conduit's pinned
/// set (`conduit::offload::Pinned`).
pub fn tagged_paths(lib: &Library, location: Uuid, tag: Uuid) -> Result<Vec<String>> {
    lib.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT e.path FROM tag_assignments a JOIN file_entries e ON e.uuid = a.entry \
             WHERE a.tag = ?1 AND a.present = 1 AND e.location = ?2 ORDER BY e.path",
        )?;
        let rows = stmt.query_map(rusqlite::params![tag, location], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    })
}

/// The entries below `path` in a location (not `path` itself), by path.
pub fn entries_below(lib: &Library, location: Uuid, path: &str) -> Result<Vec<FileEntry>> {
    let (lo, hi) = (format!("{path}/"), format!("{path}0"));
    lib.read(|c| {
        load(
            c,
            "WHERE location = ?1 AND path >= ?2 AND path < ?3 ORDER BY path",
            &[&location, &lo, &hi],
        )
    })
}

/// Every `M` (ordered by `tail`), each paired by `make` with its count from
/// `count_sql` (`SELECT uuid, COUNT(*) ... GROUP BY uuid`; 0 when absent).
fn load_counted<M: Syncable, S>(
    lib: &Library,
    tail: &str,
    count_sql: &str,
    make: impl Fn(M, u64) -> S,
) -> Result<Vec<S>> {
    lib.read(|c| {
        let models: Vec<M> = load(c, tail, &[])?;
        let counts = count_by(c, count_sql)?;
        Ok(models
            .into_iter()
            .map(|model| {
                let n = counts.get(&model.id()).copied().unwrap_or(0);
                make(model, n)
            })
            .collect())
    })
}

/// `SELECT key, COUNT(*) ... GROUP BY key` as a map.
fn count_by(c: &Connection, sql: &str) -> Result<HashMap<Uuid, u64>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = HashMap::new();
    while let Some(r) = rows.next()? {
        out.insert(r.get(0)?, r.get::<_, i64>(1)? as u64);
    }
    Ok(out)
}
