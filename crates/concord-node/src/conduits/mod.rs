//! Conduits running between devices (DESIGN §12): [`ConduitRunner`] runs a
//! conduit's cycles on the device that owns its destination, the one that
//! writes. A source on this device too runs the core's local cycle
//! ([`concord::conduit::cycle::run_local_cycle`]); a source on another
//! device is listed and fetched through the transfer engine
//! (`cycle.rs`, `remote.rs`). One cycle of a conduit at a time; its state
//! and progress are kept in memory for `conduit status`, and its outcome
//! (last run, error, pause reason) is written to the synced record.

pub mod cycle;
pub mod remote;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use concord::conduit::cycle::{run_local_cycle, CycleMemory, CycleOutcome, EndSpec, LocalConduit};
use concord::conduit::settings::{Policy, Settings};
use concord::conduit::trash::reserved_dir;
use concord::hlc::{Clock, SystemClock};
use concord::model::{Conduit, Location};
use concord::{query, Change, Library, Uuid};
use serde::Serialize;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::{ContentClient, TransferProgress};
use cycle::{agreed_path, load_agreed, run_remote_cycle, LocalEnd, RemoteCycle};
use remote::{list, Listed, RemoteSource};

/// A cycle's state and progress while it runs (and its last figures).
#[derive(Default)]
struct Live {
    running: Mutex<Option<&'static str>>,
    files_total: AtomicU64,
    files_done: AtomicU64,
    bytes_total: AtomicU64,
    progress: Arc<TransferProgress>,
}

#[derive(Default)]
struct Slot {
    /// Held for a cycle's length: one cycle of a conduit at a time.
    memory: tokio::sync::Mutex<Option<CycleMemory>>,
    live: Live,
}

/// `conduit status`'s live part, from the working device.
#[derive(Debug, Clone, Serialize)]
pub struct LiveStatus {
    pub running: Option<&'static str>,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_received: u64,
}

/// How a cycle ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `done` or `paused`.
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub actions: usize,
    pub failed: Vec<String>,
    pub bytes: u64,
}

/// Runs the conduits whose destination is on this device.
#[derive(Clone)]
pub struct ConduitRunner {
    state: Arc<NodeState>,
    client: ContentClient,
    slots: Arc<Mutex<HashMap<Uuid, Arc<Slot>>>>,
}

fn now_ms() -> i64 {
    SystemClock.now_ms() as i64
}

fn fingerprint(lib: &Library, loc: &Location) -> Option<String> {
    query::volumes(lib)
        .ok()?
        .into_iter()
        .find(|v| v.id == loc.volume)
        .map(|v| v.fingerprint)
}

fn location(lib: &Library, id: Uuid) -> Result<Location, NetError> {
    query::location(lib, id)?
        .ok_or_else(|| NetError::Refused(format!("the conduit's location {id} is gone")))
}

impl ConduitRunner {
    pub fn new(state: Arc<NodeState>, client: ContentClient) -> Self {
        Self {
            state,
            client,
            slots: Arc::default(),
        }
    }

    fn slot(&self, conduit: Uuid) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(conduit).or_default().clone()
    }

    /// What a cycle of `conduit` on this device is doing, if one ran here.
    pub fn live(&self, conduit: Uuid) -> Option<LiveStatus> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conduit)?
            .clone();
        let l = &slot.live;
        let p = l.progress.snapshot();
        let status = LiveStatus {
            running: *l.running.lock().unwrap_or_else(|e| e.into_inner()),
            files_total: l.files_total.load(Ordering::Relaxed),
            files_done: l.files_done.load(Ordering::Relaxed),
            bytes_total: l.bytes_total.load(Ordering::Relaxed),
            bytes_done: p.bytes_verified,
            bytes_received: p.bytes_received,
        };
        Some(status)
    }

    /// Run one cycle of `conduit` now, here (its destination's device), and
    /// record its outcome in the conduit's synced record.
    pub async fn run(&self, library: Uuid, conduit: Uuid) -> Result<RunReport, NetError> {
        let lib = self.state.library(library)?;
        let record = query::conduit(&lib, conduit)?
            .ok_or_else(|| NetError::Refused(format!("no conduit {conduit}")))?;
        let settings = Settings::from_record(&record)
            .map_err(|e| NetError::Refused(format!("conduit {conduit}: {e}")))?;
        let dst = location(&lib, record.destination)?;
        if dst.device != self.state.device_id() {
            return Err(NetError::Refused(format!(
                "conduit {conduit} runs on its destination's device ({}); run it there",
                dst.device
            )));
        }
        let slot = self.slot(conduit);
        let mut memory = slot.memory.lock().await;
        let lib_dir = self
            .state
            .data
            .root()
            .join("libraries")
            .join(library.to_string());
        let mut mem = memory.take().unwrap_or_else(|| CycleMemory {
            agreed: load_agreed(&lib_dir, conduit),
            ..CycleMemory::default()
        });
        set(&slot.live.running, Some("scanning"));
        let outcome = self
            .cycle(&lib, &record, settings, dst, &slot, &mut mem)
            .await;
        set(&slot.live.running, None);
        if matches!(outcome, Ok(CycleOutcome::Done(_))) {
            if let Err(e) = mem.agreed.save(&agreed_path(&lib_dir, conduit)) {
                tracing::warn!(%conduit, "agreed state not saved: {e}");
            }
        }
        *memory = Some(mem);
        self.record(&lib, &record, outcome)
    }

    /// The cycle itself: local, or from a remote source.
    async fn cycle(
        &self,
        lib: &Arc<Library>,
        record: &Conduit,
        settings: Settings,
        dst: Location,
        slot: &Arc<Slot>,
        mem: &mut CycleMemory,
    ) -> Result<CycleOutcome, NetError> {
        let src = location(lib, record.source)?;
        let name_of = |device: Uuid| {
            self.state
                .device_name_of(device, lib.id())
                .unwrap_or_else(|| device.to_string())
        };
        let dst_end = LocalEnd {
            location: dst.path.clone().into(),
            fingerprint: fingerprint(lib, &dst),
            device: name_of(dst.device),
        };
        let now = now_ms();
        let taken = std::mem::take(mem);
        if src.device == self.state.device_id() {
            let c = LocalConduit {
                source: EndSpec {
                    location: src.path.clone().into(),
                    dir: settings.source_dir.clone(),
                    fingerprint: fingerprint(lib, &src),
                    device: name_of(src.device),
                },
                destination: EndSpec {
                    location: dst_end.location,
                    dir: settings.destination_dir.clone(),
                    fingerprint: dst_end.fingerprint,
                    device: dst_end.device,
                },
                settings,
            };
            let (out, back) = blocking(move || {
                let mut m = taken;
                (run_local_cycle(&c, &mut m, now), m)
            })
            .await?;
            *mem = back;
            return out.map_err(|e| NetError::Other(e.to_string()));
        }
        if settings.policy == Policy::Synchronize {
            return Err(NetError::Refused(
                "sync between two devices is not available yet; use replicate or archive".into(),
            ));
        }
        let peer = self.state.peer_for_device(src.device, lib.id())?;
        let dir = settings.source_dir.as_ref().map(|d| d.as_str().to_string());
        let tree = match list(
            &self.client,
            &peer,
            lib.id(),
            src.id,
            &dir.unwrap_or_default(),
            now,
        )
        .await?
        {
            Listed::Tree(t) => t,
            Listed::Missing => {
                *mem = taken;
                return Ok(CycleOutcome::Paused(
                    concord::conduit::settings::PauseReason::SourceMissing,
                    Default::default(),
                ));
            }
        };
        let incoming = reserved_dir(&dst_end.location, "incoming")
            .map_err(|e| NetError::Other(e.to_string()))?;
        set(&slot.live.running, Some("transferring"));
        let mut c = RemoteCycle {
            source_device: name_of(src.device),
            source: RemoteSource {
                handle: tokio::runtime::Handle::current(),
                client: self.client.clone(),
                peer,
                library: lib.id(),
                location: src.id,
                dir: settings.source_dir.clone(),
                incoming,
                progress: slot.live.progress.clone(),
            },
            settings,
            destination: dst_end,
        };
        let (out, back) = blocking(move || {
            let mut m = taken;
            (run_remote_cycle(&mut c, tree, &mut m, now), m)
        })
        .await?;
        *mem = back;
        out.map_err(|e| NetError::Other(e.to_string()))
    }

    /// Write the outcome into the synced record: last run, error, pause.
    fn record(
        &self,
        lib: &Library,
        c: &Conduit,
        outcome: Result<CycleOutcome, NetError>,
    ) -> Result<RunReport, NetError> {
        let mut change = Change::update::<Conduit>(c.id).set("last_run", now_ms());
        let report = match &outcome {
            Ok(CycleOutcome::Done(r)) => {
                let failed: Vec<String> = r
                    .exec
                    .failed
                    .iter()
                    .map(|(p, e)| format!("{}: {e}", p.as_str()))
                    .collect();
                change = change.set("last_error", failed.first().cloned());
                if c.allow_deletes {
                    change = change.set("allow_deletes", false);
                }
                RunReport {
                    outcome: "done",
                    reason: None,
                    actions: r.exec.done,
                    failed,
                    bytes: r.exec.bytes_copied + r.exec.bytes_local,
                }
            }
            Ok(CycleOutcome::Paused(reason, r)) => {
                change = change.set("paused", reason.as_str());
                RunReport {
                    outcome: "paused",
                    reason: Some(reason.as_str()),
                    actions: r.exec.done,
                    failed: Vec::new(),
                    bytes: r.exec.bytes_copied,
                }
            }
            Err(e) => {
                change = change.set("last_error", e.to_string());
                lib.commit(change)?;
                return Err(NetError::Other(e.to_string()));
            }
        };
        lib.commit(change)?;
        Ok(report)
    }
}

fn set(m: &Mutex<Option<&'static str>>, v: Option<&'static str>) {
    *m.lock().unwrap_or_else(|e| e.into_inner()) = v;
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Other(format!("conduit task failed: {e}")))
}
