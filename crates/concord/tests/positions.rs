//! Two different changes under one position, on real SQLite files: a device
//! whose files were copied and both copies went on writing under the same
//! incarnation (what an undetected rollback, a bug or a forged peer would
//! produce) seals two different chunks for the same positions with its own
//! key. Every device that receives both detects it by content (the chunks'
//! seals differ), reports it, applies both by the merge rules, and the
//! devices converge.

use concord::hlc::SystemClock;
use concord::model::Tag;
use concord::sync::txn::LibraryOptions;
use concord::{Change, Library, Uuid};

mod support;
use support::{all_entries as log_of, digest_all, node_key as key, registration, tag};

const LIB: Uuid = Uuid::from_u128(0x5ea3);

fn opts(n: u8, incarnation: u64) -> LibraryOptions {
    LibraryOptions {
        key: Some(key(n)),
        incarnation: Some(incarnation),
        ..LibraryOptions::default()
    }
}

fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

fn name_of(lib: &Library, id: Uuid) -> String {
    lib.read(|c| Ok(c.query_row("SELECT name FROM tags WHERE uuid = ?1", [id], |r| r.get(0))?))
        .unwrap()
}

#[test]
fn two_chunks_under_one_position_are_detected_reported_and_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, p, q) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    let (t, u) = (Uuid::from_u128(0x7a9), Uuid::from_u128(0x7aa));
    let dir = tmp.path().join("o");
    let base = {
        let lib =
            Library::create_with(&dir, LIB, "l", o, Box::new(SystemClock), opts(1, 7)).unwrap();
        lib.commit(registration(o, 1)).unwrap();
        lib.commit(Change::insert(&tag(t, "first"))).unwrap();
        log_of(&lib)
    };
    let copy = tmp.path().join("o-copy");
    copy_files(&dir, &copy);
    // Both copies open under one incarnation and write different changes at
    // the same next positions: a rename of T, and a new tag only one has.
    let write = |dir: &std::path::Path, name: &str, extra: Option<Uuid>| {
        let lib = Library::open_with(dir, o, Box::new(SystemClock), opts(1, 8)).unwrap();
        let mut changes = vec![Change::update::<Tag>(t).set("name", name)];
        if let Some(u) = extra {
            changes.push(Change::insert(&tag(u, "only-in-one")));
        }
        lib.commit_batch(changes).unwrap();
        log_of(&lib)
            .into_iter()
            .filter(|e| e.replica() == lib.replica())
            .collect::<Vec<_>>()
    };
    let one = write(&dir, "alpha", Some(u));
    let two = write(&copy, "beta", None);
    assert_eq!(one[0].replica(), two[0].replica(), "one replica");
    assert_eq!(one[0].origin_seq, two[0].origin_seq, "one position");
    assert!(one.last().unwrap().seal.is_some() && two.last().unwrap().seal.is_some());

    let receiver = |n: u8, id: Uuid| {
        let lib = Library::create_with(
            &tmp.path().join(format!("r{n}")),
            LIB,
            "l",
            id,
            Box::new(SystemClock),
            opts(n, 1),
        )
        .unwrap();
        let report = lib.apply_remote(&base).unwrap();
        assert_eq!(report.unverified, 0, "{:?}", report.forged);
        lib
    };
    let (rp, rq) = (receiver(2, p), receiver(3, q));
    // Each takes one copy first: nothing to compare yet.
    let first_p = rp.apply_remote(&one).unwrap();
    let first_q = rq.apply_remote(&two).unwrap();
    assert!(first_p.position_conflicts.is_empty() && first_q.position_conflicts.is_empty());
    assert_ne!(digest_all(&rp), digest_all(&rq));

    // Then the other copy: verified (the origin's own key), detected by
    // content, reported, applied by the merge rules, not logged.
    let logged_p = log_of(&rp).len();
    let second_p = rp.apply_remote(&two).unwrap();
    let second_q = rq.apply_remote(&one).unwrap();
    for report in [&second_p, &second_q] {
        assert_eq!(report.unverified, 0, "{:?}", report.forged);
        assert_eq!(report.position_conflicts.len(), 1, "{report:?}");
        assert!(
            report.position_conflicts[0].contains("two changes under one position"),
            "{}",
            report.position_conflicts[0]
        );
    }
    assert_eq!(log_of(&rp).len(), logged_p, "the log keeps the copy it had");

    // Both converge: the rename by its clock (an exact tie by value), and the
    // tag only one copy created is on both.
    assert_eq!(digest_all(&rp), digest_all(&rq));
    assert_eq!(name_of(&rp, t), name_of(&rq, t));
    assert_eq!(name_of(&rq, u), "only-in-one");

    // Receiving either copy again is a plain duplicate on the side that
    // logged it, and reported again on the other (it never logs it).
    assert!(rp.apply_remote(&one).unwrap().position_conflicts.is_empty());
    assert_eq!(rp.apply_remote(&two).unwrap().position_conflicts.len(), 1);
}
