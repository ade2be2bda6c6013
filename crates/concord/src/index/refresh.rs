//! Refreshing a few folders of a location: what the filesystem watcher calls
//! with the folders around the paths it saw change. Only those folders'
//! listings are read (and the whole contents of folders that are new).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};

use uuid::Uuid;

use crate::error::Result;
use crate::model::{entry_kind, FileEntry};
use crate::query;
use crate::sync::txn::Library;

use super::moves::ordered_diffs;
use super::offloaded::kept_while_absent;
use super::progress::ProgressCallback;
use super::rescan::{at_or_below, location_lock, own_location, RescanReport};
use super::walk::{self, Scan, ScannedEntry};
use super::write::{to_rows, write_diffs, Diff, RescanOptions};

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
    progress: ProgressCallback<'_>,
) -> Result<RescanReport> {
    let lock = location_lock(location);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    let loc = own_location(lib, location)?;
    let root = Path::new(&loc.path);
    let mut found = FolderDiffs::new(lib, location, root);
    for (dir, entry) in stored_folders(lib, location, root, dirs)? {
        found.compare_folder(&dir, entry, progress)?;
    }
    opts.check()?;
    let (mut report, diffs) = found.into_ordered()?;
    let n = (report.inserted + report.updated + report.deleted) as usize;
    report.mode = write_diffs(lib, &loc, diffs, n, opts, progress)?;
    Ok(report)
}

/// The folders to read for `dirs`: each one's nearest folder that is on disk
/// and stored as a folder (`None` for the root), without repeats, shallowest
/// first (so a folder found new or gone skips everything below it).
fn stored_folders(
    lib: &Library,
    location: Uuid,
    root: &Path,
    dirs: &[String],
) -> Result<Vec<(String, Option<FileEntry>)>> {
    let mut folders: HashMap<String, Option<FileEntry>> = HashMap::new();
    for given in dirs {
        let mut dir: &str = given.trim_matches('/');
        let plain = Path::new(dir)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            // A path that leaves the location is read as the root.
            dir = "";
        }
        loop {
            if dir.is_empty() {
                folders.insert(String::new(), None);
                break;
            }
            let on_disk = std::fs::symlink_metadata(root.join(dir)).is_ok_and(|m| m.is_dir());
            if on_disk {
                if let Some(entry) = query::file_entry_by_path(lib, location, dir)? {
                    if entry.kind == entry_kind::DIR {
                        folders.insert(dir.to_string(), Some(entry));
                        break;
                    }
                }
            }
            dir = parent_dir(dir);
        }
    }
    let mut folders: Vec<(String, Option<FileEntry>)> = folders.into_iter().collect();
    folders.sort_by(|a, b| depth(&a.0).cmp(&depth(&b.0)).then_with(|| a.0.cmp(&b.0)));
    Ok(folders)
}

/// How many folders deep a relative path is (`""`, the root, is 0).
fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.matches('/').count() + 1
    }
}

/// The folder containing a relative path (`""` for the root's children).
fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// What a refresh found so far, folder by folder, kept apart by kind so that
/// they can be written in a safe order.
struct FolderDiffs<'a> {
    lib: &'a Library,
    location: Uuid,
    root: &'a Path,
    report: RescanReport,
    deletes: Vec<Diff>,
    /// The entries `deletes` deletes (each with its contents).
    gone: Vec<FileEntry>,
    inserts: Vec<Diff>,
    updates: Vec<Diff>,
    /// Folders inserted or deleted whole by this refresh: nothing below them is
    /// looked at again.
    whole: Vec<String>,
    /// Entries with an update already planned (a folder's time is seen both in
    /// its own refresh and in its parent's listing).
    updated: HashSet<Uuid>,
}

impl<'a> FolderDiffs<'a> {
    fn new(lib: &'a Library, location: Uuid, root: &'a Path) -> Self {
        Self {
            lib,
            location,
            root,
            report: RescanReport::default(),
            deletes: Vec::new(),
            gone: Vec::new(),
            inserts: Vec::new(),
            updates: Vec::new(),
            whole: Vec::new(),
            updated: HashSet::new(),
        }
    }

    /// Compare one folder's listing with its stored children (`entry` is the
    /// folder's stored entry, `None` for the root).
    fn compare_folder(
        &mut self,
        dir: &str,
        entry: Option<FileEntry>,
        progress: ProgressCallback<'_>,
    ) -> Result<()> {
        if self.whole.iter().any(|w| at_or_below(dir, w)) {
            return Ok(());
        }
        let id = entry.as_ref().map(|e| e.id);
        if let Some(entry) = entry {
            self.folder_time(dir, entry);
        }
        let listing = match walk::scan_at(&self.root.join(dir), dir, false, &mut |_, _| {}) {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(location = %self.location, dir = %dir, "cannot refresh a folder: {e}");
                self.report.skipped += 1;
                return Ok(());
            }
        };
        self.report.skipped += listing.skipped;
        let stored = query::child_entries(self.lib, self.location, id)?;
        self.compare_listed(&listing, &stored, id, progress)?;
        self.delete_unlisted(&listing, &stored)
    }

    /// The folder's own time changes with its listing; its parent's listing
    /// (which holds it) is not necessarily refreshed.
    fn folder_time(&mut self, dir: &str, entry: FileEntry) {
        if let Some((modified, inode)) = walk::folder_stat(&self.root.join(dir)) {
            if entry.modified != modified && self.updated.insert(entry.id) {
                self.report.updated += 1;
                self.updates.push(Diff::Update(FileEntry {
                    modified,
                    inode,
                    ..entry
                }));
            }
        }
    }

    /// Every listed entry against the stored child of the same name: updated
    /// when its size or time changed, inserted when new, deleted and inserted
    /// anew when it changed kind.
    fn compare_listed(
        &mut self,
        listing: &Scan,
        stored: &[FileEntry],
        parent: Option<Uuid>,
        progress: ProgressCallback<'_>,
    ) -> Result<()> {
        let by_name: HashMap<&str, &FileEntry> =
            stored.iter().map(|e| (e.name.as_str(), e)).collect();
        for listed in &listing.entries {
            match by_name.get(listed.name.as_str()) {
                Some(old) if old.kind == listed.kind => {
                    // An offloaded entry whose path holds a file again is local again.
                    let returned = old.offloaded_to.is_some();
                    let changed = old.size != listed.size || old.modified != listed.modified;
                    if (changed || returned) && self.updated.insert(old.id) {
                        self.report.updated += 1;
                        let diff = if returned {
                            Diff::Returned
                        } else {
                            Diff::Update
                        };
                        self.updates.push(diff(FileEntry {
                            id: old.id,
                            device: self.lib.device(),
                            location: self.location,
                            parent,
                            name: listed.name.clone(),
                            path: listed.path.clone(),
                            kind: listed.kind,
                            size: listed.size,
                            modified: listed.modified,
                            offloaded_to: None,
                            offloaded_path: None,
                            offloaded_hash: None,
                            inode: listed.inode,
                        }));
                    }
                }
                other => {
                    if let Some(old) = other {
                        self.delete_whole(old)?;
                    }
                    let new = self.new_rows(listed, parent, progress);
                    self.report.inserted += new.len() as u64;
                    self.inserts.extend(new.into_iter().map(Diff::Insert));
                    if other.is_some() || listed.kind == entry_kind::DIR {
                        self.whole.push(listed.path.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Stored children the listing no longer shows are gone, unless the listing
    /// could not read them or they are offloaded (or hold offloaded entries).
    fn delete_unlisted(&mut self, listing: &Scan, stored: &[FileEntry]) -> Result<()> {
        let listed: HashSet<&str> = listing.entries.iter().map(|s| s.name.as_str()).collect();
        for old in stored {
            let kept = listing.incomplete.iter().any(|i| at_or_below(&old.path, i));
            if !listed.contains(old.name.as_str()) && !kept {
                self.delete_absent(old)?;
                self.whole.push(old.path.clone());
            }
        }
        Ok(())
    }

    /// Delete an entry absent from disk, keeping what `kept_while_absent`
    /// keeps: an offloaded file, and a folder holding offloaded entries (then
    /// only the rest of its contents is deleted, each topmost entry whole).
    fn delete_absent(&mut self, old: &FileEntry) -> Result<()> {
        if old.offloaded_to.is_some() {
            return Ok(());
        }
        if old.kind != entry_kind::DIR {
            return self.delete_whole(old);
        }
        let mut absent = query::entries_below(self.lib, self.location, &old.path)?;
        absent.push(old.clone());
        let kept = kept_while_absent(&absent);
        if kept.is_empty() {
            return self.delete_whole(old);
        }
        for e in &absent {
            let topmost = e.parent.is_some_and(|p| kept.contains(&p));
            if topmost && !kept.contains(&e.id) {
                self.delete_whole(e)?;
            }
        }
        Ok(())
    }

    /// Delete a stored entry, counting everything below it (its delete takes
    /// its contents with it).
    fn delete_whole(&mut self, old: &FileEntry) -> Result<()> {
        self.report.deleted += 1 + query::count_below(self.lib, self.location, &old.path)?;
        self.deletes.push(Diff::Delete(old.id));
        self.gone.push(old.clone());
        Ok(())
    }

    /// Rows for a new entry of a refreshed folder and, for a folder, everything in it.
    fn new_rows(
        &mut self,
        listed: &ScannedEntry,
        parent: Option<Uuid>,
        progress: ProgressCallback<'_>,
    ) -> Vec<FileEntry> {
        let device = self.lib.device();
        let mut rows = to_rows(
            std::slice::from_ref(listed),
            device,
            self.location,
            parent,
            |_| None,
        );
        if listed.kind == entry_kind::DIR {
            let id = rows[0].id;
            match walk::scan_at(&self.root.join(&listed.path), &listed.path, true, progress) {
                Ok(sub) => {
                    self.report.skipped += sub.skipped;
                    rows.extend(to_rows(
                        &sub.entries,
                        device,
                        self.location,
                        Some(id),
                        |_| None,
                    ));
                }
                // Gone or unreadable meanwhile: its contents come with a later event.
                Err(e) => tracing::warn!(path = %listed.path, "cannot read a new folder: {e}"),
            }
        }
        rows
    }

    /// The report and the differences in the order they can be written:
    /// entries renamed or moved on disk first (they keep their UUID, see
    /// `moves`), then deletes (a replaced entry's path is free again), then
    /// inserts with parents before contents, then updates.
    fn into_ordered(mut self) -> Result<(RescanReport, Vec<Diff>)> {
        if self.gone.is_empty() || self.inserts.is_empty() {
            let mut diffs = self.deletes;
            diffs.extend(self.inserts);
            diffs.extend(self.updates);
            return Ok((self.report, diffs));
        }
        // Everything that vanished: the gone entries and what was below them.
        let mut vanished = Vec::new();
        for g in std::mem::take(&mut self.gone) {
            if g.kind == entry_kind::DIR {
                vanished.extend(query::entries_below(self.lib, self.location, &g.path)?);
            }
            vanished.push(g);
        }
        let mut once = HashSet::new();
        vanished.retain(|e| once.insert(e.id));
        let rows = self.inserts.into_iter().filter_map(|d| match d {
            Diff::Insert(row) => Some(row),
            _ => None,
        });
        let (counts, diffs) = ordered_diffs(&vanished, rows.collect(), self.updates);
        self.report.inserted = counts.inserted;
        self.report.updated += counts.moved;
        self.report.deleted = counts.deleted;
        Ok((self.report, diffs))
    }
}
