//! Messages of the sync protocol `concord/sync/1` (DESIGN §6, docs/PROTOCOL.md).
//!
//! Plain serde types. Every message travels in an [`Envelope`] that names the
//! library, the sending device and a correlation id; every request gets exactly
//! one response. Transports add framing, size limits and compression.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sync::entry::LogEntry;
use crate::sync::gaps::PastGaps;
use crate::sync::log::VersionVector;

/// Largest number of entries in one message.
pub const MAX_BATCH_ENTRIES: usize = 1000;
/// Largest sequenced range whose entries a leader sends inside `NewEntries`.
pub const MAX_INLINE_ENTRIES: usize = 256;
/// Largest number of snapshot rows in one chunk.
pub const MAX_SNAPSHOT_ROWS: usize = 2000;
/// Most origins a version vector may name.
pub const MAX_VV_ORIGINS: usize = 4096;
/// Most retired replicas one `Retire` or `Retired` carries (a device that
/// retired more sends the first of them by replica id; a peer that then lacks
/// some keeps another digest, and vectors are compared as they are). Below
/// the node's 1 MiB bound for messages without entries.
pub const MAX_RETIRED: usize = 32_768;

/// A request or response with its routing and correlation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Correlation id: a response carries its request's id.
    pub id: u64,
    /// The library the message is about (one connection serves many).
    pub library: Uuid,
    /// The sending device (transports check it against the authenticated peer).
    pub from: Uuid,
    /// The request or response itself.
    pub msg: Msg,
}

/// A device's role in a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
}

/// Terms belong to the sync layer (the log persists them); the protocol
/// carries them, so they stay reachable here.
pub use crate::sync::term::Term;

/// One row of a snapshot: values with their field clocks, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub model: String,
    pub uuid: Uuid,
    pub values: Vec<crate::model::Value>,
    /// `(hlc, device)` per synced field.
    pub clocks: Vec<(u64, Uuid)>,
    /// Memberships: present or removed.
    pub present: bool,
}

/// A tombstone in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTombstone {
    pub model: String,
    pub uuid: Uuid,
    pub hlc: u64,
    pub dev: Uuid,
}

/// Where a pull resumes: rows changed after `since` (a clock time), past UUID
/// `after`; `position` is fixed by the first page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullCursor {
    pub since: u64,
    pub after: Option<Uuid>,
    pub position: Option<u64>,
}

/// Where a snapshot stream resumes: the model index and the last UUID sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCursor {
    pub part: u32,
    pub after: Option<Uuid>,
}

/// Every request and response of the protocol, one variant each; the
/// dispatcher answers each request with exactly one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    // ---- requests ----
    /// Leader → follower: entries `from_seq..=to_seq` are sequenced. For a
    /// small range (at most [`MAX_INLINE_ENTRIES`]) `entries` carries them,
    /// minus those the follower is known to hold (its own among them): a
    /// follower whose cursor reaches `from_seq - 1` applies them and moves its
    /// cursor to `to_seq` without a fetch. `None`: fetch them.
    NewEntries {
        term: Term,
        from_seq: u64,
        to_seq: u64,
        entries: Option<Vec<LogEntry>>,
    },
    /// Follower → leader: entries with library sequence above `since_seq`.
    FetchEntries {
        term: Term,
        since_seq: u64,
        limit: u32,
    },
    /// Follower → leader: applied up to `up_to_seq`; `vv` is the follower's
    /// version vector (used for pruning and lag).
    Acknowledge {
        term: Term,
        up_to_seq: u64,
        vv: VersionVector,
    },
    /// Liveness and view exchange, sent by leaders every heartbeat interval and
    /// by followers probing during an election.
    Heartbeat {
        term: Term,
        role: Role,
        seq: u64,
        vv: VersionVector,
        /// Leader only: the version vector every registered device has reached
        /// (entries it covers may be pruned).
        horizon: Option<VersionVector>,
    },
    /// Follower → leader: the follower's own new entries.
    ProposeEntries {
        entries: Vec<LogEntry>,
    },
    /// "This is my version vector; send what I lack and yours."
    Reconcile {
        vv: VersionVector,
        limit: u32,
    },
    /// Entries the receiver lacks (reconciliation's second half).
    PushEntries {
        entries: Vec<LogEntry>,
    },
    /// Ask for the current state from `cursor` on.
    Snapshot {
        cursor: SnapshotCursor,
    },
    /// Remote browsing (DESIGN §7): the file entries of `location` changed since
    /// `cursor.since`, a page at a time.
    PullEntries {
        location: Uuid,
        cursor: PullCursor,
    },

    // ---- responses ----
    Ok,
    EntriesResponse {
        entries: Vec<LogEntry>,
        has_more: bool,
    },
    HeartbeatReply {
        term: Term,
        role: Role,
        seq: u64,
        vv: VersionVector,
        /// What the replier holds past a gap in a replica, which `vv` does
        /// not show: a leader (or an election probe) reconciles with a peer
        /// whose summary differs from its own even when the vectors are
        /// equal.
        past_gaps: PastGaps,
    },
    ReconcileResponse {
        vv: VersionVector,
        entries: Vec<LogEntry>,
        has_more: bool,
        term: Term,
        seq: u64,
    },
    SnapshotChunk {
        rows: Vec<SnapshotRow>,
        tombstones: Vec<SnapshotTombstone>,
        /// Bulk operations recorded (DESIGN §7): their rows stay on their
        /// owner, but every device learns of them, snapshot or not.
        bulk: Vec<LogEntry>,
        next: Option<SnapshotCursor>,
        /// The sender's version vector when the snapshot started (first chunk)
        /// and ended (last chunk): the receiver continues from the first one.
        vv: VersionVector,
    },
    PullPage {
        rows: Vec<SnapshotRow>,
        /// Where the next page starts; `None` when this was the last.
        next: Option<PullCursor>,
        /// Rows in the whole pull (first page only, else 0).
        total: u64,
        /// The position to pull from next time: everything up to it was sent.
        position: u64,
    },
    /// The request carried an older term than the receiver's; here is the newer.
    StaleTerm {
        term: Term,
    },
    /// The requester must reconcile or take a snapshot.
    SyncRequired {
        reason: String,
    },
    Error {
        message: String,
    },
    /// Leader → follower, the answer to its `ProposeEntries` or `PushEntries`:
    /// taking them, the leader sequenced `from_seq..=to_seq` (they and
    /// whatever else was pending). `entries` as in `NewEntries`: what the
    /// follower lacks of that range (not its own, not what it just sent, not
    /// what it last reported holding), `None` when too many. The leader sends
    /// this follower no `NewEntries` for that range: the follower moves its
    /// cursor from here, or fetches if it is not in step.
    Sequenced {
        term: Term,
        from_seq: u64,
        to_seq: u64,
        entries: Option<Vec<LogEntry>>,
    },
    /// Follower → the highest member it reaches, after an election probe
    /// found the leader of `term` unreachable: check the leader now and take
    /// over if it is gone. Only that one device is asked, so a lost leader
    /// costs one takeover, not an election on every member. Answered `Ok`.
    TakeOver {
        term: Term,
    },
    /// Any → any, when the retired digests of their vectors differ: every
    /// replica the sender retired, with the position it was retired at. The
    /// receiver records those it holds through that position (compact
    /// vectors, `sync::log::retired`) and answers `Retired`.
    Retire {
        retired: Vec<(Uuid, u64)>,
    },
    /// The answer to `Retire`: the receiver's retired replicas the request
    /// did not list at that position.
    Retired {
        retired: Vec<(Uuid, u64)>,
    },
}

impl Msg {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::NewEntries { .. } => "NewEntries",
            Msg::FetchEntries { .. } => "FetchEntries",
            Msg::Acknowledge { .. } => "Acknowledge",
            Msg::Heartbeat { .. } => "Heartbeat",
            Msg::ProposeEntries { .. } => "ProposeEntries",
            Msg::Reconcile { .. } => "Reconcile",
            Msg::PushEntries { .. } => "PushEntries",
            Msg::Snapshot { .. } => "Snapshot",
            Msg::Ok => "Ok",
            Msg::EntriesResponse { .. } => "EntriesResponse",
            Msg::HeartbeatReply { .. } => "HeartbeatReply",
            Msg::ReconcileResponse { .. } => "ReconcileResponse",
            Msg::SnapshotChunk { .. } => "SnapshotChunk",
            Msg::PullEntries { .. } => "PullEntries",
            Msg::PullPage { .. } => "PullPage",
            Msg::StaleTerm { .. } => "StaleTerm",
            Msg::SyncRequired { .. } => "SyncRequired",
            Msg::Error { .. } => "Error",
            Msg::Sequenced { .. } => "Sequenced",
            Msg::TakeOver { .. } => "TakeOver",
            Msg::Retire { .. } => "Retire",
            Msg::Retired { .. } => "Retired",
        }
    }

    /// Check the bounds a decoder cannot: batch sizes and vector sizes.
    pub fn check_bounds(&self) -> Result<(), String> {
        let vv_ok = |vv: &VersionVector| vv.len() <= MAX_VV_ORIGINS;
        let ok = match self {
            Msg::ProposeEntries { entries }
            | Msg::PushEntries { entries }
            | Msg::EntriesResponse { entries, .. } => entries.len() <= MAX_BATCH_ENTRIES,
            Msg::NewEntries { entries, .. } | Msg::Sequenced { entries, .. } => entries
                .as_ref()
                .is_none_or(|e| e.len() <= MAX_INLINE_ENTRIES),
            Msg::ReconcileResponse { entries, vv, .. } => {
                entries.len() <= MAX_BATCH_ENTRIES && vv_ok(vv)
            }
            Msg::Heartbeat { vv, horizon, .. } => vv_ok(vv) && horizon.as_ref().is_none_or(vv_ok),
            Msg::HeartbeatReply { vv, past_gaps, .. } => {
                vv_ok(vv) && past_gaps.len() <= MAX_VV_ORIGINS
            }
            Msg::Acknowledge { vv, .. } | Msg::Reconcile { vv, .. } => vv_ok(vv),
            Msg::PullPage { rows, .. } => rows.len() <= MAX_SNAPSHOT_ROWS,
            Msg::Retire { retired } | Msg::Retired { retired } => retired.len() <= MAX_RETIRED,
            Msg::SnapshotChunk {
                rows,
                tombstones,
                bulk,
                vv,
                ..
            } => {
                rows.len() <= MAX_SNAPSHOT_ROWS
                    && tombstones.len() <= MAX_SNAPSHOT_ROWS
                    && bulk.len() <= MAX_SNAPSHOT_ROWS
                    // The full vector: retired replicas included.
                    && vv.len() <= MAX_VV_ORIGINS + MAX_RETIRED
            }
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{} exceeds a size limit", self.name()))
        }
    }
}
