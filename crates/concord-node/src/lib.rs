//! The Concord node: Iroh networking, pairing and library setup.
//!
//! Three protocols, each a handler on the node's router (docs/PROTOCOL.md):
//! [`pairing`] (`concord/pairing/1`), [`setup`] (`concord/library/1`) and the
//! sync protocol (`concord/sync/1`). Networking is loopback/LAN only by default:
//! no relays, no internet discovery, no port mapping.

pub mod error;
pub mod frame;
pub mod identity;
pub mod jobs;
pub mod node;
pub mod pairing;
pub mod peers;
pub mod setup;
pub mod sync;
pub mod ticket;

pub use error::NetError;
pub use node::{Node, NodeConfig};

pub const PAIRING_ALPN: &[u8] = b"concord/pairing/1";
pub const LIBRARY_ALPN: &[u8] = b"concord/library/1";
pub const SYNC_ALPN: &[u8] = b"concord/sync/1";
