//! What one run did and whether it held: the counters a run keeps and prints.

use crate::net::NetStats;

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
            snapshots: 0,
            rejected: 0,
            max_epoch: 0,
            time_jump_s: 0,
            sim_ms: 0,
            net: NetStats::default(),
        }
    }
}
