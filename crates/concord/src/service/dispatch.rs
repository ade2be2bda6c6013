//! Incoming requests: checks every request (library, bounds, membership), then
//! hands it to one handler per message type. Handlers that belong to a role
//! live with that role (`serve_fetch` with the leader, `serve_reconcile` with
//! reconciliation); the rest are here.

use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::{Envelope, Msg, Role, Term, MAX_BATCH_ENTRIES};
use super::pull;
use super::snapshot;
use super::state::SyncService;
use super::store::vv_covers;
use crate::error::{Error, Result};
use crate::sync::log::VersionVector;

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
            let mut st = self.st();
            let p = st.peers.entry(req.from).or_default();
            p.last_seen_ms = Some(now);
            p.last_contact = Some(Instant::now());
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

    async fn dispatch(&self, from: Uuid, msg: Msg) -> Result<Msg> {
        match msg {
            Msg::NewEntries {
                term,
                from_seq,
                to_seq,
                entries,
            } => {
                if let Some(stale) = self.fence(term) {
                    return Ok(stale);
                }
                self.on_sequenced(from, term, from_seq, to_seq, entries)
                    .await?;
                Ok(Msg::Ok)
            }
            Msg::FetchEntries {
                term,
                since_seq,
                limit,
            } => {
                let (role, mine) = {
                    let st = self.st();
                    (st.role, st.term)
                };
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
                    .blocking(move |lib| lib.with_log(|l| l.fetch_since_seq(since_seq, limit + 1)))
                    .await?;
                let has_more = entries.len() > limit;
                let mut entries = entries;
                entries.truncate(limit);
                Ok(Msg::EntriesResponse { entries, has_more })
            }
            Msg::Acknowledge { up_to_seq, vv, .. } => {
                let now = self.now_ms();
                self.st().peers.entry(from).or_default().acked_seq = up_to_seq;
                self.st().peers.entry(from).or_default().vv = vv.clone();
                self.blocking(move |lib| lib.with_log(|l| l.record_ack(from, &vv, now)))
                    .await?;
                Ok(Msg::Ok)
            }
            Msg::Heartbeat {
                term,
                role,
                seq,
                vv,
                horizon,
            } => self.on_heartbeat(from, term, role, seq, vv, horizon).await,
            Msg::ProposeEntries { entries } => {
                let (role, mine) = {
                    let st = self.st();
                    (st.role, st.term)
                };
                if role != Role::Leader {
                    return Ok(Msg::StaleTerm { term: mine });
                }
                if entries.iter().any(|e| e.origin != from) {
                    return Err(Error::Invalid(format!(
                        "device {from} proposed entries of another device; only its own may be proposed"
                    )));
                }
                self.take_from_follower(from, mine, entries).await
            }
            Msg::PushEntries { entries } => {
                let (role, mine) = {
                    let st = self.st();
                    (st.role, st.term)
                };
                if role == Role::Leader {
                    return self.take_from_follower(from, mine, entries).await;
                }
                self.apply(entries).await?;
                Ok(Msg::Ok)
            }
            Msg::Reconcile { vv, limit } => {
                let floor = self
                    .blocking(|lib| lib.with_log(|l| l.pruned_floor()))
                    .await?;
                if let Some((origin, _)) = floor
                    .iter()
                    .find(|(o, through)| vv.get(o).copied().unwrap_or(0) < **through)
                {
                    return Ok(Msg::SyncRequired {
                        reason: format!("entries of {origin} it lacks were pruned"),
                    });
                }
                let limit = (limit as usize).clamp(1, MAX_BATCH_ENTRIES);
                let want = vv.clone();
                let (mine, entries, seq) = self
                    .blocking(move |lib| {
                        lib.with_log(|l| {
                            Ok((
                                l.version_vector()?,
                                l.fetch_missing(&want, limit + 1)?,
                                l.latest_seq()?.unwrap_or(0),
                            ))
                        })
                    })
                    .await?;
                let has_more = entries.len() > limit;
                let mut entries = entries;
                entries.truncate(limit);
                {
                    let mut st = self.st();
                    st.peers.entry(from).or_default().vv = vv;
                }
                // The peer may have what we lack: reconcile back when it does.
                let term = self.st().term;
                Ok(Msg::ReconcileResponse {
                    vv: mine,
                    entries,
                    has_more,
                    term,
                    seq,
                })
            }
            Msg::Snapshot { cursor } => {
                let chunk = self
                    .blocking(move |lib| snapshot::chunk(lib, &cursor))
                    .await?;
                self.st().stats.snapshots += 1;
                Ok(chunk)
            }
            Msg::PullEntries { location, cursor } => {
                self.blocking(move |lib| pull::page(lib, location, &cursor))
                    .await
            }
            other => Err(Error::Invalid(format!("{} is not a request", other.name()))),
        }
    }

    async fn on_heartbeat(
        &self,
        from: Uuid,
        term: Term,
        role: Role,
        seq: u64,
        vv: VersionVector,
        horizon: Option<VersionVector>,
    ) -> Result<Msg> {
        let mine = self.st().term;
        if term < mine && role == Role::Leader {
            return Ok(Msg::StaleTerm { term: mine });
        }
        if term > mine {
            self.adopt(term);
        }
        let my_vv = self.version_vector().await;
        let (my_term, my_role, my_seq, lacking) = {
            let mut st = self.st();
            st.peers.entry(from).or_default().vv = vv.clone();
            if role == Role::Leader && term == st.term {
                st.last_leader_contact = Instant::now();
                // The leader holds (or held) entries we lack: the cursor cannot
                // fetch them if they were sequenced below it or pruned while this
                // device did not count (away past retention), so reconcile by
                // version vector, which falls back to a snapshot when needed.
                if !vv_covers(&my_vv, &vv) {
                    st.cursor_term = None;
                }
            }
            let lacking = role == Role::Leader
                && term == st.term
                && (st.cursor_term != Some(term) || st.cursor < seq || !vv_covers(&my_vv, &vv));
            (st.term, st.role, st.seq, lacking)
        };
        if lacking {
            self.shared.wake.notify_one();
        }
        if let Some(h) = horizon {
            if role == Role::Leader && term == my_term {
                let _ = self
                    .blocking(move |lib| lib.with_log(|l| l.prune_covered(&h)))
                    .await;
            }
        }
        Ok(Msg::HeartbeatReply {
            term: my_term,
            role: my_role,
            seq: my_seq,
            vv: my_vv,
        })
    }
}
