//! Compact version vectors: every library open writes under a new replica,
//! and replicas every member holds are retired from the vectors devices send.
//! A device reopened many times keeps its vectors small and both devices hold
//! every change; a device restored from a backup from before a retirement
//! still gets back what it lost. Real libraries on real SQLite files, real
//! SyncServices over an in-memory transport.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::hlc::SystemClock;
use concord::model::{Device, Tag};
use concord::service::protocol::{Envelope, Term};
use concord::service::transport::{BoxFuture, Transport, TransportError};
use concord::service::{SyncConfig, SyncService};
use concord::sync::entry::LogEntry;
use concord::sync::log::{VersionVector, RETIRED_KEY};
use concord::sync::seal::NodeKey;
use concord::sync::txn::LibraryOptions;
use concord::{Change, Library, Uuid};
use tokio::time::Instant;

#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<Uuid, SyncService>>,
}

struct Link {
    net: Arc<Net>,
}

impl Transport for Link {
    fn request(&self, to: Uuid, req: Envelope) -> BoxFuture<'_, Result<Envelope, TransportError>> {
        Box::pin(async move {
            let svc = self.net.nodes.lock().unwrap().get(&to).cloned();
            match svc {
                Some(s) => Ok(s.handle(req).await),
                None => Err(TransportError::Unreachable(to)),
            }
        })
    }
}

fn options(i: usize) -> LibraryOptions {
    LibraryOptions {
        key: Some(NodeKey::from_bytes(&[i as u8 + 1; 32])),
        ..LibraryOptions::default()
    }
}

/// Two devices: `R` (index 0) is reopened, `L` (index 1, the higher id, so
/// elections keep it) leads throughout.
struct Pair {
    net: Arc<Net>,
    dirs: [PathBuf; 2],
    devices: [Uuid; 2],
    libs: [Option<Arc<Library>>; 2],
    tasks: [Option<tokio::task::JoinHandle<()>>; 2],
}

const R: usize = 0;
const L: usize = 1;

impl Pair {
    fn new(root: &Path) -> Pair {
        let lib_id = Uuid::now_v7();
        let mut devices = [Uuid::new_v4(), Uuid::new_v4()];
        devices.sort();
        let dirs = [root.join("r"), root.join("l")];
        let term = Term {
            epoch: 1,
            leader: devices[L],
        };
        let leader = Library::create_with(
            &dirs[L],
            lib_id,
            "lib",
            devices[L],
            Box::new(SystemClock),
            options(L),
        )
        .unwrap();
        for (i, d) in devices.iter().enumerate() {
            leader
                .commit(Change::insert(&Device {
                    id: *d,
                    name: format!("d{i}"),
                    node_id: Some(NodeKey::from_bytes(&[i as u8 + 1; 32]).node_id()),
                    addrs: None,
                    removed: None,
                }))
                .unwrap();
        }
        leader.with_log(|l| l.set_term(term)).unwrap();
        let entries: Vec<LogEntry> = leader.with_log(|l| l.entries()).unwrap();
        let other = Library::create_with(
            &dirs[R],
            lib_id,
            "lib",
            devices[R],
            Box::new(SystemClock),
            options(R),
        )
        .unwrap();
        other.apply_remote(&entries).unwrap();
        other.with_log(|l| l.set_term(term)).unwrap();
        Pair {
            net: Arc::new(Net::default()),
            dirs,
            devices,
            libs: [Some(Arc::new(other)), Some(Arc::new(leader))],
            tasks: [None, None],
        }
    }

    fn lib(&self, i: usize) -> &Library {
        self.libs[i].as_ref().unwrap()
    }

    fn start(&mut self, i: usize) {
        let config = SyncConfig {
            heartbeat_interval: Duration::from_millis(50),
            leader_timeout: Duration::from_millis(500),
            retention: Duration::from_secs(3600),
            ..SyncConfig::default()
        };
        let svc = SyncService::new(
            self.libs[i].clone().unwrap(),
            Arc::new(Link {
                net: self.net.clone(),
            }),
            config,
        )
        .unwrap();
        self.net
            .nodes
            .lock()
            .unwrap()
            .insert(self.devices[i], svc.clone());
        self.tasks[i] = Some(tokio::spawn(svc.run()));
    }

    /// Stop device `i`'s service and close its library.
    async fn close(&mut self, i: usize) {
        if let Some(s) = self.net.nodes.lock().unwrap().remove(&self.devices[i]) {
            s.stop();
        }
        if let Some(t) = self.tasks[i].take() {
            t.abort();
            let _ = t.await;
        }
        let mut lib = self.libs[i].take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Arc::try_unwrap(lib) {
                Ok(l) => return drop(l),
                Err(shared) => lib = shared,
            }
            assert!(Instant::now() < deadline, "library still in use");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn open(&mut self, i: usize) {
        let l = Library::open_with(
            &self.dirs[i],
            self.devices[i],
            Box::new(SystemClock),
            options(i),
        )
        .unwrap();
        self.libs[i] = Some(Arc::new(l));
    }

    fn tag(&self, i: usize, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        self.lib(i)
            .commit(Change::insert(&Tag {
                id,
                name: name.into(),
                color: None,
            }))
            .unwrap();
        id
    }

    fn has(&self, i: usize, tag: Uuid) -> bool {
        self.lib(i)
            .read(|c| {
                Ok(
                    c.query_row("SELECT COUNT(*) FROM tags WHERE uuid = ?1", [tag], |r| {
                        r.get::<_, i64>(0)
                    })?,
                )
            })
            .unwrap()
            == 1
    }

    /// Replicas in the vector device `i` sends.
    fn sent_replicas(&self, i: usize) -> usize {
        let vv = self.lib(i).with_log(|l| l.compact_vector()).unwrap();
        vv.keys().filter(|k| **k != RETIRED_KEY).count()
    }

    fn full(&self, i: usize) -> VersionVector {
        self.lib(i).with_log(|l| l.version_vector()).unwrap()
    }

    /// Wait until `done` holds, or fail with `what` after 60 s.
    async fn wait(&self, what: &str, done: impl Fn(&Pair) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: sent replicas {} / {}, retired {} / {}",
                self.sent_replicas(R),
                self.sent_replicas(L),
                self.lib(R).with_log(|l| l.retired()).unwrap().len(),
                self.lib(L).with_log(|l| l.retired()).unwrap().len(),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reopen `R` (a new replica), write one tag, and wait until `L` has it.
    async fn reopen_and_write(&mut self, name: &str) -> Uuid {
        self.close(R).await;
        self.open(R);
        let t = self.tag(R, name);
        self.start(R);
        self.wait("the leader gets the tag", |p| p.has(L, t)).await;
        t
    }

    /// Both hold every tag of `tags`, the same full vectors, and send at most
    /// `max` replicas.
    async fn settled(&self, tags: &[Uuid], max: usize) {
        self.wait("converged with small vectors", |p| {
            tags.iter().all(|t| p.has(R, *t) && p.has(L, *t))
                && p.full(R) == p.full(L)
                && p.sent_replicas(R) <= max
                && p.sent_replicas(L) <= max
        })
        .await;
    }
}

/// A library reopened 50 times on one device, each open writing one change:
/// once both devices acknowledged, both send at most 4 replicas, and both
/// hold every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reopens_keep_vectors_small() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Pair::new(tmp.path());
    p.start(L);
    p.start(R);
    let mut tags = Vec::new();
    for i in 0..50 {
        tags.push(p.reopen_and_write(&format!("open {i}")).await);
    }
    assert!(p.full(R).len() > 50, "one replica per open that wrote");
    p.settled(&tags, 4).await;
    assert!(p.lib(L).with_log(|l| l.retired()).unwrap().len() >= 45);
}

/// A device restored from a backup taken before some of its replicas were
/// retired (it lost their changes, and its retired set is older) writes
/// offline, then starts: it gets its lost changes back, the other gets its
/// new ones, and vectors are small again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_across_a_retirement_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Pair::new(tmp.path());
    p.start(L);
    p.start(R);
    let mut tags = Vec::new();
    for i in 0..3 {
        tags.push(p.reopen_and_write(&format!("kept {i}")).await);
    }
    p.close(R).await;
    let backup = tmp.path().join("backup");
    copy_dir(&p.dirs[R], &backup);
    p.open(R);
    p.start(R);
    let mut lost = Vec::new();
    for i in 0..10 {
        lost.push(p.reopen_and_write(&format!("lost {i}")).await);
    }
    let before: Vec<Uuid> = tags.iter().chain(&lost).copied().collect();
    p.settled(&before, 4).await;
    let retired_then = p.lib(L).with_log(|l| l.retired()).unwrap();
    assert!(
        retired_then.len() >= 8,
        "replicas written after the backup were retired"
    );

    // R goes back to the backup and writes before its node starts.
    p.close(R).await;
    std::fs::remove_dir_all(&p.dirs[R]).unwrap();
    copy_dir(&backup, &p.dirs[R]);
    p.open(R);
    assert!(
        lost.iter().all(|t| !p.has(R, *t)),
        "the backup predates them"
    );
    let fresh: Vec<Uuid> = (0..2).map(|i| p.tag(R, &format!("new {i}"))).collect();
    p.start(R);
    let all: Vec<Uuid> = before.iter().chain(&fresh).copied().collect();
    p.settled(&all, 4).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

/// The comparison rules on logs alone: a retirement is recorded only where
/// the replica is held through it; two devices with different holdings never
/// send equal vectors; a peer with the same retired set reads exactly what
/// is held, and one without it is sent what it lacks.
#[test]
fn retiring_never_hides_a_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let lib_id = Uuid::now_v7();
    let open = |name: &str, device: Uuid| {
        Library::create(
            &tmp.path().join(name),
            lib_id,
            "lib",
            device,
            Box::new(SystemClock),
        )
        .unwrap()
    };
    let (da, db, dc) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a = open("a", da);
    for i in 0..5 {
        a.commit(Change::insert(&Tag {
            id: Uuid::now_v7(),
            name: format!("t{i}"),
            color: None,
        }))
        .unwrap();
    }
    let r = a.replica();
    let entries = a.with_log(|l| l.entries()).unwrap();
    let (b, c) = (open("b", db), open("c", dc));
    b.apply_remote(&entries).unwrap();
    c.apply_remote(&entries[..3]).unwrap();
    let retire = [(r, 5)];
    assert_eq!(a.with_log(|l| l.retire(&retire)).unwrap(), 1);
    assert_eq!(b.with_log(|l| l.retire(&retire)).unwrap(), 1);
    assert_eq!(
        c.with_log(|l| l.retire(&retire)).unwrap(),
        0,
        "not held through 5"
    );
    let sent = |lib: &Library| lib.with_log(|l| l.compact_vector()).unwrap();
    let (va, vb, vc) = (sent(&a), sent(&b), sent(&c));
    assert!(!va.contains_key(&r) && va.contains_key(&RETIRED_KEY));
    assert_eq!(va, vb, "the same holdings, the same retired set");
    assert_ne!(va, vc, "different holdings never look equal");
    assert_eq!(vc.get(&r), Some(&3));
    // Same digest: expanded exactly; another digest: taken as it is.
    assert_eq!(
        a.with_log(|l| l.expand_vector(&vb)).unwrap().get(&r),
        Some(&5)
    );
    let empty = VersionVector::new();
    let lacking = a
        .with_log(|l| l.fetch_missing(&l.expand_vector(&empty)?, 100))
        .unwrap();
    assert_eq!(
        lacking.len(),
        5,
        "a peer without the retirement gets it all"
    );
    let from_c = a
        .with_log(|l| l.fetch_missing(&l.expand_vector(&vc)?, 100))
        .unwrap();
    assert_eq!(from_c.len(), 2, "and one holding part of it the rest");
    // Reopened (retirements are in sync.db): the retired replica stays out,
    // the new one is named.
    let more = Tag {
        id: Uuid::now_v7(),
        name: "later".into(),
        color: None,
    };
    drop(a);
    let a = Library::open(&tmp.path().join("a"), da, Box::new(SystemClock)).unwrap();
    a.commit(Change::insert(&more)).unwrap();
    assert!(
        !sent(&a).contains_key(&r),
        "a new replica, the retired one stays out"
    );
    assert_eq!(sent(&a).get(&a.replica()), Some(&1));
}
