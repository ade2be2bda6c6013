//! The SyncService: replicates one library's log between its devices
//! (DESIGN §5, §6, §8, §10).
//!
//! Correctness rests on version vectors alone: any two devices that talk exchange
//! what the other lacks (`Reconcile` / `PushEntries`), and applying is
//! order-independent and idempotent (I2). The elected leader is the fast path on
//! top: it sequences every entry into one library-wide order, pushes
//! `NewEntries` to followers the moment something commits, and followers fetch
//! by a single cursor. Losing the leader, messages or whole devices costs
//! latency, never data.
//!
//! Roles and terms: a term is `(epoch, leader)`; the higher term wins everywhere
//! (fencing: a request from an older term is answered `StaleTerm`, and its
//! sender steps down). A term is adopted only from the leader it names (any
//! other mention makes the device ask that leader), and by bounded steps
//! (`state::MAX_EPOCH_STEP`), so a member cannot seize or freeze leadership.
//! Followers that hear nothing from their leader for `leader_timeout` probe
//! the registered devices; the reachable device with the highest id takes
//! `epoch + 1`.
//!
//! The service is transport-agnostic ([`transport::Transport`]) and reads time
//! only through tokio's clock and the library's [`crate::hlc::Clock`], so the
//! simulation drives exactly this code.

//! # Layout
//!
//! `SyncService` is one type with an `impl` block per role, each in its own
//! file. Imports run one way, from the top of this list to the bottom; no file
//! imports one above it:
//!
//! - `run.rs`: the main loop; wakes the roles.
//! - `dispatch.rs`: incoming requests, one handler per message type.
//! - `election.rs`: what each role does on a tick or a change; elections.
//! - `follower.rs`: proposing own entries, catching up with the leader by cursor.
//! - `leader.rs`: heartbeats, sequencing, `NewEntries` propagation, pruning horizon.
//! - `pull.rs`: remote browsing (pulling another device's location).
//! - `reconcile.rs`: version-vector reconcile and snapshot backfill, both sides.
//! - `retire.rs`: retiring superseded replicas from vectors, both sides.
//! - `cursor.rs`: the follower's cursor over the leader's sequence; term fencing.
//! - `outbound.rs`: every request to another device.
//! - `state.rs`: settings, shared state and the primitives every role uses.
//! - `report.rs`, `protocol.rs`, `snapshot/`, `transport.rs`: status types,
//!   wire messages, snapshot rows and the network abstraction; none of them
//!   knows `SyncService`.

mod cursor;
mod dispatch;
mod election;
mod follower;
mod leader;
mod outbound;
/// Wire messages of `concord/sync/1`, shared with the node's transport.
pub mod protocol;
/// Remote browsing: pulling another device's location.
pub mod pull;
mod reconcile;
mod report;
mod retire;
mod run;
/// Snapshot chunks: reading state as rows and merging them in.
pub mod snapshot;
mod state;
/// How the service reaches other devices (Iroh in the node, memory in tests).
pub mod transport;

/// What `sync status` shows, from `report.rs`.
pub use report::{PeerStatus, PullProgress, Stats, SyncStatus};
/// The service and its settings, from `state.rs`.
pub use state::{SyncConfig, SyncService};
