//! Fuzzing, as property tests, of every decoder that reads peer input
//! (DESIGN §11): log entry payloads, entry validation, sync envelopes and their
//! bounds, and snapshot chunks. Arbitrary bytes and arbitrary (but typed)
//! values must be refused with an error, never a panic, and never allocate
//! more than the input can justify.

use std::sync::Arc;

use concord::hlc::ManualClock;
use concord::model::{registry, Value};
use concord::service::protocol::{Envelope, Msg, SnapshotRow, SnapshotTombstone};
use concord::service::snapshot;
use concord::sync::entry::{validate, BulkOperation, FieldWrite, LogEntry, Op};
use concord::{Library, Uuid};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per property: the default keeps the suite fast; `CONCORD_FUZZ_CASES`
/// raises it for long fuzzing runs.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("CONCORD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        Just(Uuid::nil()),
        (0u128..8).prop_map(Uuid::from_u128),
        any::<u128>().prop_map(Uuid::from_u128),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z#0-9]{0,12}",
        Just(String::new()),
        (4090usize..4100).prop_map(|n| "x".repeat(n)),
        any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Int),
        text().prop_map(Value::Text),
        uuid().prop_map(Value::Uuid),
    ]
}

fn model_name() -> impl Strategy<Value = String> {
    let names: Vec<String> = registry().iter().map(|m| m.name.to_string()).collect();
    prop_oneof![
        4 => proptest::sample::select(names),
        1 => Just("bulk_operation".to_string()),
        1 => "[a-z_]{0,20}",
    ]
}

fn writes() -> impl Strategy<Value = Vec<FieldWrite>> {
    proptest::collection::vec(
        (prop_oneof![0u16..12, any::<u16>()], value(), any::<u64>())
            .prop_map(|(field, value, base)| FieldWrite { field, value, base }),
        0..12,
    )
}

fn bulk_op() -> impl Strategy<Value = BulkOperation> {
    (uuid(), text(), text(), any::<u64>(), any::<bool>()).prop_map(
        |(location, path, fp, count, first)| {
            if first {
                BulkOperation::InitialIndex {
                    location,
                    path,
                    volume_fingerprint: fp,
                    count,
                }
            } else {
                BulkOperation::Rescan {
                    location,
                    path,
                    volume_fingerprint: fp,
                    count,
                }
            }
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        writes().prop_map(Op::Insert),
        writes().prop_map(Op::Update),
        writes().prop_map(Op::Delete),
        bulk_op().prop_map(Op::Bulk),
    ]
}

fn entry() -> impl Strategy<Value = LogEntry> {
    (
        uuid(),
        prop_oneof![Just(0u64), 1u64..100, any::<u64>()],
        prop_oneof![
            any::<u64>(),
            (0u64..1 << 20).prop_map(|ms| (1_700_000_000_000 + ms) << 16)
        ],
        model_name(),
        uuid(),
        op(),
    )
        .prop_map(|(origin, origin_seq, hlc, model, record, op)| LogEntry {
            incarnation: 0,
            origin,
            origin_seq,
            hlc,
            lib_seq: None,
            epoch: None,
            model,
            record,
            op,
            seal: None,
        })
}

/// The most synced fields any model has: one generated cell per field.
fn most_fields() -> usize {
    registry().iter().map(|m| m.fields.len()).max().unwrap_or(0)
}

/// Entries shaped like their model (every field, of its declared kind), with
/// record and reference ids from a small pool so that they collide: these get
/// past validation into the merge rules.
fn shaped_entry() -> impl Strategy<Value = LogEntry> {
    (
        0..registry().len(),
        (0u128..4).prop_map(Uuid::from_u128),
        1u64..1_000_000,
        (0u64..400_000).prop_map(|ms| (1_700_000_000_000 + ms) << 16),
        (0u128..64).prop_map(Uuid::from_u128),
        prop_oneof![4 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        proptest::collection::vec(
            (
                any::<i64>(),
                "[a-z]{0,8}",
                (0u128..6).prop_map(Uuid::from_u128),
                any::<bool>(),
            ),
            most_fields(),
        ),
    )
        .prop_map(|(i, origin, origin_seq, hlc, record, kind, cells)| {
            use concord::model::FieldKind;
            let m = registry()[i];
            let writes: Vec<FieldWrite> = m
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| kind != 2 || f.key || f.owner)
                .map(|(k, f)| {
                    let (n, t, u, null) = &cells[k];
                    let value = if f.owner {
                        Value::Uuid(origin)
                    } else if *null && f.nullable {
                        Value::Null
                    } else {
                        match f.kind {
                            FieldKind::Int | FieldKind::Bool => Value::Int(*n),
                            FieldKind::Text => Value::Text(t.clone()),
                            FieldKind::Uuid => Value::Uuid(*u),
                        }
                    };
                    FieldWrite {
                        field: k as u16,
                        value,
                        base: 0,
                    }
                })
                .collect();
            LogEntry {
                incarnation: 0,
                origin,
                origin_seq,
                hlc,
                lib_seq: None,
                epoch: None,
                model: m.name.to_string(),
                record,
                op: match kind {
                    0 => Op::Insert(writes),
                    1 => Op::Update(writes),
                    _ => Op::Delete(writes),
                },
                seal: None,
            }
        })
}

fn library(dir: &std::path::Path) -> Library {
    Library::create(
        dir,
        Uuid::from_u128(1),
        "fuzz",
        Uuid::from_u128(2),
        Box::new(Arc::new(ManualClock::new(1_700_000_500_000))),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(Config { cases: fuzz_cases(512), ..Config::default() })]

    /// Arbitrary payload bytes: an error or an `Op` that re-encodes to a decodable value.
    #[test]
    fn op_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(op) = Op::decode(&bytes) {
            prop_assert_eq!(Op::decode(&op.encode()).unwrap(), op);
        }
    }

    /// Valid payloads with bytes flipped, truncated or extended.
    #[test]
    fn op_decode_of_mutated_payloads(op in op(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4), cut in any::<usize>()) {
        let mut bytes = op.encode();
        for (at, b) in flips {
            if !bytes.is_empty() {
                let n = bytes.len();
                bytes[at % n] ^= b;
            }
        }
        if !bytes.is_empty() && cut % 3 == 0 {
            bytes.truncate(cut % bytes.len());
        }
        let _ = Op::decode(&bytes);
    }

    /// Validation of arbitrary entries returns a model or an error.
    #[test]
    fn validate_never_panics(e in entry()) {
        if let Ok(m) = validate(&e) {
            // What validation accepts has only known fields of the right kind.
            for w in e.op.writes() {
                prop_assert!((w.field as usize) < m.fields.len());
            }
        }
    }

    /// Arbitrary bytes as a sync envelope, then the bounds check handlers run.
    #[test]
    fn envelope_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(env) = postcard::from_bytes::<Envelope>(&bytes) {
            let _ = env.msg.check_bounds();
            let again = postcard::to_allocvec(&env).unwrap();
            prop_assert_eq!(postcard::from_bytes::<Envelope>(&again).unwrap(), env);
        }
    }

    /// Real envelopes carrying entries, with bytes flipped.
    #[test]
    fn envelope_decode_of_mutated_messages(entries in proptest::collection::vec(entry(), 0..4), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let env = Envelope { id: 7, library: Uuid::from_u128(1), from: Uuid::from_u128(2), msg: Msg::PushEntries { entries } };
        let mut bytes = postcard::to_allocvec(&env).unwrap();
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] ^= b;
        }
        if let Ok(env) = postcard::from_bytes::<Envelope>(&bytes) {
            let _ = env.msg.check_bounds();
        }
    }
}

/// A length prefix claiming billions of elements must fail on the short input,
/// not try to reserve that much memory.
#[test]
fn huge_length_prefixes_do_not_allocate() {
    // Envelope { id, library (16 bytes as a length-prefixed byte string in
    // postcard's serde form), ... }: build a valid prefix, then lie about the
    // number of entries of a PushEntries message.
    let env = Envelope {
        id: 1,
        library: Uuid::from_u128(1),
        from: Uuid::from_u128(2),
        msg: Msg::PushEntries { entries: vec![] },
    };
    let mut bytes = postcard::to_allocvec(&env).unwrap();
    bytes.pop(); // the zero entry count
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // u32::MAX entries
    let before = std::time::Instant::now();
    assert!(postcard::from_bytes::<Envelope>(&bytes).is_err());
    assert!(before.elapsed() < std::time::Duration::from_secs(1));
    // The same for a payload's write list and a text value.
    for prefix in [vec![0u8], vec![0u8, 1, 0, 2]] {
        let mut p = prefix.clone();
        p.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Op::decode(&p).is_err());
    }
    // Oversized payloads are refused before decoding.
    assert!(Op::decode(&vec![0u8; 64 * 1024 + 1]).is_err());
}

/// Valid entries from the fuzzer applied to a real library: never a panic, and
/// whatever validates can be applied (or is refused by a merge rule) without error.
#[test]
fn apply_remote_of_arbitrary_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let applied = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(256),
        ..Config::default()
    });
    runner
        .run(
            &proptest::collection::vec(prop_oneof![entry(), shaped_entry()], 1..8),
            |entries| {
                let report = lib.apply_remote(&entries);
                prop_assert!(report.is_ok(), "{report:?}");
                applied.set(applied.get() + report.unwrap().applied);
                Ok(())
            },
        )
        .unwrap();
    assert!(
        applied.get() > 50,
        "the fuzzer reached the merge rules too rarely: {}",
        applied.get()
    );
}

fn row() -> impl Strategy<Value = SnapshotRow> {
    (
        model_name(),
        uuid(),
        proptest::collection::vec(value(), 0..10),
        proptest::collection::vec((any::<u64>(), uuid()), 0..10),
        any::<bool>(),
    )
        .prop_map(|(model, uuid, values, clocks, present)| SnapshotRow {
            model,
            uuid,
            values,
            clocks,
            present,
        })
}

/// Rows shaped like a model (right arity), with arbitrary values and clocks:
/// the deep end of `snapshot::apply`, past the arity check.
fn shaped_row() -> impl Strategy<Value = SnapshotRow> {
    (
        0..registry().len(),
        uuid(),
        any::<bool>(),
        proptest::collection::vec(
            (
                value(),
                prop_oneof![Just(0u64), 1u64..1000, any::<u64>()],
                uuid(),
            ),
            most_fields(),
        ),
    )
        .prop_map(|(i, uuid, present, cells)| {
            let m = registry()[i];
            let n = m.fields.len();
            SnapshotRow {
                model: m.name.to_string(),
                uuid,
                values: cells.iter().take(n).map(|c| c.0.clone()).collect(),
                clocks: cells.iter().take(n).map(|c| (c.1, c.2)).collect(),
                present,
            }
        })
}

fn tombstone() -> impl Strategy<Value = SnapshotTombstone> {
    (model_name(), uuid(), any::<u64>(), uuid()).prop_map(|(model, uuid, hlc, dev)| {
        SnapshotTombstone {
            model,
            uuid,
            hlc,
            dev,
        }
    })
}

/// Snapshot chunks with arbitrary rows, tombstones and bulk entries: applied or
/// refused with an error, never a panic; a refused chunk changes nothing.
#[test]
fn snapshot_apply_of_arbitrary_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(384),
        ..Config::default()
    });
    let chunk = (
        proptest::collection::vec(prop_oneof![row(), shaped_row()], 0..6),
        proptest::collection::vec(tombstone(), 0..3),
        proptest::collection::vec(prop_oneof![entry(), shaped_entry()], 0..2),
    );
    runner
        .run(&chunk, |(rows, tombstones, bulk)| {
            let before = lib
                .read(|c| concord::digest::digest(c, concord::digest::Scope::All))
                .unwrap();
            if snapshot::apply(&lib, rows, tombstones, bulk).is_err() {
                let after = lib
                    .read(|c| concord::digest::digest(c, concord::digest::Scope::All))
                    .unwrap();
                prop_assert_eq!(before, after, "a refused chunk changed the library");
            }
            Ok(())
        })
        .unwrap();
}
