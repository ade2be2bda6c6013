//! B2: applying a peer's renames (the merge, apply side only).
//!
//! Both replicas hold the same `n` tags (created on A, A's log shipped to B with
//! `apply_remote`). A renames records `0..2n/3`, B renames `n/3..n` (so `n/3`
//! conflicts), each once, in an order shuffled by SplitMix64 Fisher–Yates (seeds
//! 0xB2A and 0xB2B), 1,000 per transaction. Then each applies the other's rename
//! entries; only that applying is timed, and the replicas must end with equal
//! digests. The rate is changes applied per second over both directions, counting
//! every entry processed (those that lose a conflict too).
//!
//! The same workload, same seeds, same transaction sizes, runs against:
//! - plain rusqlite LWW: one `(hlc, dev)` clock per row, each change one
//!   `UPDATE ... WHERE uuid = ? AND (hlc, dev) < (?, ?)`, 1,000 per transaction;
//! - automerge 0.12: one document, a root map with one key per record (the
//!   record's UUID) holding its name; each side commits 1,000 puts per change, then
//!   applies the other side's changes (`apply_changes`, in memory, already-parsed
//!   `Change`s: no decoding or saving is timed);
//! - yrs 0.28: one document, a root map keyed the same way; each side renames in
//!   transactions of 1,000, then applies the other side's diff as one decoded
//!   `Update` (in memory; decoding not timed).
//!
//! Development aid: `CONCORD_BENCH_SKIP_CRDT=1` skips the automerge and yrs
//! baselines (and their result lines) for quicker runs while optimising.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ReadDoc, ROOT};
use concord::digest::{digest, Scope};
use concord::hlc::SystemClock;
use concord::model::Tag;
use concord::sync::entry::LogEntry;
use concord::sync::txn::ApplyReport;
use concord::{Change, Library, Uuid};
use rusqlite::Connection;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, Transact, Update};

use crate::common::progress;
use crate::common::{
    last_cpu, open_baseline, peak_rss_mb, reset_peak_rss, timed, Scale, SplitMix64, UuidGen,
};
use crate::report::Row;

const CHUNK: usize = 1_000;
const DEV_A: Uuid = Uuid::from_u128(0x0000_b2a0_0000_7000_8000_0000_0000_000a);
const DEV_B: Uuid = Uuid::from_u128(0x0000_b2b0_0000_7000_8000_0000_0000_000b);

/// Who renames what, in which order.
struct Plan {
    ids: Vec<Uuid>,
    /// Record indices A renames, shuffled.
    a: Vec<usize>,
    /// Record indices B renames, shuffled.
    b: Vec<usize>,
}

impl Plan {
    fn new(n: usize) -> Plan {
        let mut gen = UuidGen::new(0xB2);
        let ids = (0..n).map(|_| gen.next_id()).collect();
        let mut a: Vec<usize> = (0..n * 2 / 3).collect();
        let mut b: Vec<usize> = (n / 3..n).collect();
        SplitMix64::new(0xB2A).shuffle(&mut a);
        SplitMix64::new(0xB2B).shuffle(&mut b);
        Plan { ids, a, b }
    }
    fn changes(&self) -> usize {
        self.a.len() + self.b.len()
    }
}

fn initial_name(i: usize) -> String {
    format!("tag {i}")
}
fn a_name(i: usize) -> String {
    format!("a-{i}")
}
fn b_name(i: usize) -> String {
    format!("b-{i}")
}

/// Run B2 at `scale`; its rows say whether each figure met its target.
pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let n = scale.pick(15_000, 150_000);
    let plan = Plan::new(n);
    let changes = plan.changes() as f64;
    progress!(
        "{n} records, A renames {}, B renames {}, {} conflicts",
        plan.a.len(),
        plan.b.len(),
        plan.a.len() + plan.b.len() - n
    );
    let tmp = tempfile::tempdir()?;

    reset_peak_rss();
    let raw_s = raw_lww(&plan, tmp.path())?;
    let raw = changes / raw_s;
    progress!("raw sqlite LWW: {raw:.0} changes/s ({})", last_cpu());

    reset_peak_rss();
    let concord_s = concord(&plan, tmp.path())?;
    let concord_peak = peak_rss_mb().unwrap_or(0.0);
    let rate = changes / concord_s;
    progress!("concord: {rate:.0} changes/s ({})", last_cpu());

    let mut rows = vec![
        Row::at_least(
            "B2",
            "apply_rate",
            rate,
            "changes/s",
            "absolute",
            200_000.0,
            1.0,
        ),
        Row::at_least(
            "B2",
            "apply_rate",
            rate,
            "changes/s",
            "raw_sqlite_lww",
            raw,
            0.7,
        ),
    ];
    if std::env::var_os("CONCORD_BENCH_SKIP_CRDT").is_some() {
        return Ok(rows);
    }

    reset_peak_rss();
    let am_s = automerge(&plan)?;
    let am_peak = peak_rss_mb().unwrap_or(0.0);
    let am = changes / am_s;
    progress!("automerge: {am:.0} changes/s ({})", last_cpu());

    reset_peak_rss();
    let y_s = yrs(&plan)?;
    let y_peak = peak_rss_mb().unwrap_or(0.0);
    let y = changes / y_s;
    progress!("yrs: {y:.0} changes/s ({})", last_cpu());

    rows.extend([
        Row::at_least("B2", "apply_rate", rate, "changes/s", "automerge", am, 3.0),
        Row::info("B2", "apply_rate", rate, "changes/s", "yrs_in_memory", y),
        Row::info("B2", "peak_rss", concord_peak, "MB", "automerge", am_peak),
        Row::info(
            "B2",
            "peak_rss",
            concord_peak,
            "MB",
            "yrs_in_memory",
            y_peak,
        ),
    ]);
    Ok(rows)
}

// ---------------------------------------------------------------- Concord

fn sum(total: &mut ApplyReport, r: ApplyReport) -> anyhow::Result<()> {
    anyhow::ensure!(r.rejected.is_empty(), "entries rejected: {:?}", r.rejected);
    total.applied += r.applied;
    total.unchanged += r.unchanged;
    total.duplicates += r.duplicates;
    total.refused += r.refused;
    Ok(())
}

fn apply_all(lib: &Library, entries: &[LogEntry]) -> anyhow::Result<ApplyReport> {
    let mut total = ApplyReport::default();
    for chunk in entries.chunks(CHUNK) {
        sum(&mut total, lib.apply_remote(chunk)?)?;
    }
    Ok(total)
}

fn entries_after(lib: &Library, after_id: i64) -> anyhow::Result<Vec<LogEntry>> {
    Ok(lib
        .with_log(|l| l.fetch_after_id(after_id, usize::MAX))?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

fn rename(
    lib: &Library,
    plan: &Plan,
    order: &[usize],
    name: fn(usize) -> String,
) -> anyhow::Result<()> {
    for chunk in order.chunks(CHUNK) {
        lib.commit_batch(
            chunk
                .iter()
                .map(|&i| Change::update::<Tag>(plan.ids[i]).set("name", name(i)))
                .collect(),
        )?;
    }
    Ok(())
}

/// Seconds spent applying both sides' renames.
fn concord(plan: &Plan, dir: &std::path::Path) -> anyhow::Result<f64> {
    let lib_id = Uuid::from_u128(0xB2);
    let a = Library::create(
        &dir.join("concord-a"),
        lib_id,
        "bench",
        DEV_A,
        Box::new(SystemClock),
    )?;
    let b = Library::create(
        &dir.join("concord-b"),
        lib_id,
        "bench",
        DEV_B,
        Box::new(SystemClock),
    )?;
    let rows: Vec<Tag> = plan
        .ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Tag {
            id,
            name: initial_name(i),
            color: None,
        })
        .collect();
    for chunk in rows.chunks(CHUNK) {
        a.commit_batch(chunk.iter().map(Change::insert).collect())?;
    }
    let (r, ship_s) = timed(|| apply_all(&b, &entries_after(&a, 0)?))?;
    anyhow::ensure!(r.applied == rows.len(), "initial ship: {r:?}");
    progress!(
        "concord: initial state shipped A -> B at {:.0} inserts/s",
        rows.len() as f64 / ship_s
    );
    let mark_a = a.with_log(|l| l.latest_id())?;
    let mark_b = b.with_log(|l| l.latest_id())?;

    rename(&a, plan, &plan.a, a_name)?;
    rename(&b, plan, &plan.b, b_name)?;
    let from_a = entries_after(&a, mark_a)?;
    let from_b = entries_after(&b, mark_b)?;
    anyhow::ensure!(from_a.len() == plan.a.len() && from_b.len() == plan.b.len());

    let ((ra, rb), secs) = timed(|| Ok((apply_all(&b, &from_a)?, apply_all(&a, &from_b)?)))?;
    progress!("concord: B applied A's renames: {ra:?}");
    progress!("concord: A applied B's renames: {rb:?}");
    for r in [&ra, &rb] {
        anyhow::ensure!(r.duplicates == 0 && r.refused == 0, "unexpected: {r:?}");
    }
    let da = a.read(|c| digest(c, Scope::All))?;
    let db = b.read(|c| digest(c, Scope::All))?;
    anyhow::ensure!(da == db, "replicas diverged: {da:?} vs {db:?}");
    Ok(secs)
}

// ---------------------------------------------------------------- plain SQLite LWW

const LWW: &str =
    "UPDATE tags SET name = ?1, hlc = ?2, dev = ?3 WHERE uuid = ?4 AND (hlc, dev) < (?2, ?3)";

/// One rename as the baseline replicates it.
struct RawChange {
    uuid: Uuid,
    name: String,
    hlc: i64,
    dev: Uuid,
}

fn raw_changes(
    plan: &Plan,
    order: &[usize],
    base: i64,
    dev: Uuid,
    name: fn(usize) -> String,
) -> Vec<RawChange> {
    order
        .iter()
        .enumerate()
        .map(|(k, &i)| RawChange {
            uuid: plan.ids[i],
            name: name(i),
            hlc: base + k as i64,
            dev,
        })
        .collect()
}

fn raw_apply(conn: &mut Connection, changes: &[RawChange]) -> anyhow::Result<()> {
    for chunk in changes.chunks(CHUNK) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(LWW)?;
            for c in chunk {
                stmt.execute(rusqlite::params![c.name, c.hlc, c.dev, c.uuid])?;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

fn raw_state(conn: &Connection) -> anyhow::Result<Vec<(Uuid, String)>> {
    let mut stmt = conn.prepare("SELECT uuid, name FROM tags ORDER BY uuid")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Seconds spent applying both sides' renames.
fn raw_lww(plan: &Plan, dir: &std::path::Path) -> anyhow::Result<f64> {
    let mut replicas = Vec::new();
    for name in ["raw-a.db", "raw-b.db"] {
        let mut conn = open_baseline(&dir.join(name))?;
        conn.execute_batch(
            "CREATE TABLE tags (id INTEGER PRIMARY KEY, uuid BLOB UNIQUE, name TEXT, color TEXT,
                                hlc INTEGER NOT NULL, dev BLOB NOT NULL);",
        )?;
        for (c, chunk) in plan.ids.chunks(CHUNK).enumerate() {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO tags (uuid, name, color, hlc, dev) VALUES (?1, ?2, NULL, ?3, ?4)",
                )?;
                for (k, id) in chunk.iter().enumerate() {
                    let i = c * CHUNK + k;
                    stmt.execute(rusqlite::params![id, initial_name(i), i as i64, DEV_A])?;
                }
            }
            tx.commit()?;
        }
        replicas.push(conn);
    }
    let (mut ra, mut rb) = {
        let mut it = replicas.into_iter();
        (
            it.next().unwrap_or_else(|| unreachable!()),
            it.next().unwrap_or_else(|| unreachable!()),
        )
    };
    // Stamps: A renames after the creation, B after A (as on Concord's clocks).
    let from_a = raw_changes(plan, &plan.a, 10_000_000, DEV_A, a_name);
    let from_b = raw_changes(plan, &plan.b, 20_000_000, DEV_B, b_name);
    raw_apply(&mut ra, &from_a)?;
    raw_apply(&mut rb, &from_b)?;
    let (_, secs) = timed(|| {
        raw_apply(&mut rb, &from_a)?;
        raw_apply(&mut ra, &from_b)
    })?;
    anyhow::ensure!(
        raw_state(&ra)? == raw_state(&rb)?,
        "raw LWW replicas diverged"
    );
    Ok(secs)
}

// ---------------------------------------------------------------- automerge

/// Seconds spent applying both sides' changes.
fn automerge(plan: &Plan) -> anyhow::Result<f64> {
    let keys: Vec<String> = plan.ids.iter().map(|u| u.to_string()).collect();
    let mut a = AutoCommit::new().with_actor(ActorId::from(DEV_A.as_bytes()));
    for (c, chunk) in keys.chunks(CHUNK).enumerate() {
        for (k, key) in chunk.iter().enumerate() {
            a.put(ROOT, key.as_str(), initial_name(c * CHUNK + k))?;
        }
        a.commit();
    }
    let mut b = a.fork().with_actor(ActorId::from(DEV_B.as_bytes()));
    let heads = a.get_heads();
    for (doc, order, name) in [
        (&mut a, &plan.a, a_name as fn(usize) -> String),
        (&mut b, &plan.b, b_name),
    ] {
        for chunk in order.chunks(CHUNK) {
            for &i in chunk {
                doc.put(ROOT, keys[i].as_str(), name(i))?;
            }
            doc.commit();
        }
    }
    let from_a = a.get_changes(&heads);
    let from_b = b.get_changes(&heads);
    let (_, secs) = timed(|| {
        b.apply_changes(from_a)?;
        a.apply_changes(from_b)?;
        Ok(())
    })?;
    let (mut ha, mut hb) = (a.get_heads(), b.get_heads());
    ha.sort();
    hb.sort();
    anyhow::ensure!(ha == hb, "automerge replicas diverged");
    for key in keys.iter().step_by(97) {
        let va = a.get(ROOT, key.as_str())?.map(|(v, _)| v.to_string());
        let vb = b.get(ROOT, key.as_str())?.map(|(v, _)| v.to_string());
        anyhow::ensure!(va == vb, "automerge value of {key} differs");
    }
    Ok(secs)
}

// ---------------------------------------------------------------- yrs

fn yrs_state(doc: &Doc) -> BTreeMap<String, String> {
    let map = doc.get_or_insert_map("tags");
    let txn = doc.transact();
    map.iter(&txn)
        .map(|(k, v)| (k.to_string(), v.to_string(&txn)))
        .collect()
}

/// Seconds spent applying both sides' updates.
fn yrs(plan: &Plan) -> anyhow::Result<f64> {
    let keys: Vec<String> = plan.ids.iter().map(|u| u.to_string()).collect();
    let a = Doc::with_client_id(0xA);
    let b = Doc::with_client_id(0xB);
    let (ma, mb) = (a.get_or_insert_map("tags"), b.get_or_insert_map("tags"));
    for (c, chunk) in keys.chunks(CHUNK).enumerate() {
        let mut txn = a.transact_mut();
        for (k, key) in chunk.iter().enumerate() {
            ma.insert(&mut txn, key.as_str(), initial_name(c * CHUNK + k));
        }
    }
    let initial = a.transact().encode_state_as_update_v1(&Default::default());
    b.transact_mut()
        .apply_update(Update::decode_v1(&initial)?)?;
    let sv = a.transact().state_vector();
    for (doc, map, order, name) in [
        (&a, &ma, &plan.a, a_name as fn(usize) -> String),
        (&b, &mb, &plan.b, b_name),
    ] {
        for chunk in order.chunks(CHUNK) {
            let mut txn = doc.transact_mut();
            for &i in chunk {
                map.insert(&mut txn, keys[i].as_str(), name(i));
            }
        }
    }
    let from_a = Update::decode_v1(&a.transact().encode_state_as_update_v1(&sv))?;
    let from_b = Update::decode_v1(&b.transact().encode_state_as_update_v1(&sv))?;
    let (_, secs) = timed(|| {
        b.transact_mut().apply_update(from_a)?;
        a.transact_mut().apply_update(from_b)?;
        Ok(())
    })?;
    anyhow::ensure!(yrs_state(&a) == yrs_state(&b), "yrs replicas diverged");
    Ok(secs)
}
