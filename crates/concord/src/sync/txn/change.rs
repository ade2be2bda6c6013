//! The change types of the write path: what a caller asks the TransactionManager
//! to write ([`Change`]), what a commit wrote ([`Receipt`]), what applying remote
//! entries did ([`ApplyReport`]), and the event announcing either
//! ([`ResourceChanged`]).

use uuid::Uuid;

use crate::model::{ModelInfo, Syncable, Value};

/// A change to one record, built by the caller and committed by the TM.
#[derive(Debug, Clone)]
pub struct Change {
    pub model: &'static ModelInfo,
    pub record: Uuid,
    pub op: ChangeOp,
}

/// What a [`Change`] does to its record.
#[derive(Debug, Clone)]
pub enum ChangeOp {
    Insert {
        values: Vec<Value>,
        local: Vec<Value>,
    },
    Update(Vec<(String, Value)>),
    Delete,
}

impl Change {
    /// Create `record` (for memberships: add it).
    pub fn insert<M: Syncable>(record: &M) -> Self {
        Self {
            model: M::INFO,
            record: record.id(),
            op: ChangeOp::Insert {
                values: record.to_values(),
                local: record.to_local_values(),
            },
        }
    }
    /// Change fields of an existing record; add them with [`Change::set`].
    pub fn update<M: Syncable>(id: Uuid) -> Self {
        Self {
            model: M::INFO,
            record: id,
            op: ChangeOp::Update(Vec::new()),
        }
    }
    /// Set a field in an update (ignored on other kinds of change).
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        if let ChangeOp::Update(fields) = &mut self.op {
            fields.push((field.to_string(), value.into()));
        }
        self
    }
    /// Delete a record for good (memberships: remove it).
    pub fn delete<M: Syncable>(id: Uuid) -> Self {
        Self {
            model: M::INFO,
            record: id,
            op: ChangeOp::Delete,
        }
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Remote,
}

/// Emitted after every commit that changed the library.
#[derive(Debug, Clone)]
pub struct ResourceChanged {
    pub library: Uuid,
    pub source: Source,
    /// Models touched, in no particular order, without duplicates.
    pub models: Vec<&'static str>,
    /// Number of log entries committed.
    pub entries: usize,
}

/// What a commit wrote.
#[derive(Debug, Clone, Default)]
pub struct Receipt {
    /// `(replica, origin_seq)` of each log entry written, in order: its
    /// position in version vectors (see [`crate::sync::entry::replica_id`]).
    pub entries: Vec<(Uuid, u64)>,
}

/// What applying remote entries did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub unchanged: usize,
    pub duplicates: usize,
    /// Refused by a merge rule (recorded in the conflict log).
    pub refused: usize,
    /// Rejected as invalid (malformed, clock too far ahead); not logged, not applied.
    pub rejected: Vec<String>,
    /// Entries of THIS device that its log did not hold: it lost them (its data
    /// dir was restored from a backup, rolled back, or cut by a power loss)
    /// and a peer gave them back. Taken like any other entry.
    pub own_recovered: usize,
    /// Entries no verified seal of their origin covers: refused before
    /// anything else, not logged, not applied, never relayed.
    pub unverified: usize,
    /// Why: one line per forged, altered, split or unverifiable chunk.
    pub forged: Vec<String>,
    /// Verified chunks whose positions this log already holds with different
    /// content (two changes under one position), one line each; their
    /// entries were applied by the merge rules, not logged (the log keeps the
    /// copy it had).
    pub position_conflicts: Vec<String>,
}
