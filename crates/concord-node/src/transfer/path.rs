//! Paths a peer names, resolved inside a location and nowhere else.
//!
//! A relative path is `/`-separated components, each neither empty, `.`, `..`
//! nor holding a NUL, within [`MAX_PATH_BYTES`] and [`MAX_NAME_BYTES`]; the
//! first component may not be `.concord` (Concord's own folder in a location:
//! temp files, trash). Resolving walks the components with `lstat`, so no
//! symlink is ever followed below the location's root; the final open adds
//! `O_NOFOLLOW`. Both the serving side (what it reads) and the receiving side
//! (what it writes) use this module.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::NetError;
use crate::transfer::wire::{MAX_NAME_BYTES, MAX_PATH_BYTES};

/// Concord's own folder inside a location (temp files, partial transfers).
pub const CONCORD_DIR: &str = ".concord";

/// The components of a relative path, checked; a refusal says why.
pub fn components(rel: &str) -> Result<Vec<&str>, NetError> {
    let refuse = |why: &str| NetError::Refused(format!("path {rel:?} refused: {why}"));
    if rel.is_empty() {
        return Err(refuse("empty"));
    }
    if rel.len() > MAX_PATH_BYTES {
        return Err(NetError::Refused(format!(
            "path of {} bytes refused: the limit is {MAX_PATH_BYTES}",
            rel.len()
        )));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err(refuse("empty component or absolute path")),
            "." | ".." => return Err(refuse("`.` and `..` are not allowed")),
            p if p.len() > MAX_NAME_BYTES => return Err(refuse("a name over 255 bytes")),
            p if p.contains('\0') => return Err(refuse("a NUL byte")),
            _ => {}
        }
    }
    if parts[0] == CONCORD_DIR {
        return Err(refuse("Concord's own folder"));
    }
    Ok(parts)
}

/// `root/rel` after checking that every folder on the way is a real folder
/// (not a symlink). The last component is not checked: the caller opens or
/// replaces it without following a link.
pub fn resolve_parent_dirs(root: &Path, rel: &str) -> Result<PathBuf, NetError> {
    let parts = components(rel)?;
    let mut path = root.to_path_buf();
    for part in &parts[..parts.len() - 1] {
        path.push(part);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| NetError::Refused(format!("{}: {e}", path.display())))?;
        if !meta.is_dir() {
            return Err(NetError::Refused(format!(
                "{} is not a folder (symlinks are not followed)",
                path.display()
            )));
        }
    }
    path.push(parts[parts.len() - 1]);
    Ok(path)
}

/// Open a regular file at `root/rel` for reading, following no symlink.
/// The components are checked one by one first (for a clear refusal), then
/// the file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
/// from the root, so a folder swapped for a link in between is refused too
/// (kernels before 5.6: `O_NOFOLLOW` on the last component only).
pub fn open_regular(root: &Path, rel: &str) -> Result<(File, PathBuf), NetError> {
    let path = resolve_parent_dirs(root, rel)?;
    let refused = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => NetError::Refused(format!(
            "{} is reached through a symlink (symlinks are not followed)",
            path.display()
        )),
        _ => NetError::Refused(format!("{}: {e}", path.display())),
    };
    let file = match open_beneath(root, rel) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(refused)?,
        Err(e) => return Err(refused(e)),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(NetError::Refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok((file, path))
}

/// `rel` opened read-only below `root`, the kernel refusing any symlink and
/// any escape on the way.
fn open_beneath(root: &Path, rel: &str) -> std::io::Result<File> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    let dir = openat2(
        CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::empty(),
    )?;
    let fd = openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?;
    Ok(File::from(fd))
}

/// Create the folders of `root/rel` that are missing (never through a
/// symlink) and return the file's path; an existing folder or symlink at the
/// file's own name is refused.
pub fn prepare_destination(root: &Path, rel: &str) -> Result<PathBuf, NetError> {
    let parts = components(rel)?;
    let mut path = root.to_path_buf();
    for part in &parts[..parts.len() - 1] {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(NetError::Refused(format!(
                    "{} is not a folder (symlinks are not followed)",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_dir(&path)?,
            Err(e) => return Err(NetError::Io(format!("{}: {e}", path.display()))),
        }
    }
    path.push(parts[parts.len() - 1]);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.is_file() => Err(NetError::Refused(format!(
            "{} exists and is not a regular file",
            path.display()
        ))),
        _ => Ok(path),
    }
}

/// Create the folder `path`; one made meanwhile by a concurrent transfer is
/// fine, as long as it is a real folder (not a symlink).
pub fn make_dir(path: &Path) -> Result<(), NetError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => Ok(()),
                _ => Err(NetError::Refused(format!(
                    "{} is not a folder (symlinks are not followed)",
                    path.display()
                ))),
            }
        }
        Err(e) => Err(NetError::Io(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "./a",
            "a/",
            ".concord/tmp/x",
            "a\0b",
        ] {
            assert!(components(bad).is_err(), "{bad:?} accepted");
        }
        assert!(components(&"a".repeat(256)).is_err());
        assert!(components(&"a/".repeat(2049)).is_err());
        assert_eq!(components("é/日本/x.txt").unwrap(), ["é", "日本", "x.txt"]);
    }

    #[test]
    fn concurrent_transfers_into_one_new_folder_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let root = dir.path().to_path_buf();
                std::thread::spawn(move || prepare_destination(&root, &format!("new/deeper/f{i}")))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert!(dir.path().join("new/deeper").is_dir());
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("f")).unwrap();
        assert!(open_regular(dir.path(), "link/secret").is_err());
        assert!(open_regular(dir.path(), "f").is_err());
        assert!(prepare_destination(dir.path(), "link/new").is_err());
        assert!(prepare_destination(dir.path(), "f").is_err());
        assert!(!outside.path().join("new").exists());
        // The kernel check alone (what a folder swapped for a link after the
        // component walk meets) refuses both too.
        assert!(open_beneath(dir.path(), "link/secret").is_err());
        assert!(open_beneath(dir.path(), "f").is_err());
        std::fs::write(dir.path().join("plain"), b"p").unwrap();
        assert!(open_beneath(dir.path(), "plain").is_ok());
    }
}
