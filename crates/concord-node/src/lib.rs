//! The Concord node: Iroh networking, pairing, library setup and the hosting of
//! each library's services.
//!
//! Four protocols, each a handler on the node's router (docs/PROTOCOL.md):
//! [`pairing`] (`concord/pairing/1`), [`setup`] (`concord/library/1`), the
//! sync [`transport`] (`concord/sync/1`) and file content ([`transfer`],
//! `concord/content/1`). Networking is loopback/LAN only by
//! default: no relays (only those given in [`NodeConfig::relays`]), no internet discovery, no port mapping; LAN discovery
//! (mDNS) only when [`NodeConfig::mdns`] asks for it.
//!
//! Data flows one way, from the top of this list to the bottom (a module
//! imports only modules below it):
//!
//! - [`node`]: starts everything and owns the router and the presence loop;
//! - [`pairing`], [`setup`], [`transport`], [`transfer`]: the protocol
//!   handlers, each owning its own state (pairing its invites, the transport
//!   its traffic counters, the transfer engine its progress counters);
//! - [`discovery`]: LAN discovery (mDNS) and network-change wake-ups;
//! - [`host`]: starts and stops a library's sync service and job runner;
//! - [`jobs`] and [`watcher`]: index jobs and the folder watcher;
//! - [`status`]: what `device list` shows of each link;
//! - [`state`]: data dir, paired devices, open libraries, connections;
//! - [`config`], [`peers`], [`skew`], [`relays`], [`frame`], [`ticket`], [`identity`], [`error`].

pub mod conduits;
pub mod config;
pub mod congestion;
pub mod discovery;
pub mod error;
pub mod frame;
pub mod host;
pub mod identity;
pub mod jobs;
pub mod node;
pub mod pairing;
pub mod peers;
pub mod relays;
pub mod setup;
pub mod skew;
pub mod state;
pub mod status;
pub mod ticket;
pub mod transfer;
pub mod transport;
pub mod watcher;

pub use config::{LibrarySettings, NodeConfig};
pub use error::NetError;
pub use node::Node;

/// ALPN of pairing; the version is in the ALPN so versions can coexist.
/// Unreleased: `Hello.relays` and `Challenge.now_ms` joined version 1.
pub const PAIRING_ALPN: &[u8] = b"concord/pairing/1";
/// ALPN of library setup (presence, list, share, join).
/// Unreleased: `relays` and `Pong.now_ms` joined version 1.
pub const LIBRARY_ALPN: &[u8] = b"concord/library/1";
/// ALPN of the sync transport (replication of the libraries' logs).
pub const SYNC_ALPN: &[u8] = b"concord/sync/1";
/// ALPN of file content (the transfer engine: BLAKE3-verified, resumable).
pub const CONTENT_ALPN: &[u8] = b"concord/content/1";
