//! Incoming requests: checks every request (library, bounds, membership), then
//! hands it to one handler per message type. Handlers that belong to a role
//! live with that role (`serve_fetch` and `on_acknowledge` with the leader,
//! `serve_reconcile` and `serve_snapshot` with reconciliation); the rest are
//! here.

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Envelope, Msg, Role, Term};
use super::pull;
use super::state::SyncService;
use crate::error::{Error, Result};
use crate::query;
use crate::sync::entry::LogEntry;
use crate::sync::log::VersionVector;
use crate::sync::version_vector::vv_covers;

impl SyncService {
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
            if let Some(message) = self.hear_removed(req.from, &req.msg).await {
                return reply(Msg::Error { message });
            }
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
            let mut state = self.state();
            state.peers.entry(req.from).or_default().heard_from(now);
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

    /// A request from a device removed from this library: served nothing.
    /// Its own entries that it pushes, proposes or announces as a leader go
    /// through the cutoff, which keeps only those it wrote before its removal
    /// and its removal of the member that removed it (so a concurrent mutual
    /// removal ends the same on every member). `None`: not a removed device.
    async fn hear_removed(&self, from: Uuid, msg: &Msg) -> Option<String> {
        let removed = self
            .run_sqlite(move |lib| query::members::is_removed(lib, from))
            .await
            .unwrap_or(false);
        if !removed {
            return None;
        }
        let entries = match msg {
            Msg::PushEntries { entries }
            | Msg::ProposeEntries { entries }
            | Msg::NewEntries {
                entries: Some(entries),
                ..
            } => entries.as_slice(),
            _ => &[],
        };
        let own: Vec<LogEntry> = entries
            .iter()
            .filter(|e| e.origin == from)
            .cloned()
            .collect();
        if !own.is_empty() {
            if let Err(e) = self.apply(from, own).await {
                self.note_error(e);
            }
        }
        tracing::warn!(library = %self.shared.lib.id(), from = %from, "request from a removed device refused");
        Some(format!(
            "device {from} was removed from library {}",
            self.shared.lib.id()
        ))
    }

    /// One handler per message type; anything that is not a request is refused.
    async fn dispatch(&self, from: Uuid, msg: Msg) -> Result<Msg> {
        match msg {
            Msg::NewEntries {
                term,
                from_seq,
                to_seq,
                entries,
            } => {
                self.on_new_entries(from, term, from_seq, to_seq, entries)
                    .await
            }
            Msg::FetchEntries {
                term,
                since_seq,
                limit,
            } => self.serve_fetch(term, since_seq, limit).await,
            Msg::Acknowledge { up_to_seq, vv, .. } => {
                self.on_acknowledge(from, up_to_seq, vv).await
            }
            Msg::Heartbeat {
                term,
                role,
                seq,
                vv,
                horizon,
            } => self.on_heartbeat(from, term, role, seq, vv, horizon).await,
            Msg::ProposeEntries { entries } => self.on_propose(from, entries).await,
            Msg::PushEntries { entries } => self.on_push(from, entries).await,
            Msg::Reconcile { vv, limit } => self.serve_reconcile(from, vv, limit).await,
            Msg::Snapshot { cursor } => self.serve_snapshot(cursor).await,
            Msg::PullEntries { location, cursor } => {
                self.run_sqlite(move |lib| pull::page(lib, location, &cursor))
                    .await
            }
            Msg::TakeOver { term } => Ok(self.on_take_over(term)),
            Msg::Retire { retired } => self.serve_retire(retired).await,
            other => Err(Error::Invalid(format!("{} is not a request", other.name()))),
        }
    }

    /// `TakeOver`: a member whose election probe found the leader of `term`
    /// gone thinks this device should lead. Check the leader now (the check
    /// probes it first) rather than a `leader_timeout` later.
    fn on_take_over(&self, term: Term) -> Msg {
        let state = self.state();
        if state.term == term && state.role == Role::Follower {
            self.shared.suspect.notify_one();
        }
        Msg::Ok
    }

    /// `NewEntries`: the leader sequenced a range (fenced by its term).
    async fn on_new_entries(
        &self,
        from: Uuid,
        term: Term,
        from_seq: u64,
        to_seq: u64,
        entries: Option<Vec<LogEntry>>,
    ) -> Result<Msg> {
        if let Some(stale) = self.fence(from, term).await {
            return Ok(stale);
        }
        self.on_sequenced(from, term, from_seq, to_seq, entries)
            .await?;
        Ok(Msg::Ok)
    }

    /// `ProposeEntries`: a follower's own entries, for the leader to sequence.
    async fn on_propose(&self, from: Uuid, entries: Vec<LogEntry>) -> Result<Msg> {
        let (role, mine) = self.role_and_term();
        if role != Role::Leader {
            return Ok(Msg::StaleTerm { term: mine });
        }
        if entries.iter().any(|e| e.origin != from) {
            return Err(Error::Invalid(format!(
                "device {from} proposed entries of another device; only its own may be proposed"
            )));
        }
        // Proposals carry the proposer's current replica only.
        if let Some(last) = entries.last() {
            self.state().peers.entry(from).or_default().writing = Some(last.replica());
        }
        self.take_from_follower(from, mine, entries).await
    }

    /// `PushEntries`: entries the sender holds and this device may lack. A
    /// leader sequences them as it does a proposal.
    async fn on_push(&self, from: Uuid, entries: Vec<LogEntry>) -> Result<Msg> {
        let (role, mine) = self.role_and_term();
        if role == Role::Leader {
            return self.take_from_follower(from, mine, entries).await;
        }
        self.apply(from, entries).await?;
        Ok(Msg::Ok)
    }

    /// `Heartbeat`: from the leader (adopt its term, catch up, prune to its
    /// horizon) or from a follower probing during an election. A heartbeat
    /// claiming a term its sender does not lead changes nothing here.
    async fn on_heartbeat(
        &self,
        from: Uuid,
        term: Term,
        role: Role,
        seq: u64,
        vv: VersionVector,
        horizon: Option<VersionVector>,
    ) -> Result<Msg> {
        let mine = self.state().term;
        if term < mine && role == Role::Leader {
            return Ok(Msg::StaleTerm { term: mine });
        }
        // Only the leader's own heartbeat speaks for its term (contact,
        // catching up, pruning); a probe's newer term is checked with the
        // leader it names (`hear_of`).
        let from_leader = role == Role::Leader && term.leader == from;
        if term > mine {
            self.hear_of(from, term).await;
        }
        let my_vv = self.version_vector().await;
        let past_gaps = self.past_gaps().await;
        let (my_term, my_role, my_seq, lacking, from_leader) = {
            let mut state = self.state();
            state.peers.entry(from).or_default().vv = vv.clone();
            // The current leader's own heartbeat.
            let from_leader = from_leader && term == state.term;
            if from_leader {
                state.last_leader_contact = Instant::now();
                // The leader holds (or held) entries we lack: the cursor cannot
                // fetch them if they were sequenced below it or pruned while this
                // device did not count (away past retention), so reconcile by
                // version vector, which falls back to a snapshot when needed.
                if !vv_covers(&my_vv, &vv) {
                    state.cursor_term = None;
                }
            }
            let lacking = from_leader
                && (state.cursor_term != Some(term)
                    || state.cursor < seq
                    || !vv_covers(&my_vv, &vv));
            (state.term, state.role, state.seq, lacking, from_leader)
        };
        if lacking {
            self.shared.wake.notify_one();
        }
        if let Some(h) = horizon {
            // A horizon prunes the log: accepted only from the current
            // leader, in a heartbeat it sent itself.
            if from_leader {
                if let Err(e) = self.run_sqlite(move |lib| lib.prune_log(&h)).await {
                    self.note_error(e);
                }
            }
        }
        Ok(Msg::HeartbeatReply {
            term: my_term,
            role: my_role,
            seq: my_seq,
            vv: my_vv,
            past_gaps,
        })
    }
}
