//! Writing what the indexer found: file-entry rows from a walk, and the
//! differences of a rescan or refresh written by size (DESIGN §7).

use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{FileEntry, Location, Value};
use crate::query;
use crate::sync::entry::BulkOperation;
use crate::sync::txn::{Change, Library, TxCtx};

use super::progress::{ProgressCallback, PROGRESS_EVERY};
use super::walk::ScannedEntry;

/// Rescans with fewer changes than this write each as a single commit.
pub const SINGLE_COMMIT_BELOW: usize = 10;
/// Rescans with up to this many changes write them as one batch; past it, new
/// entries go through `commit_bulk` and updates and deletes in batches of this size.
pub const BATCH_MAX: usize = 1000;

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

/// Options of [`super::rescan_location_with`] and [`super::refresh_dirs`]: the
/// caller decides how its changes reach peers and whether it can be stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct RescanOptions<'a> {
    /// How the differences found are written.
    pub policy: WritePolicy,
    /// When set, the rescan stops before its next write with an error; what was
    /// already committed stays (each commit is complete on its own).
    pub cancel: Option<&'a AtomicBool>,
}

impl RescanOptions<'_> {
    /// An error once the caller asked to cancel, so that `?` stops the rescan
    /// between two complete commits.
    pub(super) fn check(&self) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Other("the rescan was cancelled".into()));
        }
        Ok(())
    }
}

/// One difference between the disk and the stored entries.
pub(super) enum Diff {
    Insert(FileEntry),
    Update(FileEntry),
    /// A gone entry whose folder is not gone too (its contents follow it).
    Delete(Uuid),
    /// An entry renamed or moved on disk: the same UUID at a new path.
    Move(FileEntry),
    /// An offloaded entry whose path holds a file again: updated like
    /// `Update`, and local again (its `offloaded_*` fields cleared).
    Returned(FileEntry),
}

/// File-entry rows for scanned entries; `existing` gives the UUID already
/// stored for a path, if any (parents come before children, so one pass names
/// every parent).
pub(super) fn to_rows<'a>(
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
            offloaded_to: None,
            offloaded_path: None,
            offloaded_hash: None,
            inode: s.inode,
        });
    }
    rows
}

/// One `commit_bulk` of `rows`, reporting write progress.
pub(super) fn write_bulk(
    lib: &Library,
    rows: Vec<FileEntry>,
    op: BulkOperation,
    progress: ProgressCallback<'_>,
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

/// How `n` changed entries are written under `policy`.
fn write_mode(n: usize, policy: WritePolicy) -> WriteMode {
    if n == 0 {
        WriteMode::None
    } else if n < SINGLE_COMMIT_BELOW {
        WriteMode::Single
    } else if n <= BATCH_MAX {
        WriteMode::Batch
    } else if policy == WritePolicy::Windows {
        WriteMode::Batches
    } else {
        WriteMode::Bulk
    }
}

/// Write `diffs` (ordered: deletes, then parents before contents), which stand for
/// `n` changed entries, as `opts.policy` says.
pub(super) fn write_diffs(
    lib: &Library,
    loc: &Location,
    diffs: Vec<Diff>,
    n: usize,
    opts: RescanOptions<'_>,
    progress: ProgressCallback<'_>,
) -> Result<WriteMode> {
    let mode = write_mode(n, opts.policy);
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
            write_batches(lib, diffs, opts, |done| progress(done, Some(total)))?;
        }
        WriteMode::Bulk => write_inserts_in_bulk(lib, loc, diffs, opts, progress)?,
    }
    Ok(mode)
}

/// `diffs` in transactions of at most [`BATCH_MAX`], calling `written` with
/// the number written so far after each.
fn write_batches(
    lib: &Library,
    diffs: Vec<Diff>,
    opts: RescanOptions<'_>,
    mut written: impl FnMut(u64),
) -> Result<()> {
    let mut done = 0u64;
    let mut diffs = diffs.into_iter().peekable();
    while diffs.peek().is_some() {
        opts.check()?;
        let chunk: Vec<Diff> = diffs.by_ref().take(BATCH_MAX).collect();
        done += chunk.len() as u64;
        lib.with_tx(|ctx| chunk.into_iter().try_for_each(|d| write_diff(ctx, d)))?;
        written(done);
    }
    Ok(())
}

/// [`WriteMode::Bulk`]: updates and deletes in batches, then every new entry
/// in one `commit_bulk`.
fn write_inserts_in_bulk(
    lib: &Library,
    loc: &Location,
    diffs: Vec<Diff>,
    opts: RescanOptions<'_>,
    progress: ProgressCallback<'_>,
) -> Result<()> {
    let (inserts, others): (Vec<Diff>, Vec<Diff>) = diffs
        .into_iter()
        .partition(|d| matches!(d, Diff::Insert(_)));
    write_batches(lib, others, opts, |_| {})?;
    if inserts.is_empty() {
        return Ok(());
    }
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
    )
}

/// Log one difference in the open transaction.
fn write_diff(ctx: &mut TxCtx<'_, '_>, diff: Diff) -> Result<()> {
    let moved = matches!(diff, Diff::Move(_));
    let returned = matches!(diff, Diff::Returned(_));
    match diff {
        Diff::Insert(row) => ctx.log(Change::insert(&row)),
        Diff::Delete(id) => ctx.log(Change::delete::<FileEntry>(id)),
        Diff::Update(row) | Diff::Move(row) | Diff::Returned(row) => {
            let mut change = Change::update::<FileEntry>(row.id);
            if moved {
                change = change
                    .set("name", row.name.as_str())
                    .set("path", row.path.as_str());
            }
            if returned {
                change = super::offloaded::cleared(change);
            }
            ctx.log(
                change
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
