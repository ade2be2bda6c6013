//! One simulated run: devices, workload, faults, heal, checks.
//!
//! Everything runs on one tokio current-thread runtime whose clock starts paused:
//! time advances only when every task is idle, straight to the next timer, so a
//! run is a pure function of its seed (no wall time, no threads, no OS
//! randomness; SQLite runs inline). A run has four phases:
//!
//! 1. **Setup**: the creator makes the library and registers every device; the
//!    others create it with the same id and take the registrations; each device
//!    creates its own volume and location. Services start.
//! 2. **Chaos**: for a few simulated seconds, random changes on random devices,
//!    interleaved with the enabled faults: message loss, duplication and delay
//!    (in the network), partitions that split and heal, crashes (the service
//!    task is aborted mid-flight and the `Library` dropped; on restart it is
//!    reopened from its files), the leader killed right after a burst of
//!    writes, clocks skewed by up to ±1 h and jumping back, and outages longer
//!    than the log retention (pruning, then snapshot backfill).
//! 3. **Heal**: the network heals and goes quiet, clocks are corrected, every
//!    device restarts. Entries stamped by a clock that ran more than the drift
//!    bound ahead are refused by the others until their own clocks reach those
//!    stamps; the run lets that much time pass (with every device switched off,
//!    which costs nothing in simulated time) and then requires them accepted.
//! 4. **Quiet**: run until converged (or a deadline), then check
//!    [`crate::check`]'s invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use concord::hlc::{Hlc, DEFAULT_MAX_CLOCK_DRIFT};
use concord::model::{Device, Location, Volume};
use concord::service::protocol::{Role, Term};
use concord::service::{SyncConfig, SyncService};
use concord::sync::entry::LogEntry;
use concord::{Change, Library};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use uuid::Uuid;

use crate::check::{self, Acked, View};
use crate::clock::SimClock;
use crate::net::{NetFaults, NetStats, SimNet};
use crate::rng::Rng;
use crate::trace::Trace;
use crate::workload::{self, Owned};

/// Which faults a run injects. All on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    pub drop: bool,
    pub duplicate: bool,
    pub delay: bool,
    pub partition: bool,
    pub crash: bool,
    pub clock: bool,
    pub leader_kill: bool,
    /// Short log retention and long outages: pruning and snapshot backfill.
    pub prune: bool,
}

impl Faults {
    pub const NAMES: &'static [&'static str] = &[
        "drop",
        "dup",
        "delay",
        "partition",
        "crash",
        "clock",
        "leader-kill",
        "prune",
    ];

    pub fn all() -> Self {
        Self {
            drop: true,
            duplicate: true,
            delay: true,
            partition: true,
            crash: true,
            clock: true,
            leader_kill: true,
            prune: true,
        }
    }

    pub fn none() -> Self {
        Self {
            drop: false,
            duplicate: false,
            delay: false,
            partition: false,
            crash: false,
            clock: false,
            leader_kill: false,
            prune: false,
        }
    }

    /// Parse `all`, `none` or a comma-separated list of [`Faults::NAMES`];
    /// a name prefixed with `-` removes it from `all`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" || s.is_empty() {
            return Ok(Self::all());
        }
        if s == "none" {
            return Ok(Self::none());
        }
        let negative = s.split(',').all(|p| p.trim().starts_with('-'));
        let mut f = if negative { Self::all() } else { Self::none() };
        for part in s.split(',') {
            let part = part.trim();
            let (on, name) = match part.strip_prefix('-') {
                Some(n) => (false, n),
                None => (true, part),
            };
            match name {
                "drop" => f.drop = on,
                "dup" => f.duplicate = on,
                "delay" => f.delay = on,
                "partition" => f.partition = on,
                "crash" => f.crash = on,
                "clock" => f.clock = on,
                "leader-kill" => f.leader_kill = on,
                "prune" => f.prune = on,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}; known: all, none, {}",
                        Self::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(f)
    }

    /// The `--faults` argument that selects exactly these.
    pub fn arg(&self) -> String {
        if *self == Self::all() {
            return "all".into();
        }
        let on = [
            self.drop,
            self.duplicate,
            self.delay,
            self.partition,
            self.crash,
            self.clock,
            self.leader_kill,
            self.prune,
        ];
        let names: Vec<&str> = Self::NAMES
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

/// How to run one seed.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Number of devices; drawn from 3..=7 by the seed when `None`.
    pub devices: Option<usize>,
    pub faults: Faults,
    /// Simulated length of the chaos phase; drawn by the seed when `None`.
    pub chaos: Option<Duration>,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            devices: None,
            faults: Faults::all(),
            chaos: None,
        }
    }
}

/// What a run did and whether it held.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub devices: usize,
    pub trace: String,
    pub events: u64,
    pub failure: Option<String>,
    pub commits: u64,
    pub acked_entries: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub clock_faults: u64,
    pub leader_kills: u64,
    pub snapshots: u64,
    pub rejected: u64,
    pub max_epoch: u64,
    pub time_jump_s: u64,
    pub sim_ms: u64,
    pub net: NetStats,
}

struct Dev {
    id: Uuid,
    dir: PathBuf,
    clock: Arc<SimClock>,
    lib: Option<Arc<Library>>,
    svc: Option<SyncService>,
    task: Option<JoinHandle<()>>,
    owned: Owned,
    /// When a crashed device comes back.
    restart_at: Option<Instant>,
    /// Highest HLC seen on this device (across restarts).
    hlc_seen: u64,
    /// Highest wall-clock reading this device has had.
    wall_seen: u64,
}

struct World {
    rng: Rng,
    net: Arc<SimNet>,
    trace: Arc<Trace>,
    config: SyncConfig,
    devs: Vec<Dev>,
    acked: Vec<Acked>,
    bulk: BTreeSet<Uuid>,
    report: Report,
    start: Instant,
}

/// Run one seed to completion. Builds its own runtime; call from any thread.
pub fn run(opts: &Options) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    let tmp = scratch();
    let report = rt.block_on(run_async(opts, tmp.path().to_path_buf()));
    drop(rt);
    if std::env::var_os("CONCORD_SIM_KEEP").is_some() {
        eprintln!("seed {}: files kept in {}", opts.seed, tmp.keep().display());
    }
    report
}

/// Temporary files in RAM when possible: no fsync cost, same SQLite code.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("concord-sim")
            .tempdir_in(shm)
        {
            return t;
        }
    }
    tempfile::Builder::new()
        .prefix("concord-sim")
        .tempdir()
        .expect("a temporary directory")
}

async fn run_async(opts: &Options, dir: PathBuf) -> Report {
    let mut rng = Rng::new(opts.seed);
    // Always drawn, so that naming the drawn count replays the same run.
    let drawn = rng.range(3, 7) as usize;
    let n = opts.devices.unwrap_or(drawn);
    let f = opts.faults;
    let start = Instant::now();
    let trace = Arc::new(Trace::new(start));
    let net_faults = NetFaults {
        drop: if f.drop {
            rng.range(0, 10) as f64 / 100.0
        } else {
            0.0
        },
        duplicate: if f.duplicate {
            rng.range(0, 5) as f64 / 100.0
        } else {
            0.0
        },
        latency_ms: if f.delay {
            (1, rng.range(5, 25))
        } else {
            (1, 1)
        },
        slow: if f.delay { 0.05 } else { 0.0 },
        timeout: Duration::from_millis(150),
    };
    let net = SimNet::new(rng.fork(1), net_faults, trace.clone());
    let config = SyncConfig {
        heartbeat_interval: Duration::from_millis(100),
        leader_timeout: Duration::from_millis(600),
        fetch_batch: *rng.pick(&[3usize, 16, 100, 1000]).unwrap(),
        retention: if f.prune {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(3600 * 24)
        },
        inline_blocking: true,
        // The simulated network times out first (150 ms); this is the backstop.
        request_timeout: Duration::from_millis(200),
    };
    let chaos = opts
        .chaos
        .unwrap_or_else(|| Duration::from_millis(rng.range(6_000, 12_000)));
    let mut w = World {
        rng,
        net,
        trace,
        config,
        devs: Vec::new(),
        acked: Vec::new(),
        bulk: BTreeSet::new(),
        report: Report {
            seed: opts.seed,
            devices: n,
            trace: String::new(),
            events: 0,
            failure: None,
            commits: 0,
            acked_entries: 0,
            crashes: 0,
            partitions: 0,
            clock_faults: 0,
            leader_kills: 0,
            snapshots: 0,
            rejected: 0,
            max_epoch: 0,
            time_jump_s: 0,
            sim_ms: 0,
            net: NetStats::default(),
        },
        start,
    };
    let result = w.play(n, &dir, f, chaos).await;
    w.shutdown().await;
    let (hash, events) = w.trace.finish();
    w.report.trace = hash;
    w.report.events = events;
    w.report.failure = result.err();
    w.report.acked_entries = w.acked.len() as u64;
    w.report.sim_ms = Instant::now().duration_since(w.start).as_millis() as u64;
    w.report.net = w.net.stats();
    w.report
}

impl World {
    async fn play(
        &mut self,
        n: usize,
        dir: &std::path::Path,
        f: Faults,
        chaos: Duration,
    ) -> Result<(), String> {
        self.setup(n, dir)?;
        for i in 0..n {
            self.start_device(i)?;
        }
        self.chaos(f, chaos).await?;
        self.heal().await?;
        self.quiet().await?;
        self.final_checks().await
    }

    fn setup(&mut self, n: usize, dir: &std::path::Path) -> Result<(), String> {
        let lib_id = self.rng.uuid();
        let ids: Vec<Uuid> = (0..n).map(|_| self.rng.uuid()).collect();
        let e = |e: concord::Error| e.to_string();
        for (i, &id) in ids.iter().enumerate() {
            let clock = SimClock::new(self.start);
            let ddir = dir.join(format!("d{i}"));
            let lib =
                Library::create(&ddir, lib_id, "sim", id, Box::new(clock.clone())).map_err(e)?;
            self.devs.push(Dev {
                id,
                dir: ddir,
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
            });
        }
        // Device 0 created the library and registers everyone (DESIGN §9).
        let creator = self.devs[0].lib.clone().unwrap();
        for (i, &id) in ids.iter().enumerate() {
            creator
                .commit(Change::insert(&Device {
                    id,
                    name: format!("d{i}"),
                    node_id: None,
                }))
                .map_err(e)?;
        }
        creator
            .with_log(|l| {
                l.set_term(Term {
                    epoch: 1,
                    leader: ids[0],
                })
            })
            .map_err(e)?;
        let entries: Vec<LogEntry> = creator
            .with_log(|l| {
                Ok(l.fetch_after_id(0, usize::MAX)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect())
            })
            .map_err(e)?;
        for d in &self.devs[1..] {
            d.lib.as_ref().unwrap().apply_remote(&entries).map_err(e)?;
        }
        // Each device's own volume and location.
        for i in 0..n {
            let id = self.devs[i].id;
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
            self.devs[i].owned.location = loc.id;
            let lib = self.devs[i].lib.clone().unwrap();
            let r = lib
                .commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])
                .map_err(e)?;
            self.ack(i, &r)?;
        }
        self.trace
            .event("setup", &[lib_id.as_bytes(), &(n as u64).to_le_bytes()]);
        Ok(())
    }

    fn start_device(&mut self, i: usize) -> Result<(), String> {
        let d = &mut self.devs[i];
        let lib = match &d.lib {
            Some(l) => l.clone(),
            None => {
                let l = Library::open(&d.dir, d.id, Box::new(d.clock.clone()))
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
    async fn crash(&mut self, i: usize) -> Result<(), String> {
        self.check_clock(i)?;
        let d = &mut self.devs[i];
        self.net.crash(d.id);
        if let Some(svc) = d.svc.take() {
            if let Ok(s) = svc.status().await {
                self.report.snapshots += s.stats.snapshots;
                self.report.rejected += s.stats.rejected;
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
        self.trace.event("crash", &[self.devs[i].id.as_bytes()]);
        Ok(())
    }

    fn up(&self) -> Vec<usize> {
        (0..self.devs.len())
            .filter(|&i| self.devs[i].lib.is_some())
            .collect()
    }

    /// Record what a commit wrote as acknowledged.
    fn ack(&mut self, i: usize, receipt: &concord::sync::txn::Receipt) -> Result<(), String> {
        let lib = self.devs[i].lib.clone().unwrap();
        for &(origin, seq) in &receipt.entries {
            let e = lib
                .with_log(|l| l.fetch_origin(origin, seq - 1, 1))
                .map_err(|e| e.to_string())?;
            let e = e
                .into_iter()
                .next()
                .filter(|e| e.origin_seq == seq)
                .ok_or_else(|| {
                    format!("acknowledged entry {origin}:{seq} is not in its author's log")
                })?;
            self.trace.event(
                "commit",
                &[
                    origin.as_bytes(),
                    &seq.to_le_bytes(),
                    &e.hlc.to_le_bytes(),
                    e.record.as_bytes(),
                ],
            );
            self.acked.push(Acked {
                origin,
                seq,
                hlc: e.hlc,
                model: e.model,
                record: e.record,
                op: e.op,
            });
        }
        Ok(())
    }

    /// HLC monotonic and within the drift bound of what this device's wall clock showed.
    fn check_clock(&mut self, i: usize) -> Result<(), String> {
        let d = &mut self.devs[i];
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

    fn set_offset(&mut self, i: usize, ms: i64) -> Result<(), String> {
        self.check_clock(i)?;
        self.devs[i].clock.set_offset_ms(ms);
        self.trace
            .event("clock", &[self.devs[i].id.as_bytes(), &ms.to_le_bytes()]);
        self.check_clock(i)
    }

    fn write(&mut self, i: usize) -> Result<(), String> {
        let lib = self.devs[i].lib.clone().unwrap();
        let done = workload::step(&mut self.rng, &lib, self.devs[i].owned, true);
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

    fn leader(&self) -> Option<usize> {
        let mut best: Option<(Term, usize)> = None;
        for i in self.up() {
            if let Some(s) = &self.devs[i].svc {
                let t = s.term();
                if s.role() == Role::Leader && best.is_none_or(|(b, _)| t > b) {
                    best = Some((t, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    async fn chaos(&mut self, f: Faults, length: Duration) -> Result<(), String> {
        let end = self.start + length;
        let n = self.devs.len();
        let mut heal_at: Option<Instant> = None;
        while Instant::now() < end {
            let pause = self.rng.ms(1, 80);
            sleep(pause).await;
            let now = Instant::now();
            for i in 0..n {
                if self.devs[i].restart_at.is_some_and(|t| t <= now) {
                    self.start_device(i)?;
                }
            }
            if heal_at.is_some_and(|t| t <= now) {
                self.net.heal();
                heal_at = None;
                self.trace.event("heal", &[]);
            }
            let roll = self.rng.below(1000);
            match roll {
                0..=899 => {
                    let up = self.up();
                    if let Some(&i) = self.rng.pick(&up) {
                        self.write(i)?;
                    }
                }
                900..=929 if f.crash => {
                    let up = self.up();
                    if up.len() > 1 {
                        let i = *self.rng.pick(&up).unwrap();
                        self.crash(i).await?;
                        let long = f.prune && self.rng.chance(0.3);
                        let down = if long {
                            self.rng.ms(3_500, 7_000)
                        } else {
                            self.rng.ms(50, 2_000)
                        };
                        self.devs[i].restart_at = Some(Instant::now() + down);
                    }
                }
                930..=949 if f.partition && heal_at.is_none() => {
                    let ids: Vec<Uuid> = self.devs.iter().map(|d| d.id).collect();
                    let groups: BTreeMap<Uuid, u32> = ids
                        .into_iter()
                        .map(|id| (id, self.rng.below(2) as u32))
                        .collect();
                    self.net.set_partition(groups.clone());
                    let long = f.prune && self.rng.chance(0.2);
                    heal_at = Some(
                        Instant::now()
                            + if long {
                                self.rng.ms(3_500, 6_000)
                            } else {
                                self.rng.ms(100, 2_500)
                            },
                    );
                    self.report.partitions += 1;
                    let mut b = Vec::new();
                    for (d, g) in &groups {
                        b.extend_from_slice(d.as_bytes());
                        b.push(*g as u8);
                    }
                    self.trace.event("partition", &[&b]);
                }
                950..=969 if f.clock => {
                    let i = self.rng.below(n as u64) as usize;
                    let cur = self.devs[i].clock.offset_ms();
                    let ms = match self.rng.below(4) {
                        // Within the drift bound.
                        0 => self.rng.range(0, 240_000) as i64 - 120_000,
                        // Far off, either way (up to an hour).
                        1 => self.rng.range(0, 7_200_000) as i64 - 3_600_000,
                        // Jump back from wherever it is.
                        2 => cur - self.rng.range(1_000, 3_600_000) as i64,
                        // Corrected.
                        _ => 0,
                    };
                    self.set_offset(i, ms.clamp(-3_600_000, 3_600_000))?;
                    self.report.clock_faults += 1;
                }
                970..=979 if f.leader_kill => {
                    if let Some(l) = self.leader() {
                        if self.up().len() > 1 {
                            // A burst of writes, let it get on the wire, then kill the leader.
                            for _ in 0..self.rng.range(2, 8) {
                                let up = self.up();
                                let i = *self.rng.pick(&up).unwrap();
                                self.write(i)?;
                            }
                            let lag = self.rng.ms(0, 15);
                            sleep(lag).await;
                            self.crash(l).await?;
                            self.devs[l].restart_at =
                                Some(Instant::now() + self.rng.ms(300, 3_000));
                            self.report.leader_kills += 1;
                        }
                    }
                }
                _ => {}
            }
            for i in 0..n {
                self.check_clock(i)?;
            }
        }
        Ok(())
    }

    async fn heal(&mut self) -> Result<(), String> {
        self.net.heal();
        self.net.set_faults(NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            latency_ms: (1, 5),
            slow: 0.0,
            timeout: Duration::from_millis(150),
        });
        for i in 0..self.devs.len() {
            if self.devs[i].clock.offset_ms() != 0 {
                self.set_offset(i, 0)?;
            }
            if self.devs[i].lib.is_none() {
                self.start_device(i)?;
            }
        }
        self.trace.event("healed", &[]);
        // Stamps issued while a clock ran ahead are refused by the others until
        // their clocks get there: switch every device off and let that time pass.
        let now = self.devs[0].clock.true_ms();
        let ahead = self
            .devs
            .iter()
            .filter_map(|d| d.lib.as_ref())
            .map(|l| Hlc::new(l.hlc().last(), Uuid::nil()).physical_ms())
            .max()
            .unwrap_or(0)
            .saturating_sub(now + DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64);
        if ahead > 0 {
            let jump = Duration::from_millis(ahead + 1_000);
            for i in 0..self.devs.len() {
                self.crash(i).await?;
            }
            sleep(jump).await;
            self.report.time_jump_s = jump.as_secs();
            self.trace
                .event("time-jump", &[&(jump.as_millis() as u64).to_le_bytes()]);
            for i in 0..self.devs.len() {
                self.start_device(i)?;
            }
        }
        Ok(())
    }

    fn views(&self) -> Result<Vec<View>, String> {
        self.devs
            .iter()
            .map(|d| check::view(d.lib.as_ref().unwrap(), &self.bulk).map_err(|e| e.to_string()))
            .collect()
    }

    fn terms(&self) -> Vec<Term> {
        self.devs
            .iter()
            .map(|d| d.svc.as_ref().unwrap().term())
            .collect()
    }

    async fn quiet(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut stable = 0;
        loop {
            sleep(Duration::from_millis(250)).await;
            for i in 0..self.devs.len() {
                self.check_clock(i)?;
            }
            let views = self.views()?;
            let terms = self.terms();
            let same =
                views.windows(2).all(|w| w[0] == w[1]) && terms.windows(2).all(|w| w[0] == w[1]);
            stable = if same { stable + 1 } else { 0 };
            if stable >= 3 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = String::from("no convergence within 120 s of quiet:\n");
                for (i, (v, t)) in views.iter().zip(&terms).enumerate() {
                    let status = self.devs[i].svc.as_ref().unwrap().status().await;
                    let last_error = status.ok().and_then(|s| s.stats.last_error);
                    msg.push_str(&format!(
                        "  d{i} {}: shared {} files {} term {}@{} vv {:?} last error {:?}\n",
                        self.devs[i].id,
                        &v.shared[..16],
                        v.files,
                        t.epoch,
                        t.leader,
                        v.vv.values().collect::<Vec<_>>(),
                        last_error
                    ));
                }
                return Err(msg);
            }
        }
    }

    async fn final_checks(&mut self) -> Result<(), String> {
        let terms = self.terms();
        let leaders: Vec<usize> = (0..self.devs.len())
            .filter(|&i| self.devs[i].svc.as_ref().unwrap().role() == Role::Leader)
            .collect();
        if leaders.len() != 1 || self.devs[leaders[0]].id != terms[0].leader {
            return Err(format!(
                "devices agree on term {}@{} but {} of them act as leader",
                terms[0].epoch,
                terms[0].leader,
                leaders.len()
            ));
        }
        for (i, d) in self.devs.iter().enumerate() {
            check::acked_effects(d.lib.as_ref().unwrap(), &self.acked)
                .map_err(|e| format!("device {i}: {e}"))?;
        }
        for d in &self.devs {
            let s = d
                .svc
                .as_ref()
                .unwrap()
                .status()
                .await
                .map_err(|e| e.to_string())?;
            self.report.snapshots += s.stats.snapshots;
            self.report.rejected += s.stats.rejected;
            self.report.max_epoch = self.report.max_epoch.max(s.epoch);
        }
        let views = self.views()?;
        self.trace.event(
            "final",
            &[views[0].shared.as_bytes(), views[0].files.as_bytes()],
        );
        Ok(())
    }

    /// Stop everything and close every library.
    async fn shutdown(&mut self) {
        for d in &mut self.devs {
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
        for d in &mut self.devs {
            d.lib = None;
        }
    }
}
