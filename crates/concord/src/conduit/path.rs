//! Path safety: a conduit reads and writes only inside its root.
//!
//! Every relative path a conduit handles is a [`RelPath`]: `/`-separated
//! names, each checked by [`check_name`] (no `..`, no `.`, no separators, no
//! NUL, bounded length), and never starting with the reserved `.concord`
//! folder. A [`SafeRoot`] turns a `RelPath` into a real path only after
//! checking, with `symlink_metadata`, that every folder on the way is a real
//! folder and not a symbolic link; files are opened with `O_NOFOLLOW`, so a
//! link swapped in at the last moment fails instead of being followed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{ConduitError, Result};

/// Longest name of one file or folder, in bytes (what Linux filesystems allow).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest relative path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Deepest nesting of a relative path.
pub const MAX_DEPTH: usize = 128;
/// The folder at a location's root where Concord keeps its trash, temp
/// files and audit records; never synced, never written by a plan.
pub const RESERVED_DIR: &str = ".concord";

/// Check one name (a path component) received from a peer, a file or a user.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(ConduitError::InvalidPath {
            path: name.chars().take(300).collect(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty name");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are not names");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("name longer than 255 bytes");
    }
    if name.contains(['/', '\\', '\0']) {
        return bad("a name holds no separator and no NUL");
    }
    Ok(())
}

/// A checked path relative to a conduit root: `/`-separated names, not empty,
/// not absolute, without `..`, and not inside [`RESERVED_DIR`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Parse and check an untrusted relative path.
    pub fn parse(s: &str) -> Result<RelPath> {
        let bad = |why| {
            Err(ConduitError::InvalidPath {
                path: s.chars().take(300).collect(),
                why,
            })
        };
        if s.len() > MAX_PATH_BYTES {
            return bad("path longer than 4096 bytes");
        }
        if s.starts_with('/') {
            return bad("absolute paths are refused");
        }
        let mut depth = 0;
        for name in s.split('/') {
            check_name(name)?;
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return bad("path nested deeper than 128 folders");
        }
        if s.split('/').next() == Some(RESERVED_DIR) {
            return bad("`.concord` is reserved for Concord's own files");
        }
        Ok(RelPath(s.to_string()))
    }

    /// The path as written (`a/b/c.txt`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names from the root down.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The containing folder; `None` directly under the root.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_string()))
    }

    /// `name` inside this folder. Checks what [`RelPath::parse`] would on
    /// the joined path, without checking this (already checked) part again:
    /// a scan joins once per file.
    pub fn join(&self, name: &str) -> Result<RelPath> {
        check_name(name)?;
        let len = self.0.len() + 1 + name.len();
        let bad = |why| {
            Err(ConduitError::InvalidPath {
                path: format!("{}/{name}", self.0).chars().take(300).collect(),
                why,
            })
        };
        if len > MAX_PATH_BYTES {
            return bad("path longer than 4096 bytes");
        }
        if self.0.bytes().filter(|&b| b == b'/').count() + 2 > MAX_DEPTH {
            return bad("path nested deeper than 128 folders");
        }
        let mut joined = String::with_capacity(len);
        joined.push_str(&self.0);
        joined.push('/');
        joined.push_str(name);
        Ok(RelPath(joined))
    }

    /// A sibling: this path with its last name replaced.
    pub fn with_file_name(&self, name: &str) -> Result<RelPath> {
        match self.parent() {
            Some(p) => p.join(name),
            None => RelPath::parse(name),
        }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Decoding checks the path like [`RelPath::parse`]: stored and received
/// paths are untrusted.
impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The union of three path-keyed maps' keys, in path order, with each map's
/// value at that path: what comparing two ends with their agreed state
/// needs, in one pass over sorted maps rather than a lookup per path.
pub fn union3<'a, A, B, C>(
    a: &'a BTreeMap<RelPath, A>,
    b: &'a BTreeMap<RelPath, B>,
    c: &'a BTreeMap<RelPath, C>,
) -> impl Iterator<Item = (&'a RelPath, Option<&'a A>, Option<&'a B>, Option<&'a C>)> {
    let (mut a, mut b, mut c) = (
        a.iter().peekable(),
        b.iter().peekable(),
        c.iter().peekable(),
    );
    std::iter::from_fn(move || {
        let key = [
            a.peek().map(|(k, _)| *k),
            b.peek().map(|(k, _)| *k),
            c.peek().map(|(k, _)| *k),
        ]
        .into_iter()
        .flatten()
        .min()?;
        let a = a.next_if(|(k, _)| *k == key).map(|(_, v)| v);
        let b = b.next_if(|(k, _)| *k == key).map(|(_, v)| v);
        let c = c.next_if(|(k, _)| *k == key).map(|(_, v)| v);
        Some((key, a, b, c))
    })
}

/// A conduit root: an existing folder (a location's root plus the conduit's
/// subfolder) that every path of the conduit is resolved inside.
#[derive(Debug, Clone)]
pub struct SafeRoot {
    location: PathBuf,
    prefix: Option<RelPath>,
    root: PathBuf,
}

impl SafeRoot {
    /// The root `dir` inside the location at `location` (an existing folder,
    /// as the location's own device added it). Each folder of `dir` must be a
    /// real folder; with `create`, missing ones are created one by one.
    pub fn open(location: &Path, dir: Option<&RelPath>, create: bool) -> Result<SafeRoot> {
        let md = std::fs::metadata(location).map_err(|e| ConduitError::io(location, e))?;
        if !md.is_dir() {
            return Err(ConduitError::NotFollowed(location.to_path_buf()));
        }
        let mut root = location.to_path_buf();
        for name in dir.iter().flat_map(|d| d.names()) {
            root.push(name);
            match std::fs::symlink_metadata(&root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ConduitError::NotFollowed(root)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    std::fs::create_dir(&root).map_err(|e| ConduitError::io(&root, e))?;
                }
                Err(e) => return Err(ConduitError::io(&root, e)),
            }
        }
        Ok(SafeRoot {
            location: location.to_path_buf(),
            prefix: dir.cloned(),
            root,
        })
    }

    /// The root folder itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The location's root folder (where `.concord/` lives).
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// `rel` as a path relative to the location root (with the subfolder), for
    /// the trash's layout.
    pub fn in_location(&self, rel: &RelPath) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{rel}"),
            None => rel.to_string(),
        }
    }

    /// The real path of `rel`, after checking that every folder above it is a
    /// real folder (not a link). The last name is not followed either: callers
    /// open it with `O_NOFOLLOW` or look at it with `symlink_metadata`.
    pub fn resolve(&self, rel: &RelPath) -> Result<PathBuf> {
        self.walk_parents(rel, false)
    }

    /// As [`SafeRoot::resolve`], creating missing folders above `rel` one by
    /// one (each checked again after creation).
    pub fn resolve_for_write(&self, rel: &RelPath) -> Result<PathBuf> {
        self.walk_parents(rel, true)
    }

    fn walk_parents(&self, rel: &RelPath, create: bool) -> Result<PathBuf> {
        let mut p = self.root.clone();
        let names: Vec<&str> = rel.names().collect();
        let (last, parents) = names.split_last().ok_or(ConduitError::InvalidPath {
            path: String::new(),
            why: "empty path",
        })?;
        for name in parents {
            p.push(name);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ConduitError::NotFollowed(p)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    if let Err(e) = std::fs::create_dir(&p) {
                        if e.kind() != std::io::ErrorKind::AlreadyExists {
                            return Err(ConduitError::io(&p, e));
                        }
                    }
                    let m = std::fs::symlink_metadata(&p).map_err(|e| ConduitError::io(&p, e))?;
                    if !m.is_dir() {
                        return Err(ConduitError::NotFollowed(p));
                    }
                }
                Err(e) => return Err(ConduitError::io(&p, e)),
            }
        }
        p.push(last);
        Ok(p)
    }

    /// Open the regular file `rel` for reading, never through a link.
    pub fn open_file(&self, rel: &RelPath) -> Result<File> {
        let p = self.resolve(rel)?;
        open_nofollow(&p)
    }
}

/// Open a regular file for reading with `O_NOFOLLOW`: a symbolic link in its
/// place fails (`ELOOP`) instead of being followed.
pub fn open_nofollow(p: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ConduitError::NotFollowed(p.to_path_buf()),
            _ => ConduitError::io(p, e),
        })?;
    let md = f.metadata().map_err(|e| ConduitError::io(p, e))?;
    if !md.is_file() {
        return Err(ConduitError::NotFollowed(p.to_path_buf()));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_escapes_and_oversized_names() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            ".concord/trash/x",
            ".concord",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(RelPath::parse(&"x".repeat(256)).is_err());
        assert!(RelPath::parse(&vec!["d"; 129].join("/")).is_err());
        assert!(RelPath::parse(&"x".repeat(255)).is_ok());
        for good in ["a", "a/b.txt", "é/日本語 name", "x/.concord", ".hidden"] {
            assert_eq!(RelPath::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn parent_name_and_join() {
        let p = RelPath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.with_file_name("d").unwrap().as_str(), "a/b/d");
        assert!(RelPath::parse("c").unwrap().parent().is_none());
        assert!(p.join("..").is_err());
    }

    #[test]
    fn join_checks_what_parse_does() {
        let deep = RelPath::parse(&vec!["d"; 127].join("/")).unwrap();
        assert!(deep.join("x").is_ok());
        assert!(deep.join("x").unwrap().join("y").is_err(), "129 names");
        let long = RelPath::parse(&vec!["x".repeat(255); 16].join("/")).unwrap();
        assert_eq!(long.as_str().len(), 4095);
        assert!(long.join("y").is_err(), "over 4096 bytes");
        let a = RelPath::parse("a").unwrap();
        for bad in ["", ".", "..", "b/c", "b\\c", "b\0c", &"z".repeat(256)] {
            assert!(a.join(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(a.join(".concord").unwrap().as_str(), "a/.concord");
    }

    #[test]
    fn union3_walks_every_key_once_in_order() {
        let map = |keys: &[&str]| -> BTreeMap<RelPath, usize> {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (RelPath::parse(k).unwrap(), i))
                .collect()
        };
        let (a, b, c) = (
            map(&["a", "c/x", "d"]),
            map(&["b", "c/x"]),
            map(&["a", "e"]),
        );
        let got: Vec<_> = union3(&a, &b, &c)
            .map(|(k, x, y, z)| (k.as_str(), x.copied(), y.copied(), z.copied()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Some(0), None, Some(0)),
                ("b", None, Some(0), None),
                ("c/x", Some(1), Some(1), None),
                ("d", Some(2), None, None),
                ("e", None, None, Some(1)),
            ]
        );
    }

    #[test]
    fn decoding_checks_paths() {
        let ok: RelPath = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(ok.as_str(), "a/b");
        assert!(serde_json::from_str::<RelPath>("\"../b\"").is_err());
    }

    #[test]
    fn links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("file-link"))
            .unwrap();
        let root = SafeRoot::open(dir.path(), None, false).unwrap();
        let through = RelPath::parse("link/secret").unwrap();
        assert!(matches!(
            root.resolve(&through),
            Err(ConduitError::NotFollowed(_))
        ));
        assert!(root.resolve_for_write(&through).is_err());
        let link = RelPath::parse("file-link").unwrap();
        assert!(matches!(
            root.open_file(&link),
            Err(ConduitError::NotFollowed(_))
        ));
        // A subfolder through a link is refused too.
        let sub = RelPath::parse("link").unwrap();
        assert!(SafeRoot::open(dir.path(), Some(&sub), true).is_err());
        // Creating parents makes real folders.
        let deep = RelPath::parse("x/y/z.txt").unwrap();
        let p = root.resolve_for_write(&deep).unwrap();
        assert!(p.parent().unwrap().is_dir());
        assert!(p.starts_with(dir.path()));
    }
}
