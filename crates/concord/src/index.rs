//! The directory indexer: turns a real folder into a location and its file
//! entries, and keeps them up to date on rescan.
//!
//! - [`scan`] walks a folder with `std::fs`, never following symbolic links (so
//!   it cannot loop); links are recorded as [`entry_kind::SYMLINK`]. Entries it
//!   cannot read, and names that are not UTF-8, are skipped with a warning and
//!   counted; sockets, FIFOs and device nodes are left out.
//! - [`add_location`] finds or creates the [`Volume`] of the folder's filesystem
//!   (see [`volume_identity`]), inserts the [`Location`] and writes every entry
//!   with ONE `commit_bulk` (DESIGN §7).
//! - [`rescan_location`] walks again, diffs by path against the stored entries,
//!   and writes the differences by size (DESIGN §7): fewer than
//!   [`SINGLE_COMMIT_BELOW`] as single commits, up to [`BATCH_MAX`] as one batch,
//!   more with new entries through `commit_bulk` and the rest in batches.
//!   [`rescan_location_with`] can instead keep to batches of at most [`BATCH_MAX`]
//!   ([`WritePolicy::Windows`]) and be cancelled.
//! - [`refresh_dirs`] does the same for a few folders of a location, reading only
//!   their listings (and the contents of folders that are new): what a filesystem
//!   watcher calls.
//!
//! Rescans and refreshes of one location run one at a time in a process.
//!
//! Progress is reported through a `FnMut(done, total)` callback: during the walk
//! `total` is `None` and `done` counts entries found; while writing, `total` is
//! the number of rows to write.

mod volume;
mod walk;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{entry_kind, FileEntry, Location, Value, Volume};
use crate::query;
use crate::sync::entry::{BulkOperation, MAX_TEXT_BYTES};

use crate::sync::txn::{Change, Library, TxCtx};
pub use volume::{volume_identity, VolumeIdentity};
pub use walk::{scan, Scan, ScannedEntry};

/// Rescans with fewer changes than this write each as a single commit.
pub const SINGLE_COMMIT_BELOW: usize = 10;
/// Rescans with up to this many changes write them as one batch; past it, new
/// entries go through `commit_bulk` and updates and deletes in batches of this size.
pub const BATCH_MAX: usize = 1000;
/// How often (in entries) the walk reports progress.
pub(crate) const PROGRESS_EVERY: usize = 1024;

/// A progress callback: `(done, total)`, `total` unknown while walking.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// A location just added, and what indexing it found.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub location: Location,
    pub volume: Volume,
    /// File entries written.
    pub entries: u64,
    /// Entries skipped (see [`Scan::skipped`]).
    pub skipped: u64,
}

/// A folder given by the user: absolute, canonical, an existing directory,
/// with a UTF-8 path.
fn checked_dir(path: &Path) -> Result<(PathBuf, String)> {
    let canon = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "{} does not exist; give the path of an existing folder",
                path.display()
            )))
        }
        Err(e) => {
            return Err(Error::Invalid(format!(
                "cannot access {}: {e}",
                path.display()
            )))
        }
    };
    if !canon.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a folder; give the path of a folder to index",
            path.display()
        )));
    }
    let s = canon
        .to_str()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not valid UTF-8; concord indexes UTF-8 paths only",
                canon.display()
            ))
        })?
        .to_string();
    if s.len() > MAX_TEXT_BYTES {
        return Err(Error::Invalid(format!(
            "the path is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok((canon, s))
}

/// Index `path` as a new location of this device in `lib`.
///
/// Refuses a missing path, a path that is not a folder, and a folder inside or
/// around a location this device already has in the library.
pub fn add_location(lib: &Library, path: &Path, progress: Progress<'_>) -> Result<Indexed> {
    let me = lib.device();
    let (canon, path_str) = checked_dir(path)?;
    for l in query::locations(lib)?.into_iter().map(|s| s.location) {
        if l.device != me {
            continue;
        }
        let other = Path::new(&l.path);
        if canon.starts_with(other) {
            return Err(Error::Invalid(format!(
                "{} is already indexed as part of location {} ({}); rescan that location instead",
                canon.display(),
                l.name,
                l.id
            )));
        }
        if other.starts_with(&canon) {
            return Err(Error::Invalid(format!(
                "{} contains location {} ({}); remove that location first",
                canon.display(),
                l.name,
                l.id
            )));
        }
    }
    let ident = volume_identity(&canon)?;
    // Walk before writing anything, so a failed walk changes nothing.
    let scan = scan(&canon, progress)?;

    let existing = query::volumes(lib)?
        .into_iter()
        .find(|v| v.device == me && v.fingerprint == ident.fingerprint);
    let (volume, new_volume) = match existing {
        Some(v) => (v, false),
        None => (
            Volume {
                id: Uuid::now_v7(),
                device: me,
                name: ident.mount_point.clone(),
                fingerprint: ident.fingerprint.clone(),
                mount_point: ident.mount_point.clone(),
            },
            true,
        ),
    };
    let name = canon
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(&path_str)
        .to_string();
    let location = Location {
        id: Uuid::now_v7(),
        device: me,
        volume: volume.id,
        path: path_str.clone(),
        name,
    };
    let mut changes = Vec::new();
    if new_volume {
        changes.push(Change::insert(&volume));
    }
    changes.push(Change::insert(&location));
    lib.commit_batch(changes)?;

    let rows = to_rows(&scan.entries, me, location.id, None, |_| None);
    let total = rows.len() as u64;
    let written = write_bulk(
        lib,
        rows,
        BulkOperation::InitialIndex {
            location: location.id,
            path: path_str,
            volume_fingerprint: volume.fingerprint.clone(),
            count: 0,
        },
        progress,
    );
    if let Err(e) = written {
        // Undo the location so that a failed add leaves no empty location behind.
        if let Err(undo) = lib.commit(Change::delete::<Location>(location.id)) {
            tracing::warn!(
                "could not remove the half-added location {}: {undo}",
                location.id
            );
        }
        return Err(e);
    }
    Ok(Indexed {
        location,
        volume,
        entries: total,
        skipped: scan.skipped,
    })
}

/// File-entry rows for scanned entries; `existing` gives the UUID already
/// stored for a path, if any (parents come before children, so one pass names
/// every parent).
fn to_rows<'a>(
    scanned: &[ScannedEntry],
    device: Uuid,
    location: Uuid,
    root_parent: Option<Uuid>,
    existing: impl Fn(&str) -> Option<&'a FileEntry>,
) -> Vec<FileEntry> {
    let mut rows: Vec<FileEntry> = Vec::with_capacity(scanned.len());
    for s in scanned {
        let id = existing(&s.path).map_or_else(Uuid::now_v7, |e| e.id);
        let parent = s.parent.map_or(root_parent, |i| Some(rows[i].id));
        rows.push(FileEntry {
            id,
            device,
            location,
            parent,
            name: s.name.clone(),
            path: s.path.clone(),
            kind: s.kind,
            size: s.size,
            modified: s.modified,
            inode: s.inode,
        });
    }
    rows
}

/// One `commit_bulk` of `rows`, reporting write progress.
fn write_bulk(
    lib: &Library,
    rows: Vec<FileEntry>,
    op: BulkOperation,
    progress: Progress<'_>,
) -> Result<()> {
    let total = rows.len() as u64;
    let mut done = 0u64;
    progress(0, Some(total));
    let iter = rows.into_iter().inspect(|_| {
        done += 1;
        if done.is_multiple_of(PROGRESS_EVERY as u64) {
            progress(done, Some(total));
        }
    });
    lib.commit_bulk(iter, op)?;
    progress(total, Some(total));
    Ok(())
}

/// What a rescan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescanReport {
    pub inserted: u64,
    pub updated: u64,
    /// Entries deleted, including the contents of deleted folders.
    pub deleted: u64,
    pub skipped: u64,
    pub mode: WriteMode,
}

/// How a rescan wrote its changes (DESIGN §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Nothing changed.
    #[default]
    None,
    /// Fewer than [`SINGLE_COMMIT_BELOW`] changes, one commit each.
    Single,
    /// Up to [`BATCH_MAX`] changes in one batch.
    Batch,
    /// More: new entries in one `commit_bulk`, the rest in batches.
    Bulk,
    /// More, written in batches of at most [`BATCH_MAX`] ([`WritePolicy::Windows`]).
    Batches,
}

enum Diff {
    Insert(FileEntry),
    Update(FileEntry),
    /// A gone entry whose folder is not gone too (its contents follow it).
    Delete(Uuid),
}

/// How a rescan writes the differences it found (DESIGN §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WritePolicy {
    /// By size: fewer than [`SINGLE_COMMIT_BELOW`] as single commits, up to
    /// [`BATCH_MAX`] as one batch, more with new entries through `commit_bulk`
    /// (which peers do not receive through the log; they pull them).
    #[default]
    BySize,
    /// Never `commit_bulk`: fewer than [`SINGLE_COMMIT_BELOW`] as single commits,
    /// otherwise batches of at most [`BATCH_MAX`] changes each, so that every
    /// change reaches peers through the log (the filesystem watcher's choice).
    Windows,
}

/// Options of [`rescan_location_with`] and [`refresh_dirs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RescanOptions<'a> {
    pub policy: WritePolicy,
    /// When set, the rescan stops before its next write with an error; what was
    /// already committed stays (each commit is complete on its own).
    pub cancel: Option<&'a AtomicBool>,
}

impl RescanOptions<'_> {
    fn check(&self) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Other("the rescan was cancelled".into()));
        }
        Ok(())
    }
}

/// One lock per location in this process: rescans and refreshes of the same
/// location (a watcher, an index job, the CLI) run one at a time, since each
/// diffs against what the previous one wrote.
fn location_lock(location: Uuid) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<Uuid, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(location).or_default().clone()
}

/// A location of this device whose folder is there.
fn own_location(lib: &Library, location: Uuid) -> Result<Location> {
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
    progress: Progress<'_>,
) -> Result<RescanReport> {
    rescan_location_with(lib, location, RescanOptions::default(), progress)
}

/// [`rescan_location`] with a choice of write policy and a cancel flag.
pub fn rescan_location_with(
    lib: &Library,
    location: Uuid,
    opts: RescanOptions<'_>,
    progress: Progress<'_>,
) -> Result<RescanReport> {
    let lock = location_lock(location);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    let me = lib.device();
    let loc = own_location(lib, location)?;
    let scan = scan(Path::new(&loc.path), progress)?;
    opts.check()?;
    let stored = query::location_entries(lib, location)?;
    let by_path: HashMap<&str, &FileEntry> = stored.iter().map(|e| (e.path.as_str(), e)).collect();
    let rows = to_rows(&scan.entries, me, location, None, |p| {
        by_path.get(p).copied()
    });

    let mut diffs = Vec::new();
    let mut report = RescanReport {
        skipped: scan.skipped,
        ..RescanReport::default()
    };
    for row in rows {
        match by_path.get(row.path.as_str()) {
            None => {
                report.inserted += 1;
                diffs.push(Diff::Insert(row));
            }
            Some(old) => {
                if old.kind != row.kind
                    || old.size != row.size
                    || old.modified != row.modified
                    || old.parent != row.parent
                {
                    report.updated += 1;
                    diffs.push(Diff::Update(row));
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
    let gone: HashSet<Uuid> = stored
        .iter()
        .filter(|e| !seen.contains(e.path.as_str()) && !kept(&e.path))
        .map(|e| e.id)
        .collect();
    report.deleted = gone.len() as u64;
    // Deletes first: a folder's delete takes its contents with it.
    let mut deletes: Vec<Diff> = stored
        .iter()
        .filter(|e| gone.contains(&e.id) && !e.parent.is_some_and(|p| gone.contains(&p)))
        .map(|e| Diff::Delete(e.id))
        .collect();
    deletes.append(&mut diffs);
    let n = (report.inserted + report.updated + report.deleted) as usize;
    report.mode = write_diffs(lib, &loc, deletes, n, opts, progress)?;
    Ok(report)
}

/// Is `path` equal to `dir` or inside it (both relative, `/`-separated)?
fn at_or_below(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The folder containing a relative path (`""` for the root's children).
fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Bring some folders of a location of this device up to date, reading only
/// those folders: each folder's listing is compared by name with its stored
/// children. A new entry is inserted (a new folder with its whole contents), a
/// gone one is deleted (a folder with its contents), a changed size or time is
/// updated, and an entry that changed kind (a file replaced by a folder) is
/// deleted and inserted anew. This is what the filesystem watcher calls with the
/// folders around the paths it saw change.
///
/// `dirs` are paths relative to the location root, `/`-separated, `""` for the
/// root. A folder that is no longer there, or that is not stored as a folder yet,
/// stands for its nearest ancestor that is (whose listing shows the change).
/// Entries inside a folder are only looked at when that folder is given (or is
/// new): a change deeper down is the business of that deeper folder.
pub fn refresh_dirs(
    lib: &Library,
    location: Uuid,
    dirs: &[String],
    opts: RescanOptions<'_>,
    progress: Progress<'_>,
) -> Result<RescanReport> {
    let lock = location_lock(location);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    let me = lib.device();
    let loc = own_location(lib, location)?;
    let root = Path::new(&loc.path);

    // Each folder as it stands: path, and stored entry (`None` for the root).
    let mut targets: HashMap<String, Option<FileEntry>> = HashMap::new();
    for d in dirs {
        let mut d: &str = d.trim_matches('/');
        let plain = Path::new(d)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            d = "";
        }
        loop {
            if d.is_empty() {
                targets.insert(String::new(), None);
                break;
            }
            let on_disk = std::fs::symlink_metadata(root.join(d)).is_ok_and(|m| m.is_dir());
            if on_disk {
                if let Some(e) = query::file_entry_by_path(lib, location, d)? {
                    if e.kind == entry_kind::DIR {
                        targets.insert(d.to_string(), Some(e));
                        break;
                    }
                }
            }
            d = parent_dir(d);
        }
    }
    let mut targets: Vec<(String, Option<FileEntry>)> = targets.into_iter().collect();
    targets.sort_by(|a, b| {
        let depth = |p: &str| {
            if p.is_empty() {
                0
            } else {
                p.matches('/').count() + 1
            }
        };
        depth(&a.0).cmp(&depth(&b.0)).then_with(|| a.0.cmp(&b.0))
    });

    let mut report = RescanReport::default();
    let (mut deletes, mut inserts, mut updates) = (Vec::new(), Vec::new(), Vec::new());
    // Folders inserted or deleted whole by this refresh: nothing below them is
    // looked at again.
    let mut whole: Vec<String> = Vec::new();
    let mut updated: HashSet<Uuid> = HashSet::new();
    for (dir, entry) in targets {
        if whole.iter().any(|w| at_or_below(&dir, w)) {
            continue;
        }
        let id = entry.as_ref().map(|e| e.id);
        // The folder's own time changes with its listing; its parent's listing
        // (which holds it) is not necessarily refreshed.
        if let Some(e) = entry {
            if let Some((modified, inode)) = walk::folder_stat(&root.join(&dir)) {
                if e.modified != modified && updated.insert(e.id) {
                    report.updated += 1;
                    updates.push(Diff::Update(FileEntry {
                        modified,
                        inode,
                        ..e
                    }));
                }
            }
        }
        let listing = match walk::scan_at(&root.join(&dir), &dir, false, &mut |_, _| {}) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(location = %location, dir = %dir, "cannot refresh a folder: {e}");
                report.skipped += 1;
                continue;
            }
        };
        report.skipped += listing.skipped;
        let stored = query::child_entries(lib, location, id)?;
        let by_name: HashMap<&str, &FileEntry> =
            stored.iter().map(|e| (e.name.as_str(), e)).collect();
        let mut listed: HashSet<&str> = HashSet::new();
        for s in &listing.entries {
            listed.insert(s.name.as_str());
            match by_name.get(s.name.as_str()) {
                Some(old) if old.kind == s.kind => {
                    let changed = old.size != s.size || old.modified != s.modified;
                    if changed && updated.insert(old.id) {
                        report.updated += 1;
                        updates.push(Diff::Update(FileEntry {
                            id: old.id,
                            device: me,
                            location,
                            parent: id,
                            name: s.name.clone(),
                            path: s.path.clone(),
                            kind: s.kind,
                            size: s.size,
                            modified: s.modified,
                            inode: s.inode,
                        }));
                    }
                }
                other => {
                    if let Some(old) = other {
                        report.deleted += 1 + query::count_below(lib, location, &old.path)?;
                        deletes.push(Diff::Delete(old.id));
                    }
                    let new = insert_new(root, s, me, location, id, progress, &mut report);
                    report.inserted += new.len() as u64;
                    inserts.extend(new.into_iter().map(Diff::Insert));
                    if other.is_some() || s.kind == entry_kind::DIR {
                        whole.push(s.path.clone());
                    }
                }
            }
        }
        for old in &stored {
            let kept = listing.incomplete.iter().any(|i| at_or_below(&old.path, i));
            if !listed.contains(old.name.as_str()) && !kept {
                report.deleted += 1 + query::count_below(lib, location, &old.path)?;
                deletes.push(Diff::Delete(old.id));
                whole.push(old.path.clone());
            }
        }
    }
    opts.check()?;
    // Deletes first (a replaced entry's path is free again), then inserts with
    // parents before contents, then updates.
    deletes.append(&mut inserts);
    deletes.append(&mut updates);
    let n = (report.inserted + report.updated + report.deleted) as usize;
    report.mode = write_diffs(lib, &loc, deletes, n, opts, progress)?;
    Ok(report)
}

/// Rows for a new entry of a refreshed folder and, for a folder, everything in it.
fn insert_new(
    root: &Path,
    s: &ScannedEntry,
    device: Uuid,
    location: Uuid,
    parent: Option<Uuid>,
    progress: Progress<'_>,
    report: &mut RescanReport,
) -> Vec<FileEntry> {
    let mut rows = to_rows(std::slice::from_ref(s), device, location, parent, |_| None);
    if s.kind == entry_kind::DIR {
        let id = rows[0].id;
        match walk::scan_at(&root.join(&s.path), &s.path, true, progress) {
            Ok(sub) => {
                report.skipped += sub.skipped;
                rows.extend(to_rows(&sub.entries, device, location, Some(id), |_| None));
            }
            // Gone or unreadable meanwhile: its contents come with a later event.
            Err(e) => tracing::warn!(path = %s.path, "cannot read a new folder: {e}"),
        }
    }
    rows
}

/// Write `diffs` (ordered: deletes, then parents before contents), which stand for
/// `n` changed entries, as `opts.policy` says.
fn write_diffs(
    lib: &Library,
    loc: &Location,
    diffs: Vec<Diff>,
    n: usize,
    opts: RescanOptions<'_>,
    progress: Progress<'_>,
) -> Result<WriteMode> {
    let mode = if n == 0 {
        WriteMode::None
    } else if n < SINGLE_COMMIT_BELOW {
        WriteMode::Single
    } else if n <= BATCH_MAX {
        WriteMode::Batch
    } else if opts.policy == WritePolicy::Windows {
        WriteMode::Batches
    } else {
        WriteMode::Bulk
    };
    let total = diffs.len() as u64;
    match mode {
        WriteMode::None => {}
        WriteMode::Single => {
            for d in diffs {
                opts.check()?;
                lib.with_tx(|ctx| write_diff(ctx, d))?;
            }
        }
        WriteMode::Batch | WriteMode::Batches => {
            let mut done = 0u64;
            let mut diffs = diffs.into_iter().peekable();
            while diffs.peek().is_some() {
                opts.check()?;
                let chunk: Vec<Diff> = diffs.by_ref().take(BATCH_MAX).collect();
                done += chunk.len() as u64;
                lib.with_tx(|ctx| chunk.into_iter().try_for_each(|d| write_diff(ctx, d)))?;
                progress(done, Some(total));
            }
        }
        WriteMode::Bulk => {
            let (inserts, others): (Vec<Diff>, Vec<Diff>) = diffs
                .into_iter()
                .partition(|d| matches!(d, Diff::Insert(_)));
            let mut others = others.into_iter().peekable();
            while others.peek().is_some() {
                opts.check()?;
                let chunk: Vec<Diff> = others.by_ref().take(BATCH_MAX).collect();
                lib.with_tx(|ctx| chunk.into_iter().try_for_each(|d| write_diff(ctx, d)))?;
            }
            if !inserts.is_empty() {
                opts.check()?;
                let fingerprint = query::volumes(lib)?
                    .into_iter()
                    .find(|v| v.id == loc.volume)
                    .map(|v| v.fingerprint)
                    .unwrap_or_default();
                let rows = inserts
                    .into_iter()
                    .filter_map(|d| match d {
                        Diff::Insert(r) => Some(r),
                        _ => None,
                    })
                    .collect();
                write_bulk(
                    lib,
                    rows,
                    BulkOperation::Rescan {
                        location: loc.id,
                        path: loc.path.clone(),
                        volume_fingerprint: fingerprint,
                        count: 0,
                    },
                    progress,
                )?;
            }
        }
    }
    Ok(mode)
}

fn write_diff(ctx: &mut TxCtx<'_, '_>, d: Diff) -> Result<()> {
    match d {
        Diff::Insert(row) => ctx.log(Change::insert(&row)),
        Diff::Delete(id) => ctx.log(Change::delete::<FileEntry>(id)),
        Diff::Update(row) => {
            ctx.log(
                Change::update::<FileEntry>(row.id)
                    .set("kind", row.kind)
                    .set("size", row.size)
                    .set("modified", Value::from(row.modified))
                    .set("parent", Value::from(row.parent)),
            )?;
            // The inode is device-local: not synced, so written directly.
            ctx.sql().execute(
                "UPDATE file_entries SET inode = ?1 WHERE uuid = ?2",
                rusqlite::params![row.inode, row.id],
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::SystemClock;

    fn lib(dir: &Path) -> Library {
        let dev = Uuid::now_v7();
        Library::create(dir, Uuid::now_v7(), "t", dev, Box::new(SystemClock)).unwrap()
    }

    fn log_len(l: &Library) -> u64 {
        l.with_log(|log| log.count()).unwrap()
    }

    fn no_progress() -> impl FnMut(u64, Option<u64>) {
        |_, _| {}
    }

    #[test]
    fn index_then_rescan_by_size() {
        let tmp = tempfile::tempdir().unwrap();
        let l = lib(&tmp.path().join("lib"));
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.txt"), "hello").unwrap();
        std::fs::write(root.join("top.txt"), "x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("..", root.join("a/loop")).unwrap();

        let before = log_len(&l);
        let idx = add_location(&l, &root, &mut no_progress()).unwrap();
        assert_eq!(idx.entries, if cfg!(unix) { 5 } else { 4 });
        // volume + location + one bulk entry
        assert_eq!(log_len(&l) - before, 3);
        let entries = query::location_entries(&l, idx.location.id).unwrap();
        let f = entries.iter().find(|e| e.path == "a/b/f.txt").unwrap();
        let b = entries.iter().find(|e| e.path == "a/b").unwrap();
        assert_eq!(f.parent, Some(b.id));
        assert_eq!(f.size, 5);
        assert_eq!(entries.iter().find(|e| e.path == "a").unwrap().parent, None);

        // Nothing changed: nothing written.
        let before = log_len(&l);
        let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
        assert_eq!(r.mode, WriteMode::None);
        assert_eq!(log_len(&l), before);

        // A few changes: single commits.
        std::fs::write(root.join("a/b/f.txt"), "hello world").unwrap();
        std::fs::remove_file(root.join("top.txt")).unwrap();
        std::fs::write(root.join("new.txt"), "n").unwrap();
        let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
        assert_eq!(r.mode, WriteMode::Single);
        assert_eq!((r.inserted, r.deleted), (1, 1));
        assert!(r.updated >= 1);

        // Twenty new files: one batch.
        std::fs::create_dir(root.join("many")).unwrap();
        for i in 0..20 {
            std::fs::write(root.join(format!("many/{i}")), "m").unwrap();
        }
        let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
        assert_eq!(r.mode, WriteMode::Batch);
        assert_eq!(r.inserted, 21);

        // Removing the folder deletes its contents through the folder's delete.
        std::fs::remove_dir_all(root.join("many")).unwrap();
        let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
        assert_eq!(r.deleted, 21);
        assert!(query::location_entries(&l, idx.location.id)
            .unwrap()
            .iter()
            .all(|e| !e.path.starts_with("many")));

        // Over a thousand new files: one bulk entry for the inserts.
        std::fs::create_dir(root.join("bulk")).unwrap();
        for i in 0..1100 {
            std::fs::write(root.join(format!("bulk/{i}")), "").unwrap();
        }
        let before = log_len(&l);
        let r = rescan_location(&l, idx.location.id, &mut no_progress()).unwrap();
        assert_eq!(r.mode, WriteMode::Bulk);
        assert_eq!(r.inserted, 1101);
        // The root's mtime changed: one update batch, then one bulk entry.
        assert!(log_len(&l) - before <= 1 + r.updated);
        assert_eq!(
            query::location_entries(&l, idx.location.id).unwrap().len(),
            1101 + if cfg!(unix) { 5 } else { 4 }
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn skips_non_utf8_names_and_reports_progress() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let l = lib(&tmp.path().join("lib"));
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ok.txt"), "").unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
        std::fs::write(root.join(bad), "").unwrap();
        let mut calls = Vec::new();
        let idx = add_location(&l, &root, &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!((idx.entries, idx.skipped), (1, 1));
        assert_eq!(calls.last(), Some(&(1, Some(1))));
        assert!(calls.contains(&(1, None)), "walk progress: {calls:?}");
    }

    #[test]
    fn refuses_nested_and_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let l = lib(&tmp.path().join("lib"));
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("inner")).unwrap();
        std::fs::write(root.join("file"), "").unwrap();
        add_location(&l, &root.join("inner"), &mut no_progress()).unwrap();
        assert!(add_location(&l, &root, &mut no_progress()).is_err());
        assert!(add_location(&l, &root.join("inner"), &mut no_progress()).is_err());
        assert!(add_location(&l, &root.join("missing"), &mut no_progress()).is_err());
        assert!(add_location(&l, &root.join("file"), &mut no_progress()).is_err());
    }

    /// The stored entries of a location are exactly what a walk finds now: same
    /// paths, kinds, sizes and times, and every parent is the entry of the
    /// containing folder.
    fn assert_matches_disk(l: &Library, location: Uuid, root: &Path) {
        let stored = query::location_entries(l, location).unwrap();
        let by_id: HashMap<Uuid, &FileEntry> = stored.iter().map(|e| (e.id, e)).collect();
        let mut have: Vec<(String, i64, i64, Option<i64>, String)> = stored
            .iter()
            .map(|e| {
                let parent = e.parent.map_or(String::new(), |p| by_id[&p].path.clone());
                (e.path.clone(), e.kind, e.size, e.modified, parent)
            })
            .collect();
        have.sort();
        let walked = scan(root, &mut no_progress()).unwrap();
        let mut want: Vec<(String, i64, i64, Option<i64>, String)> = walked
            .entries
            .iter()
            .map(|s| {
                let parent = s
                    .parent
                    .map_or(String::new(), |i| walked.entries[i].path.clone());
                (s.path.clone(), s.kind, s.size, s.modified, parent)
            })
            .collect();
        want.sort();
        assert_eq!(have, want);
    }

    #[test]
    fn refresh_dirs_reads_only_the_given_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let l = lib(&tmp.path().join("lib"));
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.txt"), "hello").unwrap();
        std::fs::write(root.join("a/g.txt"), "g").unwrap();
        std::fs::write(root.join("top.txt"), "x").unwrap();
        let id = add_location(&l, &root, &mut no_progress())
            .unwrap()
            .location
            .id;
        let opts = RescanOptions::default();
        let refresh = |dirs: &[&str]| {
            let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
            refresh_dirs(&l, id, &dirs, opts, &mut no_progress()).unwrap()
        };

        // Nothing changed: nothing written.
        let before = log_len(&l);
        assert_eq!(refresh(&["", "a", "a/b"]).mode, WriteMode::None);
        assert_eq!(log_len(&l), before);

        // A change in a folder not given is not seen; given, it is.
        std::fs::write(root.join("a/b/f.txt"), "hello, world").unwrap();
        assert_eq!(refresh(&["a"]).updated, 0);
        let r = refresh(&["a/b"]);
        assert_eq!((r.inserted, r.updated, r.deleted), (0, 1, 0));
        assert_matches_disk(&l, id, &root);

        // A new folder with contents, given by a path inside it that is not
        // stored yet: its nearest stored ancestor is read, the folder walked.
        std::fs::create_dir_all(root.join("a/new/deeper")).unwrap();
        std::fs::write(root.join("a/new/deeper/x"), "1").unwrap();
        std::fs::write(root.join("a/new/y"), "22").unwrap();
        std::fs::remove_file(root.join("top.txt")).unwrap();
        let r = refresh(&["a/new/deeper", ""]);
        assert_eq!((r.inserted, r.deleted), (4, 1));
        assert_matches_disk(&l, id, &root);

        // A renamed folder: the old path goes with its contents, the new comes.
        std::fs::rename(root.join("a/new"), root.join("a/renamed")).unwrap();
        let r = refresh(&["a", "a/new"]);
        assert_eq!((r.inserted, r.deleted), (4, 4));
        assert_matches_disk(&l, id, &root);

        // A file replaced by a folder of the same name, and a folder by a file.
        std::fs::remove_file(root.join("a/g.txt")).unwrap();
        std::fs::create_dir(root.join("a/g.txt")).unwrap();
        std::fs::write(root.join("a/g.txt/inside"), "i").unwrap();
        std::fs::remove_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b"), "now a file").unwrap();
        refresh(&["a/b", "a/g.txt"]);
        assert_matches_disk(&l, id, &root);

        // A path that leaves the location is read as the root.
        std::fs::write(root.join("late.txt"), "l").unwrap();
        assert_eq!(refresh(&["../elsewhere"]).inserted, 1);
        assert_matches_disk(&l, id, &root);
    }

    #[test]
    fn windows_policy_never_writes_bulk() {
        let tmp = tempfile::tempdir().unwrap();
        let l = lib(&tmp.path().join("lib"));
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        let id = add_location(&l, &root, &mut no_progress())
            .unwrap()
            .location
            .id;
        std::fs::create_dir(root.join("many")).unwrap();
        for i in 0..2500 {
            std::fs::write(root.join(format!("many/{i}")), "").unwrap();
        }
        let mut events = l.subscribe();
        let before = log_len(&l);
        let opts = RescanOptions {
            policy: WritePolicy::Windows,
            cancel: None,
        };
        let r = refresh_dirs(&l, id, &[String::new()], opts, &mut no_progress()).unwrap();
        assert_eq!((r.inserted, r.mode), (2501, WriteMode::Batches));
        // Every entry through the log, in three commits of at most a thousand.
        assert_eq!(log_len(&l) - before, 2501);
        let mut commits = Vec::new();
        while let Ok(e) = events.try_recv() {
            commits.push(e.entries);
        }
        assert_eq!(commits, vec![1000, 1000, 501]);
        assert_matches_disk(&l, id, &root);

        // The same through a full rescan, and a cancelled one writes nothing.
        std::fs::remove_dir_all(root.join("many")).unwrap();
        let cancel = AtomicBool::new(true);
        let stopped = RescanOptions {
            policy: WritePolicy::Windows,
            cancel: Some(&cancel),
        };
        assert!(rescan_location_with(&l, id, stopped, &mut no_progress()).is_err());
        assert_eq!(query::location_entries(&l, id).unwrap().len(), 2501);
        let r = rescan_location_with(&l, id, opts, &mut no_progress()).unwrap();
        assert_eq!((r.deleted, r.mode), (2501, WriteMode::Batches));
        assert_matches_disk(&l, id, &root);
    }

    #[test]
    fn volume_identity_is_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let a = volume_identity(tmp.path()).unwrap();
        let b = volume_identity(tmp.path()).unwrap();
        assert_eq!(a, b);
        assert!(!a.fingerprint.is_empty());
    }
}
