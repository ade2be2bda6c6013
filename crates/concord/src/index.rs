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
//!
//! Progress is reported through a `FnMut(done, total)` callback: during the walk
//! `total` is `None` and `done` counts entries found; while writing, `total` is
//! the number of rows to write.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{entry_kind, FileEntry, Location, Value, Volume};
use crate::query;
use crate::sync::entry::{BulkOperation, MAX_TEXT_BYTES};
use crate::sync::txn::{Change, Library, TxCtx};

/// Rescans with fewer changes than this write each as a single commit.
pub const SINGLE_COMMIT_BELOW: usize = 10;
/// Rescans with up to this many changes write them as one batch; past it, new
/// entries go through `commit_bulk` and updates and deletes in batches of this size.
pub const BATCH_MAX: usize = 1000;
/// How often (in entries) the walk reports progress.
const PROGRESS_EVERY: usize = 1024;

/// A progress callback: `(done, total)`, `total` unknown while walking.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// One file, folder or link found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedEntry {
    /// Path relative to the scanned root, `/`-separated.
    pub path: String,
    pub name: String,
    /// Index in [`Scan::entries`] of the containing folder; `None` at the root.
    /// A folder always comes before its contents.
    pub parent: Option<usize>,
    pub kind: i64,
    /// Bytes for files, the target's length for links, 0 for folders.
    pub size: i64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified: Option<i64>,
    pub inode: Option<i64>,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<ScannedEntry>,
    /// Entries skipped: unreadable, or named in something other than UTF-8.
    pub skipped: u64,
    /// Relative paths whose contents could not be read in full (a folder that
    /// could not be listed, an entry whose metadata could not be read). A rescan
    /// keeps stored entries at or below these paths instead of deleting them.
    pub incomplete: Vec<String>,
}

/// Walk `root` (a folder) without following symbolic links.
pub fn scan(root: &Path, progress: Progress<'_>) -> Result<Scan> {
    let mut out = Scan::default();
    let mut stack: Vec<(PathBuf, Option<usize>, String)> =
        vec![(root.to_path_buf(), None, String::new())];
    while let Some((dir, parent, rel)) = stack.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if parent.is_none() => {
                return Err(Error::Invalid(format!(
                    "cannot read {}: {e}; check its permissions",
                    dir.display()
                )))
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), "skipping the contents of an unreadable folder: {e}");
                out.skipped += 1;
                out.incomplete.push(rel);
                continue;
            }
        };
        for item in listing {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(path = %dir.display(), "error while listing a folder: {e}");
                    out.skipped += 1;
                    out.incomplete.push(rel.clone());
                    continue;
                }
            };
            let name = match item.file_name().into_string() {
                Ok(n) => n,
                Err(raw) => {
                    tracing::warn!(path = %dir.join(&raw).display(), "skipping a name that is not UTF-8");
                    out.skipped += 1;
                    continue;
                }
            };
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if path.len() > MAX_TEXT_BYTES {
                tracing::warn!(path = %item.path().display(), "skipping a path longer than {MAX_TEXT_BYTES} bytes");
                out.skipped += 1;
                continue;
            }
            // `DirEntry::metadata` does not follow symbolic links.
            let md = match item.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // gone meanwhile
                Err(e) => {
                    tracing::warn!(path = %item.path().display(), "skipping an unreadable entry: {e}");
                    out.skipped += 1;
                    out.incomplete.push(path);
                    continue;
                }
            };
            let ft = md.file_type();
            let (kind, size) = if ft.is_symlink() {
                (entry_kind::SYMLINK, md.len() as i64)
            } else if ft.is_dir() {
                (entry_kind::DIR, 0)
            } else if ft.is_file() {
                (entry_kind::FILE, md.len() as i64)
            } else {
                tracing::debug!(path = %item.path().display(), "leaving out a special file");
                continue;
            };
            let idx = out.entries.len();
            if kind == entry_kind::DIR {
                stack.push((item.path(), Some(idx), path.clone()));
            }
            out.entries.push(ScannedEntry {
                path,
                name,
                parent,
                kind,
                size,
                modified: modified_ms(&md),
                inode: inode(&md),
            });
            if out.entries.len().is_multiple_of(PROGRESS_EVERY) {
                progress(out.entries.len() as u64, None);
            }
        }
    }
    progress(out.entries.len() as u64, None);
    Ok(out)
}

fn modified_ms(md: &std::fs::Metadata) -> Option<i64> {
    let t = md.modified().ok()?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_millis().min(i64::MAX as u128) as i64),
    })
}

#[cfg(unix)]
fn inode(md: &std::fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    Some(md.ino() as i64)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> Option<i64> {
    None
}

/// The identity of the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeIdentity {
    /// Stable identity of the filesystem; equal fingerprints mean the same
    /// filesystem. On Linux, from `/proc/self/mountinfo`, the mount containing
    /// the path (the longest mount point above it):
    /// - `uuid:<fs uuid>` when its source is a block device listed in
    ///   `/dev/disk/by-uuid` (stable across reboots and re-plugging);
    /// - otherwise `dev:<major>:<minor>:<source>` (stable while mounted; virtual
    ///   filesystems such as overlay or tmpfs get a new minor on remount).
    ///
    /// Elsewhere, or when mountinfo is unreadable: `dev:<st_dev>`.
    pub fingerprint: String,
    pub mount_point: String,
}

/// Find the filesystem holding `path` (an existing absolute path).
pub fn volume_identity(path: &Path) -> Result<VolumeIdentity> {
    #[cfg(target_os = "linux")]
    if let Some(v) = linux::volume_identity(path) {
        return Ok(v);
    }
    let md = std::fs::metadata(path)?;
    #[cfg(unix)]
    let dev = {
        use std::os::unix::fs::MetadataExt;
        md.dev()
    };
    #[cfg(not(unix))]
    let dev = {
        let _ = md;
        0u64
    };
    let root = path
        .ancestors()
        .last()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    Ok(VolumeIdentity {
        fingerprint: format!("dev:{dev}"),
        mount_point: root,
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::{Path, PathBuf};

    use super::VolumeIdentity;

    struct Mount {
        devno: String,
        mount_point: PathBuf,
        source: String,
    }

    /// Undo mountinfo's octal escapes (`\040` for a space, ...).
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                if let Some(v) = s
                    .get(i + 1..i + 4)
                    .filter(|o| o.bytes().all(|c| (b'0'..=b'7').contains(&c)))
                    .and_then(|o| u8::from_str_radix(o, 8).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn parse(line: &str) -> Option<Mount> {
        // id parent major:minor root mount_point options [optional...] - fstype source super
        let mut parts = line.split(' ');
        let _id = parts.next()?;
        let _parent = parts.next()?;
        let devno = parts.next()?.to_string();
        let _root = parts.next()?;
        let mount_point = PathBuf::from(unescape(parts.next()?));
        let mut parts = parts.skip_while(|p| *p != "-");
        parts.next()?; // the separator
        let _fstype = parts.next()?;
        let source = unescape(parts.next()?);
        Some(Mount {
            devno,
            mount_point,
            source,
        })
    }

    fn fs_uuid(source: &str) -> Option<String> {
        if !source.starts_with("/dev/") {
            return None;
        }
        let dev = std::fs::canonicalize(source).ok()?;
        for link in std::fs::read_dir("/dev/disk/by-uuid").ok()?.flatten() {
            if std::fs::canonicalize(link.path()).ok().as_deref() == Some(dev.as_path()) {
                return link.file_name().into_string().ok();
            }
        }
        None
    }

    pub(super) fn volume_identity(path: &Path) -> Option<VolumeIdentity> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut best: Option<Mount> = None;
        for m in text.lines().filter_map(parse) {
            if !path.starts_with(&m.mount_point) {
                continue;
            }
            // Later lines mount over earlier ones at the same point.
            let better = best
                .as_ref()
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
            if better {
                best = Some(m);
            }
        }
        let m = best?;
        let fingerprint = match fs_uuid(&m.source) {
            Some(u) => format!("uuid:{u}"),
            None => format!("dev:{}:{}", m.devno, m.source),
        };
        Some(VolumeIdentity {
            fingerprint,
            mount_point: m.mount_point.to_string_lossy().into_owned(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_mountinfo_lines() {
            let m = parse("36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw,errors=continue").unwrap();
            assert_eq!(m.devno, "98:0");
            assert_eq!(m.mount_point, PathBuf::from("/mnt/my disk"));
            assert_eq!(m.source, "/dev/root");
            assert_eq!(unescape("a\\134b"), "a\\b");
            assert_eq!(unescape("tail\\"), "tail\\");
        }
    }
}

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

    let rows = to_rows(&scan.entries, me, location.id, |_| None);
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
    existing: impl Fn(&str) -> Option<&'a FileEntry>,
) -> Vec<FileEntry> {
    let mut rows: Vec<FileEntry> = Vec::with_capacity(scanned.len());
    for s in scanned {
        let id = existing(&s.path).map_or_else(Uuid::now_v7, |e| e.id);
        let parent = s.parent.map(|i| rows[i].id);
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
}

enum Diff {
    Insert(FileEntry),
    Update(FileEntry),
    /// A gone entry whose folder is not gone too (its contents follow it).
    Delete(Uuid),
}

/// Walk a location of this device again and write what changed.
pub fn rescan_location(
    lib: &Library,
    location: Uuid,
    progress: Progress<'_>,
) -> Result<RescanReport> {
    let me = lib.device();
    let loc = query::location(lib, location)?.ok_or(Error::NotFound {
        model: "location",
        id: location,
    })?;
    if loc.device != me {
        return Err(Error::Invalid(format!(
            "location {} belongs to device {}; rescan it on that device",
            loc.name, loc.device
        )));
    }
    let root = Path::new(&loc.path);
    if !root.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is missing or not a folder; reconnect its drive, or remove the location",
            loc.path
        )));
    }
    let scan = scan(root, progress)?;
    let stored = query::location_entries(lib, location)?;
    let by_path: HashMap<&str, &FileEntry> = stored.iter().map(|e| (e.path.as_str(), e)).collect();
    let rows = to_rows(&scan.entries, me, location, |p| by_path.get(p).copied());

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
        scan.incomplete.iter().any(|i| {
            i.is_empty()
                || p == i
                || p.strip_prefix(i.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
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
    let diffs = deletes;

    let n = (report.inserted + report.updated + report.deleted) as usize;
    report.mode = if n == 0 {
        WriteMode::None
    } else if n < SINGLE_COMMIT_BELOW {
        WriteMode::Single
    } else if n <= BATCH_MAX {
        WriteMode::Batch
    } else {
        WriteMode::Bulk
    };
    match report.mode {
        WriteMode::None => {}
        WriteMode::Single => {
            for d in diffs {
                lib.with_tx(|ctx| write_diff(ctx, d))?;
            }
        }
        WriteMode::Batch => {
            lib.with_tx(|ctx| diffs.into_iter().try_for_each(|d| write_diff(ctx, d)))?;
        }
        WriteMode::Bulk => {
            let (inserts, others): (Vec<Diff>, Vec<Diff>) = diffs
                .into_iter()
                .partition(|d| matches!(d, Diff::Insert(_)));
            let mut others = others.into_iter().peekable();
            while others.peek().is_some() {
                let chunk: Vec<Diff> = others.by_ref().take(BATCH_MAX).collect();
                lib.with_tx(|ctx| chunk.into_iter().try_for_each(|d| write_diff(ctx, d)))?;
            }
            if !inserts.is_empty() {
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
                        location,
                        path: loc.path.clone(),
                        volume_fingerprint: fingerprint,
                        count: 0,
                    },
                    progress,
                )?;
            }
        }
    }
    Ok(report)
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

    #[test]
    fn volume_identity_is_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let a = volume_identity(tmp.path()).unwrap();
        let b = volume_identity(tmp.path()).unwrap();
        assert_eq!(a, b);
        assert!(!a.fingerprint.is_empty());
    }
}
