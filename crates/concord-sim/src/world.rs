//! The simulated world: every device's library, service and clock, and the
//! operations a run performs on a device (start, crash, write, check its
//! clock). What goes wrong and when is decided in `chaos`; the phases
//! of a run are driven by `sim`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use concord::hlc::{Hlc, DEFAULT_MAX_CLOCK_DRIFT};
use concord::model::{Device, Location, Volume};
use concord::service::protocol::{Role, Term};
use concord::service::{SyncConfig, SyncService};
use concord::sync::entry::LogEntry;
use concord::sync::seal::NodeKey;
use concord::sync::txn::{LibraryOptions, Receipt};
use concord::{Change, Library};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::check::{self, Acked, View};
use crate::clock::SimClock;
use crate::net::SimNet;
use crate::report::Report;
use crate::rng::Rng;
use crate::trace::Trace;
use crate::workload::{self, Owned};

/// What the byzantine member (`byzantine`) sent, to check that none of it took.
#[derive(Default)]
pub(crate) struct Forgeries {
    /// How many forgeries were sent.
    pub(crate) sent: u64,
    /// Genuine entries the forger relayed altered, by id: a device that holds
    /// one of these ids holds the genuine entry.
    pub(crate) altered: std::collections::BTreeMap<(Uuid, u64), LogEntry>,
}

/// A device's node key, derived from its id (the run replays from its seed).
pub(crate) fn device_key(id: Uuid) -> NodeKey {
    NodeKey::from_bytes(blake3::hash(id.as_bytes()).as_bytes())
}

/// One simulated device: its files survive a crash, its library and service
/// do not.
pub(crate) struct SimDevice {
    pub(crate) id: Uuid,
    /// Where its library's files live.
    pub(crate) dir: PathBuf,
    /// Its node key: seals its entries, verifies everyone's.
    pub(crate) key: NodeKey,
    pub(crate) clock: Arc<SimClock>,
    /// `None` while crashed.
    pub(crate) lib: Option<Arc<Library>>,
    pub(crate) svc: Option<SyncService>,
    /// The service's run loop.
    pub(crate) task: Option<JoinHandle<()>>,
    pub(crate) owned: Owned,
    /// When a crashed device comes back.
    pub(crate) restart_at: Option<Instant>,
    /// Highest HLC seen on this device (across restarts).
    pub(crate) hlc_seen: u64,
    /// Highest wall-clock reading this device has had.
    pub(crate) wall_seen: u64,
    /// A copy of its files taken earlier, which a rollback restores.
    pub(crate) backup: Option<PathBuf>,
}

/// Everything a run holds: the seeded randomness, the network, the devices
/// and what was acknowledged to them.
pub(crate) struct World {
    /// The one source of randomness after setup: every draw is in run order.
    pub(crate) rng: Rng,
    pub(crate) net: Arc<SimNet>,
    pub(crate) trace: Arc<Trace>,
    pub(crate) config: SyncConfig,
    pub(crate) devices: Vec<SimDevice>,
    /// Every entry whose commit returned `Ok`, in commit order.
    pub(crate) acked: Vec<Acked>,
    /// File entries written by `commit_bulk` (they stay on their owner).
    pub(crate) bulk: BTreeSet<Uuid>,
    pub(crate) report: Report,
    /// When the run began, in simulated time.
    pub(crate) start: Instant,
    /// What the byzantine member forged.
    pub(crate) forgeries: Forgeries,
}

impl World {
    /// Setup: every device creates the library with the same id, device 0
    /// registers everyone and the others take its registrations, then each
    /// device adds its own volume and location.
    pub(crate) fn setup(&mut self, n: usize, dir: &Path) -> Result<(), String> {
        let lib_id = self.rng.uuid();
        let ids: Vec<Uuid> = (0..n).map(|_| self.rng.uuid()).collect();
        for (i, &id) in ids.iter().enumerate() {
            let clock = SimClock::new(self.start);
            let device_dir = dir.join(format!("d{i}"));
            let key = device_key(id);
            let opts = self.library_options(true, &key);
            let lib = Library::create_with(
                &device_dir,
                lib_id,
                "sim",
                id,
                Box::new(clock.clone()),
                opts,
            )
            .map_err(to_message)?;
            self.devices.push(SimDevice {
                id,
                dir: device_dir,
                key,
                clock,
                lib: Some(Arc::new(lib)),
                svc: None,
                task: None,
                owned: Owned {
                    device: id,
                    location: Uuid::nil(),
                },
                restart_at: None,
                hlc_seen: 0,
                wall_seen: 0,
                backup: None,
            });
        }
        self.register_everyone(&ids)?;
        for i in 0..n {
            self.add_own_location(i)?;
        }
        self.trace
            .event("setup", &[lib_id.as_bytes(), &(n as u64).to_le_bytes()]);
        Ok(())
    }

    /// Device 0 created the library and registers everyone (DESIGN §9); the
    /// others apply its log.
    fn register_everyone(&mut self, ids: &[Uuid]) -> Result<(), String> {
        let creator = self.devices[0].lib.clone().unwrap();
        for (i, &id) in ids.iter().enumerate() {
            creator
                .commit(Change::insert(&Device {
                    id,
                    name: format!("d{i}"),
                    node_id: Some(device_key(id).node_id()),
                    addrs: None,
                    removed: None,
                }))
                .map_err(to_message)?;
        }
        creator
            .with_log(|l| {
                l.set_term(Term {
                    epoch: 1,
                    leader: ids[0],
                })
            })
            .map_err(to_message)?;
        let entries: Vec<LogEntry> = creator
            .with_log(|l| {
                Ok(l.fetch_after_id(0, usize::MAX)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect())
            })
            .map_err(to_message)?;
        for d in &self.devices[1..] {
            d.lib
                .as_ref()
                .unwrap()
                .apply_remote(&entries)
                .map_err(to_message)?;
        }
        Ok(())
    }

    /// Device `i`'s own volume and location, where its workload writes files.
    fn add_own_location(&mut self, i: usize) -> Result<(), String> {
        let id = self.devices[i].id;
        let vol = Volume {
            id: self.rng.uuid(),
            device: id,
            name: format!("disk{i}"),
            fingerprint: format!("fp{i}"),
            mount_point: "/".into(),
        };
        let loc = Location {
            id: self.rng.uuid(),
            device: id,
            volume: vol.id,
            path: format!("/home/d{i}"),
            name: "home".into(),
        };
        self.devices[i].owned.location = loc.id;
        let lib = self.devices[i].lib.clone().unwrap();
        let receipt = lib
            .commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
            .map_err(to_message)?;
        self.ack(i, &receipt)
    }

    /// How a device opens its library; a fresh incarnation is drawn from the
    /// seed (only when `opening`, so other runs' draws stay where they were).
    pub(crate) fn library_options(&mut self, opening: bool, key: &NodeKey) -> LibraryOptions {
        LibraryOptions {
            incarnation: opening.then(|| self.rng.below(1 << 62) + 1),
            key: Some(key.clone()),
            ..LibraryOptions::default()
        }
    }

    /// Start device `i`'s service, reopening its library after a crash.
    pub(crate) fn start_device(&mut self, i: usize) -> Result<(), String> {
        let reopen = self.devices[i].lib.is_none();
        let key = self.devices[i].key.clone();
        let opts = self.library_options(reopen, &key);
        let d = &mut self.devices[i];
        let lib = match &d.lib {
            Some(l) => l.clone(),
            None => {
                let l = Library::open_with(&d.dir, d.id, Box::new(d.clock.clone()), opts)
                    .map_err(|e| format!("reopening device {i}: {e}"))?;
                let l = Arc::new(l);
                d.lib = Some(l.clone());
                l
            }
        };
        // A reopened clock starts above every stamp stored on this device.
        let stored = check::max_stored_clock(&lib).map_err(|e| e.to_string())?;
        let last = lib.hlc().last();
        if last < stored {
            return Err(format!(
                "device {i}'s HLC restarted at {} below a stored clock {}",
                Hlc::new(last, d.id),
                Hlc::new(stored, d.id)
            ));
        }
        d.hlc_seen = last;
        let svc = SyncService::new(lib, self.net.link(d.id), self.config.clone())
            .map_err(|e| e.to_string())?;
        self.net.set_service(d.id, Some(svc.clone()));
        d.task = Some(tokio::spawn(svc.clone().run()));
        d.svc = Some(svc);
        d.restart_at = None;
        self.trace.event("start", &[d.id.as_bytes()]);
        self.check_clock(i)
    }

    /// Kill a device: its service stops mid-flight and its library is closed
    /// (files kept). Returns when nothing holds the library any more.
    pub(crate) async fn crash(&mut self, i: usize) -> Result<(), String> {
        self.check_clock(i)?;
        let d = &mut self.devices[i];
        self.net.crash(d.id);
        if let Some(svc) = d.svc.take() {
            if let Ok(s) = svc.status().await {
                self.report.snapshots += s.stats.snapshots;
                self.report.rejected += s.stats.rejected;
                self.report.forged_refused += s.stats.forged;
                self.report.position_conflicts += s.stats.position_conflicts;
            }
            self.report.max_epoch = self.report.max_epoch.max(svc.term().epoch);
        }
        if let Some(t) = d.task.take() {
            t.abort();
            let _ = t.await;
        }
        let Some(lib) = d.lib.take() else {
            return Ok(());
        };
        let weak: Weak<Library> = Arc::downgrade(&lib);
        drop(lib);
        for _ in 0..100_000 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if weak.strong_count() != 0 {
            return Err(format!(
                "device {i}'s library is still in use after its crash"
            ));
        }
        self.report.crashes += 1;
        self.trace.event("crash", &[self.devices[i].id.as_bytes()]);
        Ok(())
    }

    /// The devices running now (not crashed), in index order.
    pub(crate) fn up(&self) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&i| self.devices[i].lib.is_some())
            .collect()
    }

    /// Record what a commit wrote as acknowledged.
    pub(crate) fn ack(&mut self, i: usize, receipt: &Receipt) -> Result<(), String> {
        let lib = self.devices[i].lib.clone().unwrap();
        for &(replica, seq) in &receipt.entries {
            let fetched = lib
                .with_log(|l| l.fetch_origin(replica, seq - 1, 1))
                .map_err(|e| e.to_string())?;
            let entry = fetched
                .into_iter()
                .next()
                .filter(|e| e.origin_seq == seq)
                .ok_or_else(|| {
                    format!("acknowledged entry {replica}:{seq} is not in its author's log")
                })?;
            self.trace.event(
                "commit",
                &[
                    replica.as_bytes(),
                    &seq.to_le_bytes(),
                    &entry.hlc.to_le_bytes(),
                    entry.record.as_bytes(),
                ],
            );
            self.acked.push(Acked {
                origin: entry.origin,
                replica,
                incarnation: entry.incarnation,
                seq,
                hlc: entry.hlc,
                model: entry.model,
                record: entry.record,
                op: entry.op,
            });
        }
        Ok(())
    }

    /// HLC monotonic and within the drift bound of what this device's wall clock showed.
    pub(crate) fn check_clock(&mut self, i: usize) -> Result<(), String> {
        let d = &mut self.devices[i];
        d.wall_seen = d.wall_seen.max(concord::hlc::Clock::now_ms(&*d.clock));
        let Some(lib) = &d.lib else { return Ok(()) };
        let last = lib.hlc().last();
        if last < d.hlc_seen {
            return Err(format!(
                "device {i}'s HLC went backwards while running: {} after {}",
                Hlc::new(last, d.id),
                Hlc::new(d.hlc_seen, d.id)
            ));
        }
        d.hlc_seen = last;
        let limit = d.wall_seen + DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64;
        if Hlc::new(last, d.id).physical_ms() > limit {
            return Err(format!(
                "device {i}'s HLC ({} ms) runs {} ms past the highest wall-clock time it has seen plus the drift bound: it obeyed an out-of-bounds clock",
                Hlc::new(last, d.id).physical_ms(),
                Hlc::new(last, d.id).physical_ms() - d.wall_seen
            ));
        }
        Ok(())
    }

    /// Skew device `i`'s wall clock by `ms`, checking its HLC before and after.
    pub(crate) fn set_offset(&mut self, i: usize, ms: i64) -> Result<(), String> {
        self.check_clock(i)?;
        self.devices[i].clock.set_offset_ms(ms);
        self.trace
            .event("clock", &[self.devices[i].id.as_bytes(), &ms.to_le_bytes()]);
        self.check_clock(i)
    }

    /// One random workload step on device `i`; what it commits is acknowledged.
    pub(crate) fn write(&mut self, i: usize) -> Result<(), String> {
        let lib = self.devices[i].lib.clone().unwrap();
        let done = workload::step(&mut self.rng, &lib, self.devices[i].owned, true);
        match done.result {
            Ok(r) => {
                if !r.entries.is_empty() {
                    self.report.commits += 1;
                }
                self.bulk.extend(done.bulk_rows);
                self.ack(i, &r)
            }
            Err(e) => {
                // Refused locally (target deleted meanwhile, and so on): not acknowledged.
                self.trace
                    .event("refused", &[done.what.as_bytes(), e.to_string().as_bytes()]);
                Ok(())
            }
        }
    }

    /// The running device that leads the highest term, if any.
    pub(crate) fn leader(&self) -> Option<usize> {
        let mut best: Option<(Term, usize)> = None;
        for i in self.up() {
            if let Some(s) = &self.devices[i].svc {
                let t = s.term();
                if s.role() == Role::Leader && best.is_none_or(|(b, _)| t > b) {
                    best = Some((t, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// What convergence compares, for every device (all must be running).
    pub(crate) fn views(&self) -> Result<Vec<View>, String> {
        self.devices
            .iter()
            .map(|d| check::view(d.lib.as_ref().unwrap(), &self.bulk).map_err(|e| e.to_string()))
            .collect()
    }

    /// Every device's term (all must be running).
    pub(crate) fn terms(&self) -> Vec<Term> {
        self.devices
            .iter()
            .map(|d| d.svc.as_ref().unwrap().term())
            .collect()
    }

    /// Stop everything and close every library.
    pub(crate) async fn shutdown(&mut self) {
        for d in &mut self.devices {
            if let Some(s) = d.svc.take() {
                s.stop();
            }
            self.net.crash(d.id);
            if let Some(t) = d.task.take() {
                t.abort();
                let _ = t.await;
            }
        }
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        for d in &mut self.devices {
            d.lib = None;
        }
    }
}

/// A library error as the run's failure message.
fn to_message(e: concord::Error) -> String {
    e.to_string()
}
