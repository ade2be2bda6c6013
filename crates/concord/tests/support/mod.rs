//! Builders and probes shared by the core crate's integration tests, so each
//! test file states only what it tests. Included with `mod support;`; not
//! every test binary uses every item.
#![allow(dead_code)]

use concord::digest::{digest, Scope};
use concord::model::{entry_kind, Device, FileEntry, Location, Tag, Volume};
use concord::sync::entry::{BulkOperation, LogEntry};
use concord::sync::seal::NodeKey;
use concord::Change;
use concord::{Library, Uuid};

/// Small deterministic RNG (SplitMix64) for orders, subsets and sizes, seeded
/// by the test case so a failure replays.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index into a collection of `n` items.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// One item of `v`.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.index(v.len())]
    }

    /// Shuffle `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.index(i + 1));
        }
    }
}

/// Scratch space: RAM when there is some (fsync-free, so suites stay fast;
/// SIGKILL does not lose the page cache, so durability is tested all the same).
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new().prefix(prefix).tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Every entry the library's log holds, in log order.
pub fn all_entries(lib: &Library) -> Vec<LogEntry> {
    lib.with_log(|l| l.entries()).unwrap()
}

/// Digest of the library's whole synced state, to compare replicas.
pub fn digest_all(lib: &Library) -> String {
    lib.read(|c| digest(c, Scope::All)).unwrap().0
}

/// The single integer `sql` selects.
pub fn count(lib: &Library, sql: &str) -> i64 {
    count_with(lib, sql, [])
}

/// The single integer `sql` selects with `params`.
pub fn count_with(lib: &Library, sql: &str, params: impl rusqlite::Params) -> i64 {
    lib.read(|c| Ok(c.query_row(sql, params, |r| r.get(0))?))
        .unwrap()
}

/// The UUIDs `sql` selects (first column) with `params`.
pub fn uuids(lib: &Library, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Vec<Uuid> {
    lib.read(|c| {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt.query_map(params, |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<Uuid>>>()?)
    })
    .unwrap()
}

/// A tag without a color.
pub fn tag(id: Uuid, name: &str) -> Tag {
    Tag {
        id,
        name: name.into(),
        color: None,
    }
}

/// A volume of `device` mounted at `/`.
pub fn volume(id: Uuid, device: Uuid, name: &str, fingerprint: &str) -> Volume {
    Volume {
        id,
        device,
        name: name.into(),
        fingerprint: fingerprint.into(),
        mount_point: "/".into(),
    }
}

/// A location of `device` on `volume`.
pub fn location(id: Uuid, device: Uuid, volume: Uuid, path: &str, name: &str) -> Location {
    Location {
        id,
        device,
        volume,
        path: path.into(),
        name: name.into(),
    }
}

/// A plain file at the root of `location`, its path its name.
pub fn file(
    id: Uuid,
    device: Uuid,
    location: Uuid,
    name: &str,
    size: i64,
    modified: Option<i64>,
    inode: Option<i64>,
) -> FileEntry {
    FileEntry {
        id,
        device,
        location,
        parent: None,
        name: name.into(),
        path: name.into(),
        kind: entry_kind::FILE,
        size,
        modified,
        offloaded_to: None,
        offloaded_path: None,
        offloaded_hash: None,
        inode,
    }
}

/// The bulk operation announcing an initial index of `loc` (its rows counted by
/// `Library::commit_bulk`).
pub fn initial_index(loc: &Location, fingerprint: &str) -> BulkOperation {
    BulkOperation::InitialIndex {
        location: loc.id,
        path: loc.path.clone(),
        volume_fingerprint: fingerprint.into(),
        count: 0,
    }
}

/// Device `n`'s node key: the same bytes every run, so tests can name keys.
pub fn node_key(n: u8) -> NodeKey {
    NodeKey::from_bytes(&[n; 32])
}

/// `n` new tags named `label-0`, `label-1`, ... committed as one batch.
pub fn tag_batch(lib: &Library, n: usize, label: &str) {
    let changes = (0..n)
        .map(|k| Change::insert(&tag(Uuid::now_v7(), &format!("{label}-{k}"))))
        .collect();
    lib.commit_batch(changes).unwrap();
}

/// Device `id`'s registration of itself with node key `n` (what a library
/// opened with that key writes first).
pub fn registration(id: Uuid, n: u8) -> Change {
    Change::insert(&Device {
        id,
        name: format!("d{n}"),
        node_id: Some(node_key(n).node_id()),
        addrs: None,
        removed: None,
    })
}
