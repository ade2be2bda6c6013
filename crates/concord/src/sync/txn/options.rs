//! How a library is opened ([`LibraryOptions`]) and what it promises for a
//! commit acknowledged before a power cut ([`Durability`]).

use uuid::Uuid;

use crate::sync::apply::ConflictRetention;
use crate::sync::seal::NodeKey;

/// Settings of an open library.
#[derive(Debug, Clone)]
pub struct LibraryOptions {
    /// How far ahead of this clock a remote stamp may be (see
    /// [`crate::hlc::HlcGenerator::with_max_drift`]).
    pub max_clock_drift: std::time::Duration,
    /// How much of the conflict log is kept.
    pub conflicts: ConflictRetention,
    /// The incarnation this open numbers its entries in; `None` draws a
    /// random one (the simulation passes its own, to replay from a seed).
    /// Never reuse one: that is what keeps a restored device's positions apart.
    pub incarnation: Option<u64>,
    /// What a power cut may take of acknowledged commits.
    pub durability: Durability,
    /// This device's node key. With a key, the entries this device originates
    /// are sealed as they enter the log and every received entry must be
    /// covered by a seal that verifies against its origin's key
    /// (`crate::sync::seal`); without one, neither happens — for tools and
    /// tests of the merge rules only: a node always opens its libraries with
    /// its key (`crate::datadir::DataDir`).
    pub key: Option<NodeKey>,
}

impl Default for LibraryOptions {
    fn default() -> Self {
        Self {
            max_clock_drift: crate::hlc::DEFAULT_MAX_CLOCK_DRIFT,
            conflicts: ConflictRetention::default(),
            incarnation: None,
            durability: Durability::default(),
            key: None,
        }
    }
}

/// What a commit acknowledged before a power cut is promised (ARCHITECTURE.md,
/// "Durability"). `sync.db` always commits with `synchronous=FULL`: whatever
/// the log holds (moved outbox, remote entries) survives a power cut; every
/// change `library.db` holds has its entries in the log or in the outbox of
/// the same `library.db` transaction; and changes the log holds but a power
/// cut took from `library.db` are applied again from the log on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `library.db` commits with `synchronous=NORMAL`: a power cut may take
    /// the last local commits (single ones and batches) not yet moved into
    /// the log, each whole (change and entries together), as if never made.
    /// Nothing that reached a peer is among them (entries leave only from
    /// the log), and anything the log holds comes back.
    #[default]
    Normal,
    /// `library.db` with `synchronous=FULL` too: no acknowledged commit is
    /// lost, for one more fsync per commit.
    Full,
}

/// A fresh incarnation: 63 random bits (never 0, the incarnation of logs
/// written before incarnations). Drawn from the OS generator behind UUIDv4, so
/// a restored data dir or a rolled-back VM cannot draw the same one again.
pub(super) fn random_incarnation() -> u64 {
    loop {
        // The halves' fixed version and variant bits fall on random bits of
        // the other half.
        let v = Uuid::new_v4().as_u128();
        let n = ((v >> 64) as u64 ^ v as u64) >> 1;
        if n != 0 {
            return n;
        }
    }
}
