//! The messages and limits of `concord/content/1` (docs/PROTOCOL.md,
//! "concord/content/1"): one request frame, one header frame, then the raw
//! BLAKE3/bao encoding of the requested ranges. Pure types and checks, so
//! both sides and the tests share one definition of what a peer may send.

use std::time::Duration;

use bao_tree::{BlockSize, ChunkNum, ChunkRanges, ChunkRangesRef};
use concord::Uuid;
use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// Chunk groups of 16 KiB (2^4 BLAKE3 chunks of 1 KiB): the unit that is
/// verified, written and resumed. Fixed by the protocol version: both sides
/// must cut the tree the same way. The outboard is 1/256 of the file.
pub const BLOCK: BlockSize = BlockSize::from_chunk_log(4);
/// Largest request frame (a path and at most [`MAX_RANGE_BOUNDARIES`]).
pub const MAX_REQUEST_FRAME: usize = 32 * 1024;
/// Largest header frame (a refusal's text included).
pub const MAX_HEADER_FRAME: usize = 8 * 1024;
/// Longest relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component, in bytes (what Linux filesystems allow).
pub const MAX_NAME_BYTES: usize = 255;
/// Most boundaries in a request's range set (512 separate ranges).
pub const MAX_RANGE_BOUNDARIES: usize = 1024;
/// Largest file served or accepted (16 TiB): a size a peer states beyond it is
/// refused before anything is allocated.
pub const MAX_FILE_SIZE: u64 = 16 << 40;
/// Time a peer has to send its whole request frame once it opened a stream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the requester waits for the header: the server hashes the whole file
/// first (about 1 GB/s), so this is generous.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest pause in the data stream, either way, before the transfer is cut.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Files one connection transfers at once, on either side: more requests
/// wait. Half the endpoint's 32 streams per connection, so listing and
/// other calls still find room; small files are latency-bound (a round
/// trip and an fsync each), so more in flight is more files per second.
pub const MAX_CONCURRENT_PER_PEER: usize = 16;

/// The first frame of every stream: what the requester wants. A file's
/// content, a page of a conduit folder's listing, (Archive) the removal
/// of a source file whose verified copy the requester holds, (Synchronize)
/// a phase of a plan, or (Offload) copies this end must fetch and hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentCall {
    File(ContentRequest),
    List(ListRequest),
    Release(ReleaseRequest),
    Apply(ApplyRequest),
    Hold(HoldRequest),
}

/// Largest answer frame to a `List` or `Release` call.
pub const MAX_LIST_FRAME: usize = 2 * 1024 * 1024;

/// A request for one file's content: one per bidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRequest {
    pub library: Uuid,
    /// A location of the serving device in `library`.
    pub location: Uuid,
    /// `/`-separated, relative to the location's root.
    pub path: String,
    /// The BLAKE3 hash the requester expects; `None`: whatever the file holds
    /// now (the header names it, and the stream is verified against it).
    pub hash: Option<[u8; 32]>,
    /// Chunk ranges (1 KiB chunks) wanted, as sorted boundaries
    /// `[start, end, start, ...]` (an odd count: the last range is open).
    pub wanted: Vec<u64>,
}

/// The server's answer before any data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentHeader {
    /// The file's content follows: the bao encoding of the wanted ranges of a
    /// file of `size` bytes whose BLAKE3 hash is `hash`.
    Ok {
        size: u64,
        hash: [u8; 32],
        /// Modification time, ns since the Unix epoch.
        modified_ns: i128,
        executable: bool,
    },
    /// Nothing follows.
    Refused { reason: String },
}

/// Most files in one page of a listing.
pub const PAGE_FILES: usize = 1000;
/// Most path bytes in one page (so a page stays far below the frame limit).
pub const PAGE_PATH_BYTES: usize = 512 * 1024;

/// A page of the files below `dir` of a location, after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    pub library: Uuid,
    pub location: Uuid,
    /// The conduit's subfolder, `/`-separated; empty for the root.
    pub dir: String,
    /// The last path of the previous page; `None` for the first.
    pub after: Option<String>,
}

/// One regular file of a listing, as a conduit scan sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedFile {
    /// Relative to the listed folder.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub exec: bool,
    pub hash: Option<[u8; 32]>,
    pub inode: u64,
}

/// The answer to a `List` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListPage {
    Files {
        files: Vec<ListedFile>,
        /// More pages follow.
        more: bool,
    },
    /// The folder's root is missing or on another volume than the one the
    /// location was added on (an unmounted disk): never "no files".
    Missing,
    Refused {
        reason: String,
    },
}

/// Remove `path` (below `dir` of a location) once it is still exactly the
/// file the requester copied and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub library: Uuid,
    pub location: Uuid,
    pub dir: String,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub hash: [u8; 32],
    /// For the audit record: the destination device's name and path.
    pub to_device: String,
    pub to_path: String,
}

/// The answer to a `Release` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseAnswer {
    Released,
    Refused { reason: String },
}

/// A file as a conduit plan names it: its version and its inode on the end
/// that holds it (what "still the file planned" is checked against).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireState {
    pub version: concord::conduit::tree::Version,
    pub inode: u64,
}

/// One action of a plan on the serving end (paths relative to its folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireAction {
    /// Fetch the requester's file `from` (which must be `version`) to `path`.
    Copy {
        path: String,
        from: String,
        version: WireState,
        replaces: Option<WireState>,
    },
    /// Copy this end's own `from` to `path` (same content).
    CopyLocal {
        from: String,
        expected: WireState,
        path: String,
        version: concord::conduit::tree::Version,
        replaces: Option<WireState>,
    },
    /// Rename this end's `from` to `path`.
    Move {
        from: String,
        expected: WireState,
        path: String,
        version: concord::conduit::tree::Version,
        replaces: Option<WireState>,
    },
    /// Move `path` to this end's trash.
    Delete { path: String, expected: WireState },
}

/// Synchronize: carry out `actions` (one phase of a plan) on the serving
/// end of a conduit, fetching copies from the requester's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub library: Uuid,
    /// This device's end: location and folder.
    pub location: Uuid,
    pub dir: String,
    /// The requester's end, where copies are fetched from.
    pub peer_location: Uuid,
    pub peer_dir: String,
    /// The requester's device name (conflict copies, audit).
    pub peer_device: String,
    pub actions: Vec<WireAction>,
}

/// The answer to an `Apply` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyAnswer {
    Applied {
        done: u32,
        /// Paths whose actions failed, with why (the requester keeps their
        /// earlier agreement).
        failed: Vec<(String, String)>,
        disk_full: bool,
    },
    Refused {
        reason: String,
    },
}

/// Most files one `Hold` call names (the answer stays far below
/// [`MAX_LIST_FRAME`] even with a long refusal per file).
pub const MAX_HOLD_FILES: usize = 256;
/// Most path bytes a requester puts in one `Hold` call, so the call stays
/// under [`MAX_REQUEST_FRAME`].
pub const MAX_HOLD_PATH_BYTES: usize = 24 * 1024;

/// One file of a `Hold` call: its path below the conduit's folders (the
/// same on both ends) and the content the destination must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldFile {
    pub path: String,
    pub size: u64,
    pub hash: [u8; 32],
}

/// What the destination does with the files of a `Hold` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldMode {
    /// Fetch each file from the requester (verified by BLAKE3 on the way)
    /// unless this end already holds that exact content.
    Fetch,
    /// Only check (hash again) that this end still holds each file.
    Check,
}

/// Offload: the requester, the device of an `offload` conduit's source,
/// asks this end, the device of its destination, to hold verified copies
/// of `files` in `dir` of `location` (fetched from the requester's
/// `peer_dir` of `peer_location`), or to say whether it still holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    pub library: Uuid,
    /// This device's end: location and folder.
    pub location: Uuid,
    pub dir: String,
    /// The requester's end, where copies are fetched from.
    pub peer_location: Uuid,
    pub peer_dir: String,
    pub mode: HoldMode,
    /// At most [`MAX_HOLD_FILES`].
    pub files: Vec<HoldFile>,
}

/// What the destination holds at one path of a `Hold` call, hashed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holding {
    /// Exactly the content asked for.
    Same,
    /// No file.
    Missing,
    /// A file with other content (its BLAKE3).
    Other { hash: [u8; 32] },
    /// The copy or the check failed (why); nothing is known of the path.
    Failed { reason: String },
}

/// The answer to a `Hold` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldAnswer {
    /// One result per file, in order.
    Held {
        results: Vec<Holding>,
    },
    Refused {
        reason: String,
    },
}

/// The wire form of a range set.
pub fn encode_ranges(ranges: &ChunkRangesRef) -> Vec<u64> {
    ranges.boundaries().iter().map(|c| c.0).collect()
}

/// A range set from its wire form: bounded, strictly increasing, or an error.
pub fn decode_ranges(boundaries: &[u64]) -> Result<ChunkRanges, NetError> {
    if boundaries.len() > MAX_RANGE_BOUNDARIES {
        return Err(NetError::Protocol(format!(
            "{} range boundaries exceed the limit of {MAX_RANGE_BOUNDARIES}",
            boundaries.len()
        )));
    }
    let chunks: Vec<ChunkNum> = boundaries.iter().map(|b| ChunkNum(*b)).collect();
    let set = ChunkRangesRef::new(&chunks)
        .ok_or_else(|| NetError::Protocol("range boundaries are not increasing".into()))?;
    let mut out = ChunkRanges::empty();
    out.union_with(set);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_bad_ones_are_refused() {
        let set = ChunkRanges::from(ChunkNum(3)..ChunkNum(9)) | ChunkRanges::from(ChunkNum(20)..);
        assert_eq!(decode_ranges(&encode_ranges(&set)).unwrap(), set);
        assert!(decode_ranges(&[5, 5]).is_err());
        assert!(decode_ranges(&[9, 3]).is_err());
        assert!(decode_ranges(&vec![0; MAX_RANGE_BOUNDARIES + 1]).is_err());
        assert_eq!(decode_ranges(&[]).unwrap(), ChunkRanges::empty());
    }
}
