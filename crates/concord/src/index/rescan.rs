//! Rescanning a whole location: walk it again, diff by path against the stored
//! entries and write the differences by size (DESIGN §7). Also what every
//! rescan and refresh of a location shares: one at a time per location, and
//! only on the device that owns it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{FileEntry, Location};
use crate::query;
use crate::sync::txn::Library;

use super::moves::ordered_diffs;
use super::offloaded::kept_while_absent;
use super::progress::ProgressCallback;
use super::walk::{scan, Scan};
use super::write::{to_rows, write_diffs, Diff, RescanOptions, WriteMode};

/// What a rescan or refresh changed, for the caller to show (the CLI, a job's
/// status) and for tests to check how it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// New entries written, including the contents of new folders.
    pub inserted: u64,
    /// Entries whose kind, size, time or parent changed.
    pub updated: u64,
    /// Entries deleted, including the contents of deleted folders.
    pub deleted: u64,
    /// Entries the walk could not read (see [`super::Scan::skipped`]).
    pub skipped: u64,
    /// How the changes were written.
    pub mode: WriteMode,
}

/// One lock per location in this process: rescans and refreshes of the same
/// location (a watcher, an index job, the CLI) run one at a time, since each
/// diffs against what the previous one wrote.
pub(super) fn location_lock(location: Uuid) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<Uuid, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(location).or_default().clone()
}

/// A location of this device whose folder is there.
pub(super) fn own_location(lib: &Library, location: Uuid) -> Result<Location> {
    let loc = query::location(lib, location)?.ok_or(Error::NotFound {
        model: "location",
        id: location,
    })?;
    if loc.device != lib.device() {
        return Err(Error::Invalid(format!(
            "location {} belongs to device {}; rescan it on that device",
            loc.name, loc.device
        )));
    }
    if !Path::new(&loc.path).is_dir() {
        return Err(Error::Invalid(format!(
            "{} is missing or not a folder; reconnect its drive, or remove the location",
            loc.path
        )));
    }
    Ok(loc)
}

/// Walk a location of this device again and write what changed, by size.
pub fn rescan_location(
    lib: &Library,
    location: Uuid,
    progress: ProgressCallback<'_>,
) -> Result<RescanReport> {
    rescan_location_with(lib, location, RescanOptions::default(), progress)
}

/// [`rescan_location`] with a choice of write policy and a cancel flag.
pub fn rescan_location_with(
    lib: &Library,
    location: Uuid,
    opts: RescanOptions<'_>,
    progress: ProgressCallback<'_>,
) -> Result<RescanReport> {
    let lock = location_lock(location);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    let me = lib.device();
    let loc = own_location(lib, location)?;
    let scan = scan(Path::new(&loc.path), progress)?;
    opts.check()?;
    let stored = query::location_entries(lib, location)?;
    let mut report = RescanReport {
        skipped: scan.skipped,
        ..RescanReport::default()
    };
    let diffs = diff_by_path(&scan, &stored, me, location, &mut report);
    let n = (report.inserted + report.updated + report.deleted) as usize;
    report.mode = write_diffs(lib, &loc, diffs, n, opts, progress)?;
    Ok(report)
}

/// The differences between a walk of a whole location and its stored entries,
/// matched by path and counted in `report`: entries renamed or moved on disk
/// first (they keep their UUID, see `moves`), then deletes (a folder's delete
/// takes its contents with it), then inserts (parents before contents) and
/// updates. Entries below a path the walk could not read are kept, and so
/// are offloaded entries and the absent folders holding them (`offloaded`).
fn diff_by_path(
    scan: &Scan,
    stored: &[FileEntry],
    me: Uuid,
    location: Uuid,
    report: &mut RescanReport,
) -> Vec<Diff> {
    let by_path: HashMap<&str, &FileEntry> = stored.iter().map(|e| (e.path.as_str(), e)).collect();
    let rows = to_rows(&scan.entries, me, location, None, |p| {
        by_path.get(p).copied()
    });

    let mut updates = Vec::new();
    let mut new_rows = Vec::new();
    for row in rows {
        match by_path.get(row.path.as_str()) {
            None => new_rows.push(row),
            Some(old) if old.offloaded_to.is_some() => {
                // A file is back where an offloaded entry's was: local again.
                report.updated += 1;
                updates.push(Diff::Returned(row));
            }
            Some(old) => {
                if old.kind != row.kind
                    || old.size != row.size
                    || old.modified != row.modified
                    || old.parent != row.parent
                {
                    report.updated += 1;
                    updates.push(Diff::Update(row));
                }
            }
        }
    }
    let seen: HashSet<&str> = scan.entries.iter().map(|s| s.path.as_str()).collect();
    let kept = |p: &str| {
        scan.incomplete
            .iter()
            .any(|i| i.is_empty() || at_or_below(p, i))
    };
    let mut vanished: Vec<FileEntry> = stored
        .iter()
        .filter(|e| !seen.contains(e.path.as_str()) && !kept(&e.path))
        .cloned()
        .collect();
    let offloaded = kept_while_absent(&vanished);
    vanished.retain(|e| !offloaded.contains(&e.id));
    let (counts, diffs) = ordered_diffs(&vanished, new_rows, updates);
    report.inserted = counts.inserted;
    report.updated += counts.moved;
    report.deleted = counts.deleted;
    diffs
}

/// Is `path` equal to `dir` or inside it (both relative, `/`-separated)?
pub(super) fn at_or_below(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}
