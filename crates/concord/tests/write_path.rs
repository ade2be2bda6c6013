//! The write path end to end on real SQLite files: commits, batches, bulk, logs
//! exchanged between replicas.

use concord::hlc::SystemClock;
use concord::model::{Tag, TagAssignment};
use concord::{Change, Library, Uuid};

mod support;
use support::{all_entries, digest_all, file, initial_index, location, tag, volume};

fn new_lib(dir: &std::path::Path, lib: Uuid, device: Uuid) -> Library {
    Library::create(dir, lib, "test", device, Box::new(SystemClock)).unwrap()
}

#[test]
fn tag_lifecycle_and_replication() {
    let tmp = tempfile::tempdir().unwrap();
    let lib_id = Uuid::now_v7();
    let (da, db) = (Uuid::now_v7(), Uuid::now_v7());
    let a = new_lib(&tmp.path().join("a"), lib_id, da);
    let b = new_lib(&tmp.path().join("b"), lib_id, db);

    let t = tag(Uuid::now_v7(), "holiday");
    a.commit(Change::insert(&t)).unwrap();
    a.commit(Change::update::<Tag>(t.id).set("name", "vacation"))
        .unwrap();
    let t2 = Tag {
        id: Uuid::now_v7(),
        name: "gone".into(),
        color: Some("#ff0000".into()),
    };
    a.commit(Change::insert(&t2)).unwrap();
    a.commit(Change::delete::<Tag>(t2.id)).unwrap();
    assert!(matches!(
        a.commit(Change::update::<Tag>(t2.id).set("name", "back")),
        Err(concord::Error::Deleted { .. })
    ));

    let entries = all_entries(&a);
    assert_eq!(entries.len(), 4);
    let r = b.apply_remote(&entries).unwrap();
    assert_eq!(r.applied, 4, "{r:?}");
    assert_eq!(digest_all(&a), digest_all(&b));
    // Duplicates change nothing.
    let r = b.apply_remote(&entries).unwrap();
    assert_eq!(r.duplicates, 4);
    assert_eq!(digest_all(&a), digest_all(&b));
}

#[test]
fn batch_writes_one_entry_per_item_and_bulk_writes_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Uuid::now_v7();
    let a = new_lib(tmp.path(), Uuid::now_v7(), dev);
    let before = a.with_log(|l| l.count()).unwrap();
    let tags: Vec<Change> = (0..1000)
        .map(|i| Change::insert(&tag(Uuid::now_v7(), &format!("t{i}"))))
        .collect();
    a.commit_batch(tags).unwrap();
    assert_eq!(a.with_log(|l| l.count()).unwrap() - before, 1000);

    let vol = volume(Uuid::now_v7(), dev, "v", "fp");
    let loc = location(Uuid::now_v7(), dev, vol.id, "/data", "data");
    a.commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
        .unwrap();
    let before = a.with_log(|l| l.count()).unwrap();
    let rows = (0..100_000).map(|i| {
        file(
            Uuid::now_v7(),
            dev,
            loc.id,
            &format!("f{i}"),
            i,
            Some(0),
            Some(i),
        )
    });
    a.commit_bulk(rows, initial_index(&loc, "fp")).unwrap();
    let after = all_entries(&a);
    assert_eq!(after.len() as u64 - before, 1, "one bulk entry");
    let bulk = after.last().unwrap();
    let size = postcard::to_allocvec(bulk).unwrap().len();
    assert!(size <= 2048, "bulk entry is {size} bytes");
    let n: i64 = a
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM file_entries", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 100_000);
}

#[test]
fn membership_and_cascade() {
    let tmp = tempfile::tempdir().unwrap();
    let lib_id = Uuid::now_v7();
    let (da, db) = (Uuid::now_v7(), Uuid::now_v7());
    let a = new_lib(&tmp.path().join("a"), lib_id, da);
    let b = new_lib(&tmp.path().join("b"), lib_id, db);
    let t = Tag {
        id: Uuid::now_v7(),
        name: "x".into(),
        color: None,
    };
    a.commit(Change::insert(&t)).unwrap();
    b.apply_remote(&all_entries(&a)).unwrap();
    // B tags an entry while A deletes the tag.
    let entry = Uuid::now_v7();
    b.commit(Change::insert(&TagAssignment::new(t.id, entry)))
        .unwrap();
    a.commit(Change::delete::<Tag>(t.id)).unwrap();
    let ea = all_entries(&a);
    let eb = all_entries(&b);
    a.apply_remote(&eb).unwrap();
    b.apply_remote(&ea).unwrap();
    assert_eq!(digest_all(&a), digest_all(&b));
    let n: i64 = b
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM tag_assignments", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 0, "the assignment died with its tag");
}

#[test]
fn reopen_recovers_and_continues_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Uuid::now_v7();
    let lib_id = Uuid::now_v7();
    {
        let a = new_lib(tmp.path(), lib_id, dev);
        a.commit(Change::insert(&Tag {
            id: Uuid::now_v7(),
            name: "a".into(),
            color: None,
        }))
        .unwrap();
    }
    let a = Library::open(tmp.path(), dev, Box::new(SystemClock)).unwrap();
    a.commit(Change::insert(&Tag {
        id: Uuid::now_v7(),
        name: "b".into(),
        color: None,
    }))
    .unwrap();
    let e = all_entries(&a);
    // Each open numbers its entries in a new incarnation (a replica of its
    // own), from 1: a reopened data dir never reuses a position.
    assert_eq!(
        e.iter().map(|e| e.origin_seq).collect::<Vec<_>>(),
        vec![1, 1]
    );
    assert_ne!(e[0].replica(), e[1].replica());
    assert_eq!(e[1].replica(), a.replica());
    assert!(e[1].hlc > e[0].hlc);
}

#[test]
fn a_library_is_open_in_one_place_at_a_time() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let dev = Uuid::now_v7();
    let first = new_lib(tmp.path(), Uuid::now_v7(), dev);
    let opened = Arc::new(AtomicBool::new(false));
    let (dir, flag) = (tmp.path().to_path_buf(), opened.clone());
    let second = std::thread::spawn(move || {
        let l = Library::open(&dir, dev, Box::new(SystemClock)).unwrap();
        flag.store(true, Ordering::SeqCst);
        l
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !opened.load(Ordering::SeqCst),
        "a second open must wait for the first to close"
    );
    drop(first);
    let l = second.join().unwrap();
    assert!(opened.load(Ordering::SeqCst));
    drop(l);
}
