//! Seeded file trees for the conduit workloads (F1, F2, F4, F5): large files
//! of pseudo-random bytes, many small files in folders, and the check that
//! two trees hold the same files with the same content.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::common::SplitMix64;

/// Write `bytes` pseudo-random (incompressible) bytes from `seed` to `path`.
pub fn write_seeded(path: &Path, bytes: u64, seed: u64) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = SplitMix64::new(seed);
    let mut block = vec![0u8; (bytes.min(1 << 20) as usize).next_multiple_of(8)];
    let mut left = bytes;
    while left > 0 {
        for word in block.chunks_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// `count` files of `size` bytes each, `big0.bin`.. in `dir`; total bytes.
pub fn large_files(dir: &Path, count: usize, size: u64, seed: u64) -> anyhow::Result<u64> {
    for i in 0..count {
        write_seeded(&dir.join(format!("big{i}.bin")), size, seed + i as u64)?;
    }
    Ok(size * count as u64)
}

/// `files` files of `min..=max` bytes spread over `folders` folders
/// (`d000/f00000.dat`); total bytes.
pub fn small_tree(
    dir: &Path,
    files: usize,
    folders: usize,
    (min, max): (u64, u64),
    seed: u64,
) -> anyhow::Result<u64> {
    let mut rng = SplitMix64::new(seed);
    let mut total = 0;
    for i in 0..files {
        let size = min + rng.below(max - min + 1);
        let path = dir
            .join(format!("d{:03}", i % folders.max(1)))
            .join(format!("f{i:05}.dat"));
        write_seeded(&path, size, seed ^ ((i as u64) << 20))?;
        // An old, fixed mtime, as a tree that was not just written has.
        let mtime =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_times(std::fs::FileTimes::new().set_modified(mtime))?;
        total += size;
    }
    Ok(total)
}

/// Every regular file under `root` (links not followed), by path relative to
/// it, skipping `skip` (a top-level folder name, e.g. `.concord`).
pub fn list(root: &Path, skip: &[&str]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), child));
            } else if kind.is_file() {
                out.insert(child, entry.path());
            }
        }
    }
    Ok(out)
}

/// BLAKE3 of a file's content.
pub fn hash_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(*h.finalize().as_bytes())
}

/// Fail unless `b` holds exactly the files of `a` with equal content
/// (top-level folders in `skip` are left out on both sides).
pub fn assert_same(a: &Path, b: &Path, skip: &[&str]) -> anyhow::Result<()> {
    let (la, lb) = (list(a, skip)?, list(b, skip)?);
    anyhow::ensure!(
        la.keys().eq(lb.keys()),
        "{} and {} hold different files ({} vs {})",
        a.display(),
        b.display(),
        la.len(),
        lb.len()
    );
    for (rel, pa) in &la {
        anyhow::ensure!(
            hash_file(pa)? == hash_file(&lb[rel])?,
            "{rel}: content differs"
        );
    }
    Ok(())
}

/// A temp dir under /tmp, removed on drop (the disk is shared).
pub fn temp(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?)
}

/// Write every dirty page to disk before a side starts timing, so that no
/// side pays for the writeback of what came before it (the source tree
/// just created, or an earlier side's copy). Without it the first side,
/// Concord, ran while the kernel flushed the fresh source tree, and the
/// sides after it did not.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Most files in a side's copy that is removed as soon as it was checked.
const REMOVE_AT_MOST: usize = 1_000;

/// Done with a side's checked copy `dest` of `files` files: a copy of a few
/// (large) files goes now, so the next side does not run beside gigabytes
/// of it in the page cache; a copy of many files stays until the work
/// folder goes at the end, because ext4 creates files slowly for a minute
/// or more after thousands were deleted (it passes over the inodes freed
/// last, reading each one's table block), which the next side would pay:
/// Concord ran first on a clean disk and the baselines after deletions.
pub fn done_with(dest: &Path, files: usize) -> std::io::Result<()> {
    if files <= REMOVE_AT_MOST {
        std::fs::remove_dir_all(dest)?;
    }
    Ok(())
}
