//! Version-vector reconciliation (DESIGN §5) and snapshot backfill (DESIGN §8)
//! between any two devices: pull what this device lacks, push what the peer
//! lacks, and fall back to a snapshot when the peer pruned what is needed.
//! Both sides live here: the asking side (`reconcile_with`) and the answering
//! side (`serve_reconcile`, `serve_snapshot`).

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{self, Msg, MAX_BATCH_ENTRIES};
use super::snapshot;
use super::state::SyncService;
use crate::error::{Error, Result};
use crate::sync::log::VersionVector;

impl SyncService {
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
}
