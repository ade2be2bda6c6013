//! S1: verifying received entries (sealed chunks) against applying them
//! unverified, and what sealing costs the writer.
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

use crate::common::{progress, Scale, UuidGen};
use crate::report::Row;

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
fn write_origin(dir: &Path, n: usize, key: Option<u8>) -> anyhow::Result<(Library, f64)> {
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
    let mut ids = UuidGen::new(0x51);
    let tags: Vec<Tag> = (0..n)
        .map(|i| Tag {
            id: ids.next_id(),
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
fn pages(lib: &Library) -> anyhow::Result<Vec<Vec<LogEntry>>> {
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
fn apply_all(dir: &Path, pages: &[Vec<LogEntry>], key: Option<u8>) -> anyhow::Result<f64> {
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
        anyhow::ensure!(report.unverified == 0, "refused: {:?}", report.forged);
        applied += report.applied;
    }
    let secs = t.elapsed().as_secs_f64();
    let total: usize = pages.iter().map(Vec::len).sum();
    anyhow::ensure!(applied == total, "applied {applied} of {total}");
    Ok(secs)
}

/// Run S1 at `scale`.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let n = scale.pick(10_000, 100_000);
    let tmp = tempfile::tempdir()?;
    let (origin, sealed_s) = write_origin(&tmp.path().join("origin"), n, Some(7))?;
    let (_, plain_s) = write_origin(&tmp.path().join("plain"), n, None)?;
    let pages = pages(&origin)?;
    let total: usize = pages.iter().map(Vec::len).sum();
    progress!("{total} entries in {} pages", pages.len());
    let (mut verified, mut unverified) = (f64::MAX, f64::MAX);
    for round in 0..2 {
        let u = apply_all(&tmp.path().join(format!("u{round}")), &pages, None)?;
        let v = apply_all(&tmp.path().join(format!("v{round}")), &pages, Some(9))?;
        progress!("round {round}: unverified {u:.3} s, verified {v:.3} s");
        unverified = unverified.min(u);
        verified = verified.min(v);
    }
    let (v_rate, u_rate) = (total as f64 / verified, total as f64 / unverified);
    let batches = n.div_ceil(BATCH) as f64;
    let seal_batch_us = (sealed_s - plain_s).max(0.0) / batches * 1e6;
    let verify_entry_us = (verified - unverified).max(0.0) / total as f64 * 1e6;
    progress!(
        "verified {v_rate:.0}/s vs unverified {u_rate:.0}/s ({verify_entry_us:.2} µs per entry); \
         sealing {seal_batch_us:.0} µs per 1,000-entry batch"
    );
    Ok(vec![
        Row::at_least(
            "S1",
            "apply_remote_verified_rate",
            v_rate,
            "entries/s",
            "apply_remote_unverified",
            u_rate,
            0.8,
        ),
        Row::info(
            "S1",
            "verify_cost_per_entry",
            verify_entry_us,
            "µs",
            "unverified_apply_per_entry",
            unverified / total as f64 * 1e6,
        ),
        Row::info(
            "S1",
            "seal_cost_per_1k_batch",
            seal_batch_us,
            "µs",
            "unsealed_1k_batch",
            plain_s / batches * 1e6,
        ),
    ])
}
