//! The trash: where every file a conduit overwrites or deletes goes, instead
//! of being unlinked, and Concord's other folders inside `<location>/.concord/`.
//!
//! Layout: `<location>/.concord/trash/YYYYMMDD-HHMMSS/<path in the location>`
//! (the time of the cycle, UTC), so a file is found again under the same
//! relative path and the time it was replaced; a name taken within the same
//! second gets `~2`, `~3`, ... [`Trash::purge`] removes whole time folders
//! older than the retention (30 days by default).

use std::path::{Path, PathBuf};

use super::conflict::{parse_utc_stamp, utc_stamp};
use super::error::{ConduitError, Result};
use super::path::RESERVED_DIR;

/// How long trashed files are kept by default.
pub const RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// `<location>/.concord/<name>`, created if missing; both must be real
/// folders (a link planted there is refused, never followed).
pub fn reserved_dir(location: &Path, name: &str) -> Result<PathBuf> {
    let mut p = location.join(RESERVED_DIR);
    real_dir(&p)?;
    p.push(name);
    real_dir(&p)?;
    Ok(p)
}

fn real_dir(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ConduitError::NotFollowed(p.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => real_dir(p),
            Err(e) => Err(ConduitError::io(p, e)),
        },
        Err(e) => Err(ConduitError::io(p, e)),
    }
}

/// The trash of one location.
#[derive(Debug, Clone)]
pub struct Trash {
    location: PathBuf,
}

impl Trash {
    pub fn for_location(location: &Path) -> Trash {
        Trash {
            location: location.to_path_buf(),
        }
    }

    /// The trash folder (which may not exist yet).
    pub fn dir(&self) -> PathBuf {
        self.location.join(RESERVED_DIR).join("trash")
    }

    /// Move `file` (at `in_location`, its path relative to the location
    /// root) into the trash; returns where it went. A rename: the file must
    /// be on the location's filesystem, as everything inside it is.
    pub fn put(&self, file: &Path, in_location: &str, now_ms: i64) -> Result<PathBuf> {
        let base = reserved_dir(&self.location, "trash")?.join(utc_stamp(now_ms));
        real_dir(&base)?;
        let mut dest = base.clone();
        let names: Vec<&str> = in_location.split('/').collect();
        let (last, parents) = names.split_last().ok_or(ConduitError::InvalidPath {
            path: String::new(),
            why: "empty path",
        })?;
        for n in parents {
            dest.push(n);
            real_dir(&dest)?;
        }
        let mut target = dest.join(last);
        let mut n = 1;
        while std::fs::symlink_metadata(&target).is_ok() {
            n += 1;
            target = dest.join(format!("{last}~{n}"));
        }
        std::fs::rename(file, &target).map_err(|e| ConduitError::io(file, e))?;
        Ok(target)
    }

    /// Remove the trash's time folders older than `retention_ms`; returns how
    /// many were removed. Folders whose names are not stamps are left alone.
    pub fn purge(&self, now_ms: i64, retention_ms: i64) -> Result<usize> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ConduitError::io(&dir, e)),
        };
        let mut removed = 0;
        for e in entries {
            let e = e.map_err(|e| ConduitError::io(&dir, e))?;
            let Some(at) = e.file_name().to_str().and_then(parse_utc_stamp) else {
                continue;
            };
            if now_ms.saturating_sub(at) > retention_ms {
                // Never follows links: std removes a link, not its target.
                std::fs::remove_dir_all(e.path()).map_err(|err| ConduitError::io(e.path(), err))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trash_keeps_paths_and_times_and_purges_old_folders() {
        let loc = tempfile::tempdir().unwrap();
        let t = Trash::for_location(loc.path());
        let day = 24 * 3600 * 1000;
        let now = 1_796_145_300_000;
        for (i, when) in [now - 40 * day, now, now].into_iter().enumerate() {
            let f = loc.path().join(format!("f{i}"));
            std::fs::write(&f, format!("v{i}")).unwrap();
            t.put(&f, "docs/a.txt", when).unwrap();
        }
        let recent = t.dir().join("20261201-171500/docs");
        assert_eq!(std::fs::read_to_string(recent.join("a.txt")).unwrap(), "v1");
        assert_eq!(
            std::fs::read_to_string(recent.join("a.txt~2")).unwrap(),
            "v2"
        );
        assert_eq!(t.purge(now, RETENTION_MS).unwrap(), 1);
        assert!(recent.join("a.txt").exists());
        assert_eq!(std::fs::read_dir(t.dir()).unwrap().count(), 1);
    }

    #[test]
    fn a_planted_link_is_refused() {
        let loc = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), loc.path().join(".concord")).unwrap();
        let f = loc.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(Trash::for_location(loc.path()).put(&f, "f", 0).is_err());
        assert!(f.exists());
    }
}
