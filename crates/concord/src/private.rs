//! Files only this device's user can read (DESIGN §13): the data dir and
//! every folder under it are 0700, every file Concord creates is 0600,
//! whatever the process's umask. A library holds every file path and name of
//! the user's folders; another local account must not read it.
//!
//! Modes are set explicitly rather than left to the umask, and on files that
//! already exist as well (a data dir made by an older build, or under a loose
//! umask, is tightened the next time it is opened). SQLite creates a
//! database's `-wal` and `-shm` with the database file's mode, so restricting
//! the database before its first write covers them too.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every folder Concord creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file Concord creates.
pub const FILE_MODE: u32 = 0o600;

/// Create `dir` (and its parents) if missing, and make it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Make an existing file 0600 (nothing if it does not exist).
pub fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Create `path` anew, exclusively (`O_EXCL`) and 0600, removing a leftover
/// first: a temp file left by a crash, perhaps with an older mode or planted
/// as a link by someone else, is never written through.
pub fn create_new(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Open (creating if missing) a lock file, 0600.
pub fn lock_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    /// A leftover temp file with a loose mode, or a link planted under its
    /// name, is replaced by a fresh 0600 file; the link's target is untouched.
    #[test]
    fn create_new_never_writes_through_a_leftover() {
        let tmp = tempfile::tempdir().unwrap();
        let leftover = tmp.path().join("node.tmp");
        std::fs::write(&leftover, b"old").unwrap();
        std::fs::set_permissions(&leftover, Permissions::from_mode(0o644)).unwrap();
        create_new(&leftover).unwrap().write_all(b"new").unwrap();
        assert_eq!(mode(&leftover), FILE_MODE);
        assert_eq!(std::fs::read(&leftover).unwrap(), b"new");

        let target = tmp.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let planted = tmp.path().join("x.tmp");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        create_new(&planted).unwrap().write_all(b"secret").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&planted).unwrap().is_file());
        assert_eq!(mode(&planted), FILE_MODE);
    }

    #[test]
    fn folders_and_files_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o666)).unwrap();
        restrict(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        restrict(&dir.join("missing")).unwrap();
    }
}
