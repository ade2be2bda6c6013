//! What one run did and whether it held: the counters a run keeps and prints.

use crate::net::NetStats;

/// What a run did and whether it held.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub devices: usize,
    /// Hash of every event of the run: equal hashes mean the same run.
    pub trace: String,
    /// Events folded into the trace hash.
    pub events: u64,
    /// Why the run failed; `None` when every invariant held.
    pub failure: Option<String>,
    /// Workload commits that wrote something.
    pub commits: u64,
    /// Log entries acknowledged to their authors.
    pub acked_entries: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub clock_faults: u64,
    pub leader_kills: u64,
    /// Devices whose files were replaced by an earlier copy of themselves.
    pub rollbacks: u64,
    /// Power cuts that took the last transactions of a device's `library.db`.
    pub lost_fsyncs: u64,
    /// Acknowledged writes lost for good: only the device that went back in
    /// time held them.
    pub lost_writes: u64,
    /// Snapshots the services took to backfill a device (from their stats).
    pub snapshots: u64,
    /// Entries the services refused (from their stats).
    pub rejected: u64,
    /// Forgeries the byzantine member sent.
    pub forged_sent: u64,
    /// Entries the services refused as not sealed by their origin.
    pub forged_refused: u64,
    /// Received chunks whose positions a device held with other content
    /// (from their stats); a run fails on any: honest devices never make one.
    pub position_conflicts: u64,
    /// Replicas in the largest version vector a device sends at the end (one
    /// per incarnation that wrote and is not retired yet).
    pub max_vv: usize,
    /// The highest term epoch any device reached.
    pub max_epoch: u64,
    /// Simulated time skipped in the heal phase so clocks catch up with stamps.
    pub time_jump_s: u64,
    /// Simulated length of the run.
    pub sim_ms: u64,
    pub net: NetStats,
}

impl Report {
    /// A report with every counter at zero, before the run starts.
    pub(crate) fn new(seed: u64, devices: usize) -> Self {
        Self {
            seed,
            devices,
            trace: String::new(),
            events: 0,
            failure: None,
            commits: 0,
            acked_entries: 0,
            crashes: 0,
            partitions: 0,
            clock_faults: 0,
            leader_kills: 0,
            rollbacks: 0,
            lost_fsyncs: 0,
            lost_writes: 0,
            snapshots: 0,
            rejected: 0,
            forged_sent: 0,
            forged_refused: 0,
            position_conflicts: 0,
            max_vv: 0,
            max_epoch: 0,
            time_jump_s: 0,
            sim_ms: 0,
            net: NetStats::default(),
        }
    }
}
