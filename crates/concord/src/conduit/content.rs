//! Where a copy's bytes come from, and how they land: a [`ContentSource`]
//! fills a fresh temp file in the destination location's `.concord/tmp/`,
//! verifying what it writes; only then is the file given its modification
//! time and mode, fsynced, and renamed into place by the executor. An
//! unverified byte is never under the final name.
//!
//! [`LocalSource`] reads another folder on this machine; the network engine
//! plugs in here with a source that streams from a peer.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::{ConduitError, Result};
use super::path::{RelPath, SafeRoot};
use super::tree::{FileState, Version};

/// The bytes of the other end's files.
pub trait ContentSource {
    /// Write the content of `from` (on the end this source reads), which
    /// must be `version`, into `out` (an empty temp file), and return the
    /// number of bytes written. It must verify what it writes (the hash when
    /// `version` has one, else the size) and fail with
    /// [`ConduitError::Mismatch`] or [`ConduitError::Changed`] otherwise.
    fn fetch(&mut self, from: &RelPath, version: &Version, out: &mut File) -> Result<u64>;

    /// A source that writes and verifies a whole file itself (the network
    /// engine) lands it in a folder of the destination location's
    /// `.concord/` and returns its path (the caller then owns the file), so
    /// the bytes are written once rather than fetched then copied. A file
    /// landed with the version's modification time and mode already set
    /// must be durable as it is (fsynced after they were set): it is then
    /// not synced again. `None`: use [`ContentSource::fetch`].
    fn fetch_file(&mut self, from: &RelPath, version: &Version) -> Option<Result<PathBuf>> {
        let _ = (from, version);
        None
    }
}

/// A [`ContentSource`] reading a folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalSource {
    root: SafeRoot,
}

impl LocalSource {
    pub fn new(root: SafeRoot) -> LocalSource {
        LocalSource { root }
    }
}

impl ContentSource for LocalSource {
    fn fetch(&mut self, from: &RelPath, version: &Version, out: &mut File) -> Result<u64> {
        let path = self.root.resolve(from)?;
        let mut f = self.root.open_file(from)?;
        let md = f.metadata().map_err(|e| ConduitError::io(&path, e))?;
        if md.len() != version.size {
            return Err(ConduitError::Changed(path));
        }
        copy_verified(&mut f, out, version, &path)
    }
}

/// Copy `src` into `out`, hashing on the way; fails unless the bytes are
/// `version` (its hash when known, its size always).
pub fn copy_verified(
    src: &mut impl Read,
    out: &mut File,
    version: &Version,
    path: &Path,
) -> Result<u64> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ConduitError::io(path, e)),
        };
        total += n as u64;
        if total > version.size {
            return Err(ConduitError::Changed(path.to_path_buf()));
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ConduitError::io(path, e))?;
    }
    if total != version.size {
        return Err(ConduitError::Changed(path.to_path_buf()));
    }
    if version
        .hash
        .is_some_and(|want| want != *h.finalize().as_bytes())
    {
        return Err(ConduitError::Mismatch(path.to_path_buf()));
    }
    Ok(total)
}

/// The mode a conduit gives the files it writes: `rw-r--r--`, plus
/// `x` for everyone when the version is executable.
pub fn mode_for(version: &Version) -> u32 {
    if version.exec {
        0o755
    } else {
        0o644
    }
}

/// Give an open file the version's modification time and mode.
pub fn set_metadata(f: &File, version: &Version, path: &Path) -> Result<()> {
    let ns = version.mtime_ns;
    let mtime = if ns >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(ns as u64))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_nanos(ns.unsigned_abs()))
    }
    .unwrap_or(SystemTime::UNIX_EPOCH);
    f.set_modified(mtime)
        .map_err(|e| ConduitError::io(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode_for(version)))
        .map_err(|e| ConduitError::io(path, e))
}

/// Whether a file already has the version's modification time (to the
/// nanosecond) and the mode [`set_metadata`] would give it.
fn has_metadata(md: &std::fs::Metadata, version: &Version) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ns = md
        .mtime()
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(md.mtime_nsec()));
    ns == Some(version.mtime_ns) && md.mode() & 0o7777 == mode_for(version)
}

/// A temp file being written; removed on drop unless it was handed over.
pub struct TempFile {
    pub path: PathBuf,
    pub file: Option<File>,
}

impl TempFile {
    /// A new file in `dir` that no one else can have opened (`O_EXCL`); an
    /// existing name (another cycle's file) is skipped, never removed.
    /// Numbers come from one process-wide counter, so a cycle that parks
    /// thousands of files (a folder move) neither runs out of names nor
    /// probes the names it already took.
    pub fn create(dir: &Path, tag: &str) -> Result<TempFile> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        for _ in 0u32..1000 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{tag}-{n}.part"));
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            match opened {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ConduitError::io(&path, e)),
            }
        }
        Err(ConduitError::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "no free temp name: 1,000 names in a row were taken",
            ),
        ))
    }

    /// The file stays: the caller renamed it into place.
    pub fn keep(mut self) -> PathBuf {
        self.file = None;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How long a temp file may sit in `.concord/tmp/` before a cycle removes it
/// as left by a crash.
pub const STALE_TEMP_MS: i64 = 24 * 3600 * 1000;

/// Remove this module's temp files (`<ms>-<pid>-<n>.part`) older than
/// [`STALE_TEMP_MS`] from `tmp_dir`: what a crashed cycle left. Other names
/// are left alone. Returns how many were removed.
pub fn purge_stale_temps(tmp_dir: &Path, now_ms: i64) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".part")) else {
            continue;
        };
        let born = name.split('-').next().and_then(|ms| ms.parse::<i64>().ok());
        if born.is_some_and(|b| now_ms.saturating_sub(b) > STALE_TEMP_MS)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Fill a temp file in `tmp_dir` from `source` and finish it (metadata,
/// fsync): ready to be renamed into place.
pub fn fetch_to_temp(
    source: &mut dyn ContentSource,
    from: &RelPath,
    version: &Version,
    tmp_dir: &Path,
    tag: &str,
) -> Result<(TempFile, u64)> {
    if let Some(landed) = source.fetch_file(from, version) {
        let path = landed?;
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let tmp = TempFile {
            path: path.clone(),
            file: Some(opened.map_err(|e| ConduitError::io(&path, e))?),
        };
        let f = tmp
            .file
            .as_ref()
            .ok_or_else(|| ConduitError::Changed(path.clone()))?;
        let md = f.metadata().map_err(|e| ConduitError::io(&path, e))?;
        if !has_metadata(&md, version) {
            set_metadata(f, version, &path)?;
            f.sync_all().map_err(|e| ConduitError::io(&path, e))?;
        }
        return Ok((tmp, version.size));
    }
    let mut tmp = TempFile::create(tmp_dir, tag)?;
    let path = tmp.path.clone();
    let f = tmp
        .file
        .as_mut()
        .ok_or_else(|| ConduitError::Changed(path.clone()))?;
    let n = source.fetch(from, version, f)?;
    set_metadata(f, version, &path)?;
    f.sync_all().map_err(|e| ConduitError::io(&path, e))?;
    Ok((tmp, n))
}

/// Whether the file at `p` is still `expected` (not a link, same stat).
pub fn still(p: &Path, expected: &FileState) -> Result<bool> {
    match std::fs::symlink_metadata(p) {
        Ok(md) => Ok(expected.unchanged(&md)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ConduitError::io(p, e)),
    }
}

/// fsync a folder, so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ConduitError::io(dir, e))
}
