//! The conflict log is bounded like the sync log: the newest rows by count on
//! every apply, and nothing older than the retention. Real libraries on real
//! SQLite files, clocks driven by the test.

use std::sync::Arc;

use concord::hlc::{Clock, ManualClock};
use concord::model::Tag;
use concord::query::{conflict_count, conflicts};
use concord::sync::apply::ConflictRetention;
use concord::sync::txn::LibraryOptions;
use concord::{Change, Library, Uuid};

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

/// A library with a small conflict retention, on `clock`.
fn library(dir: &std::path::Path, id: Uuid, device: Uuid, clock: &Arc<ManualClock>) -> Library {
    Library::create(dir, id, "lib", device, Box::new(clock.clone())).unwrap();
    let opts = LibraryOptions {
        conflicts: ConflictRetention {
            max_rows: 5,
            max_age_ms: 30 * DAY,
        },
        ..LibraryOptions::default()
    };
    Library::open_with(dir, device, Box::new(clock.clone()), opts).unwrap()
}

/// Everything `from` logged after `after` entries, applied to `to`.
fn sync(from: &Library, to: &Library, after: &mut usize) {
    let entries = from.with_log(|l| l.entries()).unwrap();
    to.apply_remote(&entries[*after..]).unwrap();
    *after = entries.len();
}

/// `rounds` concurrent renames of one tag on `a` and `b`; `b`'s (later)
/// renames are applied to `a`, each overriding a value it had not seen.
fn concurrent_renames(a: &Library, b: &Library, tag: Uuid, rounds: usize, seen: &mut usize) {
    for i in 0..rounds {
        a.commit(Change::update::<Tag>(tag).set("name", format!("a{i}")))
            .unwrap();
        b.commit(Change::update::<Tag>(tag).set("name", format!("b{i}")))
            .unwrap();
    }
    sync(b, a, seen);
}

#[test]
fn the_conflict_log_keeps_the_newest_rows_and_drops_old_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let id = Uuid::now_v7();
    let a = library(&tmp.path().join("a"), id, Uuid::now_v7(), &clock);
    let b = library(&tmp.path().join("b"), id, Uuid::now_v7(), &clock);
    let tag = Uuid::now_v7();
    a.commit(Change::insert(&Tag {
        id: tag,
        name: "t".into(),
        color: None,
    }))
    .unwrap();
    let (mut from_a, mut from_b) = (0, 0);
    sync(&a, &b, &mut from_a);

    for _ in 0..4 {
        clock.advance(1000);
        concurrent_renames(&a, &b, tag, 3, &mut from_b);
        assert!(conflict_count(&a).unwrap() <= 5);
    }
    assert_eq!(conflict_count(&a).unwrap(), 5, "the newest rows are kept");

    // A month and more later, old rows go; the new one stays.
    clock.advance(31 * DAY);
    concurrent_renames(&a, &b, tag, 1, &mut from_b);
    assert_eq!(conflict_count(&a).unwrap(), 1);
    let newest = conflicts(&a, 10).unwrap();
    assert_eq!(newest[0].at, clock.now_ms());
}
