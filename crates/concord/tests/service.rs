//! The SyncService over an in-memory transport: replication, failover, partition,
//! pruning and snapshot, and a malicious member forging terms and horizons.
//! Real libraries on real SQLite files.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::digest::{digest, Scope};
use concord::hlc::SystemClock;
use concord::model::{Device, Tag};
use concord::service::protocol::{Envelope, Msg, Role, Term};
use concord::service::transport::{BoxFuture, Transport, TransportError};
use concord::service::{SyncConfig, SyncService};
use concord::sync::entry::LogEntry;
use concord::sync::log::VersionVector;
use concord::sync::seal::NodeKey;
use concord::sync::txn::LibraryOptions;
use concord::{Change, Library, Uuid};

#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<Uuid, SyncService>>,
    down: Mutex<HashSet<Uuid>>,
    /// Every exchange that got a response: (from, to, request, response).
    exchanges: Mutex<Vec<Exchange>>,
    /// Devices answered by a forger instead of a SyncService.
    rogues: Mutex<HashMap<Uuid, Forger>>,
}

/// A malicious member's answer to each request it receives.
type Forger = Arc<dyn Fn(&Msg) -> Msg + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    from: Uuid,
    to: Uuid,
    request: &'static str,
    response: &'static str,
}

struct Link {
    net: Arc<Net>,
    me: Uuid,
}

impl Transport for Link {
    fn request(&self, to: Uuid, req: Envelope) -> BoxFuture<'_, Result<Envelope, TransportError>> {
        Box::pin(async move {
            {
                let down = self.net.down.lock().unwrap();
                if down.contains(&to) || down.contains(&self.me) {
                    return Err(TransportError::Unreachable(to));
                }
            }
            let rogue = self.net.rogues.lock().unwrap().get(&to).cloned();
            if let Some(forge) = rogue {
                let msg = forge(&req.msg);
                return Ok(Envelope {
                    id: req.id,
                    library: req.library,
                    from: to,
                    msg,
                });
            }
            let svc = self.net.nodes.lock().unwrap().get(&to).cloned();
            let Some(s) = svc else {
                return Err(TransportError::Unreachable(to));
            };
            let request = req.msg.name();
            let reply = s.handle(req).await;
            self.net.exchanges.lock().unwrap().push(Exchange {
                from: self.me,
                to,
                request,
                response: reply.msg.name(),
            });
            Ok(reply)
        })
    }
}

/// Device `i`'s node key (fixed: tests replay).
fn key(i: usize) -> NodeKey {
    NodeKey::from_bytes(&[i as u8 + 1; 32])
}

/// Options that seal with device `i`'s key and verify every received entry.
fn signed(i: usize) -> LibraryOptions {
    LibraryOptions {
        key: Some(key(i)),
        ..LibraryOptions::default()
    }
}

fn config() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_millis(50),
        leader_timeout: Duration::from_millis(200),
        retention: Duration::from_secs(3600),
        ..SyncConfig::default()
    }
}

struct Cluster {
    net: Arc<Net>,
    libs: Vec<Arc<Library>>,
    devices: Vec<Uuid>,
    tasks: HashMap<Uuid, tokio::task::JoinHandle<()>>,
    config: SyncConfig,
}

impl Cluster {
    fn new(dir: &std::path::Path, n: usize, config: SyncConfig) -> Cluster {
        let lib_id = Uuid::now_v7();
        let mut devices: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        devices.sort();
        // The creator (lowest id, so failover must move the lead) registers everyone.
        let creator = devices[0];
        let a = Library::create_with(
            &dir.join("0"),
            lib_id,
            "lib",
            creator,
            Box::new(SystemClock),
            signed(0),
        )
        .unwrap();
        for (i, d) in devices.iter().enumerate() {
            a.commit(Change::insert(&Device {
                id: *d,
                name: format!("d{i}"),
                node_id: Some(key(i).node_id()),
                addrs: None,
                removed: None,
            }))
            .unwrap();
        }
        a.with_log(|l| {
            l.set_term(concord::service::protocol::Term {
                epoch: 1,
                leader: creator,
            })
        })
        .unwrap();
        let entries: Vec<LogEntry> = a
            .with_log(|l| {
                Ok(l.fetch_after_id(0, usize::MAX)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect())
            })
            .unwrap();
        let mut libs = vec![Arc::new(a)];
        for (i, d) in devices.iter().enumerate().skip(1) {
            let l = Library::create_with(
                &dir.join(i.to_string()),
                lib_id,
                "lib",
                *d,
                Box::new(SystemClock),
                signed(i),
            )
            .unwrap();
            l.apply_remote(&entries).unwrap();
            libs.push(Arc::new(l));
        }
        Cluster {
            net: Arc::new(Net::default()),
            libs,
            devices,
            tasks: HashMap::new(),
            config,
        }
    }

    fn start(&mut self, i: usize) {
        let d = self.devices[i];
        let svc = SyncService::new(
            self.libs[i].clone(),
            Arc::new(Link {
                net: self.net.clone(),
                me: d,
            }),
            self.config.clone(),
        )
        .unwrap();
        self.net.nodes.lock().unwrap().insert(d, svc.clone());
        self.net.down.lock().unwrap().remove(&d);
        self.tasks.insert(d, tokio::spawn(svc.run()));
    }

    fn kill(&mut self, i: usize) {
        let d = self.devices[i];
        self.net.down.lock().unwrap().insert(d);
        if let Some(s) = self.net.nodes.lock().unwrap().remove(&d) {
            s.stop();
        }
        if let Some(t) = self.tasks.remove(&d) {
            t.abort();
        }
    }

    fn svc(&self, i: usize) -> SyncService {
        self.net
            .nodes
            .lock()
            .unwrap()
            .get(&self.devices[i])
            .cloned()
            .unwrap()
    }

    fn digest(&self, i: usize) -> String {
        self.libs[i].read(|c| digest(c, Scope::All)).unwrap().0
    }

    async fn wait_converged(&self, which: &[usize]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let ds: Vec<String> = which.iter().map(|i| self.digest(*i)).collect();
            if ds.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no convergence: {ds:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn tag(lib: &Library, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    lib.commit(Change::insert(&Tag {
        id,
        name: name.into(),
        color: None,
    }))
    .unwrap();
    id
}

fn count_tags(lib: &Library) -> i64 {
    lib.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM tags", [], |r| r.get(0))?))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_failover_and_rejoin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 3, config());
    for i in 0..3 {
        c.start(i);
    }
    tag(&c.libs[0], "from-a");
    tag(&c.libs[1], "from-b");
    c.wait_converged(&[0, 1, 2]).await;
    assert_eq!(count_tags(&c.libs[2]), 2);

    // Kill the leader (device 0). The highest id (device 2) takes over at epoch 2.
    c.kill(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (t1, t2) = (c.svc(1).term(), c.svc(2).term());
        if t1 == t2 && t1.leader == c.devices[2] && t1.epoch >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader: {t1:?} {t2:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.svc(2).role(), Role::Leader);
    // Writes during the outage, including on the dead leader's files.
    tag(&c.libs[1], "b-during");
    tag(&c.libs[2], "c-during");
    tag(&c.libs[0], "a-offline");
    c.wait_converged(&[1, 2]).await;
    c.start(0);
    c.wait_converged(&[0, 1, 2]).await;
    assert_eq!(count_tags(&c.libs[0]), 5);
    assert_eq!(
        c.svc(0).term().leader,
        c.devices[2],
        "the old leader stepped down"
    );
    // No entry lost or duplicated: every device holds every origin's entries
    // without gaps (pruned ones were held by all), the same on every device, and
    // each tag exactly once.
    let vvs: Vec<_> = c
        .libs
        .iter()
        .map(|l| l.with_log(|log| log.version_vector()).unwrap())
        .collect();
    assert!(vvs.windows(2).all(|w| w[0] == w[1]), "{vvs:?}");
    for (i, l) in c.libs.iter().enumerate() {
        for (origin, contiguous) in &vvs[i] {
            assert_eq!(
                l.with_log(|log| log.max_seq(*origin)).unwrap(),
                *contiguous,
                "gap in {origin}'s entries"
            );
        }
        let names: Vec<String> = l
            .read(|x| {
                let mut st = x.prepare("SELECT name FROM tags ORDER BY name")?;
                let v = st
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                Ok(v)
            })
            .unwrap();
        assert_eq!(
            names,
            ["a-offline", "b-during", "c-during", "from-a", "from-b"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_concurrent_edits_and_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 2, config());
    c.start(0);
    c.start(1);
    let t = tag(&c.libs[0], "shared");
    c.wait_converged(&[0, 1]).await;
    c.kill(1);
    c.libs[0]
        .commit(Change::update::<Tag>(t).set("name", "from-a"))
        .unwrap();
    c.libs[1]
        .commit(Change::update::<Tag>(t).set("name", "from-b"))
        .unwrap();
    tag(&c.libs[1], "b-offline");
    c.start(1);
    c.wait_converged(&[0, 1]).await;
    let conflicts: i64 = (0..2)
        .map(|i| {
            c.libs[i]
                .read(|c| {
                    Ok(c.query_row("SELECT COUNT(*) FROM conflicts", [], |r| r.get::<_, i64>(0))?)
                })
                .unwrap()
        })
        .sum();
    assert!(conflicts >= 1, "the overridden rename is in a conflict log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_past_retention_gets_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.retention = Duration::from_millis(300);
    let mut c = Cluster::new(tmp.path(), 2, cfg);
    c.start(0);
    c.start(1);
    let doomed = tag(&c.libs[0], "doomed");
    c.wait_converged(&[0, 1]).await;
    c.kill(1);
    for i in 0..20 {
        tag(&c.libs[0], &format!("t{i}"));
    }
    c.libs[0].commit(Change::delete::<Tag>(doomed)).unwrap();
    // Wait until the leader pruned past device 1's position.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let a = c.libs[0].replica();
    let top = c.libs[0].with_log(|l| l.max_seq(a)).unwrap();
    while c.libs[0]
        .with_log(|l| l.pruned_floor())
        .unwrap()
        .get(&a)
        .copied()
        .unwrap_or(0)
        < top
    {
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start(1);
    c.wait_converged(&[0, 1]).await;
    assert!(
        c.svc(1).status().await.unwrap().stats.snapshots >= 1
            || c.svc(0).status().await.unwrap().stats.snapshots >= 1
    );
    let n: i64 = c.libs[1]
        .read(|x| {
            Ok(
                x.query_row("SELECT COUNT(*) FROM tags WHERE uuid = ?1", [doomed], |r| {
                    r.get(0)
                })?,
            )
        })
        .unwrap();
    assert_eq!(n, 0, "deleted while away stays deleted");
}

/// No heartbeat, election or anti-entropy round during a test: only the push
/// path and the catch-up at start move entries, so every exchange is counted.
fn quiet_config() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_secs(60),
        leader_timeout: Duration::from_secs(120),
        retention: Duration::from_secs(3600),
        ..SyncConfig::default()
    }
}

impl Cluster {
    /// Wait until no exchange happened for 300 ms; returns those since `from`.
    async fn quiet_exchanges(&self, from: usize) -> Vec<Exchange> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut seen = usize::MAX;
        loop {
            let n = self.net.exchanges.lock().unwrap().len();
            if n == seen {
                return self.net.exchanges.lock().unwrap()[from..].to_vec();
            }
            assert!(tokio::time::Instant::now() < deadline, "never quiet");
            seen = n;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn exchange_count(&self) -> usize {
        self.net.exchanges.lock().unwrap().len()
    }

    /// The leader's sequence (its `seq`) and each follower's cursor.
    async fn seqs(&self, which: &[usize]) -> Vec<u64> {
        let mut v = Vec::new();
        for i in which {
            v.push(self.svc(*i).status().await.unwrap().seq);
        }
        v
    }
}

fn exchange(from: Uuid, to: Uuid, request: &'static str, response: &'static str) -> Exchange {
    Exchange {
        from,
        to,
        request,
        response,
    }
}

/// B5 in small: a follower away while both sides write heals in two round
/// trips (its `Reconcile`, its `PushEntries`). The leader answers the push
/// with the range it sequenced B's entries at (`Sequenced`), so no
/// `NewEntries` about B's own entries follows, and B's cursor still reaches
/// the leader's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_in_two_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 2, quiet_config());
    let (a, b) = (c.devices[0], c.devices[1]);
    c.start(0);
    c.start(1);
    let ids: Vec<Uuid> = (0..20).map(|i| tag(&c.libs[0], &format!("t{i}"))).collect();
    c.wait_converged(&[0, 1]).await;
    c.quiet_exchanges(0).await;

    c.kill(1);
    for (i, id) in ids.iter().enumerate() {
        let (side, name) = if i % 2 == 0 { (0, "a") } else { (1, "b") };
        c.libs[side]
            .commit(Change::update::<Tag>(*id).set("name", format!("{name}-{i}")))
            .unwrap();
        // Some records renamed on both sides.
        if i % 5 == 0 {
            c.libs[1 - side]
                .commit(Change::update::<Tag>(*id).set("name", format!("x-{i}")))
                .unwrap();
        }
    }
    tag(&c.libs[1], "b-offline");
    tag(&c.libs[0], "a-offline");
    // The leader's notifications of its own changes failed while B was away.
    c.quiet_exchanges(0).await;

    let before = c.exchange_count();
    c.start(1);
    c.wait_converged(&[0, 1]).await;
    let heal = c.quiet_exchanges(before).await;
    assert_eq!(
        heal,
        [
            exchange(b, a, "Reconcile", "ReconcileResponse"),
            exchange(b, a, "PushEntries", "Sequenced"),
        ],
        "two round trips, no NewEntries to B about its own entries"
    );
    let seqs = c.seqs(&[0, 1]).await;
    assert!(seqs[0] > 0);
    assert_eq!(seqs[1], seqs[0], "B's cursor reached the leader's sequence");

    // The cursor is right, not just equal: a later change is applied in step
    // from its `NewEntries` alone (no fetch, no reconcile).
    let before = c.exchange_count();
    tag(&c.libs[0], "after-heal");
    c.wait_converged(&[0, 1]).await;
    assert_eq!(
        c.quiet_exchanges(before).await,
        [exchange(a, b, "NewEntries", "Ok")]
    );
    let seqs = c.seqs(&[0, 1]).await;
    assert_eq!(seqs[1], seqs[0]);
}

/// A follower's live change: its `ProposeEntries` is answered `Sequenced`
/// (its cursor moves from the reply), and only the other follower gets
/// `NewEntries`, carrying the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_is_answered_with_its_sequence_range() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 3, quiet_config());
    let (a, b, d) = (c.devices[0], c.devices[1], c.devices[2]);
    for i in 0..3 {
        c.start(i);
    }
    tag(&c.libs[0], "from-a");
    c.wait_converged(&[0, 1, 2]).await;
    c.quiet_exchanges(0).await;
    let seqs = c.seqs(&[0, 1, 2]).await;
    assert!(seqs.iter().all(|s| *s == seqs[0]), "{seqs:?}");

    let before = c.exchange_count();
    tag(&c.libs[1], "from-b");
    c.wait_converged(&[0, 1, 2]).await;
    // Recorded as each answer returns: the leader kicks the `NewEntries` to D
    // before it answers B, so either may be recorded first.
    let mut seen = c.quiet_exchanges(before).await;
    seen.sort_by_key(|e| e.request);
    assert_eq!(
        seen,
        [
            exchange(a, d, "NewEntries", "Ok"),
            exchange(b, a, "ProposeEntries", "Sequenced"),
        ]
    );
    let after = c.seqs(&[0, 1, 2]).await;
    assert_eq!(after[0], seqs[0] + 1);
    assert!(after.iter().all(|s| *s == after[0]), "{after:?}");
}

/// A term is written to `sync.db` when it is adopted (off the async threads),
/// so a device restarted after a failover resumes in the new term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_term_is_persisted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 3, config());
    for i in 0..3 {
        c.start(i);
    }
    c.kill(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let terms: Vec<_> = (1..3).map(|i| c.svc(i).term()).collect();
        let stored: Vec<_> = (1..3)
            .map(|i| c.libs[i].with_log(|l| l.term()).unwrap())
            .collect();
        let settled = terms[0] == terms[1] && terms[0].leader == c.devices[2];
        if settled && stored.iter().all(|s| *s == Some(terms[0])) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "term not persisted: in memory {terms:?}, stored {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..3 {
        let status = c.svc(i).status().await.unwrap();
        let last_error = status.stats.last_error.unwrap_or_default();
        assert!(!last_error.contains("recording term"), "{last_error}");
    }
    // Restarted, device 1 resumes in the term it adopted.
    let adopted = c.svc(1).term();
    c.kill(1);
    c.start(1);
    assert!(c.svc(1).term() >= adopted);
}

impl Cluster {
    /// A request from `from` (a member that runs no service: the malicious
    /// one) to device `to`; returns the answer.
    async fn forge(&self, to: usize, from: Uuid, msg: Msg) -> Msg {
        let env = Envelope {
            id: 0,
            library: self.libs[0].id(),
            from,
            msg,
        };
        self.svc(to).handle(env).await.msg
    }

    /// Every running device holds `term` in memory and in `sync.db`.
    fn assert_term(&self, which: &[usize], term: Term) {
        for i in which {
            assert_eq!(self.svc(*i).term(), term, "device {i}");
            assert_eq!(
                self.libs[*i].with_log(|l| l.term()).unwrap(),
                Some(term),
                "device {i}, stored"
            );
        }
    }

    /// Tags written on each of `which`, then converged: nothing lost.
    async fn write_and_converge(&self, which: &[usize], label: &str) {
        for i in which {
            tag(&self.libs[*i], &format!("{label}-{i}"));
        }
        self.wait_converged(which).await;
    }
}

fn heartbeat(term: Term, role: Role, horizon: Option<VersionVector>) -> Msg {
    Msg::Heartbeat {
        term,
        role,
        seq: 0,
        vv: VersionVector::new(),
        horizon,
    }
}

/// A member forging terms in its requests: `(u64::MAX, X)` naming another
/// device or itself, a jump of two million epochs, a leader's `NewEntries`
/// under a term it does not lead (newer or current). Every one is refused;
/// the leader keeps leading and the honest devices keep converging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_terms_from_a_member_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Terms must move only if a forgery moved them: a leader timeout long
    // enough that a loaded machine's stalls never start a real election.
    let steady = SyncConfig {
        leader_timeout: Duration::from_secs(5),
        ..config()
    };
    let mut c = Cluster::new(tmp.path(), 4, steady);
    let honest = [0, 2, 3];
    let (m, d2, d3) = (c.devices[1], c.devices[2], c.devices[3]);
    for i in honest {
        c.start(i);
    }
    c.write_and_converge(&honest, "before").await;
    let t0 = c.svc(0).term();
    // Whichever honest device leads (device 0 unless a loaded machine's
    // stall at start let another win the first election).
    let leader = honest
        .into_iter()
        .find(|&i| c.devices[i] == t0.leader)
        .expect("an honest device leads");
    let newer = |epoch, leader| Term { epoch, leader };
    let forged = [
        heartbeat(newer(u64::MAX, d2), Role::Leader, None),
        heartbeat(newer(u64::MAX, m), Role::Leader, None),
        heartbeat(newer(u64::MAX, d3), Role::Follower, None),
        heartbeat(newer(t0.epoch + 2_000_000, m), Role::Leader, None),
    ];
    for to in honest {
        for msg in forged.iter().cloned() {
            let reply = c.forge(to, m, msg).await;
            assert_eq!(reply.name(), "HeartbeatReply");
        }
        // A leader's notification under a term the sender does not lead.
        for term in [newer(t0.epoch + 1, d3), t0] {
            let reply = c
                .forge(
                    to,
                    m,
                    Msg::NewEntries {
                        term,
                        from_seq: 1,
                        to_seq: 1_000_000,
                        entries: Some(Vec::new()),
                    },
                )
                .await;
            assert_eq!(reply.name(), "Error", "{reply:?}");
        }
        c.assert_term(&honest, t0);
    }
    assert_eq!(c.svc(leader).role(), Role::Leader);
    c.write_and_converge(&honest, "after").await;
    c.assert_term(&honest, t0);
    assert_eq!(count_tags(&c.libs[2]), 6);
}

/// A member answering every request with forged terms (`StaleTerm`, a
/// reconcile answer and probe replies naming other devices, `u64::MAX`):
/// honest devices only ask the leader named, adopt nothing it does not
/// confirm, still fail over to the honest device with the highest id at a
/// small epoch when the leader dies, and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_terms_in_answers_only_make_devices_ask_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 4, config());
    let honest = [0, 2, 3];
    let (m, d2, d3) = (c.devices[1], c.devices[2], c.devices[3]);
    let forge: Forger = Arc::new(move |req: &Msg| match req {
        Msg::Heartbeat {
            role: Role::Follower,
            ..
        } => Msg::HeartbeatReply {
            term: Term {
                epoch: u64::MAX,
                leader: d3,
            },
            role: Role::Leader,
            seq: 0,
            vv: VersionVector::new(),
            past_gaps: Default::default(),
        },
        Msg::Reconcile { .. } => Msg::ReconcileResponse {
            vv: VersionVector::new(),
            entries: Vec::new(),
            has_more: false,
            term: Term {
                epoch: 4,
                leader: d2,
            },
            seq: 0,
        },
        _ => Msg::StaleTerm {
            term: Term {
                epoch: 5,
                leader: d2,
            },
        },
    });
    c.net.rogues.lock().unwrap().insert(m, forge);
    for i in honest {
        c.start(i);
    }
    c.write_and_converge(&honest, "before").await;
    let t0 = c.svc(0).term();
    c.assert_term(&honest, t0);

    // The leader dies: the highest honest device takes over, one epoch up
    // (give or take a contested round), never at a forged epoch.
    c.kill(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (t2, t3) = (c.svc(2).term(), c.svc(3).term());
        assert!(t2.epoch < 4 && t3.epoch < 4, "forged epoch: {t2:?} {t3:?}");
        if t2 == t3 && t2.leader == d3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader: {t2:?} {t3:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.write_and_converge(&[2, 3], "outage").await;
    c.start(0);
    c.write_and_converge(&honest, "back").await;
    assert_eq!(count_tags(&c.libs[0]), 8);
    assert_eq!(c.svc(0).term().leader, d3);
}

/// A member's heartbeat carrying a pruning horizon under the current term
/// (which it does not lead) prunes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_horizon_from_a_non_leader_prunes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 4, config());
    let honest = [0, 2, 3];
    let m = c.devices[1];
    for i in honest {
        c.start(i);
    }
    c.write_and_converge(&honest, "before").await;
    let t0 = c.svc(0).term();
    let everything: VersionVector = c.devices.iter().map(|d| (*d, u64::MAX)).collect();
    let counts: Vec<u64> = honest
        .iter()
        .map(|i| c.libs[*i].with_log(|l| l.count()).unwrap())
        .collect();
    for to in [2, 3] {
        for role in [Role::Leader, Role::Follower] {
            let reply = c
                .forge(to, m, heartbeat(t0, role, Some(everything.clone())))
                .await;
            assert_eq!(reply.name(), "HeartbeatReply");
        }
    }
    for (k, i) in honest.iter().enumerate() {
        let log = &c.libs[*i];
        assert!(log.with_log(|l| l.pruned_floor()).unwrap().is_empty());
        assert!(log.with_log(|l| l.count()).unwrap() >= counts[k]);
    }
    c.write_and_converge(&honest, "after").await;
    assert_eq!(count_tags(&c.libs[3]), 6);
}

/// `n` new tags committed in device `i`'s own library (sealed with its key),
/// read back from its log as a peer would get them.
fn own_entries(c: &Cluster, i: usize, n: usize, label: &str) -> Vec<LogEntry> {
    let (lib, me) = (&c.libs[i], c.libs[i].replica());
    let before = lib.with_log(|l| l.max_seq(me)).unwrap();
    let changes = (0..n)
        .map(|k| {
            Change::insert(&Tag {
                id: Uuid::now_v7(),
                name: format!("{label}-{k}"),
                color: None,
            })
        })
        .collect();
    lib.commit_batch(changes).unwrap();
    lib.with_log(|l| l.fetch_origin(me, before, usize::MAX))
        .unwrap()
}

/// Whether device `i` logged any of `entries` (by id) or holds a tag named
/// like one of them.
fn holds_any(c: &Cluster, i: usize, entries: &[LogEntry], label: &str) -> bool {
    let logged = entries.iter().any(|e| {
        c.libs[i]
            .with_log(|l| l.contains(e.replica(), e.origin_seq))
            .unwrap()
    });
    let named: i64 = c.libs[i]
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM tags WHERE name LIKE ?1",
                [format!("{label}%")],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    logged || named > 0
}

/// What device `to` reports of `peer`: entries refused from it as not sealed by
/// their origin, and the last reason.
async fn forged_from(c: &Cluster, to: usize, peer: Uuid) -> (u64, Option<String>) {
    let status = c.svc(to).status().await.unwrap();
    let p = status.peers.iter().find(|p| p.device_id == peer).unwrap();
    (p.forged, p.last_refusal.clone())
}

/// A malicious member pushing, to the leader and to a follower, entries that
/// are not verifiable back to their origin: unsigned, another device's origin
/// sealed with its own key, a genuine chunk relabelled with another origin, a
/// genuine chunk with one entry altered, and a genuine chunk split in two.
/// Each is refused: nothing logged or applied (so nothing relayed), the member
/// reported in `sync status`; its genuine chunk is then accepted, and the
/// honest devices keep converging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_altered_entries_are_refused_and_the_sender_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 3, config());
    let honest = [0, 2];
    let (victim, m) = (c.devices[0], c.devices[1]);
    for i in honest {
        c.start(i);
    }
    c.write_and_converge(&honest, "before").await;
    let lib_id = c.libs[0].id();
    let genuine = own_entries(&c, 1, 5, "genuine");
    assert!(genuine[4].seal.is_some() && genuine[..4].iter().all(|e| e.seal.is_none()));

    let unsigned: Vec<LogEntry> = genuine
        .iter()
        .cloned()
        .map(|e| LogEntry { seal: None, ..e })
        .collect();
    let (victim_replica, victim_inc) = (c.libs[0].replica(), c.libs[0].incarnation());
    let victim_next = c.libs[0].with_log(|l| l.max_seq(victim_replica)).unwrap() + 1;
    let as_victim = |e: &LogEntry, k: usize| LogEntry {
        origin: victim,
        incarnation: victim_inc,
        origin_seq: victim_next + k as u64,
        ..e.clone()
    };
    let mut wrong_key: Vec<LogEntry> = genuine
        .iter()
        .enumerate()
        .map(|(k, e)| as_victim(e, k))
        .collect();
    concord::sync::seal::seal_entries(&key(1), lib_id, &mut wrong_key);
    let relabelled: Vec<LogEntry> = genuine
        .iter()
        .enumerate()
        .map(|(k, e)| as_victim(e, k))
        .collect();
    let mut altered = genuine.clone();
    if let concord::sync::entry::Op::Insert(w) = &mut altered[2].op {
        w[0].value = concord::model::Value::Text("genuine-altered".into());
    }
    // A location owned by the victim, at a path of the member's choosing.
    let location = concord::model::Location {
        id: Uuid::now_v7(),
        device: victim,
        volume: Uuid::now_v7(),
        path: "/genuine-planted".into(),
        name: "genuine-planted".into(),
    };
    let mut planted = vec![LogEntry {
        origin: victim,
        origin_seq: victim_next,
        incarnation: victim_inc,
        hlc: genuine[0].hlc,
        lib_seq: None,
        epoch: None,
        model: "location".into(),
        record: location.id,
        op: concord::sync::entry::Op::Insert(concord::sync::entry::FieldWrite::all(
            concord::model::Syncable::to_values(&location),
        )),
        seal: None,
    }];
    concord::sync::seal::seal_entries(&key(1), lib_id, &mut planted);
    let forgeries = [
        ("a location in its owner's name", planted),
        ("unsigned", unsigned),
        ("another origin sealed with the sender's key", wrong_key),
        ("a genuine chunk relabelled with another origin", relabelled),
        ("a genuine chunk with one entry altered", altered),
        ("the first part of a split chunk", genuine[..3].to_vec()),
        ("the last part of a split chunk", genuine[3..].to_vec()),
    ];
    for to in honest {
        for (what, entries) in forgeries.iter() {
            let before = forged_from(&c, to, m).await.0;
            let reply = c
                .forge(
                    to,
                    m,
                    Msg::PushEntries {
                        entries: entries.clone(),
                    },
                )
                .await;
            assert!(
                matches!(reply, Msg::Ok | Msg::Sequenced { .. }),
                "{what}: {reply:?}"
            );
            assert!(
                !holds_any(&c, to, entries, "genuine"),
                "device {to} took {what}"
            );
            let (after, reason) = forged_from(&c, to, m).await;
            assert_eq!(after, before + entries.len() as u64, "{what}");
            assert!(reason.is_some(), "{what}");
        }
    }
    assert!(c.svc(2).status().await.unwrap().stats.forged > 0);
    // The member's genuine chunk, whole, is taken and reaches everyone.
    c.forge(
        2,
        m,
        Msg::PushEntries {
            entries: genuine.clone(),
        },
    )
    .await;
    assert!(holds_any(&c, 2, &genuine, "genuine"));
    c.write_and_converge(&honest, "after").await;
    assert!(holds_any(&c, 0, &genuine, "genuine"));
    for i in honest {
        assert!(!holds_any(&c, i, &[], "genuine-altered"), "device {i}");
    }
}

/// A malicious member answering a reconcile with entries of another origin
/// sealed with its own key: refused, nothing logged, the member reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_in_a_reconcile_answer_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 3, config());
    let honest = [0, 2];
    let (victim, m) = (c.devices[0], c.devices[1]);
    for i in honest {
        c.start(i);
    }
    c.write_and_converge(&honest, "before").await;
    let lib_id = c.libs[0].id();
    let next = c.libs[0]
        .with_log(|l| l.max_seq(c.libs[0].replica()))
        .unwrap()
        + 1;
    let mut forged = own_entries(&c, 1, 3, "forged");
    for (k, e) in forged.iter_mut().enumerate() {
        e.origin = victim;
        e.incarnation = c.libs[0].incarnation();
        e.origin_seq = next + k as u64;
    }
    concord::sync::seal::seal_entries(&key(1), lib_id, &mut forged);
    let term = c.svc(0).term();
    let answer = forged.clone();
    let forge: Forger = Arc::new(move |req: &Msg| match req {
        Msg::Reconcile { .. } => Msg::ReconcileResponse {
            vv: VersionVector::new(),
            entries: answer.clone(),
            has_more: false,
            term,
            seq: 0,
        },
        _ => Msg::Ok,
    });
    c.net.rogues.lock().unwrap().insert(m, forge);
    let _ = c.svc(2).reconcile_with(m).await;
    assert!(!holds_any(&c, 2, &forged, "forged"));
    let (count, reason) = forged_from(&c, 2, m).await;
    assert_eq!(count, 3);
    assert!(reason.unwrap().contains("not signed by its origin's key"));
    c.write_and_converge(&honest, "after").await;
}

/// A member removes the leader: the others elect among themselves, the
/// removed leader's later writes reach none of them and theirs never reach
/// it (its heartbeats and announcements are refused, nothing is proposed or
/// pushed to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_leader_is_left_and_its_writes_go_nowhere() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(tmp.path(), 3, config());
    for i in 0..3 {
        c.start(i);
    }
    tag(&c.libs[0], "seed");
    c.wait_converged(&[0, 1, 2]).await;
    assert_eq!(c.svc(1).term().leader, c.devices[0]);
    concord::membership::remove(&c.libs[1], c.devices[0])
        .unwrap()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (t1, t2) = (c.svc(1).term(), c.svc(2).term());
        if t1 == t2 && t1.leader == c.devices[2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader among the members left: {t1:?} {t2:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let removed_write = tag(&c.libs[0], "removed-write");
    tag(&c.libs[1], "from-1");
    tag(&c.libs[2], "from-2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while count_tags(&c.libs[1]) < 3 || count_tags(&c.libs[2]) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no convergence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.wait_converged(&[1, 2]).await;
    for i in 1..3 {
        assert_eq!(count_tags(&c.libs[i]), 3, "device {i}");
        let has: i64 = c.libs[i]
            .read(|x| {
                Ok(x.query_row(
                    "SELECT COUNT(*) FROM tags WHERE uuid = ?1",
                    [removed_write],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(has, 0, "device {i} took the removed device's write");
    }
    assert_eq!(count_tags(&c.libs[0]), 2, "seed and its own write only");
    assert_eq!(c.svc(1).term().leader, c.devices[2]);
}

/// Whether device `i`'s log holds every one of `entries`.
fn logs_all(c: &Cluster, i: usize, entries: &[LogEntry]) -> bool {
    entries.iter().all(|e| {
        c.libs[i]
            .with_log(|l| l.contains(e.replica(), e.origin_seq))
            .unwrap()
    })
}

/// Entries held past a gap in a replica (its origin lost the positions
/// before them for good, as a rollback does, and is gone) reach every device
/// although every version vector is equal (simulation seed 1183): the leader
/// sees the difference in the `past_gaps` of a heartbeat reply and
/// reconciles, and a reconcile pages on past a chunk larger than its page
/// (answering "no more" there ended it at that chunk, and every later one
/// asked for the same page again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_past_a_gap_reach_every_device() {
    let tmp = tempfile::tempdir().unwrap();
    let small_pages = SyncConfig {
        fetch_batch: 3,
        ..config()
    };
    let mut c = Cluster::new(tmp.path(), 4, small_pages);
    // Device 3 writes and never runs: its entries travel only as given here.
    // Each call is one chunk; `big` is larger than a page.
    let first = own_entries(&c, 3, 3, "first");
    let lost = own_entries(&c, 3, 2, "lost");
    let big = own_entries(&c, 3, 16, "big");
    let after = own_entries(&c, 3, 3, "after");
    let more = own_entries(&c, 3, 3, "more");
    for i in 0..3 {
        c.libs[i].apply_remote(&first).unwrap();
        c.start(i);
    }
    c.write_and_converge(&[0, 1, 2], "before").await;
    // Pushed directly to the followers before their origin went back in
    // time: no leader sequenced them, no follower proposes another's entries.
    let to_1: Vec<LogEntry> = big.iter().chain(&after).cloned().collect();
    assert!(c.libs[1].apply_remote(&to_1).unwrap().rejected.is_empty());
    assert!(c.libs[2].apply_remote(&more).unwrap().rejected.is_empty());
    let vvs: Vec<VersionVector> = (0..3)
        .map(|i| c.libs[i].with_log(|l| l.version_vector()).unwrap())
        .collect();
    assert!(vvs.windows(2).all(|w| w[0] == w[1]), "{vvs:?}");

    let held: Vec<LogEntry> = big.iter().chain(&after).chain(&more).cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !(0..3).all(|i| logs_all(&c, i, &held)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "entries past the gap never reached every device: {:?}",
            (0..3).map(|i| logs_all(&c, i, &held)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.wait_converged(&[0, 1, 2]).await;
    for i in 0..3 {
        assert!(!holds_any(&c, i, &lost, "lost"), "device {i}");
        assert_eq!(count_tags(&c.libs[i]), 3 + 16 + 3 + 3 + 3, "device {i}");
        let gaps = c.libs[i].with_log(|l| l.past_gaps()).unwrap();
        assert_eq!(gaps.len(), 1, "device {i}: one replica with a gap");
        assert_eq!(gaps.values().next().unwrap().highest, more[2].origin_seq);
    }
    let gaps: Vec<_> = (0..3)
        .map(|i| c.libs[i].with_log(|l| l.past_gaps()).unwrap())
        .collect();
    assert!(gaps.windows(2).all(|w| w[0] == w[1]), "{gaps:?}");
}
