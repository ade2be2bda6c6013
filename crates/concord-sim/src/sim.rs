//! One simulated run from seed to report: the run's options, its runtime, and
//! the phases in order (the world and its devices are in `world`, the
//! chaos phase in `chaos`).
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concord::hlc::{Hlc, DEFAULT_MAX_CLOCK_DRIFT};
use concord::service::protocol::Role;
use concord::service::SyncConfig;
use concord::sync::log::RETIRED_KEY;
use tokio::time::{sleep, Instant};
use uuid::Uuid;

use crate::check;
use crate::faults::Faults;
use crate::net::{NetFaults, SimNet};
use crate::report::Report;
use crate::rng::Rng;
use crate::trace::Trace;
use crate::world::World;

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
    /// A seed with every fault and drawn device count and chaos length.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            devices: None,
            faults: Faults::all(),
            chaos: None,
        }
    }
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

/// The body of [`run`], inside the paused-clock runtime.
async fn run_async(opts: &Options, dir: PathBuf) -> Report {
    let mut rng = Rng::new(opts.seed);
    // Always drawn, so that naming the drawn count replays the same run.
    let drawn = rng.range(3, 7) as usize;
    let n = opts.devices.unwrap_or(drawn);
    let faults = opts.faults;
    let start = Instant::now();
    let trace = Arc::new(Trace::new(start));
    let net_faults = chaos_net_faults(&mut rng, faults);
    let net = SimNet::new(rng.fork(1), net_faults, trace.clone());
    let config = sync_config(&mut rng, faults);
    let chaos = opts
        .chaos
        .unwrap_or_else(|| Duration::from_millis(rng.range(6_000, 12_000)));
    let mut world = World {
        rng,
        net,
        trace,
        config,
        devices: Vec::new(),
        acked: Vec::new(),
        bulk: Default::default(),
        report: Report::new(opts.seed, n),
        start,
        forgeries: Default::default(),
    };
    let result = world.play(n, &dir, faults, chaos).await;
    world.shutdown().await;
    let (hash, events) = world.trace.finish();
    world.report.trace = hash;
    world.report.events = events;
    world.report.failure = result.err();
    world.report.acked_entries = world.acked.len() as u64;
    world.report.sim_ms = Instant::now().duration_since(world.start).as_millis() as u64;
    world.report.net = world.net.stats();
    world.report
}

/// The network's faults during chaos, drawn from the seed for those enabled.
fn chaos_net_faults(rng: &mut Rng, faults: Faults) -> NetFaults {
    NetFaults {
        drop: if faults.drop {
            rng.range(0, 10) as f64 / 100.0
        } else {
            0.0
        },
        duplicate: if faults.duplicate {
            rng.range(0, 5) as f64 / 100.0
        } else {
            0.0
        },
        latency_ms: if faults.delay {
            (1, rng.range(5, 25))
        } else {
            (1, 1)
        },
        slow: if faults.delay { 0.05 } else { 0.0 },
        timeout: Duration::from_millis(150),
        silent_down: false,
    }
}

/// The services' configuration: fast timers, a fetch batch drawn from the
/// seed, and a short log retention when pruning is a fault of this run.
fn sync_config(rng: &mut Rng, faults: Faults) -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_millis(100),
        leader_timeout: Duration::from_millis(600),
        fetch_batch: *rng.pick(&[3usize, 16, 100, 1000]).unwrap(),
        retention: if faults.prune {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(3600 * 24)
        },
        inline_blocking: true,
        // The simulated network times out first (150 ms); this is the backstop.
        request_timeout: Duration::from_millis(200),
        // The leader answers in one round trip (2–50 ms here, slower legs
        // time out): past this a follower also pushes directly.
        direct_after: Duration::from_millis(60),
    }
}

impl World {
    /// Every phase in order; the first failure ends the run.
    async fn play(
        &mut self,
        n: usize,
        dir: &Path,
        faults: Faults,
        chaos: Duration,
    ) -> Result<(), String> {
        self.setup(n, dir)?;
        for i in 0..n {
            self.start_device(i)?;
        }
        self.chaos(faults, chaos).await?;
        self.heal().await?;
        self.quiet().await?;
        // Liveness with the production timeouts (`liveness`): the leader dies,
        // followers' writes still reach everyone at once; then quiet again.
        self.production_timeouts().await?;
        self.quiet().await?;
        self.leader_loss().await?;
        self.quiet().await?;
        self.final_checks().await
    }

    /// Heal: the network heals and goes quiet, clocks are corrected, every
    /// device restarts; time passes until stamps from clocks that ran ahead
    /// are acceptable.
    async fn heal(&mut self) -> Result<(), String> {
        self.net.heal();
        self.net.set_faults(NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            latency_ms: (1, 5),
            slow: 0.0,
            timeout: Duration::from_millis(150),
            silent_down: false,
        });
        for i in 0..self.devices.len() {
            if self.devices[i].clock.offset_ms() != 0 {
                self.set_offset(i, 0)?;
            }
            if self.devices[i].lib.is_none() {
                self.start_device(i)?;
            }
        }
        self.trace.event("healed", &[]);
        // Stamps issued while a clock ran ahead are refused by the others until
        // their clocks get there: switch every device off and let that time pass.
        let now = self.devices[0].clock.true_ms();
        let ahead = self
            .devices
            .iter()
            .filter_map(|d| d.lib.as_ref())
            .map(|l| Hlc::new(l.hlc().last(), Uuid::nil()).physical_ms())
            .max()
            .unwrap_or(0)
            .saturating_sub(now + DEFAULT_MAX_CLOCK_DRIFT.as_millis() as u64);
        if ahead > 0 {
            let jump = Duration::from_millis(ahead + 1_000);
            for i in 0..self.devices.len() {
                self.crash(i).await?;
            }
            sleep(jump).await;
            self.report.time_jump_s = jump.as_secs();
            self.trace
                .event("time-jump", &[&(jump.as_millis() as u64).to_le_bytes()]);
            for i in 0..self.devices.len() {
                self.start_device(i)?;
            }
        }
        Ok(())
    }

    /// After convergence: a few more heartbeats, until every device sends the
    /// same compact vector (the leader retires what every member holds and
    /// the others learn it) or 10 s of simulated time passed; the widest
    /// vector is measured after it.
    async fn settle_retirements(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            sleep(Duration::from_millis(250)).await;
            let mut sent = Vec::new();
            for d in &self.devices {
                let lib = d.lib.as_ref().unwrap();
                sent.push(
                    lib.with_log(|l| l.compact_vector())
                        .map_err(|e| e.to_string())?,
                );
            }
            if sent.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
        }
        Ok(())
    }

    /// Quiet: run until every device has the same view and term three checks
    /// in a row, or fail after 120 s of simulated time.
    async fn quiet(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut stable = 0;
        loop {
            sleep(Duration::from_millis(250)).await;
            for i in 0..self.devices.len() {
                self.check_clock(i)?;
            }
            let views = self.views()?;
            let terms = self.terms();
            let same =
                views.windows(2).all(|w| w[0] == w[1]) && terms.windows(2).all(|w| w[0] == w[1]);
            stable = if same { stable + 1 } else { 0 };
            if stable >= 3 {
                self.settle_retirements().await?;
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = String::from("no convergence within 120 s of quiet:\n");
                for (i, (v, t)) in views.iter().zip(&terms).enumerate() {
                    let status = self.devices[i].svc.as_ref().unwrap().status().await;
                    let last_error = status.ok().and_then(|s| s.stats.last_error);
                    msg.push_str(&format!(
                        "  d{i} {}: shared {} files {} term {}@{} vv {:?} last error {:?}\n",
                        self.devices[i].id,
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

    /// One leader, every acknowledged write in effect everywhere; the final
    /// state goes into the trace.
    async fn final_checks(&mut self) -> Result<(), String> {
        let terms = self.terms();
        let leaders: Vec<usize> = (0..self.devices.len())
            .filter(|&i| self.devices[i].svc.as_ref().unwrap().role() == Role::Leader)
            .collect();
        if leaders.len() != 1 || self.devices[leaders[0]].id != terms[0].leader {
            return Err(format!(
                "devices agree on term {}@{} but {} of them act as leader",
                terms[0].epoch,
                terms[0].leader,
                leaders.len()
            ));
        }
        for (i, d) in self.devices.iter().enumerate() {
            check::acked_effects(d.lib.as_ref().unwrap(), &self.acked)
                .map_err(|e| format!("device {i}: {e}"))?;
        }
        for d in &self.devices {
            let s = d
                .svc
                .as_ref()
                .unwrap()
                .status()
                .await
                .map_err(|e| e.to_string())?;
            self.report.snapshots += s.stats.snapshots;
            self.report.rejected += s.stats.rejected;
            self.report.forged_refused += s.stats.forged;
            self.report.position_conflicts += s.stats.position_conflicts;
            self.report.max_epoch = self.report.max_epoch.max(s.epoch);
        }
        self.check_forgeries()?;
        if self.report.position_conflicts > 0 {
            return Err(format!(
                "{} chunks arrived with other content under positions already held",
                self.report.position_conflicts
            ));
        }
        self.report.forged_sent = self.forgeries.sent;
        let views = self.views()?;
        // Replicas in the vector each device sends (retired ones left out).
        for d in &self.devices {
            let sent = d
                .lib
                .as_ref()
                .unwrap()
                .with_log(|l| l.compact_vector())
                .map_err(|e| e.to_string())?;
            let replicas = sent.keys().filter(|k| **k != RETIRED_KEY).count();
            self.report.max_vv = self.report.max_vv.max(replicas);
        }
        self.trace.event(
            "final",
            &[views[0].shared.as_bytes(), views[0].files.as_bytes()],
        );
        Ok(())
    }
}
