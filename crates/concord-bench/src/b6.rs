//! B6: indexing with `commit_bulk`.
//!
//! 1. A generated tree of real files (10 × 20 folders, `files / 200` files in each
//!    leaf, sparse files of seeded sizes) is walked and its entries written as
//!    `FileEntry` rows through `Library::commit_bulk` (ONE log entry).
//! 2. `synthetic` generated rows go through one more `commit_bulk`.
//!
//! Baseline, same run: the same walk (std::fs) and the same rows inserted by plain
//! rusqlite in one transaction into a `file_entries` table with the same columns
//! and the same two indexes (location, parent) minus the sync columns. The file
//! system cache is warmed by a walk before either is timed. Each `commit_bulk`
//! must grow the sync log by exactly one entry of at most 2 KB (postcard size).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use concord::hlc::SystemClock;
use concord::model::{entry_kind, FileEntry, Location, Volume};
use concord::sync::entry::BulkOperation;
use concord::{Change, Library, Uuid};
use rusqlite::Connection;

use crate::common::{
    open_baseline, peak_rss_mb, reset_peak_rss, timed, Scale, SplitMix64, UuidGen,
};
use crate::progress;
use crate::report::Row;

const DEV: Uuid = Uuid::from_u128(0x0000_b600_0000_7000_8000_0000_0000_0001);
const TOP: usize = 10;
const MID: usize = 20;
const MAX_ENTRY_BYTES: f64 = 2048.0;

/// Create the tree under `root`: `files` regular files in `TOP × MID` folders.
fn generate_tree(root: &Path, files: usize) -> anyhow::Result<()> {
    let per_leaf = files.div_ceil(TOP * MID);
    let mut rng = SplitMix64::new(0xB67EE);
    let mut made = 0;
    for t in 0..TOP {
        for m in 0..MID {
            let dir = root.join(format!("dir{t:02}")).join(format!("sub{m:02}"));
            std::fs::create_dir_all(&dir)?;
            for f in 0..per_leaf {
                if made == files {
                    return Ok(());
                }
                let file = std::fs::File::create(dir.join(format!("file{f:05}.dat")))?;
                file.set_len(rng.below(1 << 16))?;
                made += 1;
            }
        }
    }
    Ok(())
}

/// Walk `root` with std::fs into `FileEntry` rows, parents before children.
fn walk(root: &Path, location: Uuid) -> anyhow::Result<Vec<FileEntry>> {
    let mut ids = UuidGen::new(0xB6);
    let mut out = Vec::new();
    let mut stack: Vec<(std::path::PathBuf, Option<Uuid>, String)> =
        vec![(root.to_path_buf(), None, String::new())];
    while let Some((dir, parent, rel)) = stack.pop() {
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            let meta = item.metadata()?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = if meta.is_dir() {
                entry_kind::DIR
            } else if meta.file_type().is_symlink() {
                entry_kind::SYMLINK
            } else {
                entry_kind::FILE
            };
            let id = ids.next_id();
            if kind == entry_kind::DIR {
                stack.push((item.path(), Some(id), path.clone()));
            }
            out.push(FileEntry {
                id,
                device: DEV,
                location,
                parent,
                name,
                path,
                kind,
                size: if kind == entry_kind::FILE {
                    meta.len() as i64
                } else {
                    0
                },
                modified: Some(meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000),
                inode: Some(meta.ino() as i64),
            });
        }
    }
    Ok(out)
}

/// `n` generated rows under 1,000 made-up folders.
fn synthetic(location: Uuid, n: usize) -> impl Iterator<Item = FileEntry> {
    let mut ids = UuidGen::new(0xB65);
    let folders: Vec<Uuid> = (0..1000).map(|_| ids.next_id()).collect();
    (0..n).map(move |i| FileEntry {
        id: ids.next_id(),
        device: DEV,
        location,
        parent: Some(folders[i % 1000]),
        name: format!("file{i:07}.jpg"),
        path: format!("d{:03}/file{i:07}.jpg", i % 1000),
        kind: entry_kind::FILE,
        size: (i as i64 * 7919) % 10_000_000,
        modified: Some(1_700_000_000_000 + i as i64),
        inode: Some(i as i64 + 1_000_000),
    })
}

const RAW_DDL: &str = "
CREATE TABLE file_entries (
  id INTEGER PRIMARY KEY, uuid BLOB NOT NULL UNIQUE, device BLOB, location BLOB, parent BLOB,
  name TEXT, path TEXT, kind INTEGER, size INTEGER, modified INTEGER, inode INTEGER
);
CREATE INDEX file_entries_by_location ON file_entries(location);
CREATE INDEX file_entries_by_parent ON file_entries(parent);
";

/// Plain rusqlite: every row in one transaction.
fn raw_insert(
    conn: &mut Connection,
    rows: impl IntoIterator<Item = FileEntry>,
) -> anyhow::Result<u64> {
    let tx = conn.transaction()?;
    let mut n = 0;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO file_entries (uuid, device, location, parent, name, path, kind, size, modified, inode)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in rows {
            stmt.execute(rusqlite::params![
                r.id, r.device, r.location, r.parent, r.name, r.path, r.kind, r.size, r.modified,
                r.inode
            ])?;
            n += 1;
        }
    }
    tx.commit()?;
    Ok(n)
}

fn initial_index(loc: &Location) -> BulkOperation {
    BulkOperation::InitialIndex {
        location: loc.id,
        path: loc.path.clone(),
        volume_fingerprint: "bench-volume".into(),
        count: 0,
    }
}

/// `commit_bulk`, checking the log grew by one entry; returns that entry's size.
fn bulk(
    lib: &Library,
    rows: impl IntoIterator<Item = FileEntry>,
    loc: &Location,
) -> anyhow::Result<(usize, usize)> {
    let before = lib.with_log(|l| l.latest_id())?;
    lib.commit_bulk(rows, initial_index(loc))?;
    let added = lib.with_log(|l| l.fetch_after_id(before, usize::MAX))?;
    let size = match added.as_slice() {
        [(_, e)] => postcard::to_allocvec(e)?.len(),
        _ => 0,
    };
    Ok((added.len(), size))
}

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(20_000, 200_000);
    let synthetic_rows = scale.pick(100_000, 1_000_000);
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let (_, gen_s) = timed(|| generate_tree(&tree, files))?;
    let warm = walk(&tree, Uuid::nil())?.len();
    progress!("generated {files} files ({warm} entries) in {gen_s:.1} s");

    // Baseline.
    reset_peak_rss();
    let mut conn = open_baseline(&tmp.path().join("raw.db"))?;
    conn.execute_batch(RAW_DDL)?;
    let tree_loc = Uuid::from_u128(0xB610C);
    let synth_loc = Uuid::from_u128(0xB6510C);
    let (n, raw_tree_s) = timed(|| raw_insert(&mut conn, walk(&tree, tree_loc)?))?;
    anyhow::ensure!(n as usize == warm);
    let (_, raw_synth_s) = timed(|| raw_insert(&mut conn, synthetic(synth_loc, synthetic_rows)))?;
    drop(conn);
    let raw_peak = peak_rss_mb().unwrap_or(0.0);
    let raw_tree = warm as f64 / raw_tree_s;
    let raw_synth = synthetic_rows as f64 / raw_synth_s;
    progress!("raw: walk+insert {raw_tree:.0} entries/s, synthetic {raw_synth:.0} rows/s");

    // Concord.
    reset_peak_rss();
    let lib = Library::create(
        &tmp.path().join("concord"),
        Uuid::from_u128(0xB6),
        "bench",
        DEV,
        Box::new(SystemClock),
    )?;
    let vol = Volume {
        id: Uuid::from_u128(0xB6F0),
        device: DEV,
        name: "bench".into(),
        fingerprint: "bench-volume".into(),
        mount_point: "/".into(),
    };
    let loc = |id: Uuid, path: &Path| Location {
        id,
        device: DEV,
        volume: vol.id,
        path: path.display().to_string(),
        name: "bench".into(),
    };
    let (tree_l, synth_l) = (
        loc(tree_loc, &tree),
        loc(synth_loc, Path::new("/synthetic")),
    );
    lib.commit_batch(vec![
        Change::insert(&vol),
        Change::insert(&tree_l),
        Change::insert(&synth_l),
    ])?;
    let ((tree_entries, tree_bytes), tree_s) =
        timed(|| bulk(&lib, walk(&tree, tree_loc)?, &tree_l))?;
    let ((synth_entries, synth_bytes), synth_s) =
        timed(|| bulk(&lib, synthetic(synth_loc, synthetic_rows), &synth_l))?;
    let stored: i64 =
        lib.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM file_entries", [], |r| r.get(0))?))?;
    anyhow::ensure!(
        stored as usize == warm + synthetic_rows,
        "stored {stored} rows"
    );
    drop(lib);
    let peak = peak_rss_mb().unwrap_or(0.0);
    let tree_rate = warm as f64 / tree_s;
    let synth_rate = synthetic_rows as f64 / synth_s;
    progress!(
        "concord: walk+commit_bulk {tree_rate:.0} entries/s, synthetic {synth_rate:.0} rows/s; \
         log grew by {tree_entries} entry ({tree_bytes} B) and {synth_entries} entry ({synth_bytes} B)"
    );

    let one_each = tree_entries == 1 && synth_entries == 1;
    Ok(vec![
        Row::at_least(
            "B6",
            "index_rate",
            tree_rate,
            "entries/s",
            "raw_walk_sqlite",
            raw_tree,
            0.7,
        ),
        Row::at_least(
            "B6",
            "bulk_rate",
            synth_rate,
            "rows/s",
            "raw_sqlite",
            raw_synth,
            0.7,
        ),
        Row::at_most(
            "B6",
            "log_entries_per_bulk",
            tree_entries.max(synth_entries) as f64,
            "entries",
            1.0,
            one_each,
        ),
        Row::at_most(
            "B6",
            "log_entry_bytes",
            tree_bytes.max(synth_bytes) as f64,
            "bytes",
            MAX_ENTRY_BYTES,
            one_each,
        ),
        Row::info("B6", "peak_rss", peak, "MB", "raw_walk_sqlite", raw_peak),
    ])
}
