//! The follower's cursor over the leader's sequence: fencing requests by term,
//! and moving the cursor when the leader announces a sequenced range
//! (`NewEntries`) or answers a proposal with one (`Sequenced`).

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Msg, Term};
use super::state::SyncService;
use crate::error::Result;
use crate::sync::entry::LogEntry;

impl SyncService {
    /// Fence a leader's message (`NewEntries`, `Sequenced`) from `from`:
    /// refuse an older term; refuse a term `from` does not lead (a newer one
    /// is only checked with the leader it names, see `hear_of`); adopt a
    /// newer term of its own when within bounds. `None`: go ahead.
    pub(super) async fn fence(&self, from: Uuid, term: Term) -> Option<Msg> {
        let mine = self.state().term;
        if term < mine {
            return Some(Msg::StaleTerm { term: mine });
        }
        if term.leader != from {
            self.hear_of(from, term).await;
            tracing::warn!(library = %self.shared.lib.id(), from = %from, epoch = term.epoch, leader = %term.leader, "refused a leader's message from another device");
            return Some(Msg::Error {
                message: format!(
                    "term {} is led by {}, not by its sender {from}",
                    term.epoch, term.leader
                ),
            });
        }
        self.hear_of(from, term).await;
        let now = self.state().term;
        if now == term {
            None
        } else if term < now {
            Some(Msg::StaleTerm { term: now })
        } else {
            Some(Msg::Error {
                message: format!(
                    "term {} is too far ahead of ours ({})",
                    term.epoch, now.epoch
                ),
            })
        }
    }

    /// Follower: the leader of `term` (already fenced) sequenced
    /// `from_seq..=to_seq`. `entries`, when present, is everything of that
    /// range this device lacks: in step (the cursor at `from_seq - 1` or
    /// beyond, for this term) it applies them and moves the cursor to
    /// `to_seq`. Otherwise, if behind, it catches up by fetch or reconcile.
    pub(super) async fn on_sequenced(
        &self,
        from: Uuid,
        term: Term,
        from_seq: u64,
        to_seq: u64,
        entries: Option<Vec<LogEntry>>,
    ) -> Result<()> {
        let in_step = {
            let mut state = self.state();
            if term.leader == from {
                state.last_leader_contact = Instant::now();
            }
            state.cursor_term == Some(term) && state.cursor.saturating_add(1) >= from_seq
        };
        if let (true, Some(entries)) = (in_step, entries) {
            // Everything up to `to_seq` this device lacks is here.
            self.apply(from, entries).await?;
            let mut state = self.state();
            if state.cursor_term == Some(term) {
                state.cursor = state.cursor.max(to_seq);
            }
            return Ok(());
        }
        let state = self.state();
        let behind = state.cursor_term != Some(term) || state.cursor < to_seq;
        drop(state);
        if behind {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Sender of `ProposeEntries`/`PushEntries`: the receiver took them. A
    /// leader's `Sequenced` is this device's only word of that range (no
    /// `NewEntries` follows for it).
    pub(super) async fn on_taken(&self, peer: Uuid, reply: Msg) -> Result<()> {
        if let Msg::Sequenced {
            term,
            from_seq,
            to_seq,
            entries,
        } = reply
        {
            if self.fence(peer, term).await.is_none() {
                self.on_sequenced(peer, term, from_seq, to_seq, entries)
                    .await?;
            }
        }
        Ok(())
    }
}
