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
    /// Refuse a message from an older term; adopt a newer one.
    pub(super) async fn fence(&self, term: Term) -> Option<Msg> {
        let mine = self.state().term;
        if term < mine {
            return Some(Msg::StaleTerm { term: mine });
        }
        self.adopt(term).await;
        None
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
            self.apply(entries).await?;
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
            if self.fence(term).await.is_none() {
                self.on_sequenced(peer, term, from_seq, to_seq, entries)
                    .await?;
            }
        }
        Ok(())
    }
}
