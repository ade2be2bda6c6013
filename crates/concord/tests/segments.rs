//! The sync log stored in segments (`sync::segment`) and how local
//! transactions reach it, observable behaviour only:
//!
//! - a batch of 1,000 changes is 1,000 log entries in ONE stored row;
//! - every local transaction, batches included, commits its entries with its
//!   change in `library.db` (the outbox); the outbox moves into `sync.db` in
//!   one transaction once it holds enough (so `sync.db`, synced on every
//!   commit, is synced once for many batches), or when the log is read;
//! - a batch whose `library.db` commit fails leaves nothing behind; a move
//!   whose `library.db` half fails is finished by the next one, nothing
//!   logged twice and no sequence number reused;
//! - a log written before segments (one row per entry) is converted on open
//!   with every entry's position, library sequence and epoch;
//! - fetching by library sequence, by version vector and pruning work inside
//!   segments (entries in the middle of a row).

use std::collections::BTreeMap;

use concord::hlc::SystemClock;
use concord::model::Tag;
use concord::{Change, Library, Uuid};

mod support;
use support::{all_entries, count, file, location, tag, volume};

const LIB: Uuid = Uuid::from_u128(0x5e6);
const DEVICE: Uuid = Uuid::from_u128(0xd1);

/// A tag with a fresh id, named after `i`.
fn numbered_tag(i: usize) -> Tag {
    tag(Uuid::now_v7(), &format!("tag {i}"))
}

#[test]
fn a_batch_is_one_row_of_many_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let tags: Vec<Tag> = (0..1000).map(numbered_tag).collect();
    lib.commit_batch(tags.iter().map(Change::insert).collect())
        .unwrap();
    let (entries, rows) = lib
        .with_log(|l| Ok((l.count()?, l.segment_count()?)))
        .unwrap();
    assert_eq!(entries, 1000);
    assert_eq!(rows, 1, "one stored row for the whole batch");
    let all = all_entries(&lib);
    let seqs: Vec<u64> = all.iter().map(|e| e.origin_seq).collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    assert_eq!(all[999].record, tags[999].id);
    // Reading the log moved the outbox into it.
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 0);
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 1000);
}

/// Entries `sync.db` holds, read with a connection of its own (reading
/// through the library would move the outbox first).
fn entries_in_sync_db(dir: &std::path::Path) -> i64 {
    let raw = rusqlite::Connection::open(dir.join("sync.db")).unwrap();
    raw.query_row(
        "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Batches commit with their entries in `library.db` and wait in the outbox;
/// the batch that fills it past 16,384 entries moves them all into `sync.db`
/// at once (one sync of `sync.db` for seventeen batches), sealed in whole
/// chunks, in order.
#[test]
fn batches_wait_in_the_outbox_and_move_together() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let opts = concord::sync::txn::LibraryOptions {
        key: Some(concord::sync::seal::NodeKey::from_bytes(&[7; 32])),
        ..Default::default()
    };
    let lib = Library::create_with(&dir, LIB, "s", DEVICE, Box::new(SystemClock), opts).unwrap();
    let tags: Vec<Tag> = (0..17_000).map(numbered_tag).collect();
    let mut batches = tags.chunks(1000);
    for chunk in batches.by_ref().take(16) {
        lib.commit_batch(chunk.iter().map(Change::insert).collect())
            .unwrap();
    }
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 16);
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 16_000);
    assert_eq!(entries_in_sync_db(&dir), 0, "nothing moved yet");
    let last = batches.next().unwrap();
    lib.commit_batch(last.iter().map(Change::insert).collect())
        .unwrap();
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 0);
    assert_eq!(entries_in_sync_db(&dir), 17_000, "all moved at once");
    let all = all_entries(&lib);
    let seqs: Vec<u64> = all.iter().map(|e| e.origin_seq).collect();
    assert_eq!(seqs, (1..=17_000).collect::<Vec<_>>());
    assert_eq!(all[16_999].record, tags[16_999].id);
    // Every entry is covered by exactly one seal of at most 256 entries (as
    // served: seals are put back on entries read to be sent).
    let served = lib
        .with_log(|l| l.fetch_missing(&BTreeMap::new(), 20_000))
        .unwrap();
    assert_eq!(served.len(), 17_000);
    let mut covered = 0;
    for e in &served {
        if let Some(seal) = e.seal {
            assert!(seal.first == covered + 1 && e.origin_seq - seal.first < 256);
            covered = e.origin_seq;
        }
    }
    assert_eq!(covered, 17_000);
}

/// Transactions with device-local values take the same path: the inode is
/// in no entry, so it is committed with the change in `library.db`.
#[test]
fn device_local_values_go_through_the_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let vol = volume(Uuid::now_v7(), DEVICE, "disk", "fp");
    let loc = location(Uuid::now_v7(), DEVICE, vol.id, "/x", "x");
    lib.commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
        .unwrap();
    lib.flush().unwrap();
    let files: Vec<Change> = (0..100)
        .map(|i| {
            Change::insert(&file(
                Uuid::now_v7(),
                DEVICE,
                loc.id,
                &format!("f{i}"),
                i,
                Some(i),
                Some(1000 + i),
            ))
        })
        .collect();
    lib.commit_batch(files).unwrap();
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 1);
    lib.flush().unwrap();
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 0);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 102);
    assert_eq!(
        count(
            &lib,
            "SELECT COUNT(*) FROM file_entries WHERE inode >= 1000"
        ),
        100
    );
}

/// A batch whose `library.db` commit fails (a trigger refuses its outbox
/// row, as a full disk would) leaves nothing: no rows, no entries, and its
/// sequence numbers were never given out.
#[test]
fn a_batch_whose_commit_failed_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let lib = Library::create(&dir, LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let raw = rusqlite::Connection::open(dir.join("library.db")).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER fail BEFORE INSERT ON outbox_segments
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    let tags: Vec<Tag> = (0..100).map(numbered_tag).collect();
    assert!(lib
        .commit_batch(tags.iter().map(Change::insert).collect())
        .is_err());
    raw.execute_batch("DROP TRIGGER fail").unwrap();
    drop(raw);
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 0);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 0);
    let after = lib.commit(Change::insert(&numbered_tag(1000))).unwrap();
    assert_eq!(after.entries, vec![(lib.replica(), 1)]);
}

/// A move whose `library.db` half fails (the outbox is logged, then clearing
/// it and the watermark are refused, as on a crash between the two): the
/// entries stay in the outbox and in the log; the next move logs only what
/// is new, the next commit takes the next sequence number, and a reopened
/// library holds everything once.
#[test]
fn a_move_whose_library_half_failed_is_finished_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let lib = Library::create(&dir, LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let tags: Vec<Tag> = (0..101).map(numbered_tag).collect();
    lib.commit_batch(tags[..100].iter().map(Change::insert).collect())
        .unwrap();
    let raw = rusqlite::Connection::open(dir.join("library.db")).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER fail BEFORE UPDATE ON meta WHEN NEW.key = 'applied_log_id'
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    assert!(lib.flush().is_err());
    raw.execute_batch("DROP TRIGGER fail").unwrap();
    drop(raw);
    assert_eq!(entries_in_sync_db(&dir), 100, "logged");
    assert_eq!(
        count(&lib, "SELECT COUNT(*) FROM outbox_segments"),
        1,
        "kept"
    );
    let after = lib.commit(Change::insert(&tags[100])).unwrap();
    assert_eq!(after.entries, vec![(lib.replica(), 101)]);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 101);
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 0);
    drop(lib);
    let lib = Library::open(&dir, DEVICE, Box::new(SystemClock)).unwrap();
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 101);
    let seqs: Vec<u64> = all_entries(&lib).iter().map(|e| e.origin_seq).collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
}

/// A `sync.db` of schema v3 (one row per entry in table `log`) is converted on
/// open: every entry, in order, with its library sequence and epoch.
#[test]
fn a_log_of_one_row_per_entry_is_converted_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    let lib = Library::create(&dir, LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    for i in 0..5 {
        lib.commit(Change::insert(&numbered_tag(i))).unwrap();
    }
    let expected = all_entries(&lib);
    drop(lib);
    // Rewrite sync.db as schema v3 held it.
    {
        let raw = rusqlite::Connection::open(dir.join("sync.db")).unwrap();
        raw.execute_batch(
            "CREATE TABLE log (
               id INTEGER PRIMARY KEY, origin BLOB NOT NULL, origin_seq INTEGER NOT NULL,
               hlc INTEGER NOT NULL, lib_seq INTEGER, epoch INTEGER, model TEXT NOT NULL,
               record BLOB NOT NULL, kind INTEGER NOT NULL, payload BLOB NOT NULL,
               UNIQUE (origin, origin_seq));",
        )
        .unwrap();
        for (i, e) in expected.iter().enumerate() {
            // The first three were sequenced by a leader at epoch 7.
            let (lib_seq, epoch) = if i < 3 {
                (Some(10 + i as i64), Some(7i64))
            } else {
                (None, None)
            };
            raw.execute(
                "INSERT INTO log (origin, origin_seq, hlc, lib_seq, epoch, model, record, kind, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![
                    e.origin,
                    e.origin_seq as i64,
                    e.hlc as i64,
                    lib_seq,
                    epoch,
                    e.model,
                    e.record,
                    e.op.kind(),
                    e.op.encode()
                ],
            )
            .unwrap();
        }
        raw.execute_batch(
            "DROP INDEX segments_by_origin; DROP INDEX segments_by_lib_seq;
             DROP INDEX segments_unsequenced; DROP TABLE segments;
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let lib = Library::open(&dir, DEVICE, Box::new(SystemClock)).unwrap();
    let got = all_entries(&lib);
    assert_eq!(got.len(), 5);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            (g.origin, g.origin_seq, g.hlc),
            (e.origin, e.origin_seq, e.hlc)
        );
        assert_eq!((&g.model, g.record, &g.op), (&e.model, e.record, &e.op));
        if i < 3 {
            assert_eq!((g.lib_seq, g.epoch), (Some(10 + i as u64), Some(7)));
        } else {
            assert_eq!((g.lib_seq, g.epoch), (None, None));
        }
    }
    assert_eq!(lib.with_log(|l| l.latest_seq()).unwrap(), Some(12));
    // And the log goes on.
    let r = lib.commit(Change::insert(&numbered_tag(9))).unwrap();
    assert_eq!(r.entries, vec![(lib.replica(), 1)]);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 6);
}

/// Reads and pruning that start or end inside a stored row.
#[test]
fn fetches_and_pruning_inside_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let tags: Vec<Tag> = (0..300).map(numbered_tag).collect();
    for chunk in tags.chunks(100) {
        lib.commit_batch(chunk.iter().map(Change::insert).collect())
            .unwrap();
        // Moved one by one: a row each (moved together, they would merge).
        lib.flush().unwrap();
    }
    assert_eq!(lib.with_log(|l| l.segment_count()).unwrap(), 3);
    // A leader sequences them: 1..=300, a segment at a time.
    let range = lib.with_log(|l| l.sequence_pending(4)).unwrap();
    assert_eq!(range, Some((1, 300)));
    let since = lib.with_log(|l| l.fetch_since_seq(150, 20)).unwrap();
    let seqs: Vec<u64> = since.iter().filter_map(|e| e.lib_seq).collect();
    assert_eq!(seqs, (151..=170).collect::<Vec<_>>());
    assert_eq!(since[0].record, tags[150].id);
    assert!(since.iter().all(|e| e.epoch == Some(4)));
    let mut vv = BTreeMap::new();
    vv.insert(lib.replica(), 250u64);
    let missing = lib.with_log(|l| l.fetch_missing(&vv, 1000)).unwrap();
    assert_eq!(missing.len(), 50);
    assert_eq!(missing[0].origin_seq, 251);
    assert!(lib.with_log(|l| l.contains(lib.replica(), 299)).unwrap());
    // Pruning through 150 keeps 151.. (a row cut in the middle).
    let mut horizon = BTreeMap::new();
    horizon.insert(lib.replica(), 150u64);
    let pruned = lib.with_log(|l| l.prune_covered(&horizon)).unwrap();
    assert_eq!(pruned, 150);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 150);
    let rest = all_entries(&lib);
    assert_eq!(rest[0].origin_seq, 151);
    assert_eq!(rest[0].lib_seq, Some(151));
    assert_eq!(rest[0].record, tags[150].id);
    let since = lib.with_log(|l| l.fetch_since_seq(0, 5)).unwrap();
    assert_eq!(since[0].lib_seq, Some(151));
    assert_eq!(lib.with_log(|l| l.latest_seq()).unwrap(), Some(300));
    // The version vector survives pruning.
    assert_eq!(lib.with_log(|l| l.contiguous(lib.replica())).unwrap(), 300);
    // Appending entries across what is held: only the new ones are stored.
    let peer = Uuid::from_u128(0xee);
    let other = tempfile::tempdir().unwrap();
    let p = Library::create(other.path(), LIB, "p", peer, Box::new(SystemClock)).unwrap();
    for i in 0..10 {
        p.commit(Change::insert(&numbered_tag(500 + i))).unwrap();
    }
    let theirs = all_entries(&p);
    lib.apply_remote(&theirs[2..5]).unwrap();
    lib.apply_remote(&theirs[7..9]).unwrap();
    assert_eq!(
        lib.with_log(|l| l.contiguous(p.replica())).unwrap(),
        0,
        "a gap at 1"
    );
    let r = lib.apply_remote(&theirs).unwrap();
    assert_eq!((r.applied, r.duplicates), (5, 5), "{r:?}");
    assert_eq!(lib.with_log(|l| l.contiguous(p.replica())).unwrap(), 10);
    let mut vv = BTreeMap::new();
    vv.insert(lib.replica(), u64::MAX >> 1);
    let all_peer = lib.with_log(|l| l.fetch_missing(&vv, 100)).unwrap();
    let seqs: Vec<u64> = all_peer.iter().map(|e| e.origin_seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
}

/// Sequence numbers never go back: after pruning every entry a leader
/// numbered, the next ones continue above them.
#[test]
fn sequencing_continues_after_everything_numbered_was_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let tags: Vec<Tag> = (0..100).map(numbered_tag).collect();
    lib.commit_batch(tags.iter().map(Change::insert).collect())
        .unwrap();
    assert_eq!(
        lib.with_log(|l| l.sequence_pending(1)).unwrap(),
        Some((1, 100))
    );
    let mut horizon = BTreeMap::new();
    horizon.insert(lib.replica(), 100u64);
    assert_eq!(lib.with_log(|l| l.prune_covered(&horizon)).unwrap(), 100);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 0);
    assert_eq!(lib.with_log(|l| l.latest_seq()).unwrap(), Some(100));
    lib.commit(Change::insert(&numbered_tag(100))).unwrap();
    assert_eq!(
        lib.with_log(|l| l.sequence_pending(1)).unwrap(),
        Some((101, 101))
    );
    let e = lib.with_log(|l| l.fetch_since_seq(100, 10)).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].lib_seq, Some(101));
}
