//! Sealed chunks across incarnations, on real SQLite files: a library from
//! before incarnations and seals (schema v4, both databases) opens into the
//! merged layout with its positions kept and its log sealed in its replica;
//! each incarnation's chunks are sealed apart; and a chunk moved to another
//! incarnation's positions no longer verifies.

use concord::hlc::SystemClock;
use concord::sync::entry::{replica_id, LogEntry};
use concord::sync::txn::LibraryOptions;
use concord::{Library, Uuid};

mod support;
use support::{all_entries as log_of, node_key as key, registration, tag_batch as tags};

const LIB: Uuid = Uuid::from_u128(0x5ea2);

fn opts(n: Option<u8>, incarnation: Option<u64>) -> LibraryOptions {
    LibraryOptions {
        key: n.map(key),
        incarnation,
        ..LibraryOptions::default()
    }
}

/// Take both databases of a closed library back to the v4 layout, the last
/// released one (no incarnations, no seals).
fn downgrade_to_v4(dir: &std::path::Path) {
    let sync = rusqlite::Connection::open(dir.join("sync.db")).unwrap();
    sync.execute_batch(
        "
CREATE TABLE segments_v4 (
  id INTEGER PRIMARY KEY,
  origin BLOB NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  lib_seq INTEGER,
  epoch INTEGER,
  entries BLOB NOT NULL
);
INSERT INTO segments_v4 SELECT id, origin, first_seq, last_seq, lib_seq, epoch, entries
  FROM segments;
DROP TABLE segments;
ALTER TABLE segments_v4 RENAME TO segments;
CREATE UNIQUE INDEX segments_by_origin ON segments(origin, last_seq);
CREATE UNIQUE INDEX segments_by_lib_seq ON segments(lib_seq) WHERE lib_seq IS NOT NULL;
CREATE INDEX segments_unsequenced ON segments(id) WHERE lib_seq IS NULL;
DROP TABLE seals;
PRAGMA user_version = 4;
",
    )
    .unwrap();
    let lib = rusqlite::Connection::open(dir.join("library.db")).unwrap();
    lib.execute_batch(
        "
ALTER TABLE outbox_segments DROP COLUMN incarnation;
CREATE TABLE bulk_operations_v4 (
  origin BLOB NOT NULL,
  origin_seq INTEGER NOT NULL,
  hlc INTEGER NOT NULL,
  payload BLOB NOT NULL,
  state TEXT NOT NULL DEFAULT 'seen',
  PRIMARY KEY (origin, origin_seq)
) WITHOUT ROWID;
INSERT INTO bulk_operations_v4 SELECT origin, origin_seq, hlc, payload, state
  FROM bulk_operations;
DROP TABLE bulk_operations;
ALTER TABLE bulk_operations_v4 RENAME TO bulk_operations;
PRAGMA user_version = 4;
",
    )
    .unwrap();
}

/// A v4 library (entries at the device's own positions, unsealed) opens with
/// a key into the merged layout: its positions are kept in the replica of
/// incarnation 0 (the device id), its log is sealed there, the new
/// incarnation's entries are sealed in their own replica, and a verifying
/// peer takes all of it.
#[test]
fn a_v4_library_opens_into_replicas_and_is_sealed_in_each() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Uuid::from_u128(1);
    let dir = tmp.path().join("a");
    let before = {
        let lib = Library::create_with(
            &dir,
            LIB,
            "l",
            a,
            Box::new(SystemClock),
            opts(None, Some(0)),
        )
        .unwrap();
        lib.commit(registration(a, 1)).unwrap();
        tags(&lib, 3, "small");
        tags(&lib, 300, "batch");
        let entries = log_of(&lib);
        assert!(entries.iter().all(|e| e.seal.is_none() && e.replica() == a));
        entries.len()
    };
    downgrade_to_v4(&dir);

    let lib = Library::open_with(&dir, a, Box::new(SystemClock), opts(Some(1), None)).unwrap();
    assert_ne!(lib.incarnation(), 0);
    tags(&lib, 5, "after");
    let entries = log_of(&lib);
    assert_eq!(entries.len(), before + 5);
    let old: Vec<&LogEntry> = entries.iter().filter(|e| e.replica() == a).collect();
    assert_eq!(old.len(), before, "positions of the v4 log kept");
    assert_eq!(
        old.iter().map(|e| e.origin_seq).collect::<Vec<_>>(),
        (1..=before as u64).collect::<Vec<_>>()
    );
    assert!(old.last().unwrap().seal.is_some(), "the v4 log is sealed");
    let new: Vec<&LogEntry> = entries
        .iter()
        .filter(|e| e.replica() == lib.replica())
        .collect();
    assert_eq!(new.len(), 5);
    assert_eq!(new[0].origin_seq, 1, "a new incarnation numbers from 1");
    assert!(new[4].seal.is_some_and(|s| s.first == 1), "sealed apart");

    let peer = Library::create_with(
        &tmp.path().join("b"),
        LIB,
        "l",
        Uuid::from_u128(2),
        Box::new(SystemClock),
        opts(Some(2), None),
    )
    .unwrap();
    let report = peer.apply_remote(&entries).unwrap();
    assert_eq!(
        (report.applied, report.unverified),
        (entries.len(), 0),
        "{:?}",
        report.forged
    );
}

/// A genuine chunk relabelled with another incarnation of its own device
/// (same key, other positions) is refused: the seal covers the incarnation.
#[test]
fn a_chunk_moved_to_another_incarnation_does_not_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Uuid::from_u128(1);
    let lib = Library::create_with(
        &tmp.path().join("a"),
        LIB,
        "l",
        a,
        Box::new(SystemClock),
        opts(Some(1), Some(7)),
    )
    .unwrap();
    lib.commit(registration(a, 1)).unwrap();
    tags(&lib, 10, "t");
    let genuine = log_of(&lib);
    assert!(genuine.iter().all(|e| e.replica() == replica_id(a, 7)));
    let moved: Vec<LogEntry> = genuine
        .iter()
        .cloned()
        .map(|e| LogEntry {
            incarnation: 8,
            ..e
        })
        .collect();
    let peer = Library::create_with(
        &tmp.path().join("b"),
        LIB,
        "l",
        Uuid::from_u128(2),
        Box::new(SystemClock),
        opts(Some(2), None),
    )
    .unwrap();
    let report = peer.apply_remote(&moved).unwrap();
    assert_eq!((report.applied, report.unverified), (0, moved.len()));
    let report = peer.apply_remote(&genuine).unwrap();
    assert_eq!((report.applied, report.unverified), (genuine.len(), 0));
}
