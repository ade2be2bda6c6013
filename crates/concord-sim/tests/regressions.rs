//! Regression tests for the bugs the simulation found, each reduced to the
//! smallest setup that shows it (the seeds that found them change meaning as
//! the code changes; these do not).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::hlc::{Hlc, ManualClock};
use concord::model::{FileEntry, Location, Syncable, Tag, Volume};
use concord::service::protocol::{Envelope, Msg, SnapshotCursor};
use concord::service::snapshot;
use concord::service::transport::{BoxFuture, Transport, TransportError};
use concord::service::{SyncConfig, SyncService};
use concord::sync::entry::{BulkOperation, LogEntry};
use concord::sync::log::VersionVector;
use concord::{Change, Library, Uuid};

const LIB: Uuid = Uuid::from_u128(0x11b);
const NOW: u64 = 1_700_000_000_000;

fn lib(dir: &std::path::Path, dev: u128, clock: &Arc<ManualClock>) -> Library {
    Library::create(dir, LIB, "t", Uuid::from_u128(dev), Box::new(clock.clone())).unwrap()
}

fn entries(lib: &Library) -> Vec<LogEntry> {
    lib.with_log(|l| l.entries()).unwrap()
}

/// Every chunk of `from`'s snapshot, applied to `to`; the first error stops it.
fn snapshot_into(from: &Library, to: &Library) -> concord::Result<()> {
    let mut cursor = SnapshotCursor {
        part: 0,
        after: None,
    };
    loop {
        let Msg::SnapshotChunk {
            rows,
            tombstones,
            bulk,
            next,
            ..
        } = snapshot::chunk(from, &cursor)?
        else {
            panic!("not a chunk");
        };
        snapshot::apply(to, rows, tombstones, bulk)?;
        match next {
            Some(n) => cursor = n,
            None => return Ok(()),
        }
    }
}

/// A device with a volume, a location and `n` bulk-written file entries.
fn indexed(dir: &std::path::Path, dev: u128, clock: &Arc<ManualClock>, n: u128) -> (Library, Uuid) {
    let l = lib(dir, dev, clock);
    let me = Uuid::from_u128(dev);
    let vol = Volume {
        id: Uuid::from_u128(dev << 8 | 1),
        device: me,
        name: "v".into(),
        fingerprint: "fp".into(),
        mount_point: "/".into(),
    };
    let loc = Location {
        id: Uuid::from_u128(dev << 8 | 2),
        device: me,
        volume: vol.id,
        path: "/p".into(),
        name: "p".into(),
    };
    l.commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
        .unwrap();
    let rows: Vec<FileEntry> = (0..n)
        .map(|i| FileEntry {
            id: Uuid::from_u128(dev << 16 | 0x100 | i),
            device: me,
            location: loc.id,
            parent: None,
            name: format!("f{i}"),
            path: format!("f{i}"),
            kind: 0,
            size: 1,
            modified: None,
            offloaded_to: None,
            offloaded_path: None,
            offloaded_hash: None,
            inode: None,
        })
        .collect();
    l.commit_bulk(
        rows,
        BulkOperation::InitialIndex {
            location: loc.id,
            path: "/p".into(),
            volume_fingerprint: "fp".into(),
            count: 0,
        },
    )
    .unwrap();
    (l, loc.id)
}

fn count(lib: &Library, sql: &str) -> i64 {
    lib.read(|c| Ok(c.query_row(sql, [], |r| r.get(0))?))
        .unwrap()
}

#[test]
fn snapshot_carries_bulk_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let (a, _) = indexed(&tmp.path().join("a"), 1, &clock, 3);
    let b = lib(&tmp.path().join("b"), 2, &clock);
    snapshot_into(&a, &b).unwrap();
    assert_eq!(count(&b, "SELECT COUNT(*) FROM bulk_operations"), 1);
}

/// A bulk-written file entry its owner then changed is a partial row on every
/// other device (the update travels, the insert does not): snapshots of such
/// a device must still apply.
#[test]
fn snapshot_accepts_partial_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let (a, _) = indexed(&tmp.path().join("a"), 1, &clock, 2);
    let b = lib(&tmp.path().join("b"), 2, &clock);
    let c = lib(&tmp.path().join("c"), 3, &clock);
    clock.advance(10);
    a.commit(Change::update::<FileEntry>(Uuid::from_u128(1 << 16 | 0x100)).set("name", "renamed"))
        .unwrap();
    b.apply_remote(&entries(&a)).unwrap();
    assert_eq!(
        count(&b, "SELECT COUNT(*) FROM file_entries WHERE path IS NULL"),
        1,
        "b holds a partial row"
    );
    snapshot_into(&b, &c).unwrap();
    assert_eq!(count(&c, "SELECT COUNT(*) FROM file_entries"), 1);
}

/// DESIGN §2: a stamp more than the drift bound ahead is refused, on the
/// snapshot path as on the log path, and is not absorbed.
#[test]
fn snapshot_refuses_clocks_far_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let ahead = Arc::new(ManualClock::new(NOW + 3_600_000));
    let clock = Arc::new(ManualClock::new(NOW));
    let a = lib(&tmp.path().join("a"), 1, &ahead);
    a.commit(Change::insert(&Tag {
        id: Uuid::from_u128(77),
        name: "future".into(),
        color: None,
    }))
    .unwrap();
    let b = lib(&tmp.path().join("b"), 2, &clock);
    let before = b.hlc().last();
    assert!(snapshot_into(&a, &b).is_err());
    assert_eq!(b.hlc().last(), before, "the far stamp was absorbed");
    assert_eq!(count(&b, "SELECT COUNT(*) FROM tags"), 0);
}

/// The HLC a snapshot raised survives a restart: stamps issued after reopening
/// stay above every clock the snapshot stored.
#[test]
fn snapshot_clock_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ahead = Arc::new(ManualClock::new(NOW + 120_000));
    let clock = Arc::new(ManualClock::new(NOW));
    let a = lib(&tmp.path().join("a"), 1, &ahead);
    a.commit(Change::insert(&Tag {
        id: Uuid::from_u128(77),
        name: "t".into(),
        color: None,
    }))
    .unwrap();
    let dir = tmp.path().join("b");
    let b = lib(&dir, 2, &clock);
    snapshot_into(&a, &b).unwrap();
    let raised = b.hlc().last();
    assert!(Hlc::new(raised, Uuid::nil()).physical_ms() >= NOW + 120_000);
    drop(b);
    let b = Library::open(&dir, Uuid::from_u128(2), Box::new(clock.clone())).unwrap();
    assert!(b.hlc().last() >= raised, "the HLC went backwards on reopen");
    // A rename now must win over the snapshot's clock.
    b.commit(Change::update::<Tag>(Uuid::from_u128(77)).set("name", "mine"))
        .unwrap();
    let name: String = b
        .read(|c| Ok(c.query_row("SELECT name FROM tags", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(name, "mine");
}

fn tags(lib: &Library, n: u128) {
    for i in 0..n {
        lib.commit(Change::insert(&Tag {
            id: Uuid::from_u128(1000 + i),
            name: format!("t{i}"),
            color: None,
        }))
        .unwrap();
    }
}

#[test]
fn prune_never_records_a_floor_above_what_the_log_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let a = lib(&tmp.path().join("a"), 1, &clock);
    tags(&a, 3);
    // Positions are the replica's (this open's incarnation of device 1).
    let origin = a.replica();
    let horizon: VersionVector = [(origin, 10)].into_iter().collect();
    a.with_log(|l| l.prune_covered(&horizon)).unwrap();
    let floor = a.with_log(|l| l.pruned_floor()).unwrap();
    assert_eq!(floor.get(&origin), Some(&3));
}

/// Entries received across a gap that a snapshot then fills count at once.
#[test]
fn raising_the_version_vector_walks_over_held_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let a = lib(&tmp.path().join("a"), 1, &clock);
    tags(&a, 6);
    let b = lib(&tmp.path().join("b"), 2, &clock);
    let all = entries(&a);
    b.apply_remote(&all[4..]).unwrap(); // 5 and 6, across a gap
    let origin = a.replica();
    let held = b.with_log(|l| l.version_vector()).unwrap();
    assert_eq!(held.get(&origin).copied().unwrap_or(0), 0);
    let vv: VersionVector = [(origin, 4)].into_iter().collect();
    b.with_log(|l| l.raise_version_vector(&vv, 0)).unwrap();
    assert_eq!(b.with_log(|l| l.version_vector()).unwrap()[&origin], 6);
}

/// Requests go straight to the other service's handler; the 200th and later
/// fail, which ends any request loop.
struct Direct(Mutex<Option<SyncService>>, std::sync::atomic::AtomicUsize);

impl Direct {
    fn new(to: Option<SyncService>) -> Self {
        Self(Mutex::new(to), Default::default())
    }
}

impl Transport for Direct {
    fn request(&self, to: Uuid, req: Envelope) -> BoxFuture<'_, Result<Envelope, TransportError>> {
        let n = self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let svc = self.0.lock().unwrap().clone().filter(|_| n < 200);
        Box::pin(async move {
            match svc {
                Some(s) => Ok(s.handle(req).await),
                None => Err(TransportError::Unreachable(to)),
            }
        })
    }
}

fn config() -> SyncConfig {
    SyncConfig {
        fetch_batch: 2,
        inline_blocking: true,
        ..SyncConfig::default()
    }
}

/// Two devices that both hold entries 2..=6 of an origin but not entry 1 (no
/// one can fill that gap): reconciling pages through what the peer has and
/// ends, instead of asking for the same page forever.
#[tokio::test(start_paused = true)]
async fn reconcile_ends_when_both_sides_miss_the_same_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let x = lib(&tmp.path().join("x"), 9, &clock);
    tags(&x, 6);
    let gapped: Vec<LogEntry> = entries(&x)[1..].to_vec();
    let mk = |name: &str, dev: u128| {
        let l = lib(&tmp.path().join(name), dev, &clock);
        for d in [1u128, 2] {
            l.commit(Change::insert(&concord::model::Device {
                id: Uuid::from_u128(d),
                name: format!("d{d}"),
                node_id: None,
                addrs: None,
                removed: None,
            }))
            .unwrap();
        }
        l.apply_remote(&gapped).unwrap();
        Arc::new(l)
    };
    let (a, b) = (mk("a", 1), mk("b", 2));
    b.apply_remote(&entries(&a)).unwrap();
    a.apply_remote(&entries(&b)).unwrap();
    let to_b = Arc::new(Direct::new(None));
    let sa = SyncService::new(a.clone(), to_b.clone(), config()).unwrap();
    let sb = SyncService::new(b.clone(), Arc::new(Direct::new(None)), config()).unwrap();
    *to_b.0.lock().unwrap() = Some(sb);
    let done = sa.reconcile_with(Uuid::from_u128(2)).await;
    assert!(
        done.is_ok(),
        "reconciliation looped on the same page: {done:?}"
    );
    assert!(to_b.1.load(std::sync::atomic::Ordering::SeqCst) < 50);
}

/// Stopping a service cancels everything it runs, so nothing holds its
/// library afterwards (a crash in the simulation relies on this too).
#[tokio::test(start_paused = true)]
async fn a_stopped_service_lets_go_of_its_library() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let a = Arc::new(lib(&tmp.path().join("a"), 1, &clock));
    a.commit(Change::insert(&concord::model::Device {
        id: Uuid::from_u128(2),
        name: "peer".into(),
        node_id: None,
        addrs: None,
        removed: None,
    }))
    .unwrap();
    let svc = SyncService::new(a.clone(), Arc::new(Direct::new(None)), config()).unwrap();
    let task = tokio::spawn(svc.clone().run());
    tokio::time::sleep(Duration::from_millis(50)).await;
    tags(&a, 3);
    tokio::time::sleep(Duration::from_millis(1)).await;
    svc.stop();
    drop(svc);
    task.await.unwrap();
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        Arc::strong_count(&a),
        1,
        "work of the stopped service still runs"
    );
    let _ = FileEntry::INFO;
}
