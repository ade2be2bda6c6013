//! B6: indexing with `commit_bulk`.
//!
//! 1. A generated tree of real files (10 × 20 folders, `files / 200` files in each
//!    leaf, sparse files of seeded sizes) is indexed by `concord::index::add_location`
//!    (walk, volume and location records, then every entry as a `FileEntry` row
//!    through ONE `Library::commit_bulk`). Timed end to end.
//! 2. `synthetic` generated rows go through one more `commit_bulk`.
//!
//! Baseline, same run: a plain std::fs walk producing the same columns, and the
//! rows inserted by plain rusqlite in one transaction into a `file_entries` table
//! with the same columns minus the sync ones and the same indexes as Concord's
//! (read from a Concord `library.db`, so it follows schema changes). The file
//! system cache is warmed by a walk before either is timed. Each bulk write must
//! grow the sync log by exactly one entry of at most 2 KB (postcard size); the
//! volume and location records `add_location` creates are ordinary entries and
//! not counted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use concord::hlc::SystemClock;
use concord::model::{entry_kind, FileEntry, Location, Syncable, Volume};
use concord::sync::entry::BulkOperation;
use concord::{Change, Library, Uuid};
use rusqlite::Connection;

use crate::common::progress;
use crate::common::{
    last_cpu, open_baseline, peak_rss_mb, reset_peak_rss, timed, Scale, SplitMix64, UuidGen,
};
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
                offloaded_to: None,
                offloaded_path: None,
                offloaded_hash: None,
                inode: Some(meta.ino() as i64),
            });
        }
    }
    Ok(out)
}

/// `n` generated rows under 1,000 made-up folders, a folder's rows together (as
/// an indexer writes them: paths arrive in walk order, not scattered).
fn synthetic(location: Uuid, n: usize) -> impl Iterator<Item = FileEntry> {
    let mut ids = UuidGen::new(0xB65);
    let folders: Vec<Uuid> = (0..1000).map(|_| ids.next_id()).collect();
    let per_folder = n.div_ceil(1000).max(1);
    (0..n).map(move |i| {
        let folder = i / per_folder;
        FileEntry {
            id: ids.next_id(),
            device: DEV,
            location,
            parent: Some(folders[folder]),
            name: format!("file{i:07}.jpg"),
            path: format!("d{folder:03}/file{i:07}.jpg"),
            kind: entry_kind::FILE,
            size: (i as i64 * 7919) % 10_000_000,
            modified: Some(1_700_000_000_000 + i as i64),
            offloaded_to: None,
            offloaded_path: None,
            offloaded_hash: None,
            inode: Some(i as i64 + 1_000_000),
        }
    })
}

const RAW_TABLE: &str = "
CREATE TABLE file_entries (
  id INTEGER PRIMARY KEY, uuid BLOB NOT NULL UNIQUE, device BLOB, location BLOB, parent BLOB,
  name TEXT, path TEXT, kind INTEGER, size INTEGER, modified INTEGER, inode INTEGER
);
";

/// The `CREATE INDEX` statements of Concord's `file_entries` table.
fn concord_file_entry_indexes(lib: &Library) -> anyhow::Result<Vec<String>> {
    Ok(lib.read(|c| {
        let mut stmt = c.prepare(
            "SELECT sql FROM sqlite_master
             WHERE type = 'index' AND tbl_name = 'file_entries' AND sql IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    })?)
}

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

/// How the log grew since position `before`, not counting volume and location
/// records: (entries, postcard size of the largest).
fn log_growth(lib: &Library, before: i64) -> anyhow::Result<(usize, usize)> {
    let added = lib.with_log(|l| l.fetch_after_id(before, usize::MAX))?;
    let mut n = 0;
    let mut size = 0;
    for (_, e) in added {
        if e.model == Volume::INFO.name || e.model == Location::INFO.name {
            continue;
        }
        n += 1;
        size = size.max(postcard::to_allocvec(&e)?.len());
    }
    Ok((n, size))
}

/// Run B6 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let files = scale.pick(20_000, 200_000);
    let synthetic_rows = scale.pick(100_000, 1_000_000);
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let (_, gen_s) = timed(|| generate_tree(&tree, files))?;
    let warm = walk(&tree, Uuid::nil())?.len();
    progress!("generated {files} files ({warm} entries) in {gen_s:.1} s");

    let lib = Library::create(
        &tmp.path().join("concord"),
        Uuid::from_u128(0xB6),
        "bench",
        DEV,
        Box::new(SystemClock),
    )?;
    let indexes = concord_file_entry_indexes(&lib)?;

    // Baseline.
    reset_peak_rss();
    let mut conn = open_baseline(&tmp.path().join("raw.db"))?;
    conn.execute_batch(RAW_TABLE)?;
    for sql in &indexes {
        conn.execute_batch(sql)?;
    }
    let tree_loc = Uuid::from_u128(0xB610C);
    let synth_loc = Uuid::from_u128(0xB6510C);
    let (n, raw_tree_s) = timed(|| raw_insert(&mut conn, walk(&tree, tree_loc)?))?;
    anyhow::ensure!(n as usize == warm);
    progress!("raw, walk+insert: {}", last_cpu());
    let (_, raw_synth_s) = timed(|| raw_insert(&mut conn, synthetic(synth_loc, synthetic_rows)))?;
    progress!("raw, synthetic: {}", last_cpu());
    drop(conn);
    let raw_peak = peak_rss_mb().unwrap_or(0.0);
    let raw_tree = warm as f64 / raw_tree_s;
    let raw_synth = synthetic_rows as f64 / raw_synth_s;
    progress!("raw: walk+insert {raw_tree:.0} entries/s, synthetic {raw_synth:.0} rows/s");

    // Concord.
    reset_peak_rss();
    let before = lib.with_log(|l| l.latest_id())?;
    let (indexed, tree_s) =
        timed(|| Ok(concord::index::add_location(&lib, &tree, &mut |_, _| {})?))?;
    progress!("concord, add_location: {}", last_cpu());
    anyhow::ensure!(indexed.entries as usize == warm, "indexed {indexed:?}");
    let (tree_entries, tree_bytes) = log_growth(&lib, before)?;
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
    let synth_l = loc(synth_loc, Path::new("/synthetic"));
    lib.commit_batch(vec![Change::insert(&vol), Change::insert(&synth_l)])?;
    let before = lib.with_log(|l| l.latest_id())?;
    let (_, synth_s) = timed(|| {
        Ok(lib.commit_bulk(
            synthetic(synth_loc, synthetic_rows),
            initial_index(&synth_l),
        )?)
    })?;
    progress!("concord, synthetic: {}", last_cpu());
    let (synth_entries, synth_bytes) = log_growth(&lib, before)?;
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
        "concord: add_location {tree_rate:.0} entries/s, synthetic {synth_rate:.0} rows/s; \
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
