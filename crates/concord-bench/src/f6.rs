//! F6: hashing a file for a transfer.
//!
//! A file of 1 GiB (small scale: 64 MiB) of seeded pseudo-random bytes is
//! hashed the way the transfer engine does before serving it
//! (`concord_node::transfer::source::hash_for_transfer`: BLAKE3 with its bao
//! tree of 16 KiB groups built on the way). Baseline, same run, same file,
//! page cache warm for both: the `blake3` crate with rayon over a memory map
//! (what `b3sum` does), on every core. Best of three each. The single-thread
//! `blake3` rate is recorded for context: the engine hashes on one thread.

use std::io::Write;
use std::path::Path;

use crate::common::{progress, timed, Scale, SplitMix64};
use crate::report::Row;

fn make_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = SplitMix64::new(0xF6);
    let mut block = vec![0u8; 1 << 20];
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

/// Best wall time of three runs of `f`, which must return the same hash.
fn best_of_three(
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<blake3::Hash>,
) -> anyhow::Result<(blake3::Hash, f64)> {
    let mut best: Option<(blake3::Hash, f64)> = None;
    for _ in 0..3 {
        let (hash, secs) = timed(&mut f)?;
        progress!("F6 {what}: {secs:.3} s");
        if let Some((h, _)) = best {
            anyhow::ensure!(h == hash, "{what} gave two hashes for one file");
        }
        if best.is_none_or(|(_, b)| secs < b) {
            best = Some((hash, secs));
        }
    }
    best.ok_or_else(|| anyhow::anyhow!("no run"))
}

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let mib = scale.pick(64, 1024) as u64;
    let bytes = mib << 20;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("f6.bin");
    make_file(&path, bytes)?;
    // Warm the page cache for both sides.
    std::io::copy(&mut std::fs::File::open(&path)?, &mut std::io::sink())?;

    let (ours, ours_s) = best_of_three("transfer hashing", || {
        Ok(concord_node::transfer::source::hash_for_transfer(&path)?)
    })?;
    let (rayon, rayon_s) = best_of_three("blake3 rayon", || {
        Ok(blake3::Hasher::new().update_mmap_rayon(&path)?.finalize())
    })?;
    let (single, single_s) = best_of_three("blake3 one thread", || {
        Ok(blake3::Hasher::new().update_mmap(&path)?.finalize())
    })?;
    anyhow::ensure!(ours == rayon && rayon == single, "the hashes differ");
    let rate = |secs: f64| bytes as f64 / 1e6 / secs;
    Ok(vec![
        Row::at_least(
            "F6",
            &format!("hash {mib} MiB for a transfer"),
            rate(ours_s),
            "MB/s",
            "blake3 + rayon (mmap)",
            rate(rayon_s),
            0.8,
        ),
        Row::info(
            "F6",
            &format!("hash {mib} MiB for a transfer"),
            rate(ours_s),
            "MB/s",
            "blake3 on one thread (mmap)",
            rate(single_s),
        ),
    ])
}
