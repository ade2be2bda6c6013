//! The follower role: propose this device's own entries to the leader (or, with
//! no leader reachable, push them to whoever is), and catch up with the leader
//! by cursor, reconciling first whenever the cursor is not valid for the term.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Msg, Role, Term, MAX_BATCH_ENTRIES};
use super::state::SyncService;

impl SyncService {
    /// Follower: send our own unproposed entries to the leader; without a
    /// reachable leader, push them to whoever is reachable.
    pub(super) async fn propose(&self) {
        let me = self.shared.me;
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
        let entries = match self
            .run_sqlite(move |lib| lib.with_log(|l| l.fetch_origin(me, upto, batch)))
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
            self.state().proposed_upto = top;
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

    /// Members heard from within `leader_timeout`: whom to push to without a leader.
    async fn online_peers(&self) -> Vec<Uuid> {
        let members = self.members().await;
        let window = self.shared.config.leader_timeout;
        let state = self.state();
        members
            .into_iter()
            .filter(|d| {
                state
                    .peers
                    .get(d)
                    .and_then(|p| p.last_contact)
                    .is_some_and(|t| t.elapsed() <= window)
            })
            .collect()
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
                    if let Err(e) = self.apply(entries).await {
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
