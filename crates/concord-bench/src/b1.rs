//! B1: 100k single `commit`s of tag-sized rows, then 1M tags through
//! `commit_batch` (1,000 per batch), against plain rusqlite writing the same rows
//! (a `tags` table without the sync columns) in transactions of the same sizes.
//! `--durability full` runs both with `synchronous=FULL` (every commit synced:
//! what [`Durability::Full`] costs); by default the baseline runs `NORMAL` and
//! Concord its default ([`Durability::Normal`]: only `sync.db` synced).

use std::sync::OnceLock;

use concord::hlc::SystemClock;
use concord::model::Tag;
use concord::sync::txn::{Durability, LibraryOptions};
use concord::{Change, Library, Uuid};

use crate::common::progress;
use crate::common::{last_cpu, open_baseline, peak_rss_mb, reset_peak_rss, timed, Scale, UuidGen};
use crate::report::Row;

const BATCH: usize = 1_000;

/// The durability B1 measures (`--durability`), set once before it runs.
static DURABILITY: OnceLock<Durability> = OnceLock::new();

/// Run B1 with `d` (the `--durability` flag).
pub fn set_durability(d: Durability) {
    let _ = DURABILITY.set(d);
}

fn durability() -> Durability {
    DURABILITY.get().copied().unwrap_or_default()
}

/// The rows: deterministic UUIDv7 ids, short names, a colour on every third tag.
fn tags(seed: u64, n: usize) -> Vec<Tag> {
    let mut ids = UuidGen::new(seed);
    (0..n)
        .map(|i| Tag {
            id: ids.next_id(),
            name: format!("tag {i}"),
            color: (i % 3 == 0).then(|| format!("#{:06x}", (i * 7919) & 0xff_ffff)),
        })
        .collect()
}

/// Run B1 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let singles = scale.pick(10_000, 100_000);
    let batched = scale.pick(100_000, 1_000_000);
    let single_rows = tags(0xB101, singles);
    let batch_rows = tags(0xB102, batched);
    let tmp = tempfile::tempdir()?;

    // Baseline: plain rusqlite, same rows, same transaction sizes.
    reset_peak_rss();
    let full = durability() == Durability::Full;
    let conn = open_baseline(&tmp.path().join("raw.db"))?;
    if full {
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.execute_batch(
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, uuid BLOB UNIQUE, name TEXT, color TEXT);",
    )?;
    let insert = "INSERT INTO tags (uuid, name, color) VALUES (?1, ?2, ?3)";
    let mut conn = conn;
    let (_, raw_single_s) = timed(|| {
        for t in &single_rows {
            let tx = conn.transaction()?;
            tx.prepare_cached(insert)?
                .execute(rusqlite::params![t.id, t.name, t.color])?;
            tx.commit()?;
        }
        Ok(())
    })?;
    progress!("raw sqlite, single: {}", last_cpu());
    let (_, raw_batch_s) = timed(|| {
        for chunk in batch_rows.chunks(BATCH) {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(insert)?;
                for t in chunk {
                    stmt.execute(rusqlite::params![t.id, t.name, t.color])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    })?;
    progress!("raw sqlite, batched: {}", last_cpu());
    drop(conn);
    let raw_peak = peak_rss_mb().unwrap_or(0.0);
    let raw_single = singles as f64 / raw_single_s;
    let raw_batch = batched as f64 / raw_batch_s;
    progress!("raw sqlite: {raw_single:.0} single tx/s, {raw_batch:.0} batched rows/s");

    // Concord: the same rows through the TransactionManager.
    reset_peak_rss();
    // With a node key, as a node opens it: entries are sealed as they enter
    // the log (one signature per chunk of up to 256, `concord::sync::seal`).
    let lib = Library::create_with(
        &tmp.path().join("concord"),
        Uuid::from_u128(0xB1),
        "bench",
        Uuid::from_u128(0xB1DE),
        Box::new(SystemClock),
        LibraryOptions {
            durability: durability(),
            key: Some(concord::sync::seal::NodeKey::from_bytes(&[0xB1; 32])),
            ..LibraryOptions::default()
        },
    )?;
    let (_, single_s) = timed(|| {
        for t in &single_rows {
            lib.commit(Change::insert(t))?;
        }
        lib.flush()?;
        Ok(())
    })?;
    progress!("concord, single: {}", last_cpu());
    let (_, batch_s) = timed(|| {
        for chunk in batch_rows.chunks(BATCH) {
            lib.commit_batch(chunk.iter().map(Change::insert).collect())?;
        }
        lib.flush()?;
        Ok(())
    })?;
    progress!("concord, batched: {}", last_cpu());
    let entries = lib.with_log(|l| l.count())?;
    anyhow::ensure!(
        entries == (singles + batched) as u64,
        "expected one log entry per row, found {entries}"
    );
    drop(lib);
    let peak = peak_rss_mb().unwrap_or(0.0);
    let single = singles as f64 / single_s;
    let batch = batched as f64 / batch_s;
    progress!("concord: {single:.0} commits/s, {batch:.0} batched items/s");

    let (commit_rate, batch_rate) = if full {
        ("commit_rate_full", "batch_rate_full")
    } else {
        ("commit_rate", "batch_rate")
    };
    Ok(vec![
        Row::at_least(
            "B1",
            commit_rate,
            single,
            "ops/s",
            "raw_sqlite",
            raw_single,
            0.6,
        ),
        Row::at_least(
            "B1",
            batch_rate,
            batch,
            "items/s",
            "raw_sqlite",
            raw_batch,
            0.6,
        ),
        Row::info("B1", "peak_rss", peak, "MB", "raw_sqlite", raw_peak),
    ])
}
