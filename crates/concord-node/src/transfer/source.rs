//! The serving side's view of one requested file: authorised, opened without
//! following links, hashed into its BLAKE3 tree (the outboard), and encoded
//! as bao for the wanted ranges. Blocking code, run on a blocking thread.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{encode_ranges, outboard_post_order};
use bao_tree::{BaoTree, ChunkRanges};
use concord::conduit::tree::hash_reader;
use concord::query::{self, members};
use iroh::EndpointId;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::outboard::{CachedTree, OutboardCache, TreeKey};
use crate::transfer::partial::epoch_ns;
use crate::transfer::path::open_regular;
use crate::transfer::wire::{ContentHeader, ContentRequest, BLOCK, MAX_FILE_SIZE};

/// Outboards up to this size stay in memory (files up to 4 GiB); larger ones
/// go to an unnamed temp file, so memory stays bounded whatever the size.
const MAX_MEMORY_OUTBOARD: u64 = 16 * 1024 * 1024;

/// Where the BLAKE3 tree of a file is kept while it is served.
enum TreeStore {
    Memory(Arc<Vec<u8>>),
    File(File),
}

/// A file ready to be sent: its data, its tree and what the header says.
pub struct Source {
    file: File,
    tree: BaoTree,
    hash: blake3::Hash,
    store: TreeStore,
    /// The version hashed; the file must still be it once it was sent.
    key: TreeKey,
    pub header: ContentHeader,
}

/// The root folder of the requested location, when the node `remote` may
/// read it: it is a paired device (checked again for every request, so
/// unpairing takes effect on open connections), the library is here, the
/// device is one of its members and the location is one this device added.
/// A refusal says which check failed.
pub fn authorize(
    state: &NodeState,
    remote: EndpointId,
    req: &ContentRequest,
) -> Result<PathBuf, NetError> {
    authorize_location(state, remote, req.library, req.location)
}

/// Whether a location's folder is really here: its root a folder on the
/// volume the library recorded for it (an unmounted disk is not "empty").
/// Every call that reads or writes inside a location asks this first.
pub fn location_present(
    state: &NodeState,
    library: concord::Uuid,
    location: concord::Uuid,
    root: &Path,
) -> Result<bool, NetError> {
    let lib = state.library(library)?;
    let fingerprint = query::location(&lib, location)?
        .and_then(|l| {
            query::volumes(&lib)
                .ok()?
                .into_iter()
                .find(|v| v.id == l.volume)
        })
        .map(|v| v.fingerprint);
    Ok(concord::conduit::guard::root_present(
        root,
        fingerprint.as_deref(),
    ))
}

/// [`authorize`] for any call naming a library and a location.
pub fn authorize_location(
    state: &NodeState,
    remote: EndpointId,
    library: concord::Uuid,
    location: concord::Uuid,
) -> Result<PathBuf, NetError> {
    let req = LocationRef { library, location };
    let device = state.authorize(remote)?.device_id;
    let here = state.data.list_libraries()?;
    if !here.iter().any(|l| l.id == req.library) {
        return Err(NetError::Refused(format!(
            "no library {} on this device",
            req.library
        )));
    }
    let lib = state.library(req.library)?;
    if !members::is_member(&lib, device)? {
        return Err(NetError::Refused(format!(
            "device {device} is not a member of library {}",
            req.library
        )));
    }
    match query::location(&lib, req.location)? {
        Some(loc) if loc.device == state.device_id() => Ok(PathBuf::from(loc.path)),
        Some(_) => Err(NetError::Refused(format!(
            "location {} is not on this device",
            req.location
        ))),
        None => Err(NetError::Refused(format!("no location {}", req.location))),
    }
}

struct LocationRef {
    library: concord::Uuid,
    location: concord::Uuid,
}

/// How long a connection's [`AuthCache`] trusts an earlier answer: a device
/// removed from a library (or a location removed) is refused at most this
/// long after the removal reached this device. Pairing is checked on every
/// request.
pub const AUTH_TTL: Duration = Duration::from_secs(1);

/// The locations one connection's peer was allowed to read, for
/// [`AUTH_TTL`]: a file request then costs no database read (checking
/// membership and the location reads both SQLite files, which costs more
/// than serving a small file).
#[derive(Default)]
pub struct AuthCache(Mutex<HashMap<(concord::Uuid, concord::Uuid), (PathBuf, Instant)>>);

impl AuthCache {
    /// [`authorize`], answered from this cache while its answer is fresh.
    pub fn authorize(
        &self,
        state: &NodeState,
        remote: EndpointId,
        req: &ContentRequest,
    ) -> Result<PathBuf, NetError> {
        state.authorize(remote)?;
        let key = (req.library, req.location);
        let now = Instant::now();
        {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((root, at)) = map.get(&key) {
                if now.duration_since(*at) < AUTH_TTL {
                    return Ok(root.clone());
                }
            }
        }
        let root = authorize(state, remote, req)?;
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, at)| now.duration_since(*at) < AUTH_TTL);
        map.insert(key, (root.clone(), now));
        Ok(root)
    }
}

/// Hash the first `tree.size()` bytes of `file` into its BLAKE3 tree (post
/// order), kept in memory or in an unnamed temp file by size.
fn build_tree(file: &File, tree: BaoTree) -> std::io::Result<(blake3::Hash, TreeStore)> {
    let data = BufReader::with_capacity(256 * 1024, Read::take(file, tree.size()));
    if tree.outboard_size() <= MAX_MEMORY_OUTBOARD {
        let mut out = Vec::with_capacity(tree.outboard_size() as usize);
        let hash = outboard_post_order(data, tree, &mut out)?;
        Ok((hash, TreeStore::Memory(Arc::new(out))))
    } else {
        let mut out = tempfile::tempfile()?;
        let hash = outboard_post_order(data, tree, std::io::BufWriter::new(&mut out))?;
        Ok((hash, TreeStore::File(out)))
    }
}

/// Hash `file` (opened by a conduit listing's scan, `md` its stat before
/// the read) as serving it would, keeping its tree in `cache` for the
/// request that follows: the file is read and hashed once, not twice.
pub fn hash_for_listing(
    file: &mut File,
    md: &std::fs::Metadata,
    cache: &OutboardCache,
) -> std::io::Result<[u8; 32]> {
    let tree = BaoTree::new(md.len(), BLOCK);
    if tree.outboard_size() == 0 || tree.outboard_size() > MAX_MEMORY_OUTBOARD {
        return hash_reader(file).map(|(h, _)| h);
    }
    match build_tree(file, tree) {
        Ok((hash, TreeStore::Memory(outboard))) => {
            cache.insert(TreeKey::of(md), CachedTree { hash, outboard });
            Ok(*hash.as_bytes())
        }
        Ok((hash, TreeStore::File(_))) => Ok(*hash.as_bytes()),
        // Shorter than its stat said (written meanwhile): hash what is
        // there; the scan sees the stat move and keeps no hash.
        Err(_) => {
            file.seek(SeekFrom::Start(0))?;
            hash_reader(file).map(|(h, _)| h)
        }
    }
}

/// The BLAKE3 hash of the file at `path`, computed as serving it does (its
/// tree of 16 KiB groups built on the way): what benchmark F6 measures.
pub fn hash_for_transfer(path: &Path) -> std::io::Result<blake3::Hash> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    build_tree(&file, BaoTree::new(size, BLOCK)).map(|(hash, _)| hash)
}

impl Source {
    /// Open `root/path`, hash it (or take its tree from `cache`, when this
    /// very version was hashed by a listing) and check it against the
    /// expected hash.
    pub fn open(
        root: PathBuf,
        req: &ContentRequest,
        cache: &OutboardCache,
    ) -> Result<Source, NetError> {
        let (file, path) = open_regular(&root, &req.path)?;
        let meta = file.metadata()?;
        let size = meta.len();
        if size > MAX_FILE_SIZE {
            return Err(NetError::Refused(format!(
                "{} is too large to send",
                path.display()
            )));
        }
        let tree = BaoTree::new(size, BLOCK);
        let key = TreeKey::of(&meta);
        let (hash, store) = match cache.get(&key) {
            Some(t) => (t.hash, TreeStore::Memory(t.outboard)),
            None => {
                let (hash, store) = build_tree(&file, tree).map_err(|e| {
                    NetError::Refused(format!("{} changed while being read: {e}", path.display()))
                })?;
                if let TreeStore::Memory(outboard) = &store {
                    let outboard = outboard.clone();
                    cache.insert(key, CachedTree { hash, outboard });
                }
                (hash, store)
            }
        };
        if let Some(expected) = req.hash {
            if expected != *hash.as_bytes() {
                return Err(NetError::Refused(format!(
                    "{} has changed (its BLAKE3 hash is not the one requested); rescan and retry",
                    req.path
                )));
            }
        }
        let modified_ns = meta.modified().map(epoch_ns).unwrap_or(0);
        let header = ContentHeader::Ok {
            size,
            hash: *hash.as_bytes(),
            modified_ns,
            executable: meta.permissions().mode() & 0o111 != 0,
        };
        Ok(Source {
            file,
            tree,
            hash,
            store,
            key,
            header,
        })
    }

    /// Write the bao encoding of `wanted`. The data is not hashed again
    /// here (the receiver verifies every group against the tree, and a
    /// group that fails is never written): a file changed since it was
    /// hashed is caught by the receiver, and by its stat here once the
    /// data is out, which fails the stream.
    pub fn encode(self, wanted: &ChunkRanges, out: &mut impl Write) -> Result<(), NetError> {
        let fail = |e: bao_tree::io::EncodeError| {
            NetError::Refused(format!("the file changed while being sent: {e}"))
        };
        if self.tree.size() == 0 {
            return Ok(());
        }
        match &self.store {
            TreeStore::Memory(data) => {
                let outboard = PostOrderOutboard {
                    root: self.hash,
                    tree: self.tree,
                    data: &**data,
                };
                encode_ranges(&self.file, outboard, wanted, &mut *out).map_err(fail)?
            }
            TreeStore::File(data) => {
                let outboard = PostOrderOutboard {
                    root: self.hash,
                    tree: self.tree,
                    data,
                };
                encode_ranges(&self.file, outboard, wanted, &mut *out).map_err(fail)?
            }
        }
        if TreeKey::of(&self.file.metadata()?) != self.key {
            return Err(NetError::Refused(
                "the file changed while being sent".into(),
            ));
        }
        out.flush()?;
        Ok(())
    }
}
