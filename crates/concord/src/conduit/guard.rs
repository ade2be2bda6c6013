//! The guards a cycle passes before it changes anything: a missing or
//! swapped root (an unmounted disk must never read as "everything was
//! deleted"), a mass deletion, and a destination without room.

use std::path::Path;

use super::plan::{Plan, Side};
use super::tree::Tree;

/// A cycle may delete at most this many files without the half rule applying.
pub const MASS_DELETE_MIN: usize = 10;

/// Whether a plan deletes more than half of an end's files, and more than
/// [`MASS_DELETE_MIN`]: the conduit pauses with `mass-delete` until a user
/// resumes it with `--allow-deletes`. Moves and overwrites are not deletes.
pub fn is_mass_delete(plan: &Plan, source: &Tree, destination: &Tree) -> bool {
    [(Side::Source, source), (Side::Destination, destination)]
        .into_iter()
        .any(|(side, tree)| {
            let n = plan.deletes(side);
            n > MASS_DELETE_MIN && n * 2 > tree.files.len()
        })
}

/// Whether a location's root is there as it was: an existing folder, on the
/// volume with `fingerprint` when one is known (a disk unmounted leaves its
/// mount point, an empty folder on another volume).
pub fn root_present(location: &Path, fingerprint: Option<&str>) -> bool {
    let is_dir = std::fs::metadata(location).is_ok_and(|m| m.is_dir());
    is_dir
        && fingerprint.is_none_or(|want| {
            crate::index::volume_identity(location).is_ok_and(|v| v.fingerprint == want)
        })
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by statvfs
    // before it is read (only when it returns 0).
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // not u64 on every target
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether `side`'s filesystem (holding `location`) has room for what the
/// plan writes there; unknown free space counts as room (the write itself
/// then stops on a full disk, leaving no partial file).
pub fn has_room(plan: &Plan, side: Side, location: &Path) -> bool {
    free_bytes(location).is_none_or(|free| plan.bytes_in(side) <= free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conduit::path::RelPath;
    use crate::conduit::plan::Action;
    use crate::conduit::tree::{FileState, Version};

    fn tree(n: usize) -> Tree {
        let mut t = Tree::default();
        for i in 0..n {
            t.files.insert(
                RelPath::parse(&format!("f{i}")).unwrap(),
                FileState {
                    version: Version {
                        hash: None,
                        size: 1,
                        mtime_ns: 0,
                        exec: false,
                    },
                    inode: i as u64,
                },
            );
        }
        t
    }

    fn deleting(t: &Tree, n: usize) -> Plan {
        let actions = t
            .files
            .iter()
            .take(n)
            .map(|(p, f)| Action::Delete {
                side: Side::Destination,
                path: p.clone(),
                expected: f.clone(),
            })
            .collect();
        Plan {
            actions,
            ..Plan::default()
        }
    }

    #[test]
    fn mass_delete_needs_more_than_half_and_more_than_ten() {
        let small = tree(12);
        assert!(!is_mass_delete(&deleting(&small, 10), &small, &small));
        assert!(is_mass_delete(&deleting(&small, 11), &small, &small));
        let big = tree(30);
        assert!(!is_mass_delete(&deleting(&big, 15), &big, &big));
        assert!(is_mass_delete(&deleting(&big, 16), &big, &big));
    }

    #[test]
    fn a_missing_or_swapped_root_is_not_present() {
        let d = tempfile::tempdir().unwrap();
        assert!(root_present(d.path(), None));
        assert!(!root_present(&d.path().join("gone"), None));
        let real = crate::index::volume_identity(d.path()).unwrap().fingerprint;
        assert!(root_present(d.path(), Some(&real)));
        assert!(!root_present(d.path(), Some("uuid:another-disk")));
        assert!(free_bytes(d.path()).is_some());
    }
}
