//! Conduits running between devices (DESIGN §12): [`ConduitRunner`] runs a
//! conduit's cycles on the device that owns its destination, the one that
//! writes. A source on this device too runs the core's local cycle
//! ([`concord::conduit::cycle::run_local_cycle`]); a source on another
//! device is listed and fetched through the transfer engine
//! (`cycle.rs`, `remote.rs`). One cycle of a conduit at a time; its state
//! and progress are kept in memory for `conduit status`, and its outcome
//! (last run, error, pause reason) is written to the synced record.

pub mod changes;
pub mod cycle;
pub mod offload;
pub mod offload_cycle;
pub mod offload_ends;
pub mod offload_entry;
pub mod remote;
pub mod schedule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use concord::conduit::cycle::{run_local_cycle, CycleMemory, CycleOutcome, EndSpec, LocalConduit};
use concord::conduit::settings::{PauseReason, Policy, Settings};
use concord::conduit::trash::reserved_dir;
use concord::hlc::{Clock, SystemClock};
use concord::model::{Conduit, Location};
use concord::{query, Change, Library, Uuid};
use serde::Serialize;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::remote::RemoteSource;
use crate::transfer::{ContentClient, TransferProgress};
use cycle::{agreed_path, load_agreed, run_remote_cycle, LocalEnd, RemoteCycle, Totals};
use remote::{list, Listed};

/// A cycle's state and progress while it runs (and its last figures).
#[derive(Default)]
struct Live {
    running: Mutex<Option<&'static str>>,
    totals: Arc<Totals>,
    /// The current (or last) cycle's transfers.
    progress: Mutex<Arc<TransferProgress>>,
    /// Actions done by the last local cycle (a remote one counts files).
    local_done: AtomicU64,
    /// When the last cycle here started (ms), for cadences.
    started_ms: std::sync::atomic::AtomicI64,
    /// Conflicts cycles here resolved by keeping both versions (newest
    /// last, at most [`MAX_CONFLICTS_SHOWN`]).
    conflicts: Mutex<Vec<ConflictView>>,
}

/// Conflicts `conduit status` lists.
const MAX_CONFLICTS_SHOWN: usize = 100;

/// A conflict as `conduit status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictView {
    /// Where the version that won stays (relative to the conduit's folders).
    pub path: String,
    /// The conflict copy holding the other version, on both ends.
    pub copy: String,
    /// `source` or `destination`: the end whose version kept the name.
    pub kept: &'static str,
}

impl Live {
    fn progress(&self) -> Arc<TransferProgress> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new cycle starts: its counters from zero.
    fn reset(&self) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Arc::default();
        self.totals.files.store(0, Ordering::Relaxed);
        self.totals.bytes.store(0, Ordering::Relaxed);
        self.local_done.store(0, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Slot {
    /// Held for a cycle's length: one cycle of a conduit at a time.
    memory: tokio::sync::Mutex<Option<CycleMemory>>,
    live: Live,
    /// Offload conduits: what their source's device last found.
    offload: offload::Live,
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
    pub conflicts: Vec<ConflictView>,
    /// Offload: why offloading waits (the destination is unreachable).
    pub waiting: Option<String>,
    /// Offload: offloaded files the destination no longer holds, with why.
    pub lost: Vec<(String, String)>,
    /// Offload: the source volume's free bytes and the threshold, as last
    /// measured.
    pub free: Option<(u64, u64)>,
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
    /// File changes per library, which wake `instant` conduits.
    changes: Arc<changes::Changes>,
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
            changes: Arc::default(),
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
        let p = l.progress().snapshot();
        let local = l.local_done.load(Ordering::Relaxed);
        let status = LiveStatus {
            running: *l.running.lock().unwrap_or_else(|e| e.into_inner()),
            files_total: l.totals.files.load(Ordering::Relaxed),
            files_done: p.files_done.max(local),
            bytes_total: l.totals.bytes.load(Ordering::Relaxed),
            bytes_done: p.bytes_verified,
            bytes_received: p.bytes_received,
            conflicts: l
                .conflicts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            waiting: lock(&slot.offload.waiting).clone(),
            lost: lock(&slot.offload.lost).clone(),
            free: *lock(&slot.offload.measured),
        };
        Some(status)
    }

    /// Run the cycles cadences make due, until the node stops (the task is
    /// aborted then): every second (periods, rescans) and after each file
    /// change, debounced (`instant`). One conduit after another: a cycle
    /// never overlaps another of the same conduit.
    pub fn spawn_scheduler(&self) -> tokio::task::JoinHandle<()> {
        let runner = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = runner.changes.notified() => {
                        tokio::time::sleep(schedule::DEBOUNCE).await;
                    }
                }
                for (library, conduit) in runner.due().await {
                    if let Err(e) = runner.run(library, conduit).await {
                        tracing::debug!(%conduit, "scheduled conduit cycle: {e}");
                    }
                }
            }
        })
    }

    /// Conduits whose destination is here and whose cadence makes them due.
    async fn due(&self) -> Vec<(Uuid, Uuid)> {
        let runner = self.clone();
        let rescan = schedule::instant_rescan();
        let handle = tokio::runtime::Handle::current();
        let found = blocking(move || {
            let _runtime = handle.enter();
            let me = runner.state.device_id();
            let now = now_ms();
            let mut out = Vec::new();
            for listed in runner.state.data.list_libraries().unwrap_or_default() {
                let Ok(lib) = runner.state.library(listed.id) else {
                    continue;
                };
                runner.changes.listen(&lib);
                let changed = runner.changes.changed_ms(lib.id());
                let tagged = runner.changes.tagged_ms(lib.id());
                for c in query::conduits(&lib).unwrap_or_default() {
                    // Offload runs where its source is (it measures that
                    // volume); every other policy where its destination is.
                    let offload = c.policy == "offload";
                    let end = if offload { c.source } else { c.destination };
                    let here = query::location(&lib, end)
                        .ok()
                        .flatten()
                        .is_some_and(|l| l.device == me);
                    let last = runner
                        .slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&c.id)
                        .map_or(0, |s| s.live.started_ms.load(Ordering::Relaxed));
                    let times = schedule::Times {
                        last,
                        changed,
                        now,
                        rescan,
                    };
                    // Offload also measures on a timer, and a pin wakes
                    // an `instant` one (the file comes back).
                    let measure = offload
                        && here
                        && c.paused.is_none()
                        && c.cadence != "manual"
                        && ((c.cadence == "instant" && tagged >= last)
                            || (now.saturating_sub(last)
                                >= offload::CHECK_EVERY.as_millis() as i64
                                && offload::below_threshold(&lib, &c)));
                    if here && (schedule::due(&c, times) || measure) {
                        out.push((lib.id(), c.id));
                    }
                }
            }
            out
        })
        .await;
        found.unwrap_or_default()
    }

    /// Run one cycle of `conduit` now, here (its destination's device), and
    /// record its outcome in the conduit's synced record.
    pub async fn run(&self, library: Uuid, conduit: Uuid) -> Result<RunReport, NetError> {
        let lib = self.state.library(library)?;
        let record = query::conduit(&lib, conduit)?
            .ok_or_else(|| NetError::Refused(format!("no conduit {conduit}")))?;
        let settings = Settings::from_record(&record)
            .map_err(|e| NetError::Refused(format!("conduit {conduit}: {e}")))?;
        if settings.policy == Policy::Offload {
            return self.run_offload(lib, record, settings).await;
        }
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
        slot.live.reset();
        slot.live.started_ms.store(now_ms(), Ordering::Relaxed);
        set(&slot.live.running, Some("scanning"));
        let outcome = self
            .cycle(&lib, &record, settings, dst, &slot, &mut mem)
            .await;
        set(&slot.live.running, None);
        if let Ok(CycleOutcome::Done(r)) = &outcome {
            let mut shown = slot
                .live
                .conflicts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            shown.extend(r.plan.conflicts.iter().map(|c| ConflictView {
                path: c.path.as_str().to_string(),
                copy: c.copy.as_str().to_string(),
                kept: match c.kept {
                    concord::conduit::plan::Side::Source => "source",
                    concord::conduit::plan::Side::Destination => "destination",
                },
            }));
            let excess = shown.len().saturating_sub(MAX_CONFLICTS_SHOWN);
            shown.drain(..excess);
        }
        if matches!(outcome, Ok(CycleOutcome::Done(_))) {
            if let Err(e) = mem.agreed.save(&agreed_path(&lib_dir, conduit)) {
                tracing::warn!(%conduit, "agreed state not saved: {e}");
            }
        }
        // After a failure the memory may be partial: reload what was saved.
        *memory = outcome.is_ok().then_some(mem);
        self.record(&lib, &record, outcome)
    }

    /// One Offload cycle, on its source's device (it measures that volume):
    /// see `offload_cycle.rs`.
    async fn run_offload(
        &self,
        lib: Arc<Library>,
        record: Conduit,
        settings: Settings,
    ) -> Result<RunReport, NetError> {
        let src = location(&lib, record.source)?;
        if src.device != self.state.device_id() {
            return Err(NetError::Refused(format!(
                "offload conduit {} runs on its source's device ({}); run it there",
                record.id, src.device
            )));
        }
        if let Some(reason) = settings.paused {
            return Ok(RunReport {
                outcome: "paused",
                reason: Some(reason.as_str()),
                actions: 0,
                failed: Vec::new(),
                bytes: 0,
            });
        }
        let destination = location(&lib, record.destination)?;
        if destination.device == src.device {
            return Err(NetError::Refused(format!(
                "offload conduit {}: both ends are on this device; offloading needs the destination on another device",
                record.id
            )));
        }
        let slot = self.slot(record.id);
        let _one_at_a_time = slot.memory.lock().await;
        slot.live.reset();
        slot.live.started_ms.store(now_ms(), Ordering::Relaxed);
        set(&slot.live.running, Some("transferring"));
        let cycle = offload_cycle::OffloadCycle {
            state: self.state.clone(),
            client: self.client.clone(),
            lib: lib.clone(),
            conduit: record.clone(),
            settings,
            source: src,
            destination,
            live: slot.offload.clone(),
            progress: slot.live.progress(),
            now_ms: now_ms(),
        };
        let outcome = cycle.run().await;
        set(&slot.live.running, None);
        self.record_offload(&lib, &record, outcome)
    }

    /// An Offload cycle's outcome in the synced record: a missing source
    /// pauses it; a wait or a failure is its `last_error`.
    fn record_offload(
        &self,
        lib: &Library,
        c: &Conduit,
        outcome: Result<offload_cycle::OffloadReport, NetError>,
    ) -> Result<RunReport, NetError> {
        let change = Change::update::<Conduit>(c.id).set("last_run", now_ms());
        let r = match outcome {
            Ok(r) => r,
            Err(e) => {
                if c.last_error.as_deref() != Some(&e.to_string()) {
                    lib.commit(change.set("last_error", e.to_string()))?;
                }
                return Err(e);
            }
        };
        let mut report = RunReport {
            outcome: "done",
            reason: None,
            actions: r.offloaded + r.fetched_back,
            failed: r.failed.clone(),
            bytes: r.bytes,
        };
        let error = r.waiting.clone().or_else(|| r.failed.first().cloned());
        let mut news = c.last_run.is_none() || report.actions > 0 || error != c.last_error;
        let mut change = change.set("last_error", error);
        if r.source_missing {
            news = true;
            change = change.set("paused", PauseReason::SourceMissing.as_str());
            report.outcome = "paused";
            report.reason = Some(PauseReason::SourceMissing.as_str());
        } else if r.waiting.is_some() {
            report.outcome = "waiting";
            report.reason = Some(PauseReason::DestinationUnreachable.as_str());
        }
        if news {
            lib.commit(change)?;
        }
        Ok(report)
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
            id: dst.id,
            location: dst.path.clone().into(),
            fingerprint: fingerprint(lib, &dst),
            device: name_of(dst.device),
        };
        let now = now_ms();
        if src.device == self.state.device_id() {
            let src_end = EndSpec {
                location: src.path.clone().into(),
                dir: settings.source_dir.clone(),
                fingerprint: fingerprint(lib, &src),
                device: name_of(src.device),
            };
            return local_cycle(src_end, dst_end, settings, slot, mem, now).await;
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
            totals: slot.live.totals.clone(),
            source_device: name_of(src.device),
            source: RemoteSource {
                handle: tokio::runtime::Handle::current(),
                client: self.client.clone(),
                peer,
                library: lib.id(),
                location: src.id,
                dir: settings.source_dir.clone(),
                incoming,
                progress: slot.live.progress(),
                prefetched: Default::default(),
            },
            settings,
            destination: dst_end,
        };
        let taken = std::mem::take(mem);
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
        // An idle cycle (nothing done, nothing new to say) writes nothing,
        // so an `instant` conduit's polls do not grow the sync log.
        let mut news = c.last_run.is_none();
        let report = match &outcome {
            Ok(CycleOutcome::Done(r)) => {
                let failed: Vec<String> = r
                    .exec
                    .failed
                    .iter()
                    .map(|(p, e)| format!("{}: {e}", p.as_str()))
                    .collect();
                news |= r.exec.done > 0 || failed.first() != c.last_error.as_ref();
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
                news = true;
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
                if c.last_error.as_deref() != Some(&e.to_string()) {
                    lib.commit(change.set("last_error", e.to_string()))?;
                }
                return Err(NetError::Other(e.to_string()));
            }
        };
        if news || c.allow_deletes {
            lib.commit(change)?;
        }
        Ok(report)
    }
}

/// A cycle whose two ends are on this device: the core's local cycle.
async fn local_cycle(
    source: EndSpec,
    dst_end: LocalEnd,
    settings: Settings,
    slot: &Arc<Slot>,
    mem: &mut CycleMemory,
    now: i64,
) -> Result<CycleOutcome, NetError> {
    let c = LocalConduit {
        source,
        destination: EndSpec {
            location: dst_end.location,
            dir: settings.destination_dir.clone(),
            fingerprint: dst_end.fingerprint,
            device: dst_end.device,
        },
        settings,
    };
    let taken = std::mem::take(mem);
    let (out, back) = blocking(move || {
        let mut m = taken;
        (run_local_cycle(&c, &mut m, now), m)
    })
    .await?;
    *mem = back;
    if let Ok(CycleOutcome::Done(r) | CycleOutcome::Paused(_, r)) = &out {
        slot.live.totals.set(&r.plan);
        slot.live
            .local_done
            .store(r.exec.done as u64, Ordering::Relaxed);
    }
    out.map_err(|e| NetError::Other(e.to_string()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
