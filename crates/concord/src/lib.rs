//! Concord: keeps a file manager's library identical across a user's devices.
//!
//! Start reading at [`sync::txn`] (the TransactionManager, the only write path),
//! then [`sync::log`] (the append-only sync log) and [`sync::apply`] (the merge
//! rules). `ARCHITECTURE.md` at the repository root is the map.

// Lets `#[derive(Syncable)]` name `::concord::...` inside this crate too.
extern crate self as concord;

pub mod hlc;
pub mod model;

pub use uuid::Uuid;
pub mod error;
pub mod store;
pub mod sync;

pub use error::{Error, Result};
pub use sync::txn::{Change, Library, ResourceChanged};
pub mod datadir;
pub mod digest;
pub mod private;
pub mod validate;
/// The SQLite binding, for embedders that query `library.db` read-only.
pub use rusqlite;
pub mod conduit;
pub mod index;
pub mod membership;
pub mod query;
pub mod service;
