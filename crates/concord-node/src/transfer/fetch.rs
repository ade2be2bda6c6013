//! The requesting side of `concord/content/1`: [`ContentClient`] fetches
//! files from a member into a location of this device, verifying every
//! 16 KiB group against the expected BLAKE3 hash as it arrives, writing only
//! verified data, to a temp file ([`crate::transfer::partial`]) that gets the
//! final name once complete. Many files go at once on one connection (one
//! stream each, [`MAX_CONCURRENT_PER_PEER`] in flight); each streams in
//! pieces, so memory stays bounded whatever the sizes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bao_tree::io::sync::DecodeResponseIter;
use bao_tree::io::{BaoContentItem, DecodeError};
use bao_tree::{BaoTree, ChunkRanges};
use concord::Uuid;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::sync::{OwnedMutexGuard, Semaphore};

use crate::error::NetError;
use crate::frame::{expect_msg, write_msg};
use crate::peers::Peer;
use crate::state::NodeState;
use crate::transfer::partial::{self, Partial};
use crate::transfer::pipe::{channel, pump_in, ChannelReader};
use crate::transfer::progress::TransferProgress;
use crate::transfer::wire::{
    decode_ranges, encode_ranges, ContentCall, ContentHeader, ContentRequest, BLOCK,
    HEADER_TIMEOUT, MAX_CONCURRENT_PER_PEER, MAX_FILE_SIZE, MAX_HEADER_FRAME, MAX_LIST_FRAME,
};
use crate::CONTENT_ALPN;

/// One file to copy from a member device to this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub library: Uuid,
    /// The location on the serving device, and the file's path inside it.
    pub location: Uuid,
    pub path: String,
    /// The content expected; `None`: whatever the file holds now.
    pub hash: Option<[u8; 32]>,
    /// The root of a location of this device, and the path to write inside it.
    pub dest_root: PathBuf,
    pub dest_path: String,
}

/// A file fetched: where it landed, its size and BLAKE3 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub size: u64,
    pub hash: [u8; 32],
}

/// What the header said about the file being received.
struct Incoming {
    size: u64,
    hash: [u8; 32],
    modified_ns: i128,
    executable: bool,
}

/// Fetches file content from members over `concord/content/1`.
#[derive(Clone)]
pub struct ContentClient {
    state: Arc<NodeState>,
    writers: Writers,
}

/// One writer per destination file at a time (a new attempt waits for an
/// abandoned one's last checkpoint, so it resumes from all of it).
#[derive(Clone, Default)]
struct Writers(Arc<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>);

impl Writers {
    async fn claim(&self, dest: PathBuf) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(dest).or_default().clone()
        };
        lock.lock_owned().await
    }
}

impl ContentClient {
    /// Dials through `state`'s endpoint and connection cache.
    pub fn new(state: Arc<NodeState>) -> Self {
        Self {
            state,
            writers: Writers::default(),
        }
    }

    /// Fetch `files` from `peer`, several at once on one connection; one
    /// result per file, in order. `progress` counts bytes and files. Each
    /// folder that received files is fsynced once, after its renames and
    /// before this returns (not once per file).
    pub async fn fetch_many(
        &self,
        peer: &Peer,
        files: Vec<FileRequest>,
        progress: Arc<TransferProgress>,
    ) -> Vec<Result<Fetched, NetError>> {
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_PER_PEER));
        let mut tasks = Vec::with_capacity(files.len());
        for file in files {
            let client = self.clone();
            let peer = peer.clone();
            let progress = progress.clone();
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                client.fetch_with(&peer, file, &progress, false).await
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(match task.await {
                Ok(result) => result,
                Err(e) => Err(NetError::Other(format!("transfer task failed: {e}"))),
            });
        }
        let mut folders: Vec<PathBuf> = out
            .iter()
            .filter_map(|r| r.as_ref().ok()?.path.parent().map(Path::to_path_buf))
            .collect();
        folders.sort();
        folders.dedup();
        let _ = tokio::task::spawn_blocking(move || {
            for dir in folders {
                partial::sync_folder(&dir);
            }
        })
        .await;
        out
    }

    /// Fetch one file from `peer`, resuming an interrupted transfer of the
    /// same content to the same place.
    pub async fn fetch(
        &self,
        peer: &Peer,
        file: FileRequest,
        progress: &TransferProgress,
    ) -> Result<Fetched, NetError> {
        self.fetch_with(peer, file, progress, true).await
    }

    /// [`ContentClient::fetch`], leaving the destination's folder unsynced:
    /// for a caller that renames the file elsewhere (and syncs that folder).
    pub async fn fetch_unsynced(
        &self,
        peer: &Peer,
        file: FileRequest,
        progress: &TransferProgress,
    ) -> Result<Fetched, NetError> {
        self.fetch_with(peer, file, progress, false).await
    }

    /// [`ContentClient::fetch`]; without `sync_dir` the caller fsyncs the
    /// destination's folder.
    async fn fetch_with(
        &self,
        peer: &Peer,
        file: FileRequest,
        progress: &TransferProgress,
        sync_dir: bool,
    ) -> Result<Fetched, NetError> {
        let result = match self.attempt(peer, &file, progress, true, sync_dir).await {
            // What we had resumed from was another version: start afresh.
            Err(NetError::Refused(_)) if file.hash.is_none() && has_partial(&file).await => {
                let (root, rel) = (file.dest_root.clone(), file.dest_path.clone());
                let _ = tokio::task::spawn_blocking(move || partial::discard(&root, &rel)).await;
                self.attempt(peer, &file, progress, false, sync_dir).await
            }
            other => other,
        };
        let counter = match &result {
            Ok(_) => &progress.files_done,
            Err(_) => &progress.files_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn attempt(
        &self,
        peer: &Peer,
        file: &FileRequest,
        progress: &TransferProgress,
        resume: bool,
        sync_dir: bool,
    ) -> Result<Fetched, NetError> {
        crate::transfer::path::components(&file.dest_path)?;
        let claim = self
            .writers
            .claim(file.dest_root.join(&file.dest_path))
            .await;
        let (root, rel) = (file.dest_root.clone(), file.dest_path.clone());
        let prior = tokio::task::spawn_blocking(move || partial::load_state(&root, &rel))
            .await
            .map_err(|e| NetError::Other(e.to_string()))?
            .filter(|s| resume && file.hash.is_none_or(|h| h == s.hash));
        let (hash, have) = match &prior {
            Some(s) => (Some(s.hash), decode_ranges(&s.verified)?),
            None => (file.hash, ChunkRanges::empty()),
        };
        let wanted = ChunkRanges::all() - have;
        let req = ContentRequest {
            library: file.library,
            location: file.location,
            path: file.path.clone(),
            hash,
            wanted: encode_ranges(&wanted),
        };
        let (mut send, mut recv) = self.open(peer).await?;
        let asked = async {
            write_msg(&mut send, &ContentCall::File(req)).await?;
            let _ = send.finish();
            tokio::time::timeout(HEADER_TIMEOUT, expect_msg(&mut recv, MAX_HEADER_FRAME))
                .await
                .map_err(|_| NetError::Timeout(format!("{} did not answer", peer.name)))?
        };
        let header = match asked.await {
            Ok(header) => header,
            // The cached connection died under the request (the peer was
            // killed and may be back): forget it, so that a retry dials anew.
            Err(NetError::Io(e)) => {
                self.state.disconnect(&peer.node_id).await;
                return Err(NetError::Unreachable(format!("{}: {e}", peer.name)));
            }
            Err(e) => return Err(e),
        };
        let incoming = check_header(header, hash, &peer.name)?;
        receive(
            file,
            incoming,
            wanted,
            &mut recv,
            progress,
            (claim, sync_dir),
        )
        .await
    }

    /// A `List` or `Release` call to `peer`: one frame out, one answer back
    /// (at most [`MAX_LIST_FRAME`] bytes, within [`HEADER_TIMEOUT`]).
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        peer: &Peer,
        call: &ContentCall,
    ) -> Result<T, NetError> {
        let (mut send, mut recv) = self.open(peer).await?;
        write_msg(&mut send, call).await?;
        let _ = send.finish();
        tokio::time::timeout(HEADER_TIMEOUT, expect_msg(&mut recv, MAX_LIST_FRAME))
            .await
            .map_err(|_| NetError::Timeout(format!("{} did not answer", peer.name)))?
    }

    /// A fresh stream to `peer`, on a new connection if the cached one died.
    async fn open(&self, peer: &Peer) -> Result<(SendStream, RecvStream), NetError> {
        let conn = self.state.connect(peer, CONTENT_ALPN).await?;
        match conn.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(_) => {
                self.state.disconnect(&peer.node_id).await;
                let conn = self.state.connect(peer, CONTENT_ALPN).await?;
                conn.open_bi()
                    .await
                    .map_err(|e| NetError::Io(e.to_string()))
            }
        }
    }
}

async fn has_partial(file: &FileRequest) -> bool {
    let (root, rel) = (file.dest_root.clone(), file.dest_path.clone());
    tokio::task::spawn_blocking(move || partial::load_state(&root, &rel).is_some())
        .await
        .unwrap_or(false)
}

/// The header's promise, checked against what was asked.
fn check_header(
    header: ContentHeader,
    expected: Option<[u8; 32]>,
    from: &str,
) -> Result<Incoming, NetError> {
    match header {
        ContentHeader::Refused { reason } => Err(NetError::Refused(format!("{from}: {reason}"))),
        ContentHeader::Ok {
            size,
            hash,
            modified_ns,
            executable,
        } => {
            if expected.is_some_and(|e| e != hash) {
                return Err(NetError::Protocol(format!(
                    "{from} offered other content than the one requested"
                )));
            }
            if size > MAX_FILE_SIZE {
                return Err(NetError::Protocol(format!(
                    "{from} announced a file of {size} bytes, over the limit"
                )));
            }
            if size == 0 && hash != *blake3::hash(b"").as_bytes() {
                return Err(NetError::Protocol(format!(
                    "{from} announced an empty file with the hash of a non-empty one"
                )));
            }
            Ok(Incoming {
                size,
                hash,
                modified_ns,
                executable,
            })
        }
    }
}

/// Receive the encoded ranges into the destination's temp file, verify,
/// then give the file its final name.
async fn receive(
    file: &FileRequest,
    incoming: Incoming,
    wanted: ChunkRanges,
    recv: &mut RecvStream,
    progress: &TransferProgress,
    (claim, sync_dir): (OwnedMutexGuard<()>, bool),
) -> Result<Fetched, NetError> {
    let (tx, rx) = channel();
    let root = file.dest_root.clone();
    let rel = file.dest_path.clone();
    let verified = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = verified.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let _claim = claim;
        write_verified(
            &root,
            &rel,
            &incoming,
            &wanted,
            ChannelReader::new(rx),
            (&counter, sync_dir),
        )
    });
    let pumped = pump_in(recv, tx, &progress.bytes_received).await;
    let written = writer
        .await
        .map_err(|e| NetError::Other(format!("writing task failed: {e}")))?;
    progress
        .bytes_verified
        .fetch_add(verified.load(Ordering::Relaxed), Ordering::Relaxed);
    match (written, pumped) {
        (Ok(done), _) => Ok(done),
        // A cut stream explains a short read better than the decoder can.
        (Err(NetError::Io(_)), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

/// The blocking half: decode, verify, write, checkpoint, commit.
fn write_verified(
    root: &Path,
    rel: &str,
    incoming: &Incoming,
    wanted: &ChunkRanges,
    reader: ChannelReader,
    (verified, sync_dir): (&std::sync::atomic::AtomicU64, bool),
) -> Result<Fetched, NetError> {
    let mut partial = Partial::begin(root, rel, incoming.hash, incoming.size)?;
    if incoming.size > 0 {
        let tree = BaoTree::new(incoming.size, BLOCK);
        let hash = blake3::Hash::from_bytes(incoming.hash);
        for item in DecodeResponseIter::new(hash, tree, reader, wanted) {
            match item {
                Ok(BaoContentItem::Leaf(leaf)) => {
                    let len = leaf.data.len() as u64;
                    partial.write_leaf(leaf.offset, leaf.data)?;
                    verified.fetch_add(len, Ordering::Relaxed);
                }
                Ok(BaoContentItem::Parent(_)) => {}
                Err(e) => {
                    partial.abandon()?;
                    return Err(decode_error(e));
                }
            }
        }
    }
    partial.write_pending()?;
    if !partial.is_complete() {
        partial.abandon()?;
        return Err(NetError::Protocol(
            "the transfer ended before every range was verified".into(),
        ));
    }
    let path = partial.commit(incoming.modified_ns, incoming.executable, sync_dir)?;
    Ok(Fetched {
        path,
        size: incoming.size,
        hash: incoming.hash,
    })
}

fn decode_error(e: DecodeError) -> NetError {
    match e {
        DecodeError::LeafHashMismatch(_) | DecodeError::ParentHashMismatch(_) => {
            NetError::Protocol(format!(
                "corrupt data from the peer ({e}): it does not match the BLAKE3 hash \
                 (damaged on the way, or the file changed at the source); \
                 nothing unverified was kept"
            ))
        }
        DecodeError::LeafNotFound(_) | DecodeError::ParentNotFound(_) => NetError::Io(
            "the transfer was cut before it completed; the verified part is kept for a resume"
                .into(),
        ),
        DecodeError::Io(e) => NetError::Io(e.to_string()),
    }
}
