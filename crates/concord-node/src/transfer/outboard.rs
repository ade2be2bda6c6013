//! The BLAKE3 trees (bao outboards) of files this device hashed while
//! listing them for a conduit, kept so that serving the same file right
//! after does not read and hash it a second time. A tree is only reused for
//! the file it was built from: the key is the file's device, inode, size,
//! modification and change times, and any write changes the change time.
//! Serving still checks every group it sends against the tree
//! (`encode_ranges_validated`), and the receiver verifies everything, so a
//! stale tree can fail a transfer but never pass wrong bytes.
//!
//! Bounded: at most [`MAX_CACHE_BYTES`] of trees in memory, the oldest
//! dropped first; files of one chunk group (no tree) are not kept.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// Most bytes of trees kept (a tree is 1/256 of its file: 16 GiB of files).
pub const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What identifies one version of a file on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TreeKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl TreeKey {
    /// The key of the file `md` describes (taken before its bytes were read).
    pub fn of(md: &std::fs::Metadata) -> TreeKey {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        TreeKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        }
    }
}

/// A file's root hash and its post-order outboard.
#[derive(Clone)]
pub struct CachedTree {
    pub hash: blake3::Hash,
    pub outboard: Arc<Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<TreeKey, CachedTree>,
    order: VecDeque<TreeKey>,
    bytes: u64,
}

/// Trees by file version, bounded by [`MAX_CACHE_BYTES`].
#[derive(Default)]
pub struct OutboardCache(Mutex<Inner>);

impl OutboardCache {
    /// The tree of exactly this version of the file, if kept.
    pub fn get(&self, key: &TreeKey) -> Option<CachedTree> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.map.get(key).cloned()
    }

    /// Keep `tree` for `key`, dropping the oldest trees beyond the bound.
    pub fn insert(&self, key: TreeKey, tree: CachedTree) {
        let size = tree.outboard.len() as u64;
        if size == 0 || size > MAX_CACHE_BYTES {
            return;
        }
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.map.insert(key, tree) {
            inner.bytes -= old.outboard.len() as u64;
            inner.order.retain(|k| k != &key);
        }
        inner.bytes += size;
        inner.order.push_back(key);
        while inner.bytes > MAX_CACHE_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.map.remove(&oldest) {
                inner.bytes -= gone.outboard.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_bounded_and_keyed_by_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let key = TreeKey::of(&std::fs::metadata(&p).unwrap());
        let cache = OutboardCache::default();
        let tree = |n: usize| CachedTree {
            hash: blake3::hash(b"x"),
            outboard: Arc::new(vec![0; n]),
        };
        cache.insert(key, tree(10));
        assert!(cache.get(&key).is_some());
        std::fs::write(&p, b"longer").unwrap();
        assert!(cache
            .get(&TreeKey::of(&std::fs::metadata(&p).unwrap()))
            .is_none());
        let half = (MAX_CACHE_BYTES / 2) as usize;
        let (k2, k3) = (TreeKey { ino: 2, ..key }, TreeKey { ino: 3, ..key });
        cache.insert(k2, tree(half));
        cache.insert(k3, tree(half));
        assert!(cache.get(&key).is_none(), "the oldest tree is dropped");
        assert!(cache.get(&k2).is_some() && cache.get(&k3).is_some());
    }
}
