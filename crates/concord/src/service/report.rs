//! What the SyncService reports about itself: the `sync status` view and the
//! counters behind it. Plain serde types, so the CLI and the node can pass them
//! on as they are; the service's state holds them and `status` fills them.

use serde::Serialize;
use uuid::Uuid;

use super::protocol::Role;
use crate::sync::log::VersionVector;

/// Counters for `sync status` and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub sent: u64,
    pub received: u64,
    pub applied: u64,
    pub refused: u64,
    pub rejected: u64,
    pub snapshots: u64,
    pub last_error: Option<String>,
}

/// Progress of a pull (remote browsing), for `sync status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullProgress {
    pub location: Uuid,
    pub done: u64,
    pub total: u64,
    /// Rows per second so far.
    pub rate: f64,
    pub finished: bool,
}

/// One member's line in `sync status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub device_id: Uuid,
    pub online: bool,
    pub lag_entries: u64,
    pub last_seen: Option<u64>,
}

/// `sync status LIB`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub leader: Uuid,
    pub epoch: u64,
    pub role: Role,
    pub seq: u64,
    pub version_vector: VersionVector,
    pub peers: Vec<PeerStatus>,
    pub conflicts: u64,
    /// Entries held in this device's log (pruning shrinks it).
    pub log_entries: u64,
    /// Pulls of other devices' locations (remote browsing) since start.
    pub pulls: Vec<PullProgress>,
    pub stats: Stats,
}
