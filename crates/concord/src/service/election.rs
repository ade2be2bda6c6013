//! Roles and elections (DESIGN §5): what this device does on each heartbeat
//! tick and on new entries, depending on its role, and the election that
//! decides the role when a follower hears nothing from its leader.
//!
//! A follower that hears nothing from its leader for `leader_timeout` probes
//! every registered device: a newer term is adopted when its leader answers
//! for it; otherwise the reachable device with the highest id (counting
//! itself) takes `max epoch seen + 1` (epochs beyond `MAX_EPOCH_STEP` of ours
//! are not counted, so the step stays bounded and never overflows).
//! Devices that are not the highest wait for it to do the same.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Msg, Role, Term};
use super::state::{SyncService, MAX_EPOCH_STEP};
use crate::sync::gaps::PastGaps;
use crate::sync::version_vector::{vv_covers, VersionVector};

impl SyncService {
    /// React to new local entries (and, on the leader, any new entries).
    pub(super) async fn on_change(&self) {
        let (role, term) = self.role_and_term();
        match role {
            Role::Leader => self.sequence_and_notify(term).await,
            Role::Follower => self.propose().await,
        }
    }

    /// Heartbeat tick: leaders heartbeat and prune; followers watch the leader.
    pub(super) async fn tick(&self) {
        let (role, term, since) = {
            let state = self.state();
            (state.role, state.term, state.last_leader_contact.elapsed())
        };
        match role {
            Role::Leader => {
                self.heartbeat_all(term).await;
                self.on_change().await;
            }
            Role::Follower => {
                // A leader removed from the library no longer leads it.
                let removed = term.leader != Uuid::nil()
                    && term.leader != self.shared.me
                    && !self.is_member(term.leader).await;
                if term.leader == Uuid::nil()
                    || removed
                    || since >= self.shared.config.leader_timeout
                {
                    self.elect().await;
                } else {
                    self.propose().await;
                }
            }
        }
    }

    /// Follower without a leader: probe, then adopt, wait, or lead.
    pub(super) async fn elect(&self) {
        let members = self.members().await;
        let (term, cursor) = {
            let state = self.state();
            (state.term, state.cursor)
        };
        let vv = self.version_vector().await;
        let probe = Msg::Heartbeat {
            term,
            role: Role::Follower,
            seq: cursor,
            vv: vv.clone(),
            horizon: None,
        };
        let mut tasks = self.probe_all(members, &probe);
        let mut reachable = vec![self.shared.me];
        let mut their_vvs: HashMap<Uuid, (VersionVector, PastGaps)> = HashMap::new();
        let mut top_epoch = term.epoch;
        let mut leader_alive = false;
        // Our leader answered with an older term: no one will ever lead ours
        // again, and the others may follow an older one we cannot go back to.
        let mut leader_went_back = false;
        while let Some(done) = tasks.join_next().await {
            let Ok((from, reply)) = done else { continue };
            if let Ok(Msg::HeartbeatReply {
                term: t,
                vv: theirs,
                past_gaps,
                ..
            }) = reply
            {
                reachable.push(from);
                their_vvs.insert(from, (theirs, past_gaps));
                // Epochs beyond the bound are not counted (nor adopted), so
                // our own next epoch stays within it too.
                if t.epoch < term.epoch.saturating_add(MAX_EPOCH_STEP) {
                    top_epoch = top_epoch.max(t.epoch);
                }
                // A newer term is adopted from its own leader; named by
                // another member it is checked with that leader.
                if t > term && self.hear_of(from, t).await {
                    return;
                }
                // Alive as OUR leader only if it still stands for our term: a
                // leader whose files went back in time (a restored backup)
                // answers with an older one, and waiting for it would be
                // waiting forever.
                if from == term.leader && term.leader != Uuid::nil() {
                    if t >= term {
                        leader_alive = true;
                    } else {
                        leader_went_back = true;
                    }
                }
            }
        }
        if self.state().term != term {
            return; // a newer term arrived while probing
        }
        if leader_alive {
            self.state().last_leader_contact = Instant::now();
            self.shared.wake.notify_one();
            return;
        }
        let winner = reachable.iter().copied().max().unwrap_or(self.shared.me);
        // With a leader that went back in time, this device leads a newer
        // term itself (the others adopt it from its heartbeats) rather than
        // wait for a higher device that follows an older term and never asks.
        if winner == self.shared.me || leader_went_back {
            let Some(epoch) = top_epoch.checked_add(1) else {
                return self.note_error("no election: the epoch is at its limit");
            };
            let new = Term {
                epoch,
                leader: self.shared.me,
            };
            tracing::info!(library = %self.shared.lib.id(), epoch = new.epoch, "elected leader");
            self.adopt(new).await;
            self.heartbeat_all(new).await;
            self.on_change().await;
        } else {
            self.defer_to(winner, term, &vv, their_vvs.remove(&winner))
                .await;
        }
    }

    /// The higher device `winner` should take over: ask it to check now (it
    /// may still hear from the leader; then nothing changes), instead of
    /// letting it find out a `leader_timeout` later or every member holding
    /// an election of its own. Meanwhile sync directly with it when one of
    /// the two holds what the other lacks (`theirs`: its vector and what it
    /// holds past gaps, from its probe reply).
    async fn defer_to(
        &self,
        winner: Uuid,
        term: Term,
        vv: &VersionVector,
        theirs: Option<(VersionVector, PastGaps)>,
    ) {
        self.state().last_leader_contact = Instant::now();
        if term.leader != Uuid::nil() {
            let _ = self.probe(winner, Msg::TakeOver { term }).await;
        }
        let gaps = self.past_gaps().await;
        let differs = theirs.is_none_or(|(theirs, past_gaps)| {
            !vv_covers(&theirs, vv) || !vv_covers(vv, &theirs) || past_gaps != gaps
        });
        if differs {
            if let Err(e) = self.reconcile_with(winner).await {
                tracing::debug!(peer = %winner, "leaderless reconcile failed: {e}");
            }
        }
    }

    /// Out of turn (a request to the leader failed or went unanswered, or a
    /// member asked us to take over): check the leader now rather than after
    /// `leader_timeout`. At most once per [`Self::check_gap`], so a burst of
    /// such hints costs one round of probes.
    pub(super) async fn check_leader(&self) {
        {
            let mut state = self.state();
            if state.role == Role::Leader {
                return;
            }
            if state
                .last_check
                .is_some_and(|t| t.elapsed() < self.check_gap())
            {
                return;
            }
            state.last_check = Some(Instant::now());
        }
        self.elect().await;
    }

    /// Shortest time between two out-of-turn leader checks.
    fn check_gap(&self) -> Duration {
        self.shared
            .config
            .heartbeat_interval
            .min(Duration::from_secs(2))
    }
}
