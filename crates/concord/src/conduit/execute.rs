//! The local executor: carries out a [`Plan`] on two folders with `std::fs`.
//!
//! Phases as the plan orders them (stage local content aside, place it,
//! copy from the other end, delete, release). Every write goes temp file →
//! write → fsync → rename; whatever is overwritten or deleted goes to the
//! location's trash; every action first checks that the files it touches
//! are still what the plan saw, and an action that cannot be carried out is
//! reported and its paths left for the next cycle. A full disk stops the
//! cycle at once with no partial file left. The folders files were renamed
//! into are fsynced once each, before any deletion or release and before
//! the run reports (not once per file).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::content::{self, fetch_to_temp, still, ContentSource, TempFile};
use super::error::{ConduitError, Result};
use super::path::{RelPath, SafeRoot};
use super::plan::{Action, Plan, Side};
use super::trash::{reserved_dir, Trash};
use super::tree::{hash_reader, FileState, Version};

/// One end on this machine.
#[derive(Debug, Clone)]
pub struct End {
    pub root: SafeRoot,
    /// The device's name (for audit records).
    pub device: String,
}

impl End {
    fn trash(&self) -> Trash {
        Trash::for_location(self.root.location())
    }
}

/// What a run of the executor did.
#[derive(Debug, Default)]
pub struct ExecReport {
    /// Actions carried out.
    pub done: usize,
    /// Actions that failed, with why; their paths are in `unsettled`.
    pub failed: Vec<(RelPath, String)>,
    /// Paths whose actions failed or did not run.
    pub unsettled: BTreeSet<RelPath>,
    /// Bytes written from the other end (through a [`ContentSource`]).
    pub bytes_copied: u64,
    /// Bytes copied from content the end already held.
    pub bytes_local: u64,
    /// The disk filled up: the cycle stopped there.
    pub disk_full: bool,
}

impl ExecReport {
    /// Add what another run (a later batch or phase group) did.
    pub fn merge(&mut self, r: ExecReport) {
        self.done += r.done;
        self.failed.extend(r.failed);
        self.unsettled.extend(r.unsettled);
        self.bytes_copied += r.bytes_copied;
        self.bytes_local += r.bytes_local;
        self.disk_full |= r.disk_full;
    }
}

/// Carries out plans between two ends.
pub struct Executor<'a> {
    ends: [&'a End; 2],
    /// `sources[side]` reads the *other* end, for copies onto `side`.
    sources: [&'a mut dyn ContentSource; 2],
    now_ms: i64,
    tag: String,
    /// Folders renamed into and not yet fsynced, with the paths of each
    /// action placed there (unsettled again if the fsync fails).
    unsynced: BTreeMap<PathBuf, Vec<Vec<RelPath>>>,
}

struct Staged {
    index: usize,
    tmp: TempFile,
    /// A move's origin, to put the file back if it cannot be placed.
    from: Option<PathBuf>,
}

impl<'a> Executor<'a> {
    /// `now_ms` is the cycle's time (trash folders, temp names, audit).
    pub fn new(
        source: &'a End,
        destination: &'a End,
        into_source: &'a mut dyn ContentSource,
        into_destination: &'a mut dyn ContentSource,
        now_ms: i64,
    ) -> Executor<'a> {
        Executor {
            ends: [source, destination],
            sources: [into_source, into_destination],
            now_ms,
            tag: format!("{now_ms}-{}", std::process::id()),
            unsynced: BTreeMap::new(),
        }
    }

    fn end(&self, side: Side) -> &'a End {
        self.ends[side as usize]
    }

    /// Run `plan`; never stops on a failed action, only on a full disk.
    pub fn run(&mut self, plan: &Plan) -> ExecReport {
        let mut report = ExecReport::default();
        let mut staged = Vec::new();
        for (i, a) in plan
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.phase() <= 1)
        {
            match self.stage(i, a) {
                Ok(s) => staged.push(s),
                Err(e) => note(&mut report, a, e),
            }
        }
        for s in staged {
            let a = &plan.actions[s.index];
            match self.place(a, s) {
                Ok(n) => {
                    report.done += 1;
                    report.bytes_local += n;
                }
                Err(e) => note(&mut report, a, e),
            }
        }
        for a in plan.actions.iter().filter(|a| a.phase() > 1) {
            if report.disk_full {
                report.unsettled.extend(a.paths().into_iter().cloned());
                continue;
            }
            if a.phase() > 3 {
                self.sync_placed(&mut report);
            }
            if matches!(a, Action::Release { path, .. } if report.unsettled.contains(path)) {
                report.unsettled.insert(a.paths()[0].clone());
                continue;
            }
            match self.apply(a) {
                Ok(n) => {
                    report.done += 1;
                    report.bytes_copied += n;
                }
                Err(e) => note(&mut report, a, e),
            }
        }
        self.sync_placed(&mut report);
        report
    }

    /// fsync every folder renamed into since the last call, so what the
    /// report counts done survives a crash; the actions placed in a folder
    /// that cannot be synced are failed and left for the next cycle.
    fn sync_placed(&mut self, report: &mut ExecReport) {
        for (dir, placed) in std::mem::take(&mut self.unsynced) {
            let Err(e) = content::sync_dir(&dir) else {
                continue;
            };
            report.done = report.done.saturating_sub(placed.len());
            for paths in placed {
                if let Some(first) = paths.first() {
                    report.failed.push((first.clone(), e.to_string()));
                }
                report.unsettled.extend(paths);
            }
        }
    }

    /// Phase 1: a local copy's content into a temp file, or a moved file
    /// renamed aside.
    fn stage(&mut self, index: usize, a: &Action) -> Result<Staged> {
        let tmp_dir = |end: &End| reserved_dir(end.root.location(), "tmp");
        match a {
            Action::CopyLocal {
                side,
                from,
                expected,
                version,
                ..
            } => {
                let end = self.end(*side);
                let mut src = OneFile {
                    root: &end.root,
                    expected,
                };
                let (tmp, _) = fetch_to_temp(&mut src, from, version, &tmp_dir(end)?, &self.tag)?;
                Ok(Staged {
                    index,
                    tmp,
                    from: None,
                })
            }
            Action::Move {
                side,
                from,
                expected,
                ..
            } => {
                let end = self.end(*side);
                let origin = end.root.resolve(from)?;
                if !still(&origin, expected)? {
                    return Err(ConduitError::Changed(origin));
                }
                let tmp = TempFile::create(&tmp_dir(end)?, &self.tag)?;
                let tmp_path = tmp.path.clone();
                std::fs::rename(&origin, &tmp_path).map_err(|e| ConduitError::io(&origin, e))?;
                Ok(Staged {
                    index,
                    tmp,
                    from: Some(origin),
                })
            }
            _ => Err(ConduitError::Invalid("not a staged action".into())),
        }
    }

    /// Phase 2: a staged file at its new path; returns the bytes of a local copy.
    fn place(&mut self, a: &Action, staged: Staged) -> Result<u64> {
        let (side, path, version, replaces) = match a {
            Action::CopyLocal {
                side,
                path,
                version,
                replaces,
                ..
            }
            | Action::Move {
                side,
                path,
                version,
                replaces,
                ..
            } => (*side, path, version, replaces),
            _ => return Err(ConduitError::Invalid("not a staged action".into())),
        };
        let end = self.end(side);
        if let Some(origin) = &staged.from {
            // Whatever fails from here, the moved file is never dropped with
            // its temp name.
            let placed = super::path::open_nofollow(&staged.tmp.path)
                .and_then(|f| content::set_metadata(&f, version, &staged.tmp.path))
                .and_then(|()| {
                    self.put_in_place(a, end, &staged.tmp.path, path, replaces.as_ref())
                });
            if let Err(e) = placed {
                // Back where it was, or to the trash: never lost.
                if std::fs::rename(&staged.tmp.path, origin).is_err() {
                    let _ =
                        end.trash()
                            .put(&staged.tmp.path, &end.root.in_location(path), self.now_ms);
                }
                staged.tmp.keep();
                return Err(e);
            }
            staged.tmp.keep();
            if let Action::Move { from, .. } = a {
                remove_empty_parents(&end.root, from);
            }
            return Ok(0);
        }
        self.put_in_place(a, end, &staged.tmp.path, path, replaces.as_ref())?;
        staged.tmp.keep();
        Ok(version.size)
    }

    /// Rename `tmp` to `path` on `end`, the occupant (which must be
    /// `replaces`, or nothing) going to the trash first; the folder is
    /// fsynced later ([`Executor::sync_placed`]), for `action`.
    fn put_in_place(
        &mut self,
        action: &Action,
        end: &End,
        tmp: &Path,
        path: &RelPath,
        replaces: Option<&FileState>,
    ) -> Result<()> {
        let target = end.root.resolve_for_write(path)?;
        match std::fs::symlink_metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConduitError::io(&target, e)),
            Ok(md) => match replaces {
                Some(r) if r.unchanged(&md) => {
                    end.trash()
                        .put(&target, &end.root.in_location(path), self.now_ms)?;
                }
                _ => return Err(ConduitError::Changed(target)),
            },
        }
        std::fs::rename(tmp, &target).map_err(|e| ConduitError::io(&target, e))?;
        if let Some(dir) = target.parent() {
            let paths = action.paths().into_iter().cloned().collect();
            self.unsynced
                .entry(dir.to_path_buf())
                .or_default()
                .push(paths);
        }
        Ok(())
    }

    /// Phases 3 to 5; returns the bytes copied from the other end.
    fn apply(&mut self, a: &Action) -> Result<u64> {
        match a {
            Action::Copy {
                side,
                path,
                from,
                version,
                replaces,
            } => {
                let end = self.end(*side);
                let tmp_dir = reserved_dir(end.root.location(), "tmp")?;
                let source = &mut *self.sources[*side as usize];
                let (tmp, n) = fetch_to_temp(source, from, &version.version, &tmp_dir, &self.tag)?;
                self.put_in_place(a, end, &tmp.path, path, replaces.as_ref())?;
                tmp.keep();
                Ok(n)
            }
            Action::Delete {
                side,
                path,
                expected,
            } => {
                let end = self.end(*side);
                let p = end.root.resolve(path)?;
                if !still(&p, expected)? {
                    return Err(ConduitError::Changed(p));
                }
                end.trash()
                    .put(&p, &end.root.in_location(path), self.now_ms)?;
                remove_empty_parents(&end.root, path);
                Ok(0)
            }
            Action::Release {
                path,
                expected,
                hash,
            } => self.release(path, expected, hash).map(|_| 0),
            _ => Err(ConduitError::Invalid(
                "a staged action outside its phase".into(),
            )),
        }
    }

    /// Archive: verify the destination's copy by hash, then remove the
    /// source file and record it.
    fn release(&self, path: &RelPath, expected: &FileState, hash: &[u8; 32]) -> Result<()> {
        let (src, dst) = (self.ends[0], self.ends[1]);
        let mut copy = dst.root.open_file(path)?;
        let (got, _) = hash_reader(&mut copy).map_err(|e| ConduitError::io(dst.root.path(), e))?;
        if got != *hash {
            return Err(ConduitError::Mismatch(dst.root.resolve(path)?));
        }
        let p = src.root.resolve(path)?;
        if !still(&p, expected)? {
            return Err(ConduitError::Changed(p));
        }
        let record = serde_json::json!({
            "at_ms": self.now_ms,
            "path": src.root.in_location(path),
            "size": expected.version.size,
            "mtime_ns": expected.version.mtime_ns,
            "blake3": blake3::Hash::from(*hash).to_hex().as_str(),
            "archived_to_device": dst.device,
            "archived_to": dst.root.in_location(path),
        });
        let log = reserved_dir(src.root.location(), "audit")?.join("archive.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| ConduitError::io(&log, e))?;
        writeln!(f, "{record}").map_err(|e| ConduitError::io(&log, e))?;
        f.sync_all().map_err(|e| ConduitError::io(&log, e))?;
        std::fs::remove_file(&p).map_err(|e| ConduitError::io(&p, e))?;
        remove_empty_parents(&src.root, path);
        Ok(())
    }
}

/// A [`ContentSource`] over one file of the end itself (a local copy),
/// checking it is still the file the plan saw.
struct OneFile<'r> {
    root: &'r SafeRoot,
    expected: &'r FileState,
}

impl ContentSource for OneFile<'_> {
    fn fetch(&mut self, from: &RelPath, version: &Version, out: &mut std::fs::File) -> Result<u64> {
        let p = self.root.resolve(from)?;
        let mut f = self.root.open_file(from)?;
        let md = f.metadata().map_err(|e| ConduitError::io(&p, e))?;
        if !self.expected.unchanged(&md) {
            return Err(ConduitError::Changed(p));
        }
        content::copy_verified(&mut f, out, version, &p)
    }
}

fn note(report: &mut ExecReport, a: &Action, e: ConduitError) {
    if matches!(e, ConduitError::DiskFull(_)) {
        report.disk_full = true;
    }
    report.unsettled.extend(a.paths().into_iter().cloned());
    report.failed.push((a.paths()[0].clone(), e.to_string()));
}

/// Remove the folders above `path` that are now empty, up to the root.
fn remove_empty_parents(root: &SafeRoot, path: &RelPath) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        match root.resolve(&d) {
            Ok(p) if std::fs::remove_dir(&p).is_ok() => dir = d.parent(),
            _ => break,
        }
    }
}
