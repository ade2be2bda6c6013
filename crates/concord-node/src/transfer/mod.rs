//! The transfer engine: file content between members of a library over
//! `concord/content/1` (docs/PROTOCOL.md), the content side of sync conduits
//! (DESIGN §12) and of fetching a file on demand.
//!
//! Content is addressed and verified by BLAKE3 through bao trees
//! (`bao-tree`): the server hashes the file into its tree and streams the
//! wanted 16 KiB groups with the tree nodes that prove them; the receiver
//! checks each group against the expected hash before writing it to a temp
//! file, keeps the verified ranges next to it, and renames it into place once
//! every group is verified. Files, one concept each, bottom to top:
//!
//! - [`wire`]: messages, limits, ranges on the wire;
//! - [`path`]: relative paths resolved inside a location, no `..`, no symlink;
//! - [`progress`]: byte and file counters;
//! - [`outboard`]: the trees a listing built, kept for the requests after it;
//! - [`pipe`]: bounded bridges between QUIC streams and the blocking codec;
//! - [`partial`]: a file being received, its verified ranges, the commit;
//! - [`source`]: authorising a request and encoding a file;
//! - [`listing`]: a conduit folder's listing and Archive's releases, served;
//! - [`serve`]: [`ContentServer`], the protocol handler;
//! - [`fetch`]: [`ContentClient`], the requesting side;
//! - [`prefetch`]: a batch of a conduit's copies fetched several at once;
//! - [`remote`]: the engine as a conduit's `ContentSource`;
//! - [`apply`]: Synchronize's source-end actions, served;
//! - [`hold`]: Offload's verified copies, fetched and checked on demand.

pub mod apply;
pub mod fetch;
pub mod hold;
pub mod listing;
pub mod outboard;
pub mod partial;
pub mod path;
pub mod pipe;
pub mod prefetch;
pub mod progress;
pub mod remote;
pub mod serve;
pub mod source;
pub mod wire;

pub use fetch::{ContentClient, Fetched, FileRequest};
pub use progress::{ProgressSnapshot, TransferProgress};
pub use serve::ContentServer;
