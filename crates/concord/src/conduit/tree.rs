//! One end of a conduit as the planner sees it: a [`Tree`] of regular files,
//! each a [`FileState`] (its [`Version`] plus its inode).
//!
//! [`scan`] builds a tree from a folder: it never follows a symbolic link
//! (links, sockets, FIFOs and devices are left out, as are names that are not
//! UTF-8 or not valid [`RelPath`]s), skips `.concord/` and ignored paths, and
//! hashes a file only when its stat (size, mtime, inode) differs from the
//! previous scan's, which it takes as a cache. Empty folders are not part of
//! a tree: conduits carry files (ARCHITECTURE.md, "Conduits").

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ConduitError, Result};
use super::ignore::IgnoreRules;
use super::path::{RelPath, SafeRoot, MAX_DEPTH, RESERVED_DIR};

/// A BLAKE3 content hash.
pub type Hash = [u8; 32];

/// Most files a conduit end may hold (a bound on memory per cycle).
pub const MAX_FILES: usize = 4_000_000;

/// A file's content identity and the metadata a conduit preserves: what two
/// ends must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// BLAKE3 of the content, when known (an index may not have it yet).
    pub hash: Option<Hash>,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The owner's executable bit.
    pub exec: bool,
}

impl Version {
    /// Whether two versions hold the same content: by hash when both are
    /// known, else by size and modification time (which copies preserve).
    /// The executable bit is part of the version.
    pub fn same_as(&self, other: &Version) -> bool {
        let content = match (self.hash, other.hash) {
            (Some(a), Some(b)) => a == b,
            _ => self.size == other.size && self.mtime_ns == other.mtime_ns,
        };
        content && self.exec == other.exec
    }
}

/// A file on one end: its version and where it sits on disk (the inode, to
/// notice a file replaced between the scan and its use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub version: Version,
    pub inode: u64,
}

impl FileState {
    /// The state of a file from its metadata; the hash is filled in later.
    pub fn from_metadata(md: &std::fs::Metadata) -> FileState {
        FileState {
            version: Version {
                hash: None,
                size: md.len(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                exec: md.permissions().mode() & 0o100 != 0,
            },
            inode: md.ino(),
        }
    }

    /// Whether `md` still describes this file (same inode, size, mtime).
    pub fn unchanged(&self, md: &std::fs::Metadata) -> bool {
        let now = FileState::from_metadata(md);
        md.is_file()
            && now.inode == self.inode
            && now.version.size == self.version.size
            && now.version.mtime_ns == self.version.mtime_ns
    }
}

/// A cached hash is trusted only for files modified at least this long
/// before the scan that hashed them: a file written twice within the
/// filesystem's timestamp granularity keeps its size and mtime (the "racily
/// clean" problem git has), so a recent file is hashed again.
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The files of one conduit end, by relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub files: BTreeMap<RelPath, FileState>,
    /// When the scan that built this tree started (ms since the Unix epoch).
    pub scanned_at_ms: i64,
}

impl Tree {
    /// The state at `path`, if a file is there.
    pub fn get(&self, path: &RelPath) -> Option<&FileState> {
        self.files.get(path)
    }
}

/// BLAKE3 of everything `r` yields, with its length.
pub fn hash_reader(r: &mut impl Read) -> std::io::Result<(Hash, u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((*h.finalize().as_bytes(), total))
}

/// Walk `root` at `now_ms` into a tree, hashing only files whose stat
/// differs from `cache` (the previous scan of the same end) or that were
/// modified shortly before that scan ([`RACY_WINDOW_NS`]).
pub fn scan(
    root: &SafeRoot,
    ignore: &IgnoreRules,
    cache: Option<&Tree>,
    now_ms: i64,
) -> Result<Tree> {
    scan_with(root, ignore, cache, now_ms, &|f, _| {
        hash_reader(f).map(|(h, _)| h)
    })
}

/// How a scan hashes a file it opened (given with its stat before the
/// read): the BLAKE3 of its bytes. A serving node passes one that keeps the
/// file's verified-streaming tree from the same read, so the file is not
/// read and hashed a second time when a peer asks for it. Called from
/// several threads at once ([`HASH_THREADS`]).
pub type FileHasher<'a> =
    dyn Fn(&mut std::fs::File, &std::fs::Metadata) -> std::io::Result<Hash> + Sync + 'a;

/// Most threads a scan hashes files on: a first scan is bound by BLAKE3,
/// and a serving node's peer waits for the whole listing before it asks
/// for any content, so every core helps (on the 2-core machines, a first
/// listing of 2 GiB took 1.4 s on one).
pub const HASH_THREADS: usize = 4;

/// A file the walk found whose stat differs from the cache: to hash.
struct Found {
    rel: RelPath,
    path: std::path::PathBuf,
    md: std::fs::Metadata,
}

/// A cached tree read in path order alongside a walk that finds files in
/// path order: one comparison per file instead of a map lookup.
struct CacheCursor<'a> {
    rest: std::iter::Peekable<std::collections::btree_map::Iter<'a, RelPath, FileState>>,
}

impl<'a> CacheCursor<'a> {
    /// The cached state of `rel`; calls must come in path order.
    fn get(&mut self, rel: &RelPath) -> Option<&'a FileState> {
        while self.rest.next_if(|(k, _)| *k < rel).is_some() {}
        self.rest.next_if(|(k, _)| *k == rel).map(|(_, v)| v)
    }
}

/// [`scan`], hashing with `hasher`.
pub fn scan_with(
    root: &SafeRoot,
    ignore: &IgnoreRules,
    cache: Option<&Tree>,
    now_ms: i64,
    hasher: &FileHasher<'_>,
) -> Result<Tree> {
    let trusted_before = cache.map_or(i64::MIN, |c| {
        c.scanned_at_ms
            .saturating_mul(1_000_000)
            .saturating_sub(RACY_WINDOW_NS)
    });
    let mut cached = cache.map(|c| CacheCursor {
        rest: c.files.iter().peekable(),
    });
    let mut files = Vec::with_capacity(cache.map_or(0, |c| c.files.len()));
    let mut todo = Vec::new();
    walk(root, ignore, &mut |rel, md| {
        let known = cached
            .as_mut()
            .and_then(|c| c.get(&rel))
            .filter(|c| c.version.mtime_ns < trusted_before)
            .filter(|c| c.unchanged(&md))
            .and_then(|c| c.version.hash);
        match known {
            Some(hash) => {
                let mut state = FileState::from_metadata(&md);
                state.version.hash = Some(hash);
                files.push((rel, state));
            }
            None => todo.push(Found {
                path: root.path().join(rel.as_str()),
                rel,
                md,
            }),
        }
    })?;
    for (i, state) in hash_each(&todo, &|f| hash_one(&f.path, &f.md, hasher))? {
        if let Some(state) = state {
            files.push((todo[i].rel.clone(), state));
        }
    }
    Ok(Tree {
        // In path order but for the hashed files: the sort finds the runs.
        files: files.into_iter().collect(),
        scanned_at_ms: now_ms,
    })
}

/// `each` of `todo`, on up to [`HASH_THREADS`] threads (one when there is
/// one file), with each one's index; the first error wins.
fn hash_each(
    todo: &[Found],
    each: &(dyn Fn(&Found) -> Result<Option<FileState>> + Sync),
) -> Result<Vec<(usize, Option<FileState>)>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(HASH_THREADS)
        .min(todo.len());
    if threads <= 1 {
        return todo
            .iter()
            .enumerate()
            .map(|(i, f)| Ok((i, each(f)?)))
            .collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(todo.len()));
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(f) = todo.get(i) else { break };
                match each(f) {
                    Ok(state) => done
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, state)),
                    Err(e) => {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        next.store(todo.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(done.into_inner().unwrap_or_else(|e| e.into_inner())),
    }
}

/// What a folder holds that a walk goes on with: a file and its stat, or a
/// folder to read (with its depth).
enum Child {
    File(RelPath, std::fs::Metadata),
    Folder(RelPath, usize),
}

/// Every regular file under `root` (links and ignored paths left out), in
/// path order ([`RelPath`]'s order), with its stat, to `each`. One stat per
/// file, relative to its open folder (`fstatat`, never following a link);
/// folders and links are told apart by the folder listing's types.
fn walk(
    root: &SafeRoot,
    ignore: &IgnoreRules,
    each: &mut dyn FnMut(RelPath, std::fs::Metadata),
) -> Result<()> {
    let mut found = 0usize;
    let mut stack = read_folder(root, None, 0, ignore, &mut found)?;
    while let Some(child) = stack.pop() {
        match child {
            Child::File(rel, md) => each(rel, md),
            Child::Folder(rel, depth) => {
                stack.extend(read_folder(root, Some(rel), depth, ignore, &mut found)?);
            }
        }
    }
    Ok(())
}

/// The children of the folder `rel` (the root when `None`) at `depth`, in
/// reverse path order (a stack pops them in order). Sorted by name, a
/// folder's name followed by `/`: so a folder's files come out in the same
/// order as `a/b` strings sort (`a-x` < `a/b` < `a0`). `found` counts the
/// files of the whole walk, bounded by [`MAX_FILES`].
fn read_folder(
    root: &SafeRoot,
    rel: Option<RelPath>,
    depth: usize,
    ignore: &IgnoreRules,
    found: &mut usize,
) -> Result<Vec<Child>> {
    let dir = match &rel {
        Some(r) => root.path().join(r.as_str()),
        None => root.path().to_path_buf(),
    };
    let io = |e| ConduitError::io(&dir, e);
    let mut children: Vec<(String, Child)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: left alone
        };
        if rel.is_none() && name == RESERVED_DIR {
            continue;
        }
        let Ok(child) = (match &rel {
            Some(r) => r.join(&name),
            None => RelPath::parse(&name),
        }) else {
            continue; // a name no other end could hold safely
        };
        let kind = entry.file_type().map_err(io)?;
        let md = match kind.is_dir() || kind.is_symlink() {
            true => None,
            false => Some(
                entry
                    .metadata()
                    .map_err(|e| ConduitError::io(entry.path(), e))?,
            ),
        };
        if kind.is_dir() || md.as_ref().is_some_and(|m| m.is_dir()) {
            if depth + 1 < MAX_DEPTH && !ignore.is_ignored(child.as_str(), true) {
                children.push((name + "/", Child::Folder(child, depth + 1)));
            }
        } else if let Some(md) = md.filter(|m| m.is_file()) {
            if ignore.is_ignored(child.as_str(), false) {
                continue;
            }
            if *found == MAX_FILES {
                return Err(ConduitError::TooLarge {
                    what: "the files of a conduit end",
                    limit: MAX_FILES as u64,
                });
            }
            *found += 1;
            children.push((name, Child::File(child, md)));
        }
    }
    children.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    Ok(children.into_iter().map(|(_, c)| c).collect())
}

/// The state of one file, hashed. `None` when the file vanished or was
/// replaced by a link meanwhile.
fn hash_one(
    p: &Path,
    md: &std::fs::Metadata,
    hasher: &FileHasher<'_>,
) -> Result<Option<FileState>> {
    let mut f = match super::path::open_nofollow(p) {
        Ok(f) => f,
        Err(ConduitError::NotFollowed(_)) => return Ok(None),
        Err(ConduitError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let hash = hasher(&mut f, md).map_err(|e| ConduitError::io(p, e))?;
    let after = f.metadata().map_err(|e| ConduitError::io(p, e))?;
    // Written to while hashed: take the stat from after, and leave the hash
    // out unless nothing moved (the next scan hashes it again).
    let mut state = FileState::from_metadata(&after);
    if state.version.size == md.len() && FileState::from_metadata(md).unchanged(&after) {
        state.version.hash = Some(hash);
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_skips_links_reserved_and_ignored_and_reuses_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::create_dir_all(d.join(".concord/trash")).unwrap();
        std::fs::write(d.join(".concord/trash/x"), b"x").unwrap();
        std::fs::write(d.join("a/b/f.txt"), b"hello").unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        std::fs::write(d.join("skip.tmp"), b"t").unwrap();
        std::fs::write(d.join(".concordignore"), b"*.tmp\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let root = SafeRoot::open(d, None, false).unwrap();
        let rules = IgnoreRules::load(&root).unwrap();
        let now_ms = 4_000_000_000_000; // long after the files were written
        let t = scan(&root, &rules, None, now_ms).unwrap();
        let names: Vec<&str> = t.files.keys().map(RelPath::as_str).collect();
        assert_eq!(names, ["a/b/f.txt", "empty"]);
        let f = &t.files[&RelPath::parse("a/b/f.txt").unwrap()];
        assert_eq!(f.version.hash, Some(*blake3::hash(b"hello").as_bytes()));
        assert_eq!(f.version.size, 5);
        // A cached hash with the same stat is reused (a wrong one proves it).
        let mut cache = t.clone();
        let key = RelPath::parse("a/b/f.txt").unwrap();
        cache.files.get_mut(&key).unwrap().version.hash = Some([7; 32]);
        let again = scan(&root, &rules, Some(&cache), now_ms).unwrap();
        assert_eq!(again.files[&key].version.hash, Some([7; 32]));
        // A file modified just before the cached scan is hashed again.
        cache.scanned_at_ms = f.version.mtime_ns / 1_000_000 + 1;
        let racy = scan(&root, &rules, Some(&cache), now_ms).unwrap();
        assert_eq!(racy.files[&key].version.hash, f.version.hash);
    }

    #[test]
    fn the_walk_finds_files_in_path_order_so_every_cached_hash_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Names that sort around `/`: `a-x` < `a.c/z` < `a/b` < `a0`, and
        // `a/x-1` < `a/x/f` < `a/x0`.
        let names = [
            "a-x", "a.c/z", "a/b", "a/b-c", "a/b.d/e", "a/x/f", "a/x-1", "a/x0", "a0", "ab/c/d",
            "Z", "é/ü",
        ];
        for n in names {
            let p = d.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, n).unwrap();
        }
        let root = SafeRoot::open(d, None, false).unwrap();
        let rules = IgnoreRules::default();
        let now_ms = 4_000_000_000_000;
        let t = scan(&root, &rules, None, now_ms).unwrap();
        assert_eq!(t.files.len(), names.len());
        let mut order = Vec::new();
        walk(&root, &rules, &mut |rel, _| order.push(rel)).unwrap();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "the walk emits files in path order");
        // Wrong cached hashes everywhere: each one is reused, so each was found.
        let mut cache = t.clone();
        for f in cache.files.values_mut() {
            f.version.hash = Some([9; 32]);
        }
        let again = scan(&root, &rules, Some(&cache), now_ms).unwrap();
        assert!(again
            .files
            .values()
            .all(|f| f.version.hash == Some([9; 32])));
        assert_eq!(again.files.len(), names.len());
    }
}
