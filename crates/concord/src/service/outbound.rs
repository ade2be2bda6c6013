//! Requests to other devices: every outbound message goes through here, so
//! the envelope, the time limits, the contact bookkeeping and the adoption of
//! a newer term a peer answers with are in one place.
//!
//! Leadership comes only from the leader (DESIGN §13): a term is adopted from
//! the device it names; a newer term another member mentions (`StaleTerm`, a
//! reconcile answer, a probe) is only a rumour, which this device checks by
//! asking the leader it names (`confirm_rumour`) before adopting anything.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use uuid::Uuid;

use super::protocol::{Envelope, Msg, Role, Term};
use super::state::{epoch_in_bounds, SyncService};
use super::transport::TransportError;

impl SyncService {
    /// A request that may take up to `request_timeout`.
    pub(super) async fn send(
        &self,
        to: Uuid,
        msg: Msg,
    ) -> std::result::Result<Msg, TransportError> {
        self.send_within(to, msg, self.shared.config.request_timeout)
            .await
    }

    /// For heartbeats, probes and notifications: wait at most one heartbeat interval.
    pub(super) async fn probe(
        &self,
        to: Uuid,
        msg: Msg,
    ) -> std::result::Result<Msg, TransportError> {
        let limit = self
            .shared
            .config
            .heartbeat_interval
            .min(self.shared.config.request_timeout);
        self.send_within(to, msg, limit.max(Duration::from_millis(50)))
            .await
    }

    /// Probe every device of `to` with `msg` at once; the replies arrive in
    /// the returned set as they come, each with the device it is from.
    pub(super) fn probe_all(
        &self,
        to: Vec<Uuid>,
        msg: &Msg,
    ) -> JoinSet<(Uuid, std::result::Result<Msg, TransportError>)> {
        let mut tasks = JoinSet::new();
        for device in to {
            let service = self.clone();
            let msg = msg.clone();
            tasks.spawn(async move { (device, service.probe(device, msg).await) });
        }
        tasks
    }

    /// Every request goes out here: counted, time-limited, the peer marked as
    /// heard from when it answers, and a newer term it answers with adopted.
    async fn send_within(
        &self,
        to: Uuid,
        msg: Msg,
        limit: Duration,
    ) -> std::result::Result<Msg, TransportError> {
        let env = Envelope {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            library: self.shared.lib.id(),
            from: self.shared.me,
            msg,
        };
        self.state().stats.sent += 1;
        let reply = match tokio::time::timeout(limit, self.shared.transport.request(to, env)).await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(to)),
        };
        match &reply {
            Ok(r) => {
                let now = self.now_ms();
                self.state().peers.entry(to).or_default().heard_from(now);
                if let Msg::StaleTerm { term } = r.msg {
                    self.hear_of(to, term).await;
                }
            }
            Err(e) => {
                tracing::debug!(library = %self.shared.lib.id(), to = %to, "request failed: {e}")
            }
        }
        reply.map(|e| e.msg)
    }

    /// `from` told us of `term`. Adopted when `from` is the leader it names;
    /// a newer term named by anyone else only makes this device ask that
    /// leader (`confirm_rumour`, run by the main loop). Returns whether the
    /// term was adopted.
    pub(super) async fn hear_of(&self, from: Uuid, term: Term) -> bool {
        if term.leader == from {
            return self.adopt(term).await;
        }
        let mut state = self.state();
        let newer = term > state.term && epoch_in_bounds(state.term, term);
        if newer && state.rumour.is_none_or(|r| r < term) {
            state.rumour = Some(term);
            drop(state);
            self.shared.confirm.notify_one();
        }
        false
    }

    /// Ask the leader a rumoured term names what its term is, and adopt its
    /// answer if it names itself (a newer rumour it answers with is checked
    /// in turn). A leader that does not answer is not adopted: elections go on.
    pub(super) async fn confirm_rumour(&self) {
        let (rumour, term, seq) = {
            let mut state = self.state();
            let Some(rumour) = state.rumour.take() else {
                return;
            };
            if rumour <= state.term {
                return;
            }
            (rumour, state.term, state.cursor)
        };
        let probe = Msg::Heartbeat {
            term,
            role: Role::Follower,
            seq,
            vv: self.version_vector().await,
            horizon: None,
        };
        if let Ok(Msg::HeartbeatReply { term, .. }) = self.probe(rumour.leader, probe).await {
            self.hear_of(rumour.leader, term).await;
        }
    }
}
