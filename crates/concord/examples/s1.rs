//! S1 measured on the core alone (a release build of `concord` is cheap; the
//! benchmark crate links Iroh): verifying received entries (sealed chunks)
//! against applying them unverified, and what sealing costs the writer. The
//! same workload as `concord-bench S1`; `cargo run --release -p concord
//! --example s1 -- [ENTRIES]`.
//!
//! An origin library with a node key registers itself (its `Device` row with
//! its node id) and commits `n` tags in 1,000-entry batches: each batch enters
//! its log as chunks of up to 256 entries, each sealed once. Its log is read in
//! pages of at most 1,000 entries ending at chunk boundaries (as the sync
//! service sends them) and applied through `apply_remote`, in the same
//! process, to a fresh library opened with a key (every chunk verified against
//! the origin's key) and to one opened without (nothing verified). Two rounds
//! each, alternating; the faster of each is kept. Target: the verified rate at
//! least 0.8 of the unverified one.
//!
//! Also recorded: the same commits on a library without a key, for the
//! sealing cost per 1,000-entry batch and per entry.

use std::path::Path;
use std::time::Instant;

use concord::hlc::SystemClock;
use concord::model::{Device, Tag};
use concord::sync::entry::LogEntry;
use concord::sync::log::VersionVector;
use concord::sync::seal::{page_end, NodeKey};
use concord::sync::txn::LibraryOptions;
use concord::{Change, Library, Uuid};

mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
}

const BATCH: usize = 1_000;
const LIB: Uuid = Uuid::from_u128(0x51);
const ORIGIN: Uuid = Uuid::from_u128(0x5100);

fn options(key: Option<u8>) -> LibraryOptions {
    LibraryOptions {
        key: key.map(|k| NodeKey::from_bytes(&[k; 32])),
        ..LibraryOptions::default()
    }
}

/// The origin's library: its registration, then `n` tags in batches. Returns
/// it and the seconds the batches took.
fn write_origin(dir: &Path, n: usize, key: Option<u8>) -> anyhow_free::Result<(Library, f64)> {
    let node_id = key.map(|k| NodeKey::from_bytes(&[k; 32]).node_id());
    let lib = Library::create_with(dir, LIB, "s1", ORIGIN, Box::new(SystemClock), options(key))?;
    lib.commit(Change::insert(&Device {
        id: ORIGIN,
        name: "origin".into(),
        node_id,
        addrs: None,
        removed: None,
    }))?;
    lib.flush()?;
    let tags: Vec<Tag> = (0..n)
        .map(|i| Tag {
            id: Uuid::now_v7(),
            name: format!("tag {i}"),
            color: None,
        })
        .collect();
    let t = Instant::now();
    for chunk in tags.chunks(BATCH) {
        lib.commit_batch(chunk.iter().map(Change::insert).collect())?;
    }
    lib.flush()?;
    Ok((lib, t.elapsed().as_secs_f64()))
}

/// The origin's log in pages as the sync service sends them.
fn pages(lib: &Library) -> anyhow_free::Result<Vec<Vec<LogEntry>>> {
    let mut vv = VersionVector::new();
    let mut out = Vec::new();
    loop {
        let mut page = lib.with_log(|l| l.fetch_missing(&vv, BATCH + 1))?;
        if page.is_empty() {
            return Ok(out);
        }
        page.truncate(page_end(&page, BATCH));
        for e in &page {
            let have = vv.entry(e.origin).or_insert(0);
            *have = (*have).max(e.origin_seq);
        }
        out.push(page);
    }
}

/// Seconds to apply every page to a fresh library opened with `key`.
fn apply_all(dir: &Path, pages: &[Vec<LogEntry>], key: Option<u8>) -> anyhow_free::Result<f64> {
    let lib = Library::create_with(
        dir,
        LIB,
        "s1",
        Uuid::from_u128(0x5101),
        Box::new(SystemClock),
        options(key),
    )?;
    let t = Instant::now();
    let mut applied = 0;
    for page in pages {
        let report = lib.apply_remote(page)?;
        assert_eq!(report.unverified, 0, "refused: {:?}", report.forged);
        applied += report.applied;
    }
    let secs = t.elapsed().as_secs_f64();
    let total: usize = pages.iter().map(Vec::len).sum();
    assert_eq!(applied, total);
    Ok(secs)
}

fn main() -> anyhow_free::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir()?;
    let (origin, sealed_s) = write_origin(&tmp.path().join("origin"), n, Some(7))?;
    let (_, plain_s) = write_origin(&tmp.path().join("plain"), n, None)?;
    let pages = pages(&origin)?;
    let total: usize = pages.iter().map(Vec::len).sum();
    println!("{total} entries in {} pages", pages.len());
    let (mut verified, mut unverified) = (f64::MAX, f64::MAX);
    for round in 0..3 {
        let u = apply_all(&tmp.path().join(format!("u{round}")), &pages, None)?;
        let v = apply_all(&tmp.path().join(format!("v{round}")), &pages, Some(9))?;
        println!("round {round}: unverified {u:.3} s, verified {v:.3} s");
        unverified = unverified.min(u);
        verified = verified.min(v);
    }
    let (v_rate, u_rate) = (total as f64 / verified, total as f64 / unverified);
    let batches = n.div_ceil(BATCH) as f64;
    println!(
        "S1 verified {v_rate:.0}/s, unverified {u_rate:.0}/s, ratio {:.3} (target >= 0.8); \
         verifying {:.3} us per entry",
        v_rate / u_rate,
        (verified - unverified) / total as f64 * 1e6
    );
    println!(
        "sealing: batches {sealed_s:.3} s sealed vs {plain_s:.3} s unsealed, {:.0} us per 1,000-entry batch ({:.3} us per entry)",
        (sealed_s - plain_s) / batches * 1e6,
        (sealed_s - plain_s) / n as f64 * 1e6
    );
    // Sealing alone (no database): a 1,000-entry batch is 4 chunks.
    let batch: Vec<LogEntry> = pages[1].clone();
    let key = NodeKey::from_bytes(&[7; 32]);
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut b = batch.clone();
        concord::sync::seal::seal_entries(&key, LIB, &mut b);
    }
    let with_clone = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(batch.clone());
    }
    let per_batch = (with_clone - t.elapsed().as_secs_f64()) / rounds as f64 * 1e6;
    println!(
        "sealing alone: {per_batch:.0} us per {}-entry batch ({:.3} us per entry)",
        batch.len(),
        per_batch / batch.len() as f64
    );
    Ok(())
}
