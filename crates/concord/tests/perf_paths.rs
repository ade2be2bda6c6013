//! The performance shortcuts change nothing observable.
//!
//! - `Applier::apply_update_fast` is invisible: a stream of entries applied with
//!   the fast path first (falling back to `Applier::apply`) leaves exactly the
//!   rows, clocks, tombstones and conflict log that `Applier::apply` alone leaves.
//! - The outbox keeps one row per transaction (`outbox_batches`); entries a
//!   library written before that left in the per-entry `outbox` table still reach
//!   the log, in order, once.

use concord::model::{Syncable, Tag, Value, Volume};
use concord::store::{open_db, schema};
use concord::sync::apply::{Applier, Outcome};
use concord::sync::entry::{validate, FieldWrite, LogEntry, Op};
use concord::Uuid;
use rusqlite::Connection;

mod support;
use support::Rng;

/// Every column of a table, rows in uuid order, as text.
fn dump(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let mut s = String::new();
            for i in 0..n {
                let v: rusqlite::types::Value = r.get(i)?;
                s.push_str(&format!("{v:?}|"));
            }
            Ok(s)
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// Rows, clocks and tombstones; with `conflicts`, the whole conflict log too
/// (it grows with every step, so the test compares it only now and then).
fn state(conn: &Connection, conflicts: bool) -> Vec<Vec<String>> {
    let mut v = vec![
        dump(conn, "SELECT * FROM tags ORDER BY uuid"),
        dump(conn, "SELECT * FROM volumes ORDER BY uuid"),
        dump(conn, "SELECT * FROM tombstones ORDER BY uuid"),
        dump(conn, "SELECT COUNT(*) FROM conflicts"),
    ];
    if conflicts {
        v.push(dump(
            conn,
            "SELECT model, record, field, kept, discarded, kept_hlc, discarded_hlc, origin, origin_seq
             FROM conflicts ORDER BY origin, origin_seq, field",
        ));
    }
    v
}

/// Effective clock time of `field` of `record` as stored (0 if absent).
fn clock(conn: &Connection, table: &str, field: &str, record: Uuid) -> u64 {
    conn.query_row(
        &format!("SELECT COALESCE({field}__hlc, _hlc) FROM {table} WHERE uuid = ?1"),
        [record],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
    .unwrap_or(0)
}

#[test]
fn fast_path_matches_the_general_path() {
    let tmp = tempfile::tempdir().unwrap();
    let mut fast = open_db(
        &tmp.path().join("fast.db"),
        true,
        &schema::library_migrations(),
    )
    .unwrap();
    let mut slow = open_db(
        &tmp.path().join("slow.db"),
        true,
        &schema::library_migrations(),
    )
    .unwrap();
    let devices: Vec<Uuid> = (1..=3).map(|i| Uuid::from_u128(i * 0x1111)).collect();
    let tags: Vec<Uuid> = (0..40).map(|i| Uuid::from_u128(0x7a90 + i)).collect();
    let volumes: Vec<Uuid> = (0..20).map(|i| Uuid::from_u128(0x5010 + i)).collect();
    let mut rng = Rng(0xFA57);
    let mut seq = [0u64; 3];
    let mut fast_hits = 0;
    // One transaction each: the comparison is about what applying does, not about
    // durability, and it keeps the test fast.
    let ftx = fast.transaction().unwrap();
    let stx = slow.transaction().unwrap();
    for step in 0..4000u64 {
        let d = rng.below(3) as usize;
        let origin = devices[d];
        seq[d] += 1;
        let hlc = 1_000 + step * 3 - rng.below(40); // mostly increasing, some late
        let is_tag = rng.below(2) == 0;
        let (model, table, record) = if is_tag {
            (Tag::INFO, "tags", *rng.pick(&tags))
        } else {
            (Volume::INFO, "volumes", *rng.pick(&volumes))
        };
        let value = |rng: &mut Rng, i: usize| -> Value {
            let f = &model.fields[i];
            if f.nullable && rng.below(4) == 0 {
                Value::Null
            } else {
                Value::Text(format!("v{}", rng.below(5)))
            }
        };
        // Owner of a volume: usually its creator device, sometimes another one.
        let owner = |rng: &mut Rng| {
            if rng.below(8) == 0 {
                Value::Uuid(*rng.pick(&devices))
            } else {
                Value::Uuid(origin)
            }
        };
        let op = match rng.below(150) {
            0 => Op::Delete(
                model
                    .key_indices()
                    .map(|i| FieldWrite {
                        field: i as u16,
                        value: owner(&mut rng),
                        base: 0,
                    })
                    .collect(),
            ),
            1..=15 => Op::Insert(
                (0..model.fields.len())
                    .map(|i| FieldWrite {
                        field: i as u16,
                        value: if model.fields[i].owner {
                            owner(&mut rng)
                        } else {
                            value(&mut rng, i)
                        },
                        base: 0,
                    })
                    .collect(),
            ),
            _ => {
                let mut w = Vec::new();
                for (i, f) in model.fields.iter().enumerate() {
                    if f.owner {
                        w.push(FieldWrite {
                            field: i as u16,
                            value: owner(&mut rng),
                            base: 0,
                        });
                    } else if rng.below(2) == 0 {
                        let cur = clock(&ftx, table, f.name, record);
                        let base = match rng.below(4) {
                            0 => 0,
                            1 => cur.saturating_sub(rng.below(5)),
                            _ => cur,
                        };
                        w.push(FieldWrite {
                            field: i as u16,
                            value: value(&mut rng, i),
                            base,
                        });
                    }
                }
                if rng.below(2) == 0 {
                    w.reverse(); // writes need not come in field order
                }
                Op::Update(w)
            }
        };
        let e = LogEntry {
            incarnation: 0,
            origin,
            origin_seq: seq[d],
            hlc,
            lib_seq: None,
            epoch: None,
            model: model.name.to_string(),
            record,
            op,
            seal: None,
        };
        let Ok(m) = validate(&e) else { continue };
        let a = Applier {
            tx: &ftx,
            now_ms: 7,
        };
        let fast_outcome = if a.apply_update_fast(&e, m).unwrap() {
            fast_hits += 1;
            Outcome::Applied
        } else {
            a.apply(&e, m).unwrap()
        };
        let slow_outcome = Applier {
            tx: &stx,
            now_ms: 7,
        }
        .apply(&e, m)
        .unwrap();
        assert_eq!(fast_outcome, slow_outcome, "step {step}: {e:?}");
        let all = step % 500 == 0;
        assert_eq!(state(&ftx, all), state(&stx, all), "step {step}: {e:?}");
    }
    assert_eq!(state(&ftx, true), state(&stx, true));
    eprintln!("fast path taken {fast_hits} times");
    assert!(fast_hits > 500, "the fast path was taken {fast_hits} times");
}

#[test]
fn entries_in_the_old_per_entry_outbox_reach_the_log() {
    use concord::hlc::SystemClock;
    use concord::{Change, Library};
    let tmp = tempfile::tempdir().unwrap();
    let dev = Uuid::from_u128(0xD1);
    let lib = Library::create(
        tmp.path(),
        Uuid::from_u128(0x11B),
        "t",
        dev,
        Box::new(SystemClock),
    )
    .unwrap();
    let tag = |i: u128, name: &str| Tag {
        id: Uuid::from_u128(0x7A6 + i),
        name: name.into(),
        color: None,
    };
    lib.commit(Change::insert(&tag(0, "zero"))).unwrap();
    lib.flush().unwrap();
    // An entry as the pre-v3 code left it: a row of the per-entry outbox (its
    // change already applied in the same transaction).
    let old = LogEntry {
        incarnation: 0,
        origin: dev,
        origin_seq: 2,
        hlc: lib.hlc().tick().time,
        lib_seq: None,
        epoch: None,
        model: Tag::INFO.name.to_string(),
        record: tag(1, "one").id,
        op: Op::Insert(FieldWrite::all(tag(1, "one").to_values())),
        seal: None,
    };
    lib.read(|c| {
        c.execute(
            "INSERT INTO outbox (origin, origin_seq, hlc, model, record, kind, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                old.origin,
                old.origin_seq as i64,
                old.hlc as i64,
                old.model,
                old.record,
                old.op.kind(),
                old.op.encode()
            ],
        )?;
        Ok(())
    })
    .unwrap();
    drop(lib);
    let lib = Library::open(tmp.path(), dev, Box::new(SystemClock)).unwrap();
    lib.commit(Change::insert(&tag(2, "two"))).unwrap();
    let log: Vec<LogEntry> = lib
        .with_log(|l| l.fetch_after_id(0, usize::MAX))
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    // The reopened library numbers in a new incarnation, from 1.
    assert_eq!(
        log.iter().map(|e| e.origin_seq).collect::<Vec<_>>(),
        vec![1, 2, 1]
    );
    assert_eq!(log[1], old);
    assert_eq!(log[2].replica(), lib.replica());
    let left: i64 = lib
        .read(|c| {
            Ok(c.query_row(
                "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM outbox_batches)",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(left, 0, "the outbox is empty once moved");
}
