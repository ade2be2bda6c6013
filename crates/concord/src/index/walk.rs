//! Walking a folder: what [`scan`] records and what it skips.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::conduit::path::RESERVED_DIR;
use crate::error::{Error, Result};
use crate::model::entry_kind;
use crate::sync::entry::MAX_TEXT_BYTES;

use super::progress::{ProgressCallback, PROGRESS_EVERY};

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
pub fn scan(root: &Path, progress: ProgressCallback<'_>) -> Result<Scan> {
    scan_at(root, "", true, progress)
}

/// Walk `dir`, which is at `prefix` under a location root (`""` for the root
/// itself): entries are named by their path under the root. With `recursive`
/// false, only `dir`'s own listing. Entries directly in `dir` have no parent.
pub(crate) fn scan_at(
    dir: &Path,
    prefix: &str,
    recursive: bool,
    progress: ProgressCallback<'_>,
) -> Result<Scan> {
    let mut out = Scan::default();
    if is_reserved(prefix) {
        return Ok(out);
    }
    let mut stack: Vec<(PathBuf, Option<usize>, String)> =
        vec![(dir.to_path_buf(), None, prefix.to_string())];
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
            if is_reserved(&path) {
                continue;
            }
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
            let Some((kind, size)) = kind_and_size(&md) else {
                tracing::debug!(path = %item.path().display(), "leaving out a special file");
                continue;
            };
            let idx = out.entries.len();
            if kind == entry_kind::DIR && recursive {
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

/// The entry kind and size of what `md` describes (not following a link);
/// `None` for special files (devices, sockets, pipes), which are left out.
fn kind_and_size(md: &std::fs::Metadata) -> Option<(i64, i64)> {
    let ft = md.file_type();
    if ft.is_symlink() {
        Some((entry_kind::SYMLINK, md.len() as i64))
    } else if ft.is_dir() {
        Some((entry_kind::DIR, 0))
    } else if ft.is_file() {
        Some((entry_kind::FILE, md.len() as i64))
    } else {
        None
    }
}

/// Whether `path` (relative to a location root) is the location's own
/// `.concord/` folder or inside it: conduits keep their trash, audit records,
/// incoming and temp files there, which are not the user's files and must
/// not become entries (nor reach other devices as such).
fn is_reserved(path: &str) -> bool {
    path == RESERVED_DIR
        || path
            .strip_prefix(RESERVED_DIR)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Modification time and inode of a folder itself (not following a link), or
/// `None` when it is not a folder or cannot be read.
pub(crate) fn folder_stat(path: &Path) -> Option<(Option<i64>, Option<i64>)> {
    let md = std::fs::symlink_metadata(path).ok()?;
    md.is_dir().then(|| (modified_ms(&md), inode(&md)))
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
