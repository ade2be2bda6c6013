//! The sync log stored in segments (`sync::segment`) and the log-first path of
//! large transactions (DESIGN §3), observable behaviour only:
//!
//! - a batch of 1,000 changes is 1,000 log entries in ONE stored row;
//! - large transactions with nothing device-local are logged before they are
//!   applied; if the `library.db` commit then fails, the entries are applied
//!   from the log (on open), their sequence numbers are not reused, and
//!   nothing is lost;
//! - transactions with device-local values keep going through the outbox;
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
    // Logged first: nothing waited in the outbox.
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM outbox_segments"), 0);
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 1000);
}

#[test]
fn device_local_values_keep_the_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = Library::create(tmp.path(), LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let vol = volume(Uuid::now_v7(), DEVICE, "disk", "fp");
    let loc = location(Uuid::now_v7(), DEVICE, vol.id, "/x", "x");
    lib.commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
        .unwrap();
    lib.flush().unwrap();
    // 100 file entries with an inode (a device-local field): too many for
    // single commits, but not logged first: the inode is in no entry.
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

/// The `library.db` commit of a log-first batch fails (a trigger refuses the
/// watermark, as a full disk would): the call fails, the entries stay in the
/// log, they are applied when the library is opened again, and the next
/// commit does not reuse their sequence numbers.
#[test]
fn a_logged_batch_whose_commit_failed_is_applied_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    let lib = Library::create(&dir, LIB, "s", DEVICE, Box::new(SystemClock)).unwrap();
    let raw = rusqlite::Connection::open(dir.join("library.db")).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER fail BEFORE UPDATE ON meta WHEN NEW.key = 'applied_log_id'
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    let tags: Vec<Tag> = (0..100).map(numbered_tag).collect();
    assert!(lib
        .commit_batch(tags.iter().map(Change::insert).collect())
        .is_err());
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 0, "not applied");
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 100, "but logged");
    raw.execute_batch("DROP TRIGGER fail").unwrap();
    drop(raw);
    // The next commit takes the next sequence number, not a logged one.
    let after = lib.commit(Change::insert(&numbered_tag(1000))).unwrap();
    assert_eq!(after.entries, vec![(lib.replica(), 101)]);
    drop(lib);
    let lib = Library::open(&dir, DEVICE, Box::new(SystemClock)).unwrap();
    assert_eq!(count(&lib, "SELECT COUNT(*) FROM tags"), 101);
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 101);
    for t in &tags {
        let name: String = lib
            .read(|c| {
                Ok(
                    c.query_row("SELECT name FROM tags WHERE uuid = ?1", [t.id], |r| {
                        r.get(0)
                    })?,
                )
            })
            .unwrap();
        assert_eq!(name, t.name);
    }
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
