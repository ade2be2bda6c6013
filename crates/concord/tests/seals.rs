//! Sealed chunks between real libraries on real SQLite files: a joiner
//! verifies the creator through its self-registration, and a log written
//! without a key (before seals, or before the node first started) is sealed
//! when the library is next opened with one.

use concord::hlc::SystemClock;
use concord::sync::txn::LibraryOptions;
use concord::{Library, Uuid};

mod support;
use support::{all_entries as log_of, node_key as key, registration, tag_batch as tags};

const LIB: Uuid = Uuid::from_u128(0x5ea1);

fn signed(n: u8) -> LibraryOptions {
    LibraryOptions {
        key: Some(key(n)),
        ..LibraryOptions::default()
    }
}

/// The creator's first entries register itself with its node id; a joiner
/// that knows no key yet verifies them by that registration, then the
/// creator's later chunks (a batch of 300: chunks of 256 and 44) by the key
/// it learned; the same entries re-sealed by another key are refused.
#[test]
fn a_joiner_verifies_the_creator_by_its_self_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let creator = Library::create_with(
        &tmp.path().join("a"),
        LIB,
        "l",
        a,
        Box::new(SystemClock),
        signed(1),
    )
    .unwrap();
    creator.commit(registration(a, 1)).unwrap();
    creator.commit(registration(b, 2)).unwrap();
    // Moved into the log before the batch (as a node reading its log does):
    // otherwise the batch joins their run and its chunks.
    creator.flush().unwrap();
    tags(&creator, 300, "t");
    let entries = log_of(&creator);
    // The two small commits (one outbox run), then the batch in 256 + 44.
    assert_eq!(entries.iter().filter(|e| e.seal.is_some()).count(), 3);

    let mut forged = entries.clone();
    concord::sync::seal::seal_entries(&key(9), LIB, &mut forged);
    let joiner = Library::create_with(
        &tmp.path().join("b"),
        LIB,
        "l",
        b,
        Box::new(SystemClock),
        signed(2),
    )
    .unwrap();
    let report = joiner.apply_remote(&forged).unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.unverified, forged.len());
    assert_eq!(joiner.with_log(|l| l.count()).unwrap(), 0);

    let report = joiner.apply_remote(&entries).unwrap();
    assert_eq!(
        (report.applied, report.unverified),
        (entries.len(), 0),
        "{:?}",
        report.forged
    );
    // Seals are kept and served again: a third device verifies them relayed.
    let relayed = log_of(&joiner);
    assert_eq!(relayed.iter().filter(|e| e.seal.is_some()).count(), 3);
    let third = Library::create_with(
        &tmp.path().join("c"),
        LIB,
        "l",
        Uuid::from_u128(3),
        Box::new(SystemClock),
        signed(3),
    )
    .unwrap();
    assert_eq!(third.apply_remote(&relayed).unwrap().unverified, 0);
}

/// Entries written while no key was at hand are sealed when the library is
/// next opened with one (own entries are trusted in one's own log); until
/// then a verifying peer refuses them.
#[test]
fn a_log_written_without_a_key_is_sealed_when_opened_with_one() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Uuid::from_u128(1);
    let dir = tmp.path().join("a");
    {
        let lib = Library::create(&dir, LIB, "l", a, Box::new(SystemClock)).unwrap();
        lib.commit(registration(a, 1)).unwrap();
        tags(&lib, 3, "small");
        tags(&lib, 100, "batch");
    }
    let peer = Library::create_with(
        &tmp.path().join("b"),
        LIB,
        "l",
        Uuid::from_u128(2),
        Box::new(SystemClock),
        signed(2),
    )
    .unwrap();
    {
        let lib = Library::open(&dir, a, Box::new(SystemClock)).unwrap();
        let unsigned = log_of(&lib);
        assert!(unsigned.iter().all(|e| e.seal.is_none()));
        let report = peer.apply_remote(&unsigned).unwrap();
        assert_eq!((report.applied, report.unverified), (0, unsigned.len()));
    }
    let lib = Library::open_with(&dir, a, Box::new(SystemClock), signed(1)).unwrap();
    let sealed = log_of(&lib);
    assert_eq!(sealed.len(), 104);
    assert!(sealed.last().unwrap().seal.is_some());
    let report = peer.apply_remote(&sealed).unwrap();
    assert_eq!(
        (report.applied, report.unverified),
        (104, 0),
        "{:?}",
        report.forged
    );
}
