//! The SyncService: replicates one library's log between its devices
//! (DESIGN §5, §6, §8, §10).
//!
//! Correctness rests on version vectors alone: any two devices that talk exchange
//! what the other lacks (`Reconcile` / `PushEntries`), and applying is
//! order-independent and idempotent (I2). The elected leader is the fast path on
//! top: it sequences every entry into one library-wide order, pushes
//! `NewEntries` to followers the moment something commits, and followers fetch
//! by a single cursor. Losing the leader, messages or whole devices costs
//! latency, never data.
//!
//! Roles and terms: a term is `(epoch, leader)`; the higher term wins everywhere
//! (fencing: a request from an older term is answered `StaleTerm`, and its
//! sender steps down). Followers that hear nothing from their leader for
//! `leader_timeout` probe the registered devices; the reachable device with the
//! highest id takes `epoch + 1`.
//!
//! The service is transport-agnostic ([`transport::Transport`]) and reads time
//! only through tokio's clock and the library's [`crate::hlc::Clock`], so the
//! simulation drives exactly this code.

pub mod leader;
pub mod protocol;
pub mod pull;
pub mod snapshot;
pub mod transport;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sync::entry::LogEntry;
use crate::sync::log::VersionVector;
use crate::sync::txn::{ApplyReport, Library, Source};
use crate::sync::version_vector::{vv_covers, vv_lag};
use protocol::{Envelope, Msg, Role, Term, MAX_BATCH_ENTRIES, MAX_INLINE_ENTRIES};
use transport::{Transport, TransportError};

/// Settings of the sync service.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub heartbeat_interval: Duration,
    pub leader_timeout: Duration,
    /// Entries per fetch or push.
    pub fetch_batch: usize,
    /// Devices silent for longer stop holding the log (and get a snapshot).
    pub retention: Duration,
    /// Run SQLite work inline on the async task instead of `spawn_blocking`
    /// (the deterministic simulation needs this).
    pub inline_blocking: bool,
    /// Longest wait for a response. Heartbeats, probes and notifications wait
    /// at most one `heartbeat_interval`, so an unreachable device never stalls
    /// an election or a push for longer than that.
    pub request_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            leader_timeout: Duration::from_secs(60),
            fetch_batch: 1000,
            retention: Duration::from_secs(30 * 24 * 3600),
            inline_blocking: false,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What this device knows about another member.
#[derive(Debug, Clone, Default)]
struct PeerInfo {
    vv: VersionVector,
    last_seen_ms: Option<u64>,
    last_contact: Option<Instant>,
    acked_seq: u64,
}

/// Counters for `sync status` and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub sent: u64,
    pub received: u64,
    pub applied: u64,
    pub refused: u64,
    pub rejected: u64,
    pub snapshots: u64,
    pub last_error: Option<String>,
}

struct State {
    term: Term,
    role: Role,
    last_leader_contact: Instant,
    /// Follower: the leader sequence applied so far, valid for `cursor_term`.
    cursor: u64,
    cursor_term: Option<Term>,
    /// Highest own `origin_seq` the leader has taken.
    proposed_upto: u64,
    peers: BTreeMap<Uuid, PeerInfo>,
    stats: Stats,
    /// Leader only: highest sequence assigned.
    seq: u64,
    /// Remote-browsing pulls of this run, by location.
    pulls: BTreeMap<Uuid, pull::PullProgress>,
    /// Leader only: ranges sequenced while taking a follower's entries, whose
    /// `NewEntries` the next propagation sends (in order, before its own range).
    unnotified: Vec<Notice>,
}

/// Leader: a sequenced range the other followers still have to hear of.
#[derive(Debug, Clone, Copy)]
struct Notice {
    term: Term,
    from_seq: u64,
    to_seq: u64,
    /// The follower told in the reply to its `ProposeEntries`/`PushEntries`
    /// (`Sequenced`): it gets no `NewEntries` for this range.
    told: Option<Uuid>,
}

struct Shared {
    lib: Arc<Library>,
    transport: Arc<dyn Transport>,
    config: SyncConfig,
    me: Uuid,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Wakes the main loop (fetch needed, role changed).
    wake: Notify,
    /// One fetch/reconcile at a time.
    fetching: tokio::sync::Mutex<()>,
    catch_up_wanted: AtomicBool,
    /// Change propagation runs off the main loop, one run at a time.
    changed: AtomicBool,
    propagating: tokio::sync::Mutex<()>,
    /// Leader: taking a follower's entries and sequencing them is one step
    /// against every other sequencing, so the range it gets holds them.
    sequencing: tokio::sync::Mutex<()>,
    /// Asks the main loop to propagate (a range waits in `unnotified`).
    kick: Notify,
    /// At most one heartbeat/election round at a time.
    ticking: AtomicBool,
    stop: watch::Sender<bool>,
}

/// A running sync service for one library. Cheap to clone.
#[derive(Clone)]
pub struct SyncService {
    shared: Arc<Shared>,
}

/// One member's line in `sync status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub device_id: Uuid,
    pub online: bool,
    pub lag_entries: u64,
    pub last_seen: Option<u64>,
}

/// `sync status LIB`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub leader: Uuid,
    pub epoch: u64,
    pub role: Role,
    pub seq: u64,
    pub version_vector: VersionVector,
    pub peers: Vec<PeerStatus>,
    pub conflicts: u64,
    /// Entries held in this device's log (pruning shrinks it).
    pub log_entries: u64,
    /// Pulls of other devices' locations (remote browsing) since start.
    pub pulls: Vec<pull::PullProgress>,
    pub stats: Stats,
}

impl SyncService {
    /// Create the service (call [`SyncService::run`] to start it).
    pub fn new(
        lib: Arc<Library>,
        transport: Arc<dyn Transport>,
        config: SyncConfig,
    ) -> Result<Self> {
        let me = lib.device();
        let stored = lib.with_log(|l| l.term())?;
        let term = stored.unwrap_or(Term {
            epoch: 0,
            leader: Uuid::nil(),
        });
        let role = if term.leader == me {
            Role::Leader
        } else {
            Role::Follower
        };
        let seq = lib.with_log(|l| l.latest_seq())?.unwrap_or(0);
        let (stop, _) = watch::channel(false);
        Ok(Self {
            shared: Arc::new(Shared {
                lib,
                transport,
                me,
                state: Mutex::new(State {
                    term,
                    role,
                    last_leader_contact: Instant::now(),
                    cursor: 0,
                    cursor_term: None,
                    proposed_upto: 0,
                    peers: BTreeMap::new(),
                    stats: Stats::default(),
                    seq,
                    pulls: BTreeMap::new(),
                    unnotified: Vec::new(),
                }),
                config,
                next_id: AtomicU64::new(1),
                wake: Notify::new(),
                fetching: tokio::sync::Mutex::new(()),
                catch_up_wanted: AtomicBool::new(false),
                changed: AtomicBool::new(false),
                propagating: tokio::sync::Mutex::new(()),
                sequencing: tokio::sync::Mutex::new(()),
                kick: Notify::new(),
                ticking: AtomicBool::new(false),
                stop,
            }),
        })
    }

    pub fn library(&self) -> &Arc<Library> {
        &self.shared.lib
    }

    /// Ask the main loop to end.
    pub fn stop(&self) {
        let _ = self.shared.stop.send(true);
    }

    /// The main loop: react to commits at once, heartbeat, elect, until stopped.
    pub async fn run(self) {
        let sh = &self.shared;
        let mut events = sh.lib.subscribe();
        let mut stop = sh.stop.subscribe();
        let mut next_tick = Instant::now();
        // Work spawned off the loop belongs to it: when the loop ends (stopped,
        // or its task aborted as in a crash) the set is dropped and that work
        // is cancelled, so nothing keeps acting for a stopped service.
        let mut work = tokio::task::JoinSet::new();
        // A fresh start reconciles with everyone reachable. A follower that
        // knows its leader catches up with it at once (reconcile, then propose
        // what the leader still lacks) instead of waiting for a heartbeat;
        // proposing before that reconcile could resend what the leader holds.
        let catch_up_first = self.role() == Role::Follower && self.term().leader != Uuid::nil();
        let mut dirty = !catch_up_first;
        if catch_up_first {
            sh.wake.notify_one();
            next_tick = Instant::now() + sh.config.heartbeat_interval;
        }
        loop {
            if *stop.borrow() {
                break;
            }
            while work.try_join_next().is_some() {}
            if dirty {
                dirty = false;
                self.kick_changes(&mut work);
            }
            // `biased`: a fixed polling order keeps the simulation deterministic.
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                ev = events.recv() => {
                    match ev {
                        Ok(ev) => {
                            dirty = ev.source == Source::Local || self.role() == Role::Leader;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    // Coalesce a burst: everything already queued is handled at once.
                    while let Ok(ev) = events.try_recv() {
                        dirty |= ev.source == Source::Local || self.role() == Role::Leader;
                    }
                }
                _ = sh.kick.notified() => dirty = true,
                _ = sh.wake.notified() => {
                    let me = self.clone();
                    work.spawn(async move { me.catch_up().await });
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = Instant::now() + sh.config.heartbeat_interval;
                    if !sh.ticking.swap(true, Ordering::SeqCst) {
                        let me = self.clone();
                        work.spawn(async move {
                            me.tick().await;
                            me.shared.ticking.store(false, Ordering::SeqCst);
                        });
                    }
                }
            }
        }
    }

    /// Propagate new entries without blocking the main loop: one propagation
    /// runs at a time and picks up everything that changed meanwhile.
    fn kick_changes(&self, work: &mut tokio::task::JoinSet<()>) {
        self.shared.changed.store(true, Ordering::SeqCst);
        let me = self.clone();
        work.spawn(async move {
            loop {
                {
                    let Ok(_running) = me.shared.propagating.try_lock() else {
                        return; // the running one will see `changed`
                    };
                    while me.shared.changed.swap(false, Ordering::SeqCst) {
                        me.on_change().await;
                    }
                }
                // A change may have arrived just as the runner finished.
                if !me.shared.changed.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn role(&self) -> Role {
        self.st().role
    }

    pub fn term(&self) -> Term {
        self.st().term
    }

    fn now_ms(&self) -> u64 {
        self.shared.lib.hlc().now_ms()
    }

    /// Run SQLite work off the async threads (or inline for the simulation).
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Library) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        if self.shared.config.inline_blocking {
            return f(&self.shared.lib);
        }
        let lib = self.shared.lib.clone();
        tokio::task::spawn_blocking(move || f(&lib))
            .await
            .map_err(|e| Error::Other(format!("worker failed: {e}")))?
    }

    /// Registered member devices other than this one.
    async fn members(&self) -> Vec<Uuid> {
        let me = self.shared.me;
        self.blocking(move |lib| {
            lib.read(|c| {
                let mut stmt = c.prepare_cached("SELECT uuid FROM devices ORDER BY uuid")?;
                let rows = stmt.query_map([], |r| r.get::<_, Uuid>(0))?;
                Ok(rows.filter_map(|r| r.ok()).filter(|d| *d != me).collect())
            })
        })
        .await
        .unwrap_or_default()
    }

    async fn is_member(&self, device: Uuid) -> bool {
        self.members().await.contains(&device)
    }

    async fn send(&self, to: Uuid, msg: Msg) -> std::result::Result<Msg, TransportError> {
        self.send_within(to, msg, self.shared.config.request_timeout)
            .await
    }

    /// For heartbeats, probes and notifications: wait at most one heartbeat interval.
    async fn probe(&self, to: Uuid, msg: Msg) -> std::result::Result<Msg, TransportError> {
        let limit = self
            .shared
            .config
            .heartbeat_interval
            .min(self.shared.config.request_timeout);
        self.send_within(to, msg, limit.max(Duration::from_millis(50)))
            .await
    }

    async fn send_within(
        &self,
        to: Uuid,
        msg: Msg,
        limit: Duration,
    ) -> std::result::Result<Msg, TransportError> {
        let env = Envelope {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            library: self.shared.lib.id(),
            from: self.shared.me,
            msg,
        };
        self.st().stats.sent += 1;
        let reply = match tokio::time::timeout(limit, self.shared.transport.request(to, env)).await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(to)),
        };
        match &reply {
            Ok(r) => {
                let now = self.now_ms();
                let mut st = self.st();
                let p = st.peers.entry(to).or_default();
                p.last_seen_ms = Some(now);
                p.last_contact = Some(Instant::now());
                if let Msg::StaleTerm { term } = r.msg {
                    drop(st);
                    self.adopt(term);
                }
            }
            Err(e) => {
                tracing::debug!(library = %self.shared.lib.id(), to = %to, "request failed: {e}")
            }
        }
        reply.map(|e| e.msg)
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        let msg = e.to_string();
        tracing::warn!(library = %self.shared.lib.id(), "sync: {msg}");
        self.st().stats.last_error = Some(msg);
    }

    /// Adopt a newer term (or ignore an older one). Returns whether it changed.
    fn adopt(&self, term: Term) -> bool {
        let me = self.shared.me;
        let mut st = self.st();
        if term <= st.term {
            return false;
        }
        tracing::info!(library = %self.shared.lib.id(), epoch = term.epoch, leader = %term.leader, "new term");
        st.term = term;
        st.role = if term.leader == me {
            Role::Leader
        } else {
            Role::Follower
        };
        st.cursor_term = None;
        st.unnotified.clear(); // ranges of the old term
        st.last_leader_contact = Instant::now();
        drop(st);
        let _ = self.shared.lib.with_log(|l| l.set_term(term));
        self.shared.wake.notify_one();
        true
    }

    /// React to new local entries (and, on the leader, any new entries).
    async fn on_change(&self) {
        let (role, term) = {
            let st = self.st();
            (st.role, st.term)
        };
        match role {
            Role::Leader => self.sequence_and_notify(term).await,
            Role::Follower => self.propose().await,
        }
    }

    /// Leader: sequence pending entries and tell every online follower, after
    /// the ranges sequenced meanwhile while taking followers' entries.
    async fn sequence_and_notify(&self, term: Term) {
        let notices = {
            let _sequencing = self.shared.sequencing.lock().await;
            let mut notices = std::mem::take(&mut self.st().unnotified);
            notices.retain(|n| n.term == term);
            match self.sequence(term).await {
                Ok(Some((from_seq, to_seq))) => notices.push(Notice {
                    term,
                    from_seq,
                    to_seq,
                    told: None,
                }),
                Ok(None) => {}
                Err(e) => self.note_error(e),
            }
            notices
        };
        self.notify(term, &notices).await;
    }

    /// Leader: number the pending entries. Callers hold `sequencing`.
    async fn sequence(&self, term: Term) -> Result<Option<(u64, u64)>> {
        let epoch = term.epoch;
        let range = self
            .blocking(move |lib| lib.with_log(|l| l.sequence_pending(epoch)))
            .await?;
        if let Some((_, to_seq)) = range {
            self.st().seq = to_seq;
        }
        Ok(range)
    }

    /// Leader: `NewEntries` for `notices` (adjacent ranges, in order) to every
    /// online follower, minus the ranges a follower was told in a reply.
    async fn notify(&self, term: Term, notices: &[Notice]) {
        let (Some(first), Some(last)) = (notices.first(), notices.last()) else {
            return;
        };
        let targets: Vec<Uuid> = {
            let st = self.st();
            st.peers
                .iter()
                .filter(|(_, p)| p.last_contact.is_some())
                .map(|(d, _)| *d)
                .collect()
        };
        let members = self.members().await;
        // What a follower lacks of a range travels inside the notification
        // when it is small (saves a fetch and an acknowledgement); otherwise
        // the follower fetches.
        let all = self.range_entries(first.from_seq, last.to_seq).await;
        let none = HashSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        for to in targets.into_iter().filter(|d| members.contains(d)) {
            // One message per run of adjacent ranges `to` was not told of.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for n in notices.iter().filter(|n| n.told != Some(to)) {
                match runs.last_mut() {
                    Some(run) if run.1 + 1 == n.from_seq => run.1 = n.to_seq,
                    _ => runs.push((n.from_seq, n.to_seq)),
                }
            }
            let msgs: Vec<Msg> = runs
                .into_iter()
                .map(|(from_seq, to_seq)| Msg::NewEntries {
                    term,
                    from_seq,
                    to_seq,
                    entries: self.lacking(to, all.as_deref(), from_seq, to_seq, &none),
                })
                .collect();
            if msgs.is_empty() {
                continue;
            }
            let me = self.clone();
            tasks.spawn(async move {
                for msg in msgs {
                    // Unreachable: it catches up from a later heartbeat.
                    if me.probe(to, msg).await.is_err() {
                        break;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Leader: the entries sequenced at `from_seq..=to_seq`, when the range is
    /// small enough to send inline and all of it is still in the log.
    async fn range_entries(&self, from_seq: u64, to_seq: u64) -> Option<Vec<LogEntry>> {
        let count = (to_seq + 1).checked_sub(from_seq)? as usize;
        if count == 0 || count > MAX_BATCH_ENTRIES {
            return None;
        }
        self.blocking(move |lib| lib.with_log(|l| l.fetch_since_seq(from_seq - 1, count)))
            .await
            .ok()
            .filter(|e| e.len() == count && e.last().and_then(|e| e.lib_seq) == Some(to_seq))
    }

    /// Leader: what follower `to` lacks of `from_seq..=to_seq`, out of `all`
    /// (every entry of a span holding that range): the range minus `to`'s own
    /// entries, minus what it last reported holding, minus `held` (what it just
    /// sent). `None` (it fetches) when `all` is unknown or that is more than
    /// [`MAX_INLINE_ENTRIES`].
    fn lacking(
        &self,
        to: Uuid,
        all: Option<&[LogEntry]>,
        from_seq: u64,
        to_seq: u64,
        held: &HashSet<(Uuid, u64)>,
    ) -> Option<Vec<LogEntry>> {
        let all = all?;
        let known = self.st().peers.get(&to).map(|p| p.vv.clone());
        let lacks: Vec<LogEntry> = all
            .iter()
            .filter(|e| e.lib_seq.is_some_and(|s| (from_seq..=to_seq).contains(&s)))
            .filter(|e| {
                e.origin != to
                    && !held.contains(&(e.origin, e.origin_seq))
                    && known
                        .as_ref()
                        .and_then(|vv| vv.get(&e.origin))
                        .is_none_or(|have| *have < e.origin_seq)
            })
            .cloned()
            .collect();
        (lacks.len() <= MAX_INLINE_ENTRIES).then_some(lacks)
    }

    /// Leader: take the entries a follower proposed or pushed, sequence them at
    /// once and answer with the range they got (`Sequenced`, carrying what the
    /// follower lacks of it): the follower moves its cursor from the reply and
    /// gets no `NewEntries` for that range; the other followers get theirs from
    /// the propagation this kicks.
    async fn take_from_follower(
        &self,
        from: Uuid,
        term: Term,
        entries: Vec<LogEntry>,
    ) -> Result<Msg> {
        let held: HashSet<(Uuid, u64)> = entries.iter().map(|e| (e.origin, e.origin_seq)).collect();
        let (from_seq, to_seq) = {
            // No other sequencing between applying and numbering: the range
            // holds every entry of the request this log did not hold yet.
            let _sequencing = self.shared.sequencing.lock().await;
            self.apply(entries).await?;
            {
                let st = self.st();
                if st.role != Role::Leader || st.term != term {
                    return Ok(Msg::Ok); // stepped down meanwhile
                }
            }
            let Some((from_seq, to_seq)) = self.sequence(term).await? else {
                return Ok(Msg::Ok); // nothing new: sequenced (and notified) before
            };
            self.st().unnotified.push(Notice {
                term,
                from_seq,
                to_seq,
                told: Some(from),
            });
            (from_seq, to_seq)
        };
        self.shared.kick.notify_one();
        let all = self.range_entries(from_seq, to_seq).await;
        Ok(Msg::Sequenced {
            term,
            from_seq,
            to_seq,
            entries: self.lacking(from, all.as_deref(), from_seq, to_seq, &held),
        })
    }

    /// Follower: send our own unproposed entries to the leader; without a
    /// reachable leader, push them to whoever is reachable.
    async fn propose(&self) {
        let me = self.shared.me;
        // Never below what the leader last reported holding of ours (a restart
        // forgets `proposed_upto`; a reconcile tells it again).
        let (leader, upto) = {
            let st = self.st();
            let held = st
                .peers
                .get(&st.term.leader)
                .and_then(|p| p.vv.get(&me).copied())
                .unwrap_or(0);
            (st.term.leader, st.proposed_upto.max(held))
        };
        let batch = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES);
        let entries = match self
            .blocking(move |lib| lib.with_log(|l| l.fetch_origin(me, upto, batch)))
            .await
        {
            Ok(e) => e,
            Err(e) => return self.note_error(e),
        };
        if entries.is_empty() {
            return;
        }
        let top = entries.iter().map(|e| e.origin_seq).max().unwrap_or(upto);
        let full = entries.len() == batch;
        let delivered = if leader != Uuid::nil() && leader != me {
            let proposal = Msg::ProposeEntries {
                entries: entries.clone(),
            };
            match self.send(leader, proposal).await {
                Ok(reply @ (Msg::Ok | Msg::Sequenced { .. })) => {
                    if let Err(e) = self.on_taken(leader, reply).await {
                        self.note_error(e);
                    }
                    true
                }
                _ => false,
            }
        } else {
            false
        };
        if delivered {
            self.st().proposed_upto = top;
            if full {
                self.shared.wake.notify_one();
            }
        } else {
            // No leader: spread directly (DESIGN §5: keep syncing with whoever is reachable).
            for peer in self.online_peers().await {
                let push = Msg::PushEntries {
                    entries: entries.clone(),
                };
                if let Ok(reply @ Msg::Sequenced { .. }) = self.send(peer, push).await {
                    if let Err(e) = self.on_taken(peer, reply).await {
                        self.note_error(e);
                    }
                }
            }
        }
    }

    async fn online_peers(&self) -> Vec<Uuid> {
        let members = self.members().await;
        let window = self.shared.config.leader_timeout;
        let st = self.st();
        members
            .into_iter()
            .filter(|d| {
                st.peers
                    .get(d)
                    .and_then(|p| p.last_contact)
                    .is_some_and(|t| t.elapsed() <= window)
            })
            .collect()
    }

    /// Heartbeat tick: leaders heartbeat and prune; followers watch the leader.
    async fn tick(&self) {
        let (role, term, since) = {
            let st = self.st();
            (st.role, st.term, st.last_leader_contact.elapsed())
        };
        match role {
            Role::Leader => {
                self.heartbeat_all(term).await;
                self.on_change().await;
            }
            Role::Follower => {
                if term.leader == Uuid::nil() || since >= self.shared.config.leader_timeout {
                    self.elect().await;
                } else {
                    self.propose().await;
                }
            }
        }
    }

    /// Bring this device up to date with its leader (or, leaderless, with peers).
    async fn catch_up(&self) {
        // A wake-up that arrives while a catch-up runs is not lost: the runner
        // goes round again (the same pattern as `kick_changes`).
        self.shared.catch_up_wanted.store(true, Ordering::SeqCst);
        loop {
            {
                let Ok(_running) = self.shared.fetching.try_lock() else {
                    return;
                };
                while self.shared.catch_up_wanted.swap(false, Ordering::SeqCst) {
                    self.catch_up_once().await;
                }
            }
            if !self.shared.catch_up_wanted.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    async fn catch_up_once(&self) {
        let (role, term, cursor_term) = {
            let st = self.st();
            (st.role, st.term, st.cursor_term)
        };
        if role == Role::Leader || term.leader == Uuid::nil() {
            return;
        }
        if cursor_term != Some(term) {
            if self.reconcile_with(term.leader).await.is_ok() {
                self.st().cursor_term = Some(term);
            }
            self.propose().await;
            return;
        }
        self.fetch_from_leader(term).await;
    }

    /// Follower: fetch sequenced entries from the leader by cursor.
    async fn fetch_from_leader(&self, term: Term) {
        loop {
            let since = self.st().cursor;
            let limit = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES) as u32;
            match self
                .send(
                    term.leader,
                    Msg::FetchEntries {
                        term,
                        since_seq: since,
                        limit,
                    },
                )
                .await
            {
                Ok(Msg::EntriesResponse { entries, has_more }) => {
                    let top = entries
                        .iter()
                        .filter_map(|e| e.lib_seq)
                        .max()
                        .unwrap_or(since);
                    if let Err(e) = self.apply(entries).await {
                        return self.note_error(e);
                    }
                    {
                        let mut st = self.st();
                        if st.term == term {
                            st.cursor = st.cursor.max(top);
                            st.last_leader_contact = Instant::now();
                        }
                    }
                    if !has_more {
                        break;
                    }
                }
                Ok(Msg::SyncRequired { reason }) => {
                    tracing::info!(library = %self.shared.lib.id(), "leader requires sync: {reason}");
                    self.st().cursor_term = None;
                    self.shared.wake.notify_one();
                    return;
                }
                Ok(_) | Err(_) => return,
            }
        }
        let up_to_seq = self.st().cursor;
        let vv = self.version_vector().await;
        let _ = self
            .send(
                term.leader,
                Msg::Acknowledge {
                    term,
                    up_to_seq,
                    vv,
                },
            )
            .await;
    }

    async fn version_vector(&self) -> VersionVector {
        self.blocking(|lib| lib.with_log(|l| l.version_vector()))
            .await
            .unwrap_or_default()
    }

    /// Apply entries from a peer through the TransactionManager. The sequence
    /// numbers are the sender's; this log keeps its own.
    async fn apply(&self, mut entries: Vec<LogEntry>) -> Result<ApplyReport> {
        if entries.is_empty() {
            return Ok(ApplyReport::default());
        }
        for e in &mut entries {
            e.lib_seq = None;
            e.epoch = None;
        }
        let n = entries.len() as u64;
        let report = self.blocking(move |lib| lib.apply_remote(&entries)).await?;
        let mut st = self.st();
        st.stats.received += n;
        st.stats.applied += report.applied as u64;
        st.stats.refused += report.refused as u64;
        st.stats.rejected += report.rejected.len() as u64;
        if let Some(first) = report.rejected.first() {
            tracing::warn!(library = %self.shared.lib.id(), rejected = report.rejected.len(), "entries rejected: {first}");
            st.stats.last_error = Some(first.clone());
        }
        Ok(report)
    }

    /// Version-vector reconciliation with one peer: pull what we lack, push what it
    /// lacks. Falls back to a snapshot when the peer pruned what we need.
    pub async fn reconcile_with(&self, peer: Uuid) -> Result<()> {
        let limit = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES) as u32;
        let mut their_vv;
        let mut snapshot_taken = false;
        // Where the next page starts: our version vector, raised past what each
        // page carried. Asking from the version vector alone would repeat the
        // same page forever when we already hold what the peer has beyond a gap
        // that neither of us can fill.
        let mut ask: Option<VersionVector> = None;
        // The reply to a page asked for while the previous one was applied.
        let mut prefetched = None;
        loop {
            let vv = match ask.take() {
                Some(vv) => vv,
                None => self.version_vector().await,
            };
            let mut next = vv.clone();
            let reply = match prefetched.take() {
                Some(r) => r,
                None => self.send(peer, Msg::Reconcile { vv, limit }).await,
            };
            match reply {
                Ok(Msg::ReconcileResponse {
                    vv,
                    entries,
                    has_more,
                    term,
                    seq,
                }) => {
                    their_vv = vv;
                    self.adopt(term);
                    for e in &entries {
                        let slot = next.entry(e.origin).or_insert(0);
                        *slot = (*slot).max(e.origin_seq);
                    }
                    if has_more {
                        // Pipelined: ask for the next page while applying this one.
                        let fetch = self.send(
                            peer,
                            Msg::Reconcile {
                                vv: next.clone(),
                                limit,
                            },
                        );
                        let (applied, fetched) = tokio::join!(self.apply(entries), fetch);
                        applied?;
                        prefetched = Some(fetched);
                        ask = Some(next);
                    } else {
                        self.apply(entries).await?;
                        let mut st = self.st();
                        if st.term == term && term.leader == peer {
                            // The cursor is valid for this term from here on, so
                            // the leader's next notification is applied in step.
                            st.cursor = if st.cursor_term == Some(term) {
                                st.cursor.max(seq)
                            } else {
                                seq
                            };
                            st.cursor_term = Some(term);
                            st.last_leader_contact = Instant::now();
                        }
                        break;
                    }
                }
                Ok(Msg::SyncRequired { reason }) => {
                    // One snapshot per round: if it did not satisfy the peer,
                    // asking again would loop forever; retry on a later round.
                    if snapshot_taken {
                        return Err(Error::Other(format!(
                            "{peer} still requires a snapshot after one: {reason}"
                        )));
                    }
                    tracing::info!(library = %self.shared.lib.id(), peer = %peer, "snapshot needed: {reason}");
                    self.snapshot_from(peer).await?;
                    snapshot_taken = true;
                    continue;
                }
                Ok(Msg::StaleTerm { .. }) => continue,
                Ok(other) => {
                    return Err(Error::Other(format!("unexpected reply {}", other.name())))
                }
                Err(e) => return Err(Error::Other(e.to_string())),
            }
        }
        // Push what the peer lacks.
        loop {
            let vv = their_vv.clone();
            let batch = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES);
            let entries = self
                .blocking(move |lib| lib.with_log(|l| l.fetch_missing(&vv, batch)))
                .await?;
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                let slot = their_vv.entry(e.origin).or_insert(0);
                *slot = (*slot).max(e.origin_seq);
            }
            let full = entries.len() == batch;
            match self.send(peer, Msg::PushEntries { entries }).await {
                Ok(reply @ (Msg::Ok | Msg::Sequenced { .. })) => self.on_taken(peer, reply).await?,
                Ok(other) => return Err(Error::Other(format!("push refused: {}", other.name()))),
                Err(e) => return Err(Error::Other(e.to_string())),
            }
            if !full {
                break;
            }
        }
        // What the peer holds now (lets `propose` skip what it already has).
        self.st().peers.entry(peer).or_default().vv = their_vv;
        Ok(())
    }

    /// Handle one request from another device; always returns a response.
    pub async fn handle(&self, req: Envelope) -> Envelope {
        let reply = |msg| Envelope {
            id: req.id,
            library: req.library,
            from: self.shared.me,
            msg,
        };
        if req.library != self.shared.lib.id() {
            return reply(Msg::Error {
                message: "wrong library".into(),
            });
        }
        if let Err(e) = req.msg.check_bounds() {
            return reply(Msg::Error { message: e });
        }
        if !self.is_member(req.from).await {
            tracing::warn!(library = %req.library, from = %req.from, "request from a device not registered in this library");
            return reply(Msg::Error {
                message: format!(
                    "device {} is not registered in library {}",
                    req.from, req.library
                ),
            });
        }
        {
            let now = self.now_ms();
            let mut st = self.st();
            let p = st.peers.entry(req.from).or_default();
            p.last_seen_ms = Some(now);
            p.last_contact = Some(Instant::now());
        }
        let msg = match self.dispatch(req.from, req.msg.clone()).await {
            Ok(m) => m,
            Err(e) => {
                self.note_error(&e);
                Msg::Error {
                    message: e.to_string(),
                }
            }
        };
        reply(msg)
    }

    async fn dispatch(&self, from: Uuid, msg: Msg) -> Result<Msg> {
        match msg {
            Msg::NewEntries {
                term,
                from_seq,
                to_seq,
                entries,
            } => {
                if let Some(stale) = self.fence(term) {
                    return Ok(stale);
                }
                self.on_sequenced(from, term, from_seq, to_seq, entries)
                    .await?;
                Ok(Msg::Ok)
            }
            Msg::FetchEntries {
                term,
                since_seq,
                limit,
            } => {
                let (role, mine) = {
                    let st = self.st();
                    (st.role, st.term)
                };
                if role != Role::Leader || term < mine {
                    return Ok(Msg::StaleTerm { term: mine });
                }
                if term != mine {
                    return Ok(Msg::SyncRequired {
                        reason: "term mismatch".into(),
                    });
                }
                let limit = (limit as usize).clamp(1, MAX_BATCH_ENTRIES);
                let entries = self
                    .blocking(move |lib| lib.with_log(|l| l.fetch_since_seq(since_seq, limit + 1)))
                    .await?;
                let has_more = entries.len() > limit;
                let mut entries = entries;
                entries.truncate(limit);
                Ok(Msg::EntriesResponse { entries, has_more })
            }
            Msg::Acknowledge { up_to_seq, vv, .. } => {
                let now = self.now_ms();
                self.st().peers.entry(from).or_default().acked_seq = up_to_seq;
                self.st().peers.entry(from).or_default().vv = vv.clone();
                self.blocking(move |lib| lib.with_log(|l| l.record_ack(from, &vv, now)))
                    .await?;
                Ok(Msg::Ok)
            }
            Msg::Heartbeat {
                term,
                role,
                seq,
                vv,
                horizon,
            } => self.on_heartbeat(from, term, role, seq, vv, horizon).await,
            Msg::ProposeEntries { entries } => {
                let (role, mine) = {
                    let st = self.st();
                    (st.role, st.term)
                };
                if role != Role::Leader {
                    return Ok(Msg::StaleTerm { term: mine });
                }
                if entries.iter().any(|e| e.origin != from) {
                    return Err(Error::Invalid(format!(
                        "device {from} proposed entries of another device; only its own may be proposed"
                    )));
                }
                self.take_from_follower(from, mine, entries).await
            }
            Msg::PushEntries { entries } => {
                let (role, mine) = {
                    let st = self.st();
                    (st.role, st.term)
                };
                if role == Role::Leader {
                    return self.take_from_follower(from, mine, entries).await;
                }
                self.apply(entries).await?;
                Ok(Msg::Ok)
            }
            Msg::Reconcile { vv, limit } => {
                let floor = self
                    .blocking(|lib| lib.with_log(|l| l.pruned_floor()))
                    .await?;
                if let Some((origin, _)) = floor
                    .iter()
                    .find(|(o, through)| vv.get(o).copied().unwrap_or(0) < **through)
                {
                    return Ok(Msg::SyncRequired {
                        reason: format!("entries of {origin} it lacks were pruned"),
                    });
                }
                let limit = (limit as usize).clamp(1, MAX_BATCH_ENTRIES);
                let want = vv.clone();
                let (mine, entries, seq) = self
                    .blocking(move |lib| {
                        lib.with_log(|l| {
                            Ok((
                                l.version_vector()?,
                                l.fetch_missing(&want, limit + 1)?,
                                l.latest_seq()?.unwrap_or(0),
                            ))
                        })
                    })
                    .await?;
                let has_more = entries.len() > limit;
                let mut entries = entries;
                entries.truncate(limit);
                {
                    let mut st = self.st();
                    st.peers.entry(from).or_default().vv = vv;
                }
                // The peer may have what we lack: reconcile back when it does.
                let term = self.st().term;
                Ok(Msg::ReconcileResponse {
                    vv: mine,
                    entries,
                    has_more,
                    term,
                    seq,
                })
            }
            Msg::Snapshot { cursor } => {
                let chunk = self
                    .blocking(move |lib| snapshot::chunk(lib, &cursor))
                    .await?;
                self.st().stats.snapshots += 1;
                Ok(chunk)
            }
            Msg::PullEntries { location, cursor } => {
                self.blocking(move |lib| pull::page(lib, location, &cursor))
                    .await
            }
            other => Err(Error::Invalid(format!("{} is not a request", other.name()))),
        }
    }

    /// Follower: the leader of `term` (already fenced) sequenced
    /// `from_seq..=to_seq`. `entries`, when present, is everything of that
    /// range this device lacks: in step (the cursor at `from_seq - 1` or
    /// beyond, for this term) it applies them and moves the cursor to
    /// `to_seq`. Otherwise, if behind, it catches up by fetch or reconcile.
    async fn on_sequenced(
        &self,
        from: Uuid,
        term: Term,
        from_seq: u64,
        to_seq: u64,
        entries: Option<Vec<LogEntry>>,
    ) -> Result<()> {
        let in_step = {
            let mut st = self.st();
            if term.leader == from {
                st.last_leader_contact = Instant::now();
            }
            st.cursor_term == Some(term) && st.cursor.saturating_add(1) >= from_seq
        };
        if let (true, Some(entries)) = (in_step, entries) {
            // Everything up to `to_seq` this device lacks is here.
            self.apply(entries).await?;
            let mut st = self.st();
            if st.cursor_term == Some(term) {
                st.cursor = st.cursor.max(to_seq);
            }
            return Ok(());
        }
        let st = self.st();
        let behind = st.cursor_term != Some(term) || st.cursor < to_seq;
        drop(st);
        if behind {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Sender of `ProposeEntries`/`PushEntries`: the receiver took them. A
    /// leader's `Sequenced` is this device's only word of that range (no
    /// `NewEntries` follows for it).
    async fn on_taken(&self, peer: Uuid, reply: Msg) -> Result<()> {
        if let Msg::Sequenced {
            term,
            from_seq,
            to_seq,
            entries,
        } = reply
        {
            if self.fence(term).is_none() {
                self.on_sequenced(peer, term, from_seq, to_seq, entries)
                    .await?;
            }
        }
        Ok(())
    }

    /// Refuse a message from an older term; adopt a newer one.
    fn fence(&self, term: Term) -> Option<Msg> {
        let mine = self.st().term;
        if term < mine {
            return Some(Msg::StaleTerm { term: mine });
        }
        self.adopt(term);
        None
    }

    async fn on_heartbeat(
        &self,
        from: Uuid,
        term: Term,
        role: Role,
        seq: u64,
        vv: VersionVector,
        horizon: Option<VersionVector>,
    ) -> Result<Msg> {
        let mine = self.st().term;
        if term < mine && role == Role::Leader {
            return Ok(Msg::StaleTerm { term: mine });
        }
        if term > mine {
            self.adopt(term);
        }
        let my_vv = self.version_vector().await;
        let (my_term, my_role, my_seq, lacking) = {
            let mut st = self.st();
            st.peers.entry(from).or_default().vv = vv.clone();
            if role == Role::Leader && term == st.term {
                st.last_leader_contact = Instant::now();
                // The leader holds (or held) entries we lack: the cursor cannot
                // fetch them if they were sequenced below it or pruned while this
                // device did not count (away past retention), so reconcile by
                // version vector, which falls back to a snapshot when needed.
                if !vv_covers(&my_vv, &vv) {
                    st.cursor_term = None;
                }
            }
            let lacking = role == Role::Leader
                && term == st.term
                && (st.cursor_term != Some(term) || st.cursor < seq || !vv_covers(&my_vv, &vv));
            (st.term, st.role, st.seq, lacking)
        };
        if lacking {
            self.shared.wake.notify_one();
        }
        if let Some(h) = horizon {
            if role == Role::Leader && term == my_term {
                let _ = self
                    .blocking(move |lib| lib.with_log(|l| l.prune_covered(&h)))
                    .await;
            }
        }
        Ok(Msg::HeartbeatReply {
            term: my_term,
            role: my_role,
            seq: my_seq,
            vv: my_vv,
        })
    }

    /// Take the state from `peer` in chunks, then continue from its version vector.
    async fn snapshot_from(&self, peer: Uuid) -> Result<()> {
        let first = protocol::SnapshotCursor {
            part: 0,
            after: None,
        };
        let mut start_vv: Option<VersionVector> = None;
        // Pipelined: the next chunk is requested while this one is applied.
        let mut reply = self.send(peer, Msg::Snapshot { cursor: first }).await;
        loop {
            match reply {
                Ok(Msg::SnapshotChunk {
                    rows,
                    tombstones,
                    bulk,
                    next,
                    vv,
                }) => {
                    if start_vv.is_none() {
                        start_vv = Some(vv);
                    }
                    let apply =
                        self.blocking(move |lib| snapshot::apply(lib, rows, tombstones, bulk));
                    match next {
                        Some(cursor) => {
                            let fetch = self.send(peer, Msg::Snapshot { cursor });
                            let (applied, fetched) = tokio::join!(apply, fetch);
                            applied?;
                            reply = fetched;
                        }
                        None => {
                            apply.await?;
                            break;
                        }
                    }
                }
                Ok(other) => {
                    return Err(Error::Other(format!("snapshot refused: {}", other.name())))
                }
                Err(e) => return Err(Error::Other(e.to_string())),
            }
        }
        let vv = start_vv.unwrap_or_default();
        self.blocking(move |lib| {
            let floor = lib.hlc().last();
            lib.with_log(|l| l.raise_version_vector(&vv, floor))
        })
        .await?;
        self.st().stats.snapshots += 1;
        tracing::info!(library = %self.shared.lib.id(), peer = %peer, "snapshot applied");
        Ok(())
    }

    /// `sync status`.
    pub async fn status(&self) -> Result<SyncStatus> {
        let members = self.members().await;
        let (vv, conflicts, latest, log_entries) = self
            .blocking(|lib| {
                let vv = lib.with_log(|l| l.version_vector())?;
                let latest = lib.with_log(|l| l.latest_seq())?.unwrap_or(0);
                let log_entries = lib.with_log(|l| l.count())?;
                let conflicts = lib.read(|c| {
                    Ok(c.query_row("SELECT COUNT(*) FROM conflicts", [], |r| r.get::<_, i64>(0))?)
                })?;
                Ok((vv, conflicts as u64, latest, log_entries))
            })
            .await?;
        let window = self.shared.config.leader_timeout;
        let st = self.st();
        let peers = members
            .iter()
            .map(|d| {
                let p = st.peers.get(d).cloned().unwrap_or_default();
                PeerStatus {
                    device_id: *d,
                    online: p.last_contact.is_some_and(|t| t.elapsed() <= window),
                    lag_entries: vv_lag(&vv, &p.vv),
                    last_seen: p.last_seen_ms,
                }
            })
            .collect();
        Ok(SyncStatus {
            leader: st.term.leader,
            epoch: st.term.epoch,
            role: st.role,
            seq: if st.role == Role::Leader {
                latest
            } else {
                st.cursor
            },
            version_vector: vv,
            peers,
            conflicts,
            log_entries,
            pulls: st.pulls.values().cloned().collect(),
            stats: st.stats.clone(),
        })
    }
}
