//! Deterministic simulation of Concord (DESIGN §11).
//!
//! Several devices, each a real [`concord::Library`] on real SQLite files with
//! the real TransactionManager and the real [`concord::service::SyncService`],
//! talk over a simulated network ([`net`]) in simulated time ([`clock`]) while a
//! seeded workload ([`workload`]) and seeded faults run; [`check`] then verifies
//! the invariants. A run is a pure function of its seed: [`sim::run`] prints
//! the same trace hash every time, so any failure replays exactly.
//!
//! [`sim`] drives a run through its phases; `world` holds the devices and what
//! can be done to one (start, crash, write); `chaos` decides the device faults
//! that [`faults`] enables (`rollback`: those that take a device's files back
//! in time), `byzantine` the forging member; [`liveness`] checks, with the production
//! timeouts, that no change waits for a leader; [`report`] is what a run returns.
//! Dependencies run one way: `sim` → `chaos` → `byzantine`, `liveness`, `rollback` → `world` →
//! `check`, `net`,
//! `workload`, `clock` → `rng`, `trace`.

mod byzantine;
mod chaos;
pub mod check;
pub mod clock;
pub mod faults;
pub mod liveness;
pub mod net;
pub mod report;
pub mod rng;
mod rollback;
pub mod sim;
pub mod trace;
pub mod workload;
mod world;

pub use faults::Faults;
pub use report::Report;
pub use sim::{run, Options};
