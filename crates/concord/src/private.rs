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
