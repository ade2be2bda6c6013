//! The SyncService's ground floor: its settings, the state every role reads
//! and writes, and the primitives all roles share (the state lock, SQLite work
//! off the async threads, membership, term adoption, applying entries).
//!
//! Every other module of the service adds an `impl SyncService` block for one
//! role on top of this one; this module imports none of them, so data flows
//! one way (see `mod.rs` for the layering).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Role, Term};
use super::report::{PeerStatus, PullProgress, Stats, SyncStatus};
use super::transport::Transport;
use crate::error::{Error, Result};
use crate::query;
use crate::sync::entry::LogEntry;
use crate::sync::gaps::PastGaps;
use crate::sync::log::VersionVector;
use crate::sync::txn::{ApplyReport, Library};
use crate::sync::version_vector::vv_lag;

/// Settings of the sync service.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// How often a leader heartbeats (and prunes) and a follower checks on it.
    pub heartbeat_interval: Duration,
    /// Silence from the leader after which a follower starts an election.
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
    /// A follower whose leader has not taken a proposal this long after it
    /// was sent pushes the change straight to the other members instead, and
    /// checks whether the leader is still there (DESIGN §5: the leader is a
    /// fast path, never a wait).
    pub direct_after: Duration,
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
            direct_after: Duration::from_millis(500),
        }
    }
}

/// What this device knows about another member.
#[derive(Debug, Clone, Default)]
pub(super) struct PeerInfo {
    pub(super) vv: VersionVector,
    pub(super) last_seen_ms: Option<u64>,
    pub(super) last_contact: Option<Instant>,
    pub(super) acked_seq: u64,
    /// Entries from this peer refused as not sealed by their origin.
    pub(super) forged: u64,
    /// Why the last of those was refused.
    pub(super) last_refusal: Option<String>,
    /// The replica its last proposal came from (its current incarnation, as
    /// far as this device, its leader, knows): its other replicas are
    /// superseded and may be retired (`retire.rs`).
    pub(super) writing: Option<Uuid>,
}

impl PeerInfo {
    /// The peer answered or asked something just now (`now_ms` on the HLC's clock).
    pub(super) fn heard_from(&mut self, now_ms: u64) {
        self.last_seen_ms = Some(now_ms);
        self.last_contact = Some(Instant::now());
    }
}

/// What the service knows and decides, behind one lock (`SyncService::state`).
pub(super) struct State {
    pub(super) term: Term,
    pub(super) role: Role,
    /// When the leader was last heard from (a follower elects after `leader_timeout`).
    pub(super) last_leader_contact: Instant,
    /// Follower: the leader sequence applied so far, valid for `cursor_term`.
    pub(super) cursor: u64,
    pub(super) cursor_term: Option<Term>,
    /// Highest own `origin_seq` the leader has taken.
    pub(super) proposed_upto: u64,
    pub(super) peers: BTreeMap<Uuid, PeerInfo>,
    pub(super) stats: Stats,
    /// Leader only: highest sequence assigned.
    pub(super) seq: u64,
    /// Remote-browsing pulls of this run, by location.
    pub(super) pulls: BTreeMap<Uuid, PullProgress>,
    /// Leader only: ranges sequenced while taking a follower's entries, whose
    /// `NewEntries` the next propagation sends (in order, before its own range).
    pub(super) unnotified: Vec<Notice>,
    /// When this device last checked its leader out of turn.
    pub(super) last_check: Option<Instant>,
    /// Highest own `origin_seq` already pushed directly to every member while
    /// the leader did not take proposals; later direct pushes start above it
    /// (a member that missed one gets it by reconciling).
    pub(super) direct_upto: u64,
    /// A newer term another member told us of without being its leader: it
    /// is adopted only if its leader confirms it (`confirm_rumour`).
    pub(super) rumour: Option<Term>,
}

/// Largest step an adopted term's epoch may take past this device's. Honest
/// elections move the epoch by one; a member announcing a term far ahead (or
/// `u64::MAX`, after which no election could ever win) is refused, so no one
/// can freeze leadership or overflow the next election's epoch.
pub(super) const MAX_EPOCH_STEP: u64 = 1_000_000;

/// Whether `term` may follow `mine` (bounded step, never the last epoch).
pub(super) fn epoch_in_bounds(mine: Term, term: Term) -> bool {
    term.epoch != u64::MAX && term.epoch.saturating_sub(mine.epoch) <= MAX_EPOCH_STEP
}

/// Leader: a sequenced range the other followers still have to hear of.
#[derive(Debug, Clone, Copy)]
pub(super) struct Notice {
    pub(super) term: Term,
    pub(super) from_seq: u64,
    pub(super) to_seq: u64,
    /// The follower told in the reply to its `ProposeEntries`/`PushEntries`
    /// (`Sequenced`): it gets no `NewEntries` for this range.
    pub(super) told: Option<Uuid>,
}

/// Everything the clones of one `SyncService` share: its library, transport,
/// settings, state and the signals between the main loop and its work.
pub(super) struct ServiceShared {
    pub(super) lib: Arc<Library>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) config: SyncConfig,
    /// This device.
    pub(super) me: Uuid,
    pub(super) state: Mutex<State>,
    /// Correlation id of the next request sent.
    pub(super) next_id: AtomicU64,
    /// Wakes the main loop (fetch needed, role changed).
    pub(super) wake: Notify,
    /// One fetch/reconcile at a time.
    pub(super) fetching: tokio::sync::Mutex<()>,
    /// A catch-up was asked for while one ran: the runner goes round again.
    pub(super) catch_up_wanted: AtomicBool,
    /// Change propagation runs off the main loop, one run at a time.
    pub(super) changed: AtomicBool,
    pub(super) propagating: tokio::sync::Mutex<()>,
    /// Leader: taking a follower's entries and sequencing them is one step
    /// against every other sequencing, so the range it gets holds them.
    pub(super) sequencing: tokio::sync::Mutex<()>,
    /// Asks the main loop to propagate (a range waits in `unnotified`).
    pub(super) kick: Notify,
    /// At most one heartbeat/election round at a time.
    pub(super) ticking: AtomicBool,
    /// Asks the main loop to probe the leader of `State::rumour`.
    pub(super) confirm: Notify,
    /// Asks the main loop to check the leader now: a request to it failed or
    /// went unanswered, or a member that found it gone asked us to take over.
    pub(super) suspect: Notify,
    /// Ends the main loop (`SyncService::stop`).
    pub(super) stop: watch::Sender<bool>,
}

/// A running sync service for one library. Cheap to clone.
#[derive(Clone)]
pub struct SyncService {
    pub(super) shared: Arc<ServiceShared>,
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
            shared: Arc::new(ServiceShared {
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
                    last_check: None,
                    direct_upto: 0,
                    rumour: None,
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
                confirm: Notify::new(),
                suspect: Notify::new(),
                stop,
            }),
        })
    }

    /// The library this service replicates (the node reads it to serve
    /// requests beside sync).
    pub fn library(&self) -> &Arc<Library> {
        &self.shared.lib
    }

    /// Ask the main loop to end.
    pub fn stop(&self) {
        let _ = self.shared.stop.send(true);
    }

    /// The service's state, locked briefly and never across an await. A
    /// poisoned lock is taken over so one failed task does not stop the service.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This device's role and term, read together.
    pub(super) fn role_and_term(&self) -> (Role, Term) {
        let state = self.state();
        (state.role, state.term)
    }

    /// This device's current role (leader or follower), for callers and tests.
    pub fn role(&self) -> Role {
        self.state().role
    }

    /// The term this device follows (or leads), for callers and tests.
    pub fn term(&self) -> Term {
        self.state().term
    }

    /// Wall time in ms on the library's hybrid clock (the simulation drives it).
    pub(super) fn now_ms(&self) -> u64 {
        self.shared.lib.hlc().now_ms()
    }

    /// Run SQLite work off the async threads (or inline for the simulation).
    pub(super) async fn run_sqlite<R: Send + 'static>(
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
    pub(super) async fn members(&self) -> Vec<Uuid> {
        let me = self.shared.me;
        self.run_sqlite(move |lib| {
            let members = query::members::member_ids(lib)?;
            Ok(members.into_iter().filter(|d| *d != me).collect())
        })
        .await
        .unwrap_or_default()
    }

    /// Whether `device` is registered in this library (and is not this device).
    pub(super) async fn is_member(&self, device: Uuid) -> bool {
        self.members().await.contains(&device)
    }

    /// An error sync goes on after: logged and shown in `sync status`.
    pub(super) fn note_error(&self, e: impl std::fmt::Display) {
        let msg = e.to_string();
        tracing::warn!(library = %self.shared.lib.id(), "sync: {msg}");
        self.state().stats.last_error = Some(msg);
    }

    /// Adopt a newer term (or ignore an older one). Returns whether it changed.
    /// Only for terms this device chose or heard from the leader they name
    /// (`hear_of`); a term out of bounds ([`epoch_in_bounds`]) is refused.
    pub(super) async fn adopt(&self, term: Term) -> bool {
        let me = self.shared.me;
        // A device removed from the library leads nothing in it.
        let leader = term.leader;
        if leader != me
            && self
                .run_sqlite(move |lib| query::members::is_removed(lib, leader))
                .await
                .unwrap_or(false)
        {
            tracing::warn!(library = %self.shared.lib.id(), leader = %leader, "refused a term led by a removed device");
            return false;
        }
        {
            let mut state = self.state();
            if term <= state.term {
                return false;
            }
            if !epoch_in_bounds(state.term, term) {
                tracing::warn!(library = %self.shared.lib.id(), epoch = term.epoch, leader = %term.leader, mine = state.term.epoch, "refused a term too far ahead of ours");
                return false;
            }
            tracing::info!(library = %self.shared.lib.id(), epoch = term.epoch, leader = %term.leader, "new term");
            state.term = term;
            state.role = if term.leader == me {
                Role::Leader
            } else {
                Role::Follower
            };
            state.cursor_term = None;
            state.unnotified.clear(); // ranges of the old term
            state.last_leader_contact = Instant::now();
        }
        // Persisted so a restart resumes in this term; SQLite work, so off the
        // async threads (`set_term` keeps the higher of two racing adoptions).
        // A failure costs only a restart resuming in an older term: the term
        // in memory holds.
        let persisted = self
            .run_sqlite(move |lib| lib.with_log(|l| l.set_term(term)))
            .await;
        if let Err(e) = persisted {
            self.note_error(format!("recording term {}: {e}", term.epoch));
        }
        self.shared.wake.notify_one();
        true
    }

    /// This device's version vector as it is sent: compact, retired replicas
    /// left out (`sync::log::retired`); empty if the log cannot be read.
    pub(super) async fn version_vector(&self) -> VersionVector {
        self.run_sqlite(|lib| lib.with_log(|l| l.compact_vector()))
            .await
            .unwrap_or_default()
    }

    /// This device's full version vector, retired replicas included: what
    /// its log holds, to set against a peer's claims about this device.
    pub(super) async fn full_vector(&self) -> VersionVector {
        self.run_sqlite(|lib| lib.with_log(|l| l.version_vector()))
            .await
            .unwrap_or_default()
    }

    /// What this log holds past a gap in a replica (`crate::sync::gaps`),
    /// which its version vector does not show.
    pub(super) async fn past_gaps(&self) -> PastGaps {
        self.run_sqlite(|lib| lib.with_log(|l| l.past_gaps()))
            .await
            .unwrap_or_default()
    }

    /// Apply entries from peer `from` through the TransactionManager. The
    /// sequence numbers are the sender's; this log keeps its own. Entries no
    /// verified seal covers are refused there; the sender is charged with them
    /// (`sync status`, and a warning in the log).
    pub(super) async fn apply(
        &self,
        from: Uuid,
        mut entries: Vec<LogEntry>,
    ) -> Result<ApplyReport> {
        if entries.is_empty() {
            return Ok(ApplyReport::default());
        }
        for e in &mut entries {
            e.lib_seq = None;
            e.epoch = None;
        }
        let n = entries.len() as u64;
        let report = self
            .run_sqlite(move |lib| {
                let report = lib.apply_remote(&entries)?;
                // Entries of a removed device this device took before it
                // learned of the removal are vouched for, so every member
                // ends with the same ones (`membership::raise_cutoffs`).
                if report.applied > 0 {
                    crate::membership::raise_cutoffs(lib)?;
                }
                Ok(report)
            })
            .await?;
        let mut state = self.state();
        state.stats.received += n;
        state.stats.applied += report.applied as u64;
        state.stats.refused += report.refused as u64;
        state.stats.rejected += report.rejected.len() as u64;
        state.stats.recovered_own += report.own_recovered as u64;
        if report.unverified > 0 {
            let reason = report.forged.first().cloned().unwrap_or_default();
            tracing::warn!(library = %self.shared.lib.id(), peer = %from, refused = report.unverified, "entries refused: not sealed by their origin: {reason}");
            state.stats.forged += report.unverified as u64;
            let peer = state.peers.entry(from).or_default();
            peer.forged += report.unverified as u64;
            peer.last_refusal = Some(reason.clone());
            state.stats.last_error = Some(format!("from {from}: {reason}"));
        }
        if let Some(last) = report.position_conflicts.last() {
            state.stats.position_conflicts += report.position_conflicts.len() as u64;
            state.stats.last_position_conflict = Some(format!("from {from}: {last}"));
            state.stats.last_error = Some(format!("from {from}: {last}"));
        }
        if let Some(first) = report.rejected.first() {
            tracing::warn!(library = %self.shared.lib.id(), rejected = report.rejected.len(), "entries rejected: {first}");
            state.stats.last_error = Some(first.clone());
        }
        Ok(report)
    }

    /// `sync status`: the full vector (what the log holds, retired replicas
    /// included); each peer's lag against its last vector, expanded.
    pub async fn status(&self) -> Result<SyncStatus> {
        let members = self.members().await;
        let known: Vec<VersionVector> = {
            let state = self.state();
            let vv = |d: &Uuid| state.peers.get(d).map(|p| p.vv.clone());
            members.iter().map(|d| vv(d).unwrap_or_default()).collect()
        };
        let (vv, theirs, conflicts, latest, log_entries) = self
            .run_sqlite(move |lib| {
                let (vv, theirs) = lib.with_log(|l| {
                    let theirs: Result<Vec<VersionVector>> =
                        known.iter().map(|v| l.expand_vector(v)).collect();
                    Ok((l.version_vector()?, theirs?))
                })?;
                let latest = lib.with_log(|l| l.latest_seq())?.unwrap_or(0);
                let log_entries = lib.with_log(|l| l.count())?;
                let conflicts = query::conflict_count(lib)?;
                Ok((vv, theirs, conflicts as u64, latest, log_entries))
            })
            .await?;
        let window = self.shared.config.leader_timeout;
        let state = self.state();
        let peers = members
            .iter()
            .zip(&theirs)
            .map(|(d, their_vv)| {
                let p = state.peers.get(d).cloned().unwrap_or_default();
                PeerStatus {
                    device_id: *d,
                    online: p.last_contact.is_some_and(|t| t.elapsed() <= window),
                    lag_entries: vv_lag(&vv, their_vv),
                    last_seen: p.last_seen_ms,
                    forged: p.forged,
                    last_refusal: p.last_refusal,
                }
            })
            .collect();
        Ok(SyncStatus {
            leader: state.term.leader,
            epoch: state.term.epoch,
            role: state.role,
            seq: if state.role == Role::Leader {
                latest
            } else {
                state.cursor
            },
            version_vector: vv,
            peers,
            conflicts,
            log_entries,
            pulls: state.pulls.values().cloned().collect(),
            stats: state.stats.clone(),
        })
    }
}

/// The first `limit` of `entries` (read as `limit + 1`), ending at a chunk
/// boundary (`crate::sync::seal::page_end`: a receiver verifies whole chunks
/// only), and whether more may follow.
///
/// A read that reached its `limit + 1` may have stopped short of more, even
/// when the page keeps all of it: reads end at a chunk's end, so a chunk
/// larger than the limit comes whole and leaves nothing over to show that
/// more follow. Such a page says `more` (at worst one empty page follows).
/// Saying "no more" there ended a reconcile at that chunk; when the asker's
/// vector could not move past it (entries held past a gap), every later
/// reconcile asked for the same page again and never got what followed.
pub(super) fn one_page(mut entries: Vec<LogEntry>, limit: usize) -> (Vec<LogEntry>, bool) {
    let end = crate::sync::seal::page_end(&entries, limit);
    let has_more = entries.len() > end || entries.len() > limit;
    entries.truncate(end);
    (entries, has_more)
}
