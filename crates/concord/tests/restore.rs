//! A device whose data dir goes back in time (restored from a backup, a VM
//! snapshot rolled back, a power cut losing the last WAL frames) never numbers
//! a change at a position it gave before: each open writes in a new
//! incarnation. Its lost changes come back from peers, which report it.

mod support;

use std::path::Path;

use concord::hlc::SystemClock;
use concord::{Change, Library, Uuid};
use support::{all_entries, count, digest_all, tag};

const LIB: Uuid = Uuid::from_u128(0x11b);
const A: Uuid = Uuid::from_u128(0xa);
const B: Uuid = Uuid::from_u128(0xb);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

fn tags(lib: &Library, prefix: &str, n: usize) -> Vec<Uuid> {
    (0..n)
        .map(|i| {
            let t = tag(Uuid::now_v7(), &format!("{prefix}{i}"));
            lib.commit(Change::insert(&t)).unwrap();
            t.id
        })
        .collect()
}

fn has_tag(lib: &Library, id: Uuid) -> bool {
    support::count_with(lib, "SELECT COUNT(*) FROM tags WHERE uuid = ?1", [id]) == 1
}

/// Both ways, every entry: what reconcile does.
fn exchange(a: &Library, b: &Library) -> (usize, usize) {
    let to_b = b.apply_remote(&all_entries(a)).unwrap();
    let to_a = a.apply_remote(&all_entries(b)).unwrap();
    assert!(to_a.rejected.is_empty() && to_b.rejected.is_empty());
    (to_a.own_recovered, to_b.own_recovered)
}

fn restored_device_keeps_lost_and_new_writes_apart(write_before_exchange: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, backup) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("backup"),
    );
    let a = Library::create(&a_dir, LIB, "l", A, Box::new(SystemClock)).unwrap();
    let b = Library::create(&b_dir, LIB, "l", B, Box::new(SystemClock)).unwrap();
    tags(&a, "before", 1);
    exchange(&a, &b);
    drop(a);
    copy_dir(&a_dir, &backup);
    let a = Library::open(&a_dir, A, Box::new(SystemClock)).unwrap();
    let lost = tags(&a, "lost", 5);
    exchange(&a, &b);
    assert!(lost.iter().all(|t| has_tag(&b, *t)));
    // A goes back to the backup.
    drop(a);
    std::fs::remove_dir_all(&a_dir).unwrap();
    copy_dir(&backup, &a_dir);
    let a = Library::open(&a_dir, A, Box::new(SystemClock)).unwrap();
    assert!(
        lost.iter().all(|t| !has_tag(&a, *t)),
        "the backup predates them"
    );
    let mut fresh = Vec::new();
    if write_before_exchange {
        fresh = tags(&a, "new", 3);
    }
    let (recovered, _) = exchange(&a, &b);
    assert_eq!(recovered, 5, "the rollback is seen and repaired");
    if !write_before_exchange {
        fresh = tags(&a, "new", 3);
        exchange(&a, &b);
    }
    assert!(lost.iter().all(|t| has_tag(&a, *t)), "lost writes are back");
    assert!(
        fresh.iter().all(|t| has_tag(&b, *t)),
        "new writes reached B"
    );
    assert_eq!(count(&a, "SELECT COUNT(*) FROM tags"), 9);
    assert_eq!(digest_all(&a), digest_all(&b));
    let vv = |l: &Library| l.with_log(|log| log.version_vector()).unwrap();
    assert_eq!(vv(&a), vv(&b));
    // No position names two changes.
    let mut ids: Vec<(Uuid, u64)> = all_entries(&b).iter().map(|e| e.id()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn restored_device_writing_before_it_reconnects() {
    restored_device_keeps_lost_and_new_writes_apart(true);
}

#[test]
fn restored_device_writing_after_it_reconnects() {
    restored_device_keeps_lost_and_new_writes_apart(false);
}
