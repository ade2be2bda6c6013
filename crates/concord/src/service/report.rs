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
    /// Requests sent to other devices.
    pub sent: u64,
    /// Entries received from other devices.
    pub received: u64,
    /// Received entries applied to this library.
    pub applied: u64,
    /// Received entries a merge rule refused (recorded as conflicts).
    pub refused: u64,
    /// Received entries rejected as invalid (the first reason is `last_error`).
    pub rejected: u64,
    /// Entries of this device that a peer held and this device had lost,
    /// found when reconciling: non-zero means its data dir went back in time
    /// (restored from a backup, a VM snapshot rolled back, a power cut). They
    /// come back from peers (entries or a snapshot).
    pub rolled_back: u64,
    /// Of those, entries given back one by one (the rest came in a snapshot).
    pub recovered_own: u64,
    /// Received entries refused because no verified seal of their origin
    /// covered them (forged, altered, split or unsigned; per peer in `peers`).
    pub forged: u64,
    /// Received chunks whose positions this device held with different
    /// content: two changes under one position (a bug, a forged peer, an
    /// undetected rollback). Both copies take effect by the merge rules;
    /// the log keeps the first. Should stay 0.
    pub position_conflicts: u64,
    /// The last of those, with both chunks' ranges.
    pub last_position_conflict: Option<String>,
    /// Snapshot chunks served plus snapshots taken.
    pub snapshots: u64,
    /// The latest error, for `sync status`: sync keeps going after one.
    pub last_error: Option<String>,
}

/// Progress of a pull (remote browsing), for `sync status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullProgress {
    /// The location being pulled.
    pub location: Uuid,
    /// Rows taken so far.
    pub done: u64,
    /// Rows the owner counted as changed when the pull started.
    pub total: u64,
    /// Rows per second so far.
    pub rate: f64,
    /// The last page arrived.
    pub finished: bool,
}

/// One member's line in `sync status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// The member device.
    pub device_id: Uuid,
    /// Heard from within `leader_timeout`.
    pub online: bool,
    /// Entries this device holds that the member had not reported holding.
    pub lag_entries: u64,
    /// When it was last heard from (ms on this device's clock).
    pub last_seen: Option<u64>,
    /// Entries this member sent that no verified seal of their origin covered
    /// (forged, altered, split or unsigned): refused, not logged, not relayed.
    pub forged: u64,
    /// Why the last of those was refused.
    pub last_refusal: Option<String>,
}

/// `sync status LIB`.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    /// The leader of the current term (nil before the first election).
    pub leader: Uuid,
    /// The current term's epoch.
    pub epoch: u64,
    /// This device's role.
    pub role: Role,
    /// Leader: the last sequence number assigned; follower: its cursor.
    pub seq: u64,
    /// What this device holds, per origin.
    pub version_vector: VersionVector,
    /// Every other member.
    pub peers: Vec<PeerStatus>,
    /// Conflicts recorded in this library.
    pub conflicts: u64,
    /// Entries held in this device's log (pruning shrinks it).
    pub log_entries: u64,
    /// Pulls of other devices' locations (remote browsing) since start.
    pub pulls: Vec<PullProgress>,
    /// Counters since start.
    pub stats: Stats,
}
