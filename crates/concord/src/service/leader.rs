//! The leader role (DESIGN §5): sequencing, propagation and pruning.
//!
//! The leader heartbeats every registered device each `heartbeat_interval`,
//! carrying its term, sequence, version vector and the pruning horizon; replies
//! tell it each follower's version vector, which drives anti-entropy (push what
//! they lack, pull what we lack) and pruning. Elections are in `election.rs`.
//!
//! Entries a follower proposes or pushes are numbered inside that request and
//! answered with their range (`Sequenced`); the range waits in `unnotified`
//! for the next propagation, which tells everyone else (`NewEntries`).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::protocol::{Msg, Role, Term, MAX_BATCH_ENTRIES, MAX_INLINE_ENTRIES};
use super::retire::replicas_only;
use super::state::{one_page, Notice, SyncService};
use crate::error::Result;
use crate::query;
use crate::sync::entry::LogEntry;
use crate::sync::log::VersionVector;
use crate::sync::version_vector::{vv_covers, vv_min};

impl SyncService {
    /// The vectors of every device that still counts, this one's first (the
    /// pruning horizon is their least; retiring needs them all). Devices
    /// silent for longer than `retention` no longer hold the log back; a device
    /// that never acknowledged holds it back (an empty vector) until
    /// `retention` after it was registered.
    pub(super) async fn counted_vectors(&self) -> Vec<VersionVector> {
        let retention = self.shared.config.retention.as_millis() as u64;
        let now = self.now_ms();
        let members = self.members().await;
        let Ok((acks, registered, mine)) = self
            .run_sqlite(|lib| {
                let acks = lib.with_log(|l| l.acks())?;
                let registered = query::members::members_registered_at(lib)?;
                let mine = lib.with_log(|l| l.compact_vector())?;
                Ok((acks, registered, mine))
            })
            .await
        else {
            return vec![VersionVector::new()];
        };
        let acks: HashMap<Uuid, (VersionVector, u64)> =
            acks.into_iter().map(|(d, v, at)| (d, (v, at))).collect();
        let mut vvs = vec![mine];
        for member in members {
            match acks.get(&member) {
                Some((vv, at)) if now.saturating_sub(*at) <= retention => vvs.push(vv.clone()),
                Some(_) => {} // away longer than retention: gets a snapshot on return
                None => {
                    let since = registered.get(&member).copied().unwrap_or(now);
                    if now.saturating_sub(since) <= retention {
                        vvs.push(VersionVector::new());
                    }
                }
            }
        }
        vvs
    }

    /// Leader: heartbeat every member, learn their version vectors, repair what
    /// differs, prune what everyone has.
    pub(super) async fn heartbeat_all(&self, term: Term) {
        let members = self.members().await;
        let counted = self.counted_vectors().await;
        let horizon = replicas_only(vv_min(counted.iter()));
        let vv = self.version_vector().await;
        let gaps = self.past_gaps().await;
        let seq = self.state().seq;
        let heartbeat = Msg::Heartbeat {
            term,
            role: Role::Leader,
            seq,
            vv: vv.clone(),
            horizon: Some(horizon.clone()),
        };
        let mut tasks = self.probe_all(members, &heartbeat);
        let mut differing = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((from, reply)) = done else { continue };
            if let Ok(Msg::HeartbeatReply {
                vv: theirs,
                past_gaps,
                ..
            }) = reply
            {
                let now = self.now_ms();
                let ack = theirs.clone();
                if let Err(e) = self
                    .run_sqlite(move |lib| lib.with_log(|l| l.record_ack(from, &ack, now)))
                    .await
                {
                    self.note_error(e);
                }
                // Equal vectors may still hide different entries past a gap
                // (`crate::sync::gaps`): those differ in `past_gaps`.
                if !vv_covers(&theirs, &vv) || !vv_covers(&vv, &theirs) || past_gaps != gaps {
                    differing.push(from);
                }
                self.state().peers.entry(from).or_default().vv = theirs;
            }
        }
        if self.state().term != term {
            return; // stepped down meanwhile
        }
        for peer in differing {
            if let Err(e) = self.reconcile_with(peer).await {
                tracing::debug!(peer = %peer, "anti-entropy failed: {e}");
            }
        }
        // Before pruning: the horizon covers what is retired now, so every
        // device drops those entries with this heartbeat's horizon.
        self.retire_superseded(counted).await;
        if !horizon.is_empty() {
            let h = horizon.clone();
            match self.run_sqlite(move |lib| lib.prune_log(&h)).await {
                Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned entries every device holds"),
                Ok(_) => {}
                Err(e) => self.note_error(e),
            }
        }
    }

    /// Leader: sequence pending entries and tell every online follower, after
    /// the ranges sequenced meanwhile while taking followers' entries.
    pub(super) async fn sequence_and_notify(&self, term: Term) {
        let notices = {
            let _sequencing = self.shared.sequencing.lock().await;
            let mut notices = std::mem::take(&mut self.state().unnotified);
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
            .run_sqlite(move |lib| lib.with_log(|l| l.sequence_pending(epoch)))
            .await?;
        if let Some((_, to_seq)) = range {
            self.state().seq = to_seq;
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
            let state = self.state();
            state
                .peers
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
            let service = self.clone();
            tasks.spawn(async move {
                for msg in msgs {
                    // Unreachable: it catches up from a later heartbeat.
                    if service.probe(to, msg).await.is_err() {
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
        self.run_sqlite(move |lib| lib.with_log(|l| l.fetch_since_seq(from_seq - 1, count)))
            .await
            .ok()
            .map(|mut e| {
                e.truncate(count);
                e
            })
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
        let known = self.state().peers.get(&to).map(|p| p.vv.clone());
        let lacks: Vec<LogEntry> = all
            .iter()
            .filter(|e| e.lib_seq.is_some_and(|s| (from_seq..=to_seq).contains(&s)))
            .filter(|e| {
                let lacks = known
                    .as_ref()
                    .map(|vv| vv.get(&e.replica()).is_none_or(|have| *have < e.origin_seq));
                // A follower's own entries go back to it only when it is known
                // to lack them (it was restored from a backup).
                let wanted = if e.origin == to {
                    lacks == Some(true)
                } else {
                    lacks != Some(false)
                };
                wanted && !held.contains(&e.id())
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
    pub(super) async fn take_from_follower(
        &self,
        from: Uuid,
        term: Term,
        entries: Vec<LogEntry>,
    ) -> Result<Msg> {
        let held: HashSet<(Uuid, u64)> = entries.iter().map(LogEntry::id).collect();
        let (from_seq, to_seq) = {
            // No other sequencing between applying and numbering: the range
            // holds every entry of the request this log did not hold yet.
            let _sequencing = self.shared.sequencing.lock().await;
            self.apply(from, entries).await?;
            {
                let state = self.state();
                if state.role != Role::Leader || state.term != term {
                    return Ok(Msg::Ok); // stepped down meanwhile
                }
            }
            let Some((from_seq, to_seq)) = self.sequence(term).await? else {
                return Ok(Msg::Ok); // nothing new: sequenced (and notified) before
            };
            self.state().unnotified.push(Notice {
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

    /// `FetchEntries`: a follower fetching by cursor, in this leader's term.
    pub(super) async fn serve_fetch(&self, term: Term, since_seq: u64, limit: u32) -> Result<Msg> {
        let (role, mine) = self.role_and_term();
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
            .run_sqlite(move |lib| lib.with_log(|l| l.fetch_since_seq(since_seq, limit + 1)))
            .await?;
        let (entries, has_more) = one_page(entries, limit);
        Ok(Msg::EntriesResponse { entries, has_more })
    }

    /// `Acknowledge`: how far a follower got; feeds the pruning horizon.
    pub(super) async fn on_acknowledge(
        &self,
        from: Uuid,
        up_to_seq: u64,
        vv: VersionVector,
    ) -> Result<Msg> {
        let now = self.now_ms();
        self.state().peers.entry(from).or_default().acked_seq = up_to_seq;
        self.state().peers.entry(from).or_default().vv = vv.clone();
        self.run_sqlite(move |lib| lib.with_log(|l| l.record_ack(from, &vv, now)))
            .await?;
        Ok(Msg::Ok)
    }
}
