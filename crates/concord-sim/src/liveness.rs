//! Liveness with the production timeouts: a leader's death stalls nothing.
//!
//! After a run's faults heal and it goes quiet, every device restarts with the
//! timeouts a real node uses (heartbeat 30 s, leader timeout 60 s, requests
//! 10 s, `direct_after` 500 ms) and a dead device goes silent, as a killed
//! process does over QUIC (requests to it time out; nothing says it is gone).
//! Then the leader is killed and two followers write at once. The bounds this
//! checks, from the kill:
//!
//! - every such write is on every live device within [`WRITE_BOUND`] (the
//!   leader is a fast path, never a wait: DESIGN §5);
//! - the live devices agree on one new leader within [`LEADER_BOUND`] (a dead
//!   leader is noticed from failed requests, not only after `leader_timeout`).
//!
//! Before direct pushes, such a write waited for `leader_timeout` and an
//! election (60–100 s); a failure names the write, where it is missing, and
//! what each side believed meanwhile.

use std::time::Duration;

use concord::service::protocol::{Role, Term};
use concord::service::SyncConfig;
use tokio::time::{sleep, Instant};
use uuid::Uuid;

use crate::net::NetFaults;
use crate::world::World;

/// A write made right after the leader's death reaches every live device
/// within this: `direct_after` (500 ms), then one push.
pub const WRITE_BOUND: Duration = Duration::from_secs(2);
/// The live devices agree on a new leader within this: a request to the dead
/// leader times out (10 s), then one election round whose probe of the dead
/// leader times out too (10 s), then the takeover.
pub const LEADER_BOUND: Duration = Duration::from_secs(30);

/// The production settings, keeping what the run chose for the log.
pub fn production_config(run: &SyncConfig) -> SyncConfig {
    SyncConfig {
        fetch_batch: run.fetch_batch,
        retention: run.retention,
        inline_blocking: true,
        ..SyncConfig::default()
    }
}

/// A write under watch: who wrote it and its position.
#[derive(Debug, Clone, Copy)]
struct Watched {
    writer: usize,
    /// The replica the write was numbered in.
    origin: Uuid,
    seq: u64,
}

impl World {
    /// Restart every device with the production timeouts, on a healthy
    /// network where a dead device goes silent.
    pub(crate) async fn production_timeouts(&mut self) -> Result<(), String> {
        self.config = production_config(&self.config);
        self.net.set_faults(NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            latency_ms: (1, 5),
            slow: 0.0,
            timeout: self.config.request_timeout,
            silent_down: true,
        });
        for i in 0..self.devices.len() {
            self.crash(i).await?;
            self.start_device(i)?;
        }
        self.trace.event("production-timeouts", &[]);
        Ok(())
    }

    /// Kill the leader, write on two followers at once, and hold the bounds;
    /// then bring the old leader back.
    pub(crate) async fn leader_loss(&mut self) -> Result<(), String> {
        let Some(dead) = self.leader() else {
            return Err("liveness: no leader before the kill".into());
        };
        let old_term = self.devices[dead].svc.as_ref().map(|s| s.term());
        self.crash(dead).await?;
        let killed = Instant::now();
        self.trace
            .event("liveness-kill", &[self.devices[dead].id.as_bytes()]);
        let live: Vec<usize> = self.up();
        let first = live[self.rng.range(0, live.len() as u64 - 1) as usize];
        let others: Vec<usize> = live.iter().copied().filter(|&i| i != first).collect();
        let second = others[self.rng.range(0, others.len() as u64 - 1) as usize];
        let mut watched = Vec::new();
        for writer in [first, second] {
            watched.extend(self.write_watched(writer)?);
        }
        self.wait_delivered(&watched, killed).await?;
        self.wait_new_leader(old_term, killed).await?;
        self.start_device(dead)?;
        Ok(())
    }

    /// One acknowledged write on `writer` (the workload may draw a change
    /// that does nothing; draw again, a few times).
    fn write_watched(&mut self, writer: usize) -> Result<Vec<Watched>, String> {
        for _ in 0..20 {
            let before = self.acked.len();
            self.write(writer)?;
            if self.acked.len() > before {
                return Ok(self.acked[before..]
                    .iter()
                    .map(|a| Watched {
                        writer,
                        origin: a.replica,
                        seq: a.seq,
                    })
                    .collect());
            }
        }
        Err(format!(
            "liveness: device {writer} wrote nothing in 20 draws"
        ))
    }

    /// Until every watched write is on every live device, or fail after
    /// [`WRITE_BOUND`] naming what is missing where.
    async fn wait_delivered(&mut self, watched: &[Watched], killed: Instant) -> Result<(), String> {
        loop {
            let missing = self.missing(watched)?;
            if missing.is_empty() {
                self.trace.event(
                    "liveness-delivered",
                    &[&(killed.elapsed().as_millis() as u64).to_le_bytes()],
                );
                return Ok(());
            }
            if killed.elapsed() > WRITE_BOUND {
                let mut msg = format!(
                    "liveness: {} of the writes made right after the leader's death are \
                     not everywhere {WRITE_BOUND:?} later:\n",
                    missing.len()
                );
                for (w, device) in missing {
                    msg.push_str(&format!(
                        "  write d{}#{} (origin {}) missing on d{device}: writer {}, d{device} {}\n",
                        w.writer,
                        w.seq,
                        w.origin,
                        self.describe(w.writer).await,
                        self.describe(device).await,
                    ));
                }
                return Err(msg);
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The watched writes some live device does not hold yet.
    fn missing(&self, watched: &[Watched]) -> Result<Vec<(Watched, usize)>, String> {
        let mut out = Vec::new();
        for i in self.up() {
            let lib = self.devices[i]
                .lib
                .clone()
                .ok_or("device without library")?;
            let vv = lib
                .with_log(|l| l.version_vector())
                .map_err(|e| e.to_string())?;
            for w in watched {
                if vv.get(&w.origin).copied().unwrap_or(0) < w.seq {
                    out.push((*w, i));
                }
            }
        }
        Ok(out)
    }

    /// Until the live devices agree on a leader of a newer term than the dead
    /// one's, or fail after [`LEADER_BOUND`].
    async fn wait_new_leader(&mut self, old: Option<Term>, killed: Instant) -> Result<(), String> {
        loop {
            let live = self.up();
            let terms: Vec<(Term, Role)> = live
                .iter()
                .filter_map(|&i| self.devices[i].svc.as_ref())
                .map(|s| (s.term(), s.role()))
                .collect();
            let agreed = terms.windows(2).all(|w| w[0].0 == w[1].0)
                && terms.first().is_some_and(|(t, _)| Some(*t) > old)
                && terms.iter().filter(|(_, r)| *r == Role::Leader).count() == 1;
            if agreed {
                self.trace.event(
                    "liveness-leader",
                    &[&(killed.elapsed().as_millis() as u64).to_le_bytes()],
                );
                return Ok(());
            }
            if killed.elapsed() > LEADER_BOUND {
                let mut msg = format!(
                    "liveness: no agreed new leader {LEADER_BOUND:?} after the leader's death:\n"
                );
                for i in live {
                    msg.push_str(&format!("  d{i}: {}\n", self.describe(i).await));
                }
                return Err(msg);
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// A device's view for a failure message: term, role, last error.
    async fn describe(&self, i: usize) -> String {
        let Some(svc) = self.devices[i].svc.as_ref() else {
            return "down".into();
        };
        let term = svc.term();
        let last_error = svc.status().await.ok().and_then(|s| s.stats.last_error);
        format!(
            "term {}@{} as {:?}, last error {:?}",
            term.epoch,
            term.leader,
            svc.role(),
            last_error
        )
    }
}
