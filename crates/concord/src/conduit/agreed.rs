//! The last agreed state of a conduit: per path, the version both ends held
//! when a cycle last finished with them equal. It is the lineage that tells
//! a change from a conflict: an end whose version differs from the agreed
//! one changed since; when both did, it is a conflict (never decided by
//! modification time alone).
//!
//! Kept by the device that runs the conduit's cycles (device-local, not
//! synced), in a file written whole (temp file, fsync, rename) and decoded
//! with bounds, as any file may be damaged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ConduitError, Result};
use super::path::{union3, RelPath};
use super::tree::{Tree, Version};

/// Largest agreed-state file read, in bytes.
pub const MAX_AGREED_BYTES: u64 = 1 << 30;

/// Per path, the version both ends agreed on at the last cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreed {
    pub files: BTreeMap<RelPath, Version>,
}

impl Agreed {
    /// The agreed version of `path`, if both ends held it.
    pub fn get(&self, path: &RelPath) -> Option<&Version> {
        self.files.get(path)
    }

    /// After a cycle: every path where both ends now hold the same version
    /// agrees on it, a path both ends lack is forgotten, and a path where
    /// they still differ (an action failed, or Replicate left an extra file)
    /// keeps its earlier agreement. `unsettled` are paths whose actions
    /// failed: they keep their earlier agreement whatever the trees say.
    pub fn advance(
        &self,
        source: &Tree,
        destination: &Tree,
        unsettled: &std::collections::BTreeSet<RelPath>,
    ) -> Agreed {
        let mut next = self.clone();
        next.advance_in_place(source, destination, unsettled);
        next
    }

    /// [`Agreed::advance`] on this state itself: one pass over the trees in
    /// path order that touches only the paths whose agreement changes, so a
    /// cycle that changed nothing copies nothing.
    pub fn advance_in_place(
        &mut self,
        source: &Tree,
        destination: &Tree,
        unsettled: &std::collections::BTreeSet<RelPath>,
    ) {
        let mut agree = Vec::new();
        let mut forget = Vec::new();
        for (p, a, b, g) in union3(&source.files, &destination.files, &self.files) {
            if unsettled.contains(p) {
                continue;
            }
            match (a, b) {
                (Some(a), Some(b)) if a.version.same_as(&b.version) => {
                    let hash = a.version.hash.or(b.version.hash);
                    let now = Version {
                        hash,
                        ..a.version.clone()
                    };
                    if g != Some(&now) {
                        agree.push((p.clone(), now));
                    }
                }
                (None, None) if g.is_some() => forget.push(p.clone()),
                _ => {}
            }
        }
        for p in forget {
            self.files.remove(&p);
        }
        self.files.extend(agree);
    }

    /// Read the agreed state kept at `path`; a missing file is an empty state
    /// (the first cycle), a damaged one an error (never read as "nothing
    /// agreed", which would turn every difference into a conflict).
    pub fn load(path: &Path) -> Result<Agreed> {
        let md = match std::fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Agreed::default()),
            Err(e) => return Err(ConduitError::io(path, e)),
        };
        if md.len() > MAX_AGREED_BYTES {
            return Err(ConduitError::TooLarge {
                what: "an agreed-state file",
                limit: MAX_AGREED_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| ConduitError::io(path, e))?;
        postcard::from_bytes(&bytes).map_err(|e| {
            ConduitError::Invalid(format!("{}: damaged agreed state: {e}", path.display()))
        })
    }

    /// Write the agreed state to `path` whole: temp file, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = postcard::to_allocvec(self)
            .map_err(|e| ConduitError::Invalid(format!("encoding the agreed state: {e}")))?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = crate::private::create_new(&tmp).map_err(|e| ConduitError::io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| ConduitError::io(&tmp, e))?;
        f.sync_all().map_err(|e| ConduitError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ConduitError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conduit::tree::Hash;

    fn tree(files: &[(&str, u64, Option<Hash>)]) -> Tree {
        let mut t = Tree::default();
        for (p, size, hash) in files {
            let version = Version {
                hash: *hash,
                size: *size,
                mtime_ns: 7,
                exec: false,
            };
            t.files.insert(
                RelPath::parse(p).unwrap(),
                crate::conduit::tree::FileState { version, inode: 1 },
            );
        }
        t
    }

    #[test]
    fn advancing_agrees_forgets_and_keeps() {
        let h = Some([3; 32]);
        let src = tree(&[
            ("same", 1, None),
            ("differ", 1, None),
            ("new", 2, h),
            ("held", 5, None),
        ]);
        let dst = tree(&[
            ("same", 1, h),
            ("differ", 2, None),
            ("new", 2, None),
            ("held", 6, None),
        ]);
        let old = tree(&[
            ("same", 1, None),
            ("differ", 1, None),
            ("gone", 4, None),
            ("held", 5, None),
        ]);
        let mut agreed = Agreed::default();
        agreed.advance_in_place(&old, &old, &Default::default());
        assert_eq!(agreed.files.len(), 4);
        let held = RelPath::parse("held").unwrap();
        let unsettled = [held.clone()].into_iter().collect();
        let before = agreed.clone();
        agreed.advance_in_place(&src, &dst, &unsettled);
        assert_eq!(agreed, before.advance(&src, &dst, &unsettled));
        let get = |p: &str| agreed.get(&RelPath::parse(p).unwrap()).cloned();
        assert_eq!(get("same").unwrap().hash, h, "one end's hash is kept");
        assert_eq!(
            get("differ").unwrap().size,
            1,
            "still differ: earlier agreement"
        );
        assert_eq!(get("new").unwrap().hash, h);
        assert!(get("gone").is_none(), "both ends lack it: forgotten");
        assert_eq!(get("held").unwrap().size, 5, "unsettled: untouched");
    }

    #[test]
    fn saves_loads_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agreed");
        assert_eq!(Agreed::load(&file).unwrap(), Agreed::default());
        let mut a = Agreed::default();
        a.files.insert(
            RelPath::parse("x/y").unwrap(),
            Version {
                hash: Some([1; 32]),
                size: 3,
                mtime_ns: 5,
                exec: true,
            },
        );
        a.save(&file).unwrap();
        assert_eq!(Agreed::load(&file).unwrap(), a);
        // A path that escapes is refused on load.
        let evil = postcard::to_allocvec(&vec![(
            "../x".to_string(),
            a.files.values().next().unwrap(),
        )])
        .unwrap();
        std::fs::write(&file, evil).unwrap();
        assert!(Agreed::load(&file).is_err());
        std::fs::write(&file, b"\xff\xff\xff").unwrap();
        assert!(Agreed::load(&file).is_err());
    }
}
