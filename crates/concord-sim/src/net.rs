//! The simulated network: an in-memory [`Transport`] with seeded latency, loss,
//! duplication, reordering (independent per-message latency) and partitions.
//!
//! Every request is encoded with postcard, as a real transport would, and
//! decoded on the far side, so the wire format is exercised too. Requests run as
//! tasks owned by the receiving device, so crashing a device cancels what it was
//! serving. Everything the network does is folded into the trace hash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord::service::protocol::Envelope;
use concord::service::transport::{BoxFuture, Transport, TransportError};
use concord::service::SyncService;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{sleep, sleep_until, Instant};
use uuid::Uuid;

use crate::rng::Rng;
use crate::trace::Trace;

/// Network fault settings for one run.
#[derive(Debug, Clone)]
pub struct NetFaults {
    pub drop: f64,
    pub duplicate: f64,
    /// Latency of one leg, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Chance that a leg is slow (up to 4× the maximum latency).
    pub slow: f64,
    /// How long a requester waits for a response.
    pub timeout: Duration,
    /// A request to a device that is down goes unanswered until `timeout`
    /// (as over QUIC to a killed process: nothing says it is gone) instead of
    /// failing at once.
    pub silent_down: bool,
}

#[derive(Default)]
struct Slot {
    svc: Option<SyncService>,
    /// Requests this device is serving; aborted when it crashes.
    serving: Vec<AbortHandle>,
}

struct State {
    nodes: BTreeMap<Uuid, Slot>,
    /// Partition group per device: two devices talk iff their groups are equal.
    group: BTreeMap<Uuid, u32>,
    rng: Rng,
    faults: NetFaults,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub unreachable: u64,
}

/// The network every device of a run talks over; devices reach it through
/// the [`Transport`] of [`SimNet::link`].
pub struct SimNet {
    state: Mutex<State>,
    trace: Arc<Trace>,
    stats: Mutex<NetStats>,
}

impl SimNet {
    /// A network with no device on it yet, drawing its faults from `rng`.
    pub fn new(rng: Rng, faults: NetFaults, trace: Arc<Trace>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                nodes: BTreeMap::new(),
                group: BTreeMap::new(),
                rng,
                faults,
            }),
            trace,
            stats: Mutex::new(NetStats::default()),
        })
    }

    fn locked(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the network did so far, for the report.
    pub fn stats(&self) -> NetStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transport endpoint for device `me`.
    pub fn link(self: &Arc<Self>, me: Uuid) -> Arc<dyn Transport> {
        Arc::new(Link {
            net: self.clone(),
            me,
        })
    }

    /// Put a device's service on the network (`None`: it is down).
    pub fn set_service(&self, device: Uuid, svc: Option<SyncService>) {
        let mut state = self.locked();
        let slot = state.nodes.entry(device).or_default();
        slot.svc = svc;
    }

    /// Take a device off the network and cancel every request it was serving.
    pub fn crash(&self, device: Uuid) {
        let mut state = self.locked();
        let slot = state.nodes.entry(device).or_default();
        slot.svc = None;
        for h in slot.serving.drain(..) {
            h.abort();
        }
    }

    /// Split the devices: two talk only when their groups are equal.
    pub fn set_partition(&self, groups: BTreeMap<Uuid, u32>) {
        self.locked().group = groups;
    }

    /// Undo any partition.
    pub fn heal(&self) {
        self.locked().group.clear();
    }

    /// Change the message faults (the heal phase turns them off).
    pub fn set_faults(&self, faults: NetFaults) {
        self.locked().faults = faults;
    }

    fn connected(&self, a: Uuid, b: Uuid) -> bool {
        let state = self.locked();
        state.group.get(&a).copied().unwrap_or(0) == state.group.get(&b).copied().unwrap_or(0)
    }

    fn count(&self, f: impl FnOnce(&mut NetStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One leg's latency and whether it is lost.
    fn leg(&self) -> (Duration, bool) {
        let mut state = self.locked();
        let f = state.faults.clone();
        let mut ms = state.rng.range(f.latency_ms.0, f.latency_ms.1);
        if state.rng.chance(f.slow) {
            ms = state.rng.range(f.latency_ms.1, f.latency_ms.1 * 4 + 1);
        }
        let lost = state.rng.chance(f.drop);
        (Duration::from_millis(ms), lost)
    }

    /// Carry one request from `from` to `to` and its reply back, with this
    /// run's latency, loss, duplication and partitions; times out like a real
    /// transport when either leg is lost.
    async fn request(
        self: Arc<Self>,
        from: Uuid,
        to: Uuid,
        req: Envelope,
    ) -> Result<Envelope, TransportError> {
        let timeout = self.locked().faults.timeout;
        let deadline = Instant::now() + timeout;
        let bytes = postcard::to_allocvec(&req).expect("an envelope always encodes");
        let name = req.msg.name();
        let (latency, lost) = self.leg();
        let dup = {
            let mut state = self.locked();
            let p = state.faults.duplicate;
            state.rng.chance(p).then(|| state.rng.ms(0, 40))
        };
        sleep(latency).await;
        let svc = self.reach(from, to, name, lost, &bytes, deadline).await?;
        let handle = self.serve(from, to, svc, name, &bytes, dup);
        let reply = match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) | Err(_) => {
                // The device crashed while serving, or took too long.
                self.trace
                    .event("no-reply", &[from.as_bytes(), to.as_bytes()]);
                sleep_until(deadline).await;
                return Err(TransportError::Timeout(to));
            }
        };
        self.send_reply(from, to, &reply, deadline).await
    }

    /// The request has arrived: the service of `to` if the two are connected,
    /// the request was not lost and `to` is up.
    async fn reach(
        &self,
        from: Uuid,
        to: Uuid,
        name: &str,
        lost: bool,
        bytes: &[u8],
        deadline: Instant,
    ) -> Result<SyncService, TransportError> {
        if !self.connected(from, to) {
            self.trace.event(
                "unreachable",
                &[from.as_bytes(), to.as_bytes(), name.as_bytes()],
            );
            self.count(|s| s.unreachable += 1);
            return Err(TransportError::Unreachable(to));
        }
        if lost {
            self.trace.event(
                "drop-request",
                &[
                    from.as_bytes(),
                    to.as_bytes(),
                    &blake3::hash(bytes).as_bytes()[..8],
                ],
            );
            self.count(|s| s.dropped += 1);
            sleep_until(deadline).await;
            return Err(TransportError::Timeout(to));
        }
        let Some(svc) = self.locked().nodes.get(&to).and_then(|s| s.svc.clone()) else {
            self.trace
                .event("down", &[from.as_bytes(), to.as_bytes(), name.as_bytes()]);
            self.count(|s| s.unreachable += 1);
            if self.locked().faults.silent_down {
                sleep_until(deadline).await;
                return Err(TransportError::Timeout(to));
            }
            return Err(TransportError::Unreachable(to));
        };
        Ok(svc)
    }

    /// Hand the decoded request to `svc` as a task owned by `to` (and, when
    /// `dup` is set, a copy after that delay); the task answers the request.
    fn serve(
        &self,
        from: Uuid,
        to: Uuid,
        svc: SyncService,
        name: &str,
        bytes: &[u8],
        dup: Option<Duration>,
    ) -> JoinHandle<Envelope> {
        let env: Envelope = postcard::from_bytes(bytes).expect("an envelope always decodes");
        self.trace.event(
            "deliver-request",
            &[
                from.as_bytes(),
                to.as_bytes(),
                name.as_bytes(),
                &blake3::hash(bytes).as_bytes()[..8],
            ],
        );
        let handle = {
            let svc = svc.clone();
            tokio::spawn(async move { svc.handle(env).await })
        };
        let mut serving = vec![handle.abort_handle()];
        if let Some(extra) = dup {
            let env: Envelope = postcard::from_bytes(bytes).expect("an envelope always decodes");
            let svc = svc.clone();
            let copy = tokio::spawn(async move {
                sleep(extra).await;
                let _ = svc.handle(env).await;
            });
            serving.push(copy.abort_handle());
            self.trace
                .event("duplicate", &[from.as_bytes(), to.as_bytes()]);
            self.count(|s| s.duplicated += 1);
        }
        // Only the serving tasks may hold the target: a crash must free it.
        drop(svc);
        let mut state = self.locked();
        let slot = state.nodes.entry(to).or_default();
        slot.serving.retain(|h| !h.is_finished());
        slot.serving.extend(serving);
        handle
    }

    /// Carry `reply` from `to` back to `from`, unless it is lost, arrives
    /// after the deadline or the two have been partitioned meanwhile.
    async fn send_reply(
        &self,
        from: Uuid,
        to: Uuid,
        reply: &Envelope,
        deadline: Instant,
    ) -> Result<Envelope, TransportError> {
        let rbytes = postcard::to_allocvec(reply).expect("an envelope always encodes");
        let (latency, lost) = self.leg();
        if Instant::now() + latency > deadline {
            sleep_until(deadline).await;
            self.trace
                .event("late-reply", &[from.as_bytes(), to.as_bytes()]);
            return Err(TransportError::Timeout(to));
        }
        sleep(latency).await;
        if lost || !self.connected(from, to) {
            self.trace.event(
                "drop-reply",
                &[
                    from.as_bytes(),
                    to.as_bytes(),
                    &blake3::hash(&rbytes).as_bytes()[..8],
                ],
            );
            self.count(|s| s.dropped += 1);
            sleep_until(deadline).await;
            return Err(TransportError::Timeout(to));
        }
        self.trace.event(
            "deliver-reply",
            &[
                to.as_bytes(),
                from.as_bytes(),
                reply.msg.name().as_bytes(),
                &blake3::hash(&rbytes).as_bytes()[..8],
            ],
        );
        self.count(|s| s.delivered += 1);
        Ok(postcard::from_bytes(&rbytes).expect("an envelope always decodes"))
    }
}

struct Link {
    net: Arc<SimNet>,
    me: Uuid,
}

impl Transport for Link {
    fn request(&self, to: Uuid, req: Envelope) -> BoxFuture<'_, Result<Envelope, TransportError>> {
        Box::pin(self.net.clone().request(self.me, to, req))
    }
}
