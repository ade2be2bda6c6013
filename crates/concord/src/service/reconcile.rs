//! Version-vector reconciliation (DESIGN §5) and snapshot backfill (DESIGN §8)
//! between any two devices: pull what this device lacks, push what the peer
//! lacks, and fall back to a snapshot when the peer pruned what is needed.
//! Both sides live here: the asking side (`reconcile_with`) and the answering
//! side (`serve_reconcile`, `serve_snapshot`).

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{self, Msg, Term, MAX_BATCH_ENTRIES};
use super::retire::digest_of;
use super::snapshot;
use super::state::{one_page, SyncService};
use crate::error::{Error, Result};
use crate::sync::entry::{is_replica_of, LogEntry};
use crate::sync::log::VersionVector;
use crate::sync::version_vector::vv_min;

/// One snapshot chunk as received: rows, tombstones, bulk operations.
type StagedChunk = (
    Vec<protocol::SnapshotRow>,
    Vec<protocol::SnapshotTombstone>,
    Vec<LogEntry>,
);

/// How many passes a snapshot takes at most while its source's vector keeps
/// moving between chunks; the last is merged whatever it holds.
const SNAPSHOT_ATTEMPTS: u32 = 3;

/// Rows, tombstones and bulk operations a snapshot pass holds in memory
/// before merging; past it, chunks are merged as they come.
const MAX_STAGED: usize = 200_000;

impl SyncService {
    /// Version-vector reconciliation with one peer: pull what we lack, push what it
    /// lacks. Falls back to a snapshot when the peer pruned what we need.
    pub async fn reconcile_with(&self, peer: Uuid) -> Result<()> {
        // Retirements first when the peer's last vector shows another retired
        // set: a replica this device retired and the peer pruned would
        // otherwise make it answer with a snapshot.
        let known = self.state().peers.get(&peer).map(|p| digest_of(&p.vv));
        self.exchange_retired(peer, known.unwrap_or(0)).await?;
        let their_vv = self.pull_missing(peer).await?;
        self.exchange_retired(peer, digest_of(&their_vv)).await?;
        let their_vv = self.push_missing(peer, their_vv).await?;
        // What the peer holds now (lets `propose` skip what it already has).
        self.state().peers.entry(peer).or_default().vv = their_vv;
        Ok(())
    }

    /// Pull, page by page, what `peer` holds and this device lacks (a snapshot
    /// first when the peer pruned some of it). Returns the peer's version vector.
    async fn pull_missing(&self, peer: Uuid) -> Result<VersionVector> {
        let limit = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES) as u32;
        let mut snapshot_taken = false;
        // Rollback detection looks at the first answer (a snapshot checks its own).
        let mut first_reply = true;
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
                    vv: their_vv,
                    entries,
                    has_more,
                    term,
                    seq,
                }) => {
                    if first_reply {
                        // Against this log now, not the vector asked with: our
                        // own entries proposed meanwhile are no loss.
                        first_reply = false;
                        let mine = self.full_vector().await;
                        self.note_rollback(peer, &mine, &their_vv);
                    }
                    self.hear_of(peer, term).await;
                    raise_past(&mut next, &entries);
                    if has_more {
                        // Pipelined: ask for the next page while applying this one.
                        let fetch = self.send(
                            peer,
                            Msg::Reconcile {
                                vv: next.clone(),
                                limit,
                            },
                        );
                        let (applied, fetched) = tokio::join!(self.apply(peer, entries), fetch);
                        applied?;
                        prefetched = Some(fetched);
                        ask = Some(next);
                    } else {
                        self.apply(peer, entries).await?;
                        self.align_cursor(peer, term, seq);
                        return Ok(their_vv);
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
                    first_reply = false;
                    tracing::info!(library = %self.shared.lib.id(), peer = %peer, "snapshot needed: {reason}");
                    self.snapshot_from(peer).await?;
                    snapshot_taken = true;
                    continue;
                }
                Ok(other) => {
                    return Err(Error::Other(format!("unexpected reply {}", other.name())))
                }
                Err(e) => return Err(Error::Other(e.to_string())),
            }
        }
    }

    /// Detect a rollback: `theirs` (a peer's version vector) holds positions
    /// of this device's own replicas beyond `mine`, so this device lost
    /// entries it wrote. Counted in `sync status` and logged; the entries
    /// themselves come back through the reconcile (or snapshot) under way.
    fn note_rollback(&self, peer: Uuid, mine: &VersionVector, theirs: &VersionVector) {
        let me = self.shared.me;
        let lost: u64 = theirs
            .iter()
            .filter(|(replica, _)| is_replica_of(**replica, me))
            .map(|(replica, seq)| seq.saturating_sub(mine.get(replica).copied().unwrap_or(0)))
            .sum();
        if lost > 0 {
            tracing::warn!(
                library = %self.shared.lib.id(), peer = %peer, entries = lost,
                "rollback detected: the peer holds entries this device wrote and no longer \
                 has (data dir restored from a backup, rolled back, or cut by a power loss); \
                 taking them back"
            );
            self.state().stats.rolled_back += lost;
        }
    }

    /// After the last page from `peer`: when it leads this device's term, the
    /// cursor is valid for this term from here on, so the leader's next
    /// notification is applied in step.
    fn align_cursor(&self, peer: Uuid, term: Term, seq: u64) {
        let mut state = self.state();
        if state.term == term && term.leader == peer {
            state.cursor = if state.cursor_term == Some(term) {
                state.cursor.max(seq)
            } else {
                seq
            };
            state.cursor_term = Some(term);
            state.last_leader_contact = Instant::now();
        }
    }

    /// Push, batch by batch, what `peer` lacks by `their_vv` (compact, as
    /// sent). Returns the peer's version vector raised by what it was sent.
    async fn push_missing(&self, peer: Uuid, mut their_vv: VersionVector) -> Result<VersionVector> {
        loop {
            let vv = their_vv.clone();
            let batch = self.shared.config.fetch_batch.min(MAX_BATCH_ENTRIES);
            let entries = self
                .run_sqlite(move |lib| {
                    lib.with_log(|l| l.fetch_missing(&l.expand_vector(&vv)?, batch + 1))
                })
                .await?;
            if entries.is_empty() {
                break;
            }
            let (entries, full) = one_page(entries, batch);
            raise_past(&mut their_vv, &entries);
            match self.send(peer, Msg::PushEntries { entries }).await {
                Ok(reply @ (Msg::Ok | Msg::Sequenced { .. })) => self.on_taken(peer, reply).await?,
                Ok(other) => return Err(Error::Other(format!("push refused: {}", other.name()))),
                Err(e) => return Err(Error::Other(e.to_string())),
            }
            if !full {
                break;
            }
        }
        Ok(their_vv)
    }

    /// Take the state from `peer` in chunks, then continue from its version vector.
    async fn snapshot_from(&self, peer: Uuid) -> Result<()> {
        let mut attempt = 1;
        let vv = loop {
            match self
                .snapshot_pass(peer, attempt >= SNAPSHOT_ATTEMPTS)
                .await?
            {
                Some(vv) => break vv,
                None => attempt += 1,
            }
        };
        let mine = self.full_vector().await;
        self.note_rollback(peer, &mine, &vv);
        self.run_sqlite(move |lib| {
            // The rows first on disk, then the log says it holds them: a power
            // cut between must not leave the vector covering rows it lost.
            lib.make_durable()?;
            let floor = lib.hlc().last();
            lib.with_log(|l| l.raise_version_vector(&vv, floor))
        })
        .await?;
        self.state().stats.snapshots += 1;
        tracing::info!(library = %self.shared.lib.id(), peer = %peer, "snapshot applied");
        Ok(())
    }

    /// One pass over `peer`'s state: every chunk is fetched, then all are
    /// merged, and the vector the merged rows cover is returned. `None`: the
    /// source's vector moved between chunks, so nothing was merged and the
    /// caller takes the snapshot again (unless `last`, when the pass is merged
    /// and covers the least of its chunks' vectors).
    ///
    /// **Decision**: chunks are staged and merged together, only from a pass
    /// whose chunks all carry one vector when possible. Each chunk's rows hold
    /// exactly the changes its vector counts (`Library::read_with_log`), so
    /// such a pass holds exactly the changes of that vector, which the
    /// receiver then claims. Merging chunks as they came left rows whose
    /// entries no vector claimed (a pass cut short, a source writing or
    /// restored from a backup between two chunks); when the source then lost
    /// those entries, the receiver alone held their changes and could never
    /// hand them on, and the devices stayed apart with equal vectors.
    async fn snapshot_pass(&self, peer: Uuid, last: bool) -> Result<Option<VersionVector>> {
        let mut cursor = protocol::SnapshotCursor {
            part: 0,
            after: None,
        };
        let mut staged: Vec<StagedChunk> = Vec::new();
        let (mut held, mut merged_some, mut steady) = (0usize, false, true);
        let mut first: Option<VersionVector> = None;
        let mut least: Option<VersionVector> = None;
        loop {
            let (rows, tombstones, bulk, next, vv) =
                match self.send(peer, Msg::Snapshot { cursor }).await {
                    Ok(Msg::SnapshotChunk {
                        rows,
                        tombstones,
                        bulk,
                        next,
                        vv,
                    }) => (rows, tombstones, bulk, next, vv),
                    Ok(other) => {
                        return Err(Error::Other(format!("snapshot refused: {}", other.name())))
                    }
                    Err(e) => return Err(Error::Other(e.to_string())),
                };
            match &first {
                Some(f) => steady &= *f == vv,
                None => first = Some(vv.clone()),
            }
            least = Some(match least {
                Some(seen) => vv_min([&seen, &vv]),
                None => vv,
            });
            held += rows.len() + tombstones.len() + bulk.len();
            staged.push((rows, tombstones, bulk));
            if held > MAX_STAGED {
                // Too large to hold: merge as it comes (the earlier behaviour).
                self.merge_staged(std::mem::take(&mut staged)).await?;
                (held, merged_some) = (0, true);
            }
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        if !steady && !merged_some && !last {
            tracing::info!(library = %self.shared.lib.id(), peer = %peer, "snapshot source changed during the snapshot; taking it again");
            return Ok(None);
        }
        self.merge_staged(staged).await?;
        Ok(Some(least.unwrap_or_default()))
    }

    /// Merge staged snapshot chunks, in the order they came.
    async fn merge_staged(&self, staged: Vec<StagedChunk>) -> Result<()> {
        self.run_sqlite(move |lib| {
            for (rows, tombstones, bulk) in staged {
                snapshot::apply(lib, rows, tombstones, bulk)?;
            }
            Ok(())
        })
        .await
    }

    /// `Reconcile`: answer with a page of what the asker lacks and this
    /// device's version vector, or `SyncRequired` when some of it was pruned.
    pub(super) async fn serve_reconcile(
        &self,
        from: Uuid,
        vv: VersionVector,
        limit: u32,
    ) -> Result<Msg> {
        let asked = vv.clone();
        let (floor, want) = self
            .run_sqlite(move |lib| {
                lib.with_log(|l| Ok((l.pruned_floor()?, l.expand_vector(&asked)?)))
            })
            .await?;
        if let Some((origin, _)) = floor
            .iter()
            .find(|(o, through)| want.get(o).copied().unwrap_or(0) < **through)
        {
            return Ok(Msg::SyncRequired {
                reason: format!("entries of {origin} it lacks were pruned"),
            });
        }
        let limit = (limit as usize).clamp(1, MAX_BATCH_ENTRIES);
        let (mine, entries, seq) = self
            .run_sqlite(move |lib| {
                lib.with_log(|l| {
                    Ok((
                        l.compact_vector()?,
                        l.fetch_missing(&want, limit + 1)?,
                        l.latest_seq()?.unwrap_or(0),
                    ))
                })
            })
            .await?;
        let (entries, has_more) = one_page(entries, limit);
        {
            let mut state = self.state();
            state.peers.entry(from).or_default().vv = vv;
        }
        // The peer may have what we lack: reconcile back when it does.
        let term = self.state().term;
        Ok(Msg::ReconcileResponse {
            vv: mine,
            entries,
            has_more,
            term,
            seq,
        })
    }

    /// `Snapshot`: one chunk of this device's state.
    pub(super) async fn serve_snapshot(&self, cursor: protocol::SnapshotCursor) -> Result<Msg> {
        let chunk = self
            .run_sqlite(move |lib| snapshot::chunk(lib, &cursor))
            .await?;
        self.state().stats.snapshots += 1;
        Ok(chunk)
    }
}

/// Raise `vv` to hold every entry of `entries`.
fn raise_past(vv: &mut VersionVector, entries: &[LogEntry]) {
    for entry in entries {
        let slot = vv.entry(entry.replica()).or_insert(0);
        *slot = (*slot).max(entry.origin_seq);
    }
}
