//! The follower role: propose this device's own entries to the leader (or, with
//! no leader reachable, push them to whoever is), and catch up with the leader
//! by cursor, reconciling first whenever the cursor is not valid for the term.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Msg, Role, Term, MAX_BATCH_ENTRIES};
use super::state::{one_page, SyncService};
use crate::sync::entry::LogEntry;

impl SyncService {
    /// Follower: send our own unproposed entries to the leader; without a
    /// reachable leader, push them to whoever is reachable.
    pub(super) async fn propose(&self) {
        // This open's replica: entries of earlier incarnations (written before
        // a restart, or offline) reach peers through reconcile.
        let me = self.shared.lib.replica();
        // Never below what the leader last reported holding of ours (a restart
        // forgets `proposed_upto`; a reconcile tells it again).
        let (leader, upto) = {
            let state = self.state();
            let held = state
                .peers
                .get(&state.term.leader)
                .and_then(|p| p.vv.get(&me).copied())
                .unwrap_or(0);
            (state.term.leader, state.proposed_upto.max(held))
        };
        let batch = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES);
        let mut upto = upto;
        let mut ask_leader = leader != Uuid::nil() && leader != me;
        // A leader removed from the library gets nothing more: push directly
        // and have the leader checked (an election among the members left).
        if ask_leader && !self.is_member(leader).await {
            ask_leader = false;
            self.shared.suspect.notify_one();
        }
        loop {
            let entries = match self
                .run_sqlite(move |lib| lib.with_log(|l| l.fetch_origin(me, upto, batch + 1)))
                .await
            {
                Ok(e) => e,
                Err(e) => return self.note_error(e),
            };
            if entries.is_empty() {
                return;
            }
            let (entries, full) = one_page(entries, batch);
            let top = entries.iter().map(|e| e.origin_seq).max().unwrap_or(upto);
            if ask_leader && self.propose_to_leader(leader, &entries).await {
                self.state().proposed_upto = top;
                if full {
                    self.shared.wake.notify_one();
                }
                return;
            }
            // No leader, or none that takes them in time: spread directly
            // (DESIGN §5: keep syncing with whoever is reachable) every batch
            // not pushed directly before, without asking the leader again, so
            // a long outage does not resend its backlog with every change. The
            // leader gets them from a later proposal or from the reconcile that
            // follows a change of term.
            ask_leader = false;
            let pushed = self.state().direct_upto;
            let fresh: Vec<LogEntry> = entries
                .into_iter()
                .filter(|e| e.origin_seq > pushed)
                .collect();
            if !fresh.is_empty() {
                self.push_directly(leader, fresh).await;
                let mut state = self.state();
                state.direct_upto = state.direct_upto.max(top);
            }
            if !full {
                return;
            }
            upto = top.max(pushed);
        }
    }

    /// Follower: offer `entries` to the leader. True when it took them within
    /// `direct_after`; otherwise the leader is suspect and gets checked (a
    /// dead leader is noticed now, not a `leader_timeout` later; the check
    /// probes it before anything changes).
    async fn propose_to_leader(&self, leader: Uuid, entries: &[LogEntry]) -> bool {
        let proposal = Msg::ProposeEntries {
            entries: entries.to_vec(),
        };
        let deadline = self.shared.config.direct_after;
        match tokio::time::timeout(deadline, self.send(leader, proposal)).await {
            Ok(Ok(reply @ (Msg::Ok | Msg::Sequenced { .. }))) => {
                if let Err(e) = self.on_taken(leader, reply).await {
                    self.note_error(e);
                }
                true
            }
            // `StaleTerm` (a newer term was adopted meanwhile) or an error reply.
            Ok(Ok(_)) => false,
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(library = %self.shared.lib.id(), leader = %leader, "the leader did not take a proposal in time; pushing directly");
                self.shared.suspect.notify_one();
                false
            }
        }
    }

    /// Push `entries` to every other member at once (not to `leader`, which
    /// just failed to take them), each bounded like a probe. Members that were
    /// introduced by the leader may never have talked to each other: this is
    /// what keeps them in sync while it is away.
    async fn push_directly(&self, leader: Uuid, entries: Vec<LogEntry>) {
        let targets: Vec<Uuid> = self
            .members()
            .await
            .into_iter()
            .filter(|d| *d != leader)
            .collect();
        let push = Msg::PushEntries { entries };
        let mut tasks = self.probe_all(targets, &push);
        while let Some(done) = tasks.join_next().await {
            if let Ok((peer, Ok(reply @ Msg::Sequenced { .. }))) = done {
                if let Err(e) = self.on_taken(peer, reply).await {
                    self.note_error(e);
                }
            }
        }
    }

    /// Bring this device up to date with its leader (or, leaderless, with peers).
    pub(super) async fn catch_up(&self) {
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

    /// One catch-up round: reconcile (and re-propose) when the cursor is not
    /// valid for this term, else fetch by cursor.
    async fn catch_up_once(&self) {
        let (role, term, cursor_term) = {
            let state = self.state();
            (state.role, state.term, state.cursor_term)
        };
        if role == Role::Leader || term.leader == Uuid::nil() {
            return;
        }
        if cursor_term != Some(term) {
            if self.reconcile_with(term.leader).await.is_ok() {
                self.state().cursor_term = Some(term);
            }
            self.propose().await;
            return;
        }
        self.fetch_from_leader(term).await;
    }

    /// Follower: fetch sequenced entries from the leader by cursor.
    pub(super) async fn fetch_from_leader(&self, term: Term) {
        loop {
            let since = self.state().cursor;
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
                    if let Err(e) = self.apply(term.leader, entries).await {
                        return self.note_error(e);
                    }
                    {
                        let mut state = self.state();
                        if state.term == term {
                            state.cursor = state.cursor.max(top);
                            state.last_leader_contact = Instant::now();
                        }
                    }
                    if !has_more {
                        break;
                    }
                }
                Ok(Msg::SyncRequired { reason }) => {
                    tracing::info!(library = %self.shared.lib.id(), "leader requires sync: {reason}");
                    self.state().cursor_term = None;
                    self.shared.wake.notify_one();
                    return;
                }
                Ok(_) | Err(_) => return,
            }
        }
        let up_to_seq = self.state().cursor;
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
}
