//! The membership rules (`sync/apply/device.rs`, ARCHITECTURE.md
//! "Membership"): a device's row is its own to write, any member may add or
//! remove another, a removal is final and cuts the removed device off at a
//! position every member ends up agreeing on. Every case is applied in more
//! than one order and the replicas' digests are compared (I2).

mod support;

use std::sync::Arc;

use concord::hlc::{Hlc, ManualClock};
use concord::membership;
use concord::model::{Device, Location, Syncable, Tag, Value};
use concord::query::members;
use concord::sync::entry::{FieldWrite, LogEntry, Op};
use concord::{Change, Library, Uuid};
use support::{all_entries, count, digest_all, scratch, tag};

const T0: u64 = 1_700_000_000_000;
const LIB: u128 = 0x11b;

fn lib(dir: &std::path::Path, dev: u128, clock: &Arc<ManualClock>) -> Library {
    let l = Library::create(
        dir,
        Uuid::from_u128(LIB),
        "m",
        Uuid::from_u128(dev),
        Box::new(clock.clone()),
    )
    .unwrap();
    l.commit(Change::insert(&Device {
        id: Uuid::from_u128(dev),
        name: format!("dev{dev:x}"),
        node_id: Some(format!("key-{dev:x}")),
        addrs: None,
        removed: None,
    }))
    .unwrap();
    l
}

/// A replica that has not registered itself, so replicas compare equal.
fn bare(dir: &std::path::Path, dev: u128, clock: &Arc<ManualClock>) -> Library {
    Library::create(
        dir,
        Uuid::from_u128(LIB),
        "m",
        Uuid::from_u128(dev),
        Box::new(clock.clone()),
    )
    .unwrap()
}

fn row(l: &Library, dev: u128) -> Device {
    members::member(l, Uuid::from_u128(dev)).unwrap().unwrap()
}

/// Everything each of `libs` holds, given to every one of them (what
/// reconciling does), until nothing changes.
fn exchange(libs: &[&Library]) {
    for _ in 0..4 {
        for from in libs {
            let es = all_entries(from);
            for to in libs {
                to.apply_remote(&es).unwrap();
                membership::raise_cutoffs(to).unwrap();
            }
        }
    }
}

fn write(m: &concord::model::ModelInfo, name: &str, value: Value) -> FieldWrite {
    FieldWrite {
        field: m.field_index(name).unwrap() as u16,
        value,
        base: 0,
    }
}

fn forged(origin: u128, seq: u64, ms: u64, record: Uuid, op: Op, model: &str) -> LogEntry {
    LogEntry {
        origin: Uuid::from_u128(origin),
        origin_seq: seq,
        incarnation: 0,
        hlc: Hlc::pack(ms, 0),
        lib_seq: None,
        epoch: None,
        model: model.into(),
        record,
        op,
        seal: None,
    }
}

/// A member cannot rename another device, rebind it to another key, move its
/// addresses, delete it, or un-remove it; it may add a new device. In either
/// order every replica ends with the device's own values.
#[test]
fn a_device_row_is_written_only_by_the_device_or_a_membership_change() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0));
    let a = lib(&tmp.path().join("a"), 0xa, &clock);
    let m = Device::INFO;
    let victim = Uuid::from_u128(0xa);
    let newcomer = Uuid::from_u128(0xe);
    let attacks = vec![
        forged(
            0xb,
            1,
            T0 + 60_000,
            victim,
            Op::Update(vec![
                write(m, "name", Value::Text("pwned".into())),
                write(m, "node_id", Value::Text("key-of-b".into())),
                write(m, "addrs", Value::Text("10.0.0.1:1".into())),
            ]),
            m.name,
        ),
        forged(0xb, 2, T0 + 60_001, victim, Op::Delete(vec![]), m.name),
        forged(
            0xb,
            3,
            T0 + 60_002,
            newcomer,
            Op::Insert(vec![
                write(m, "name", Value::Text("new".into())),
                write(m, "node_id", Value::Text("key-e".into())),
            ]),
            m.name,
        ),
    ];
    let honest = all_entries(&a);
    let mut digests = vec![];
    for (i, es) in [
        [honest.clone(), attacks.clone()].concat(),
        [attacks.clone(), honest.clone()].concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let r = bare(&tmp.path().join(format!("r{i}")), 0xc0 + i as u128, &clock);
        r.apply_remote(&es).unwrap();
        let v = row(&r, 0xa);
        assert_eq!(
            (v.name.as_str(), v.node_id.as_deref(), v.addrs.as_deref()),
            ("deva", Some("key-a"), None),
            "order {i}"
        );
        assert!(members::is_member(&r, victim).unwrap());
        assert_eq!(members::device_for_node(&r, "key-a").unwrap(), Some(victim));
        assert!(
            members::is_member(&r, newcomer).unwrap(),
            "a member may add one"
        );
        digests.push(digest_all(&r));
    }
    assert_eq!(digests[0], digests[1]);
}

/// The device that joins registers itself after (or before) the member that
/// let it in registered it: its own values win in any order, even with an
/// older clock.
#[test]
fn a_devices_own_registration_beats_the_one_a_member_wrote() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0 + 10_000));
    let a = lib(&tmp.path().join("a"), 0xa, &clock);
    let c = Uuid::from_u128(0xc);
    a.commit(Change::insert(&Device {
        id: c,
        name: "c as a knew it".into(),
        node_id: Some("key-c".into()),
        addrs: Some("127.0.0.1:9".into()),
        removed: None,
    }))
    .unwrap();
    let old_clock = Arc::new(ManualClock::new(T0));
    let own = lib(&tmp.path().join("c"), 0xc, &old_clock);
    let mut digests = vec![];
    for (i, es) in [
        [all_entries(&a), all_entries(&own)].concat(),
        [all_entries(&own), all_entries(&a)].concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let r = bare(&tmp.path().join(format!("r{i}")), 0xd0 + i as u128, &clock);
        r.apply_remote(&es).unwrap();
        let v = row(&r, 0xc);
        assert_eq!(v.name, "devc", "order {i}");
        assert_eq!(v.addrs, None, "c's own registration has none");
        digests.push(digest_all(&r));
    }
    assert_eq!(digests[0], digests[1]);
}

/// A forged location for another device (owner = victim, origin = the
/// forger) is refused in any order; the victim's own stays.
#[test]
fn a_location_forged_for_another_device_is_refused() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0));
    let r = bare(&tmp.path().join("r"), 0xd, &clock);
    let m = Location::INFO;
    let forgery = forged(
        0xb,
        1,
        T0,
        Uuid::from_u128(0x10c),
        Op::Insert(vec![
            write(m, "device", Value::Uuid(Uuid::from_u128(0xa))),
            write(m, "volume", Value::Uuid(Uuid::from_u128(0x10f))),
            write(m, "path", Value::Text("/etc".into())),
            write(m, "name", Value::Text("etc".into())),
        ]),
        m.name,
    );
    let rep = r.apply_remote(&[forgery]).unwrap();
    assert_eq!((rep.applied, rep.refused), (0, 1), "{rep:?}");
    assert_eq!(count(&r, "SELECT COUNT(*) FROM locations"), 0);
}

/// A removes B. B's later entries are refused by every member that knows of
/// the removal, even relayed; a member that took some before it knew raises
/// the cutoff and the others then take them too, so all end equal.
#[test]
fn a_removal_cuts_the_device_off_and_members_converge() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0));
    let a = lib(&tmp.path().join("a"), 0xa, &clock);
    let b = lib(&tmp.path().join("b"), 0xb, &clock);
    let c = lib(&tmp.path().join("c"), 0xc, &clock);
    let d = lib(&tmp.path().join("d"), 0xd, &clock);
    exchange(&[&a, &b, &c, &d]);
    b.commit(Change::insert(&tag(Uuid::from_u128(1), "before")))
        .unwrap();
    exchange(&[&a, &b, &c, &d]);
    clock.advance(1000);
    let cut = membership::remove(&a, Uuid::from_u128(0xb)).unwrap();
    assert_eq!(cut, Some(2), "b's registration and its tag");
    // B writes on after the removal; C takes it before it hears of the
    // removal, D only after.
    b.commit(Change::insert(&tag(Uuid::from_u128(2), "raced")))
        .unwrap();
    c.apply_remote(&all_entries(&b)).unwrap();
    d.apply_remote(&all_entries(&a)).unwrap();
    let rep = d.apply_remote(&all_entries(&b)).unwrap();
    assert_eq!(rep.rejected.len(), 1, "{rep:?}");
    assert_eq!(count(&d, "SELECT COUNT(*) FROM tags"), 1);
    c.apply_remote(&all_entries(&a)).unwrap();
    assert_eq!(membership::raise_cutoffs(&c).unwrap(), 1);
    // Written once everyone could know: nobody takes it, relayed or not.
    b.commit(Change::insert(&tag(Uuid::from_u128(3), "late")))
        .unwrap();
    for r in [&a, &c, &d] {
        r.apply_remote(&all_entries(&c)).unwrap();
        r.apply_remote(&all_entries(&a)).unwrap();
        r.apply_remote(&all_entries(&d)).unwrap();
    }
    // What the members relay among themselves includes B's late entry only
    // where it was never taken: nowhere.
    for r in [&a, &c, &d] {
        r.apply_remote(&all_entries(&b)).unwrap();
        membership::raise_cutoffs(r).unwrap();
    }
    exchange(&[&a, &c, &d]);
    for r in [&a, &c, &d] {
        assert_eq!(row(r, 0xb).removed, Some(3), "the raised cutoff");
        assert!(!members::is_member(r, Uuid::from_u128(0xb)).unwrap());
        assert_eq!(
            count(r, "SELECT COUNT(*) FROM tags"),
            2,
            "before + raced, never late"
        );
        assert_eq!(members::device_for_node(r, "key-b").unwrap(), None);
    }
    assert_eq!(digest_all(&a), digest_all(&c));
    assert_eq!(digest_all(&a), digest_all(&d));
}

/// A removal cuts the device off in every incarnation: B, removed, starts
/// again (a new incarnation, a new replica) and writes; members refuse that
/// replica whole, relayed or not, while B's entries from before stay.
#[test]
fn a_later_incarnation_of_a_removed_device_is_refused() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0));
    let a = lib(&tmp.path().join("a"), 0xa, &clock);
    let b = lib(&tmp.path().join("b"), 0xb, &clock);
    let c = lib(&tmp.path().join("c"), 0xc, &clock);
    b.commit(Change::insert(&tag(Uuid::from_u128(1), "before")))
        .unwrap();
    exchange(&[&a, &b, &c]);
    clock.advance(1000);
    let cut = membership::remove(&a, Uuid::from_u128(0xb)).unwrap();
    assert_eq!(cut, Some(2), "b's registration and its tag");
    exchange(&[&a, &c]);
    let first = b.replica();
    drop(b);
    let b = Library::open(
        &tmp.path().join("b"),
        Uuid::from_u128(0xb),
        Box::new(clock.clone()),
    )
    .unwrap();
    assert_ne!(b.replica(), first);
    b.commit(Change::insert(&tag(Uuid::from_u128(2), "reborn")))
        .unwrap();
    let theirs = all_entries(&b);
    for r in [&a, &c] {
        let rep = r.apply_remote(&theirs).unwrap();
        assert_eq!(rep.rejected.len(), 1, "{rep:?}");
        membership::raise_cutoffs(r).unwrap();
    }
    exchange(&[&a, &c]);
    for r in [&a, &c] {
        assert_eq!(count(r, "SELECT COUNT(*) FROM tags"), 1, "only before");
        assert_eq!(row(r, 0xb).removed, Some(2));
        let held = r.with_log(|l| l.max_seq(b.replica())).unwrap();
        assert_eq!(held, 0, "the new replica is held nowhere");
    }
    assert_eq!(digest_all(&a), digest_all(&c));
}

/// A removal is final: neither the removed device (about itself) nor any
/// member can clear it, and a device cannot remove itself.
#[test]
fn a_removal_is_final() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0));
    let a = lib(&tmp.path().join("a"), 0xa, &clock);
    let b = lib(&tmp.path().join("b"), 0xb, &clock);
    exchange(&[&a, &b]);
    assert!(membership::remove(&a, Uuid::from_u128(0xa)).is_err());
    membership::remove(&a, Uuid::from_u128(0xb)).unwrap();
    clock.advance(1000);
    let m = Device::INFO;
    let undo = |origin: u128, seq: u64| {
        forged(
            origin,
            seq,
            T0 + 5000,
            Uuid::from_u128(0xb),
            Op::Update(vec![write(m, "removed", Value::Null)]),
            m.name,
        )
    };
    a.apply_remote(&[undo(0xc, 1)]).unwrap();
    assert!(members::is_removed(&a, Uuid::from_u128(0xb)).unwrap());
    // B restoring itself: its own writes of `removed` are ignored (and this
    // one is past its cutoff anyway).
    b.commit(Change::update::<Device>(Uuid::from_u128(0xb)).set("removed", Value::Null))
        .unwrap();
    let row_b = row(&b, 0xb);
    assert_eq!(
        row_b.removed, None,
        "b never removed itself in its own copy"
    );
    a.apply_remote(&all_entries(&b)).unwrap();
    assert!(members::is_removed(&a, Uuid::from_u128(0xb)).unwrap());
    assert_eq!(membership::remove(&a, Uuid::from_u128(0xb)).unwrap(), None);
}

/// A and B remove each other at once; C and D hear the removals in opposite
/// orders. Both end removed on both, with equal digests.
#[test]
fn a_concurrent_mutual_removal_removes_both_everywhere() {
    let tmp = scratch("concord-members");
    let clock = Arc::new(ManualClock::new(T0));
    let a = lib(&tmp.path().join("a"), 0xa, &clock);
    let b = lib(&tmp.path().join("b"), 0xb, &clock);
    let c = lib(&tmp.path().join("c"), 0xc, &clock);
    let d = lib(&tmp.path().join("d"), 0xd, &clock);
    exchange(&[&a, &b, &c, &d]);
    clock.advance(1000);
    membership::remove(&a, Uuid::from_u128(0xb)).unwrap();
    membership::remove(&b, Uuid::from_u128(0xa)).unwrap();
    c.apply_remote(&all_entries(&a)).unwrap();
    c.apply_remote(&all_entries(&b)).unwrap();
    d.apply_remote(&all_entries(&b)).unwrap();
    d.apply_remote(&all_entries(&a)).unwrap();
    exchange(&[&c, &d]);
    for r in [&c, &d] {
        assert!(members::is_removed(r, Uuid::from_u128(0xa)).unwrap());
        assert!(members::is_removed(r, Uuid::from_u128(0xb)).unwrap());
        assert_eq!(
            members::member_ids(r).unwrap(),
            vec![Uuid::from_u128(0xc), Uuid::from_u128(0xd)]
        );
    }
    assert_eq!(digest_all(&c), digest_all(&d));
    let _ = Tag::INFO;
}

/// I2 across removals, in random orders: A removes B while B keeps writing
/// and the members pass each other random prefixes of their logs (as
/// reconciles cut by a batch limit do), some hearing B directly before the
/// removal. Once the members left have exchanged everything, their digests are
/// equal, and B's entries they hold end at the common cutoff. Sometimes B
/// removes A at the same time (a concurrent mutual removal).
#[test]
fn members_converge_across_a_removal_in_random_orders() {
    for seed in 0..24u64 {
        let mut rng = support::Rng(seed * 7919 + 1);
        let tmp = scratch("concord-members");
        let clock = Arc::new(ManualClock::new(T0));
        let ids = [0xa, 0xb, 0xc, 0xd];
        let libs: Vec<Library> = ids
            .iter()
            .map(|d| lib(&tmp.path().join(format!("{d:x}")), *d, &clock))
            .collect();
        let all: Vec<&Library> = libs.iter().collect();
        exchange(&all);
        let mutual = seed % 3 == 0;
        let mut removed = false;
        for step in 0..40 {
            clock.advance(10);
            match rng.below(6) {
                0 | 1 => {
                    let t = Uuid::from_u128(0x1000 + step);
                    let who = &libs[rng.index(4)];
                    who.commit(Change::insert(&tag(t, &format!("t{step}"))))
                        .unwrap();
                }
                2 if !removed && step > 5 => {
                    membership::remove(&libs[0], Uuid::from_u128(0xb)).unwrap();
                    if mutual {
                        membership::remove(&libs[1], Uuid::from_u128(0xa)).unwrap();
                    }
                    removed = true;
                }
                _ => {
                    let (from, to) = (rng.index(4), rng.index(4));
                    let es = all_entries(&libs[from]);
                    let n = rng.below(es.len() as u64 + 1) as usize;
                    libs[to].apply_remote(&es[..n]).unwrap();
                    membership::raise_cutoffs(&libs[to]).unwrap();
                }
            }
        }
        if !removed {
            membership::remove(&libs[0], Uuid::from_u128(0xb)).unwrap();
        }
        // The members left settle among themselves; what a removed device
        // still pushes of its own entries goes through the cutoff (as the
        // service does with a removed device's pushes).
        let (left, out): (Vec<&Library>, Vec<&Library>) = if mutual {
            (vec![&libs[2], &libs[3]], vec![&libs[0], &libs[1]])
        } else {
            (vec![&libs[0], &libs[2], &libs[3]], vec![&libs[1]])
        };
        for r in &out {
            let own: Vec<LogEntry> = all_entries(r)
                .into_iter()
                .filter(|e| e.origin == r.device())
                .collect();
            for l in &left {
                l.apply_remote(&own).unwrap();
                membership::raise_cutoffs(l).unwrap();
            }
        }
        exchange(&left);
        let d: Vec<String> = left.iter().map(|l| digest_all(l)).collect();
        assert!(d.windows(2).all(|w| w[0] == w[1]), "seed {seed}: {d:?}");
        let cut = row(left[0], 0xb).removed.expect("b removed");
        for l in &left {
            let held = membership::held_of(l, Uuid::from_u128(0xb)).unwrap();
            assert_eq!(held, cut as u64, "seed {seed}");
            assert!(!members::is_member(l, Uuid::from_u128(0xb)).unwrap());
        }
    }
}
