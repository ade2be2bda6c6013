//! Deterministic simulation of Concord (DESIGN §11).
//!
//! Several devices, each a real [`concord::Library`] on real SQLite files with
//! the real TransactionManager and the real [`concord::service::SyncService`],
//! talk over a simulated network ([`net`]) in simulated time ([`clock`]) while a
//! seeded workload ([`workload`]) and seeded faults run; [`check`] then verifies
//! the invariants. A run is a pure function of its seed: [`sim::run`] prints
//! the same trace hash every time, so any failure replays exactly.

pub mod check;
pub mod clock;
pub mod net;
pub mod rng;
pub mod sim;
pub mod trace;
pub mod workload;

pub use sim::{run, Faults, Options, Report};
