//! Leader duties and elections (DESIGN §5).
//!
//! The leader heartbeats every registered device each `heartbeat_interval`,
//! carrying its term, sequence, version vector and the pruning horizon; replies
//! tell it each follower's version vector, which drives anti-entropy (push what
//! they lack, pull what we lack) and pruning. A follower that hears nothing from
//! its leader for `leader_timeout` probes every registered device: a newer term
//! is adopted; otherwise the reachable device with the highest id (counting
//! itself) takes `max epoch seen + 1`. Devices that are not the highest wait for
//! it to do the same.

use std::collections::HashMap;

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Msg, Role, Term};
use super::SyncService;
use crate::sync::log::VersionVector;
use crate::sync::version_vector::{vv_covers, vv_min};

impl SyncService {
    /// The version vector every device that still counts has reached. Devices
    /// silent for longer than `retention` no longer hold the log back; a device
    /// that never acknowledged holds it back until `retention` after it was
    /// registered.
    pub(super) async fn horizon(&self) -> VersionVector {
        let retention = self.shared.config.retention.as_millis() as u64;
        let now = self.now_ms();
        let members = self.members().await;
        let Ok((acks, registered, mine)) = self
            .blocking(|lib| {
                let acks = lib.with_log(|l| l.acks())?;
                let registered: HashMap<Uuid, u64> = lib.read(|c| {
                    let mut stmt = c.prepare_cached("SELECT uuid, _hlc FROM devices")?;
                    let rows = stmt.query_map([], |r| {
                        Ok((r.get::<_, Uuid>(0)?, (r.get::<_, i64>(1)? as u64) >> 16))
                    })?;
                    Ok(rows.filter_map(|r| r.ok()).collect())
                })?;
                let mine = lib.with_log(|l| l.version_vector())?;
                Ok((acks, registered, mine))
            })
            .await
        else {
            return VersionVector::new();
        };
        let acks: HashMap<Uuid, (VersionVector, u64)> =
            acks.into_iter().map(|(d, v, at)| (d, (v, at))).collect();
        let mut vvs = vec![mine];
        for m in members {
            match acks.get(&m) {
                Some((vv, at)) if now.saturating_sub(*at) <= retention => vvs.push(vv.clone()),
                Some(_) => {} // away longer than retention: gets a snapshot on return
                None => {
                    let since = registered.get(&m).copied().unwrap_or(now);
                    if now.saturating_sub(since) <= retention {
                        vvs.push(VersionVector::new());
                    }
                }
            }
        }
        vv_min(vvs.iter())
    }

    /// Leader: heartbeat every member, learn their version vectors, repair what
    /// differs, prune what everyone has.
    pub(super) async fn heartbeat_all(&self, term: Term) {
        let members = self.members().await;
        let horizon = self.horizon().await;
        let vv = self.version_vector().await;
        let seq = self.st().seq;
        let mut tasks = tokio::task::JoinSet::new();
        for to in members {
            let me = self.clone();
            let msg = Msg::Heartbeat {
                term,
                role: Role::Leader,
                seq,
                vv: vv.clone(),
                horizon: Some(horizon.clone()),
            };
            tasks.spawn(async move { (to, me.probe(to, msg).await) });
        }
        let mut differing = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((from, reply)) = done else { continue };
            if let Ok(Msg::HeartbeatReply { vv: theirs, .. }) = reply {
                let now = self.now_ms();
                let ack = theirs.clone();
                let _ = self
                    .blocking(move |lib| lib.with_log(|l| l.record_ack(from, &ack, now)))
                    .await;
                if !vv_covers(&theirs, &vv) || !vv_covers(&vv, &theirs) {
                    differing.push(from);
                }
                self.st().peers.entry(from).or_default().vv = theirs;
            }
        }
        if self.st().term != term {
            return; // stepped down meanwhile
        }
        for peer in differing {
            if let Err(e) = self.reconcile_with(peer).await {
                tracing::debug!(peer = %peer, "anti-entropy failed: {e}");
            }
        }
        if !horizon.is_empty() {
            let h = horizon.clone();
            match self
                .blocking(move |lib| lib.with_log(|l| l.prune_covered(&h)))
                .await
            {
                Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned entries every device holds"),
                Ok(_) => {}
                Err(e) => self.note_error(e),
            }
        }
    }

    /// Follower without a leader: probe, then adopt, wait, or lead.
    pub(super) async fn elect(&self) {
        let members = self.members().await;
        let (term, cursor) = {
            let st = self.st();
            (st.term, st.cursor)
        };
        let vv = self.version_vector().await;
        let mut tasks = tokio::task::JoinSet::new();
        for to in members {
            let me = self.clone();
            let msg = Msg::Heartbeat {
                term,
                role: Role::Follower,
                seq: cursor,
                vv: vv.clone(),
                horizon: None,
            };
            tasks.spawn(async move { (to, me.probe(to, msg).await) });
        }
        let mut reachable = vec![self.shared.me];
        let mut top_epoch = term.epoch;
        let mut leader_alive = false;
        while let Some(done) = tasks.join_next().await {
            let Ok((from, reply)) = done else { continue };
            if let Ok(Msg::HeartbeatReply { term: t, .. }) = reply {
                reachable.push(from);
                top_epoch = top_epoch.max(t.epoch);
                if t > term {
                    self.adopt(t);
                    return;
                }
                if from == term.leader && term.leader != Uuid::nil() {
                    leader_alive = true;
                }
            }
        }
        if self.st().term != term {
            return; // a newer term arrived while probing
        }
        if leader_alive {
            self.st().last_leader_contact = Instant::now();
            self.shared.wake.notify_one();
            return;
        }
        let winner = reachable.iter().copied().max().unwrap_or(self.shared.me);
        if winner == self.shared.me {
            let new = Term {
                epoch: top_epoch + 1,
                leader: self.shared.me,
            };
            tracing::info!(library = %self.shared.lib.id(), epoch = new.epoch, "elected leader");
            self.adopt(new);
            self.heartbeat_all(new).await;
            self.on_change().await;
        } else {
            // Let the higher device take over; meanwhile sync directly with it.
            self.st().last_leader_contact = Instant::now();
            if let Err(e) = self.reconcile_with(winner).await {
                tracing::debug!(peer = %winner, "leaderless reconcile failed: {e}");
            }
        }
    }
}
