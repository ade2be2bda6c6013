//! The chaos phase: random writes on random devices, interleaved with the
//! enabled device faults (crashes and long outages, partitions that split and
//! heal, clocks skewed and jumping back, the leader killed right after a burst
//! of writes, devices rolled back to a backup or cut by a power loss: see
//! `rollback`; a member forging entries and terms). Message loss, duplication
//! and delay happen in [`crate::net`].
//!
//! Every choice is drawn from the world's seeded [`crate::rng::Rng`] in a fixed
//! order, so the same seed makes the same run.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use uuid::Uuid;

use crate::faults::Faults;
use crate::world::World;

impl World {
    /// Run the chaos phase for `length` of simulated time from the start of
    /// the run, checking every device's clock after each step.
    pub(crate) async fn chaos(&mut self, faults: Faults, length: Duration) -> Result<(), String> {
        let end = self.start + length;
        let n = self.devices.len();
        let mut heal_at: Option<Instant> = None;
        while Instant::now() < end {
            let pause = self.rng.ms(1, 80);
            sleep(pause).await;
            let now = Instant::now();
            self.restart_due(now)?;
            if heal_at.is_some_and(|t| t <= now) {
                self.net.heal();
                heal_at = None;
                self.trace.event("heal", &[]);
            }
            let roll = self.rng.below(1000);
            match roll {
                0..=879 => {
                    let up = self.up();
                    if let Some(&i) = self.rng.pick(&up) {
                        self.write(i)?;
                    }
                }
                // Each fault keeps the share it had alone.
                880..=899 if faults.byzantine => self.forge()?,
                900..=929 if faults.crash => self.crash_one(faults.prune, faults.rollback).await?,
                930..=949 if faults.partition && heal_at.is_none() => {
                    heal_at = Some(self.partition(faults.prune));
                }
                950..=969 if faults.clock => self.skew_clock()?,
                970..=979 if faults.leader_kill => self.kill_leader().await?,
                980..=987 if faults.rollback => self.rollback_one().await?,
                988..=995 if faults.lost_fsync => self.lose_fsync_one().await?,
                _ => {}
            }
            for i in 0..n {
                self.check_clock(i)?;
            }
        }
        Ok(())
    }

    /// Restart every crashed device whose time to come back has come.
    fn restart_due(&mut self, now: Instant) -> Result<(), String> {
        for i in 0..self.devices.len() {
            if self.devices[i].restart_at.is_some_and(|t| t <= now) {
                self.start_device(i)?;
            }
        }
        Ok(())
    }

    /// Crash a random running device (never the last one) for a while; with
    /// `prune`, sometimes for longer than the log retention; with `rollback`,
    /// sometimes back up its files while it is down.
    async fn crash_one(&mut self, prune: bool, rollback: bool) -> Result<(), String> {
        let up = self.up();
        if up.len() > 1 {
            let i = *self.rng.pick(&up).unwrap();
            self.crash(i).await?;
            if rollback && self.rng.chance(0.3) {
                self.take_backup(i)?;
            }
            let long = prune && self.rng.chance(0.3);
            let down = if long {
                self.rng.ms(3_500, 7_000)
            } else {
                self.rng.ms(50, 2_000)
            };
            self.devices[i].restart_at = Some(Instant::now() + down);
        }
        Ok(())
    }

    /// Split the devices into two random groups; returns when the split heals
    /// (with `prune`, sometimes after longer than the log retention).
    fn partition(&mut self, prune: bool) -> Instant {
        let ids: Vec<Uuid> = self.devices.iter().map(|d| d.id).collect();
        let groups: BTreeMap<Uuid, u32> = ids
            .into_iter()
            .map(|id| (id, self.rng.below(2) as u32))
            .collect();
        self.net.set_partition(groups.clone());
        let long = prune && self.rng.chance(0.2);
        let heal_at = Instant::now()
            + if long {
                self.rng.ms(3_500, 6_000)
            } else {
                self.rng.ms(100, 2_500)
            };
        self.report.partitions += 1;
        let mut bytes = Vec::new();
        for (device, group) in &groups {
            bytes.extend_from_slice(device.as_bytes());
            bytes.push(*group as u8);
        }
        self.trace.event("partition", &[&bytes]);
        heal_at
    }

    /// Set a random device's clock off: within the drift bound, far off either
    /// way (up to an hour), jumped back from where it is, or corrected.
    fn skew_clock(&mut self) -> Result<(), String> {
        let i = self.rng.below(self.devices.len() as u64) as usize;
        let current = self.devices[i].clock.offset_ms();
        let ms = match self.rng.below(4) {
            // Within the drift bound.
            0 => self.rng.range(0, 240_000) as i64 - 120_000,
            // Far off, either way (up to an hour).
            1 => self.rng.range(0, 7_200_000) as i64 - 3_600_000,
            // Jump back from wherever it is.
            2 => current - self.rng.range(1_000, 3_600_000) as i64,
            // Corrected.
            _ => 0,
        };
        self.set_offset(i, ms.clamp(-3_600_000, 3_600_000))?;
        self.report.clock_faults += 1;
        Ok(())
    }

    /// A burst of writes, a moment for them to get on the wire, then the
    /// leader crashes (and comes back a little later).
    async fn kill_leader(&mut self) -> Result<(), String> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        if self.up().len() <= 1 {
            return Ok(());
        }
        for _ in 0..self.rng.range(2, 8) {
            let up = self.up();
            let i = *self.rng.pick(&up).unwrap();
            self.write(i)?;
        }
        let lag = self.rng.ms(0, 15);
        sleep(lag).await;
        self.crash(leader).await?;
        self.devices[leader].restart_at = Some(Instant::now() + self.rng.ms(300, 3_000));
        self.report.leader_kills += 1;
        Ok(())
    }
}
