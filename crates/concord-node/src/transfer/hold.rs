//! Offload's destination end: the `Hold` call of `concord/content/1`. The
//! device of an `offload` conduit's source asks the device of its
//! destination to fetch files from it (verified by BLAKE3 while streaming,
//! written under their final name only once complete) and answers, per
//! file, what this end holds there now (hashed again); in `Check` mode it
//! only answers that (what `conduit status` reports as lost content). Only this answer lets the source remove its copy, so a file is
//! never said to be held unless its bytes were hashed here. Blocking code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use concord::conduit::trash::Trash;
use concord::conduit::tree::hash_reader;
use concord::query;
use iroh::EndpointId;
use tokio::runtime::Handle;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::fetch::{ContentClient, FileRequest};
use crate::transfer::path::{components, open_regular};
use crate::transfer::source::{authorize_location, location_present};
use crate::transfer::wire::{HoldAnswer, HoldFile, HoldMode, HoldRequest, Holding, MAX_HOLD_FILES};

/// `dir/path` (or `path` at a location's root), both `/`-separated.
pub fn joined(dir: &str, path: &str) -> String {
    if dir.is_empty() {
        path.to_string()
    } else {
        format!("{dir}/{path}")
    }
}

/// Whether the library holds an `offload` conduit from the requester's
/// folder (in a location of the requester's own) to this folder; returns
/// the requester's device.
fn offload_allowed(
    state: &NodeState,
    remote: EndpointId,
    req: &HoldRequest,
) -> Result<concord::Uuid, NetError> {
    let device = state.authorize(remote)?.device_id;
    let lib = state.library(req.library)?;
    let theirs = query::location(&lib, req.peer_location)?.is_some_and(|l| l.device == device);
    let allowed = theirs
        && query::conduits(&lib)?.iter().any(|c| {
            c.policy == "offload"
                && c.source == req.peer_location
                && c.source_dir == req.peer_dir
                && c.destination == req.location
                && c.destination_dir == req.dir
        });
    if allowed {
        Ok(device)
    } else {
        Err(NetError::Refused(format!(
            "no offload conduit from a folder of device {device} to this one"
        )))
    }
}

/// A file's stat as far as "not changed since it was hashed" goes: size,
/// mtime, ctime (which no tool sets back) and inode.
type Stat = (u64, i64, i64, u64);

fn stat_of(md: &std::fs::Metadata) -> Stat {
    use std::os::unix::fs::MetadataExt;
    (
        md.len(),
        md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        md.ino(),
    )
}

/// Most files [`HoldCache`] remembers; past it, it starts afresh.
const MAX_CACHED: usize = 1_000_000;

/// The BLAKE3 of files this end hashed for `Hold`, by path and stat, so an
/// Offload cycle's check of everything it offloaded hashes only what
/// changed since (a cycle runs often; the offloaded files may be large).
#[derive(Default)]
pub struct HoldCache(Mutex<HashMap<PathBuf, (Stat, [u8; 32])>>);

impl HoldCache {
    fn get(&self, path: &Path, stat: Stat) -> Option<[u8; 32]> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(path).filter(|(s, _)| *s == stat).map(|(_, h)| *h)
    }

    fn put(&self, path: PathBuf, stat: Stat, hash: [u8; 32]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(path, (stat, hash));
    }
}

/// What `root/rel` holds now compared with `want` (hashed, unless its stat
/// is the one it had when this end last hashed it).
fn found(cache: &HoldCache, root: &Path, rel: &str, want: &HoldFile) -> Holding {
    let (mut f, path) = match open_regular(root, rel) {
        Ok(opened) => opened,
        Err(_) if std::fs::symlink_metadata(root.join(rel)).is_err() => return Holding::Missing,
        Err(e) => {
            return Holding::Failed {
                reason: e.to_string(),
            }
        }
    };
    let hashed = f.metadata().map(|md| stat_of(&md)).and_then(|before| {
        if let Some(hash) = cache.get(&path, before) {
            return Ok((hash, before.0));
        }
        let (hash, size) = hash_reader(&mut f)?;
        if std::fs::symlink_metadata(&path).is_ok_and(|md| stat_of(&md) == before) {
            cache.put(path.clone(), before, hash);
        }
        Ok((hash, size))
    });
    match hashed {
        Ok((hash, size)) if size == want.size && hash == want.hash => Holding::Same,
        Ok((hash, _)) => Holding::Other { hash },
        Err(e) => Holding::Failed {
            reason: format!("{rel}: {e}"),
        },
    }
}

/// Serve a `Hold` call.
pub fn serve_hold(
    state: &NodeState,
    cache: &HoldCache,
    client: &ContentClient,
    handle: &Handle,
    remote: EndpointId,
    req: HoldRequest,
    now_ms: i64,
) -> HoldAnswer {
    hold(state, cache, client, handle, remote, req, now_ms).unwrap_or_else(|e| {
        HoldAnswer::Refused {
            reason: e.to_string(),
        }
    })
}

fn hold(
    state: &NodeState,
    cache: &HoldCache,
    client: &ContentClient,
    handle: &Handle,
    remote: EndpointId,
    req: HoldRequest,
    now_ms: i64,
) -> Result<HoldAnswer, NetError> {
    if req.files.len() > MAX_HOLD_FILES {
        return Err(NetError::Refused(format!(
            "{} files in one call exceed the limit of {MAX_HOLD_FILES}",
            req.files.len()
        )));
    }
    let root = authorize_location(state, remote, req.library, req.location)?;
    let device = offload_allowed(state, remote, &req)?;
    if !location_present(state, req.library, req.location, &root)? {
        return Err(NetError::Refused(
            "the destination folder is missing here".into(),
        ));
    }
    let mut results = Vec::with_capacity(req.files.len());
    let mut wanted = Vec::new();
    for (i, f) in req.files.iter().enumerate() {
        let rel = joined(&req.dir, &f.path);
        if let Err(e) = components(&rel).and(components(&f.path)) {
            results.push(Holding::Failed {
                reason: e.to_string(),
            });
            continue;
        }
        let now = found(cache, &root, &rel, f);
        results.push(match (now, req.mode) {
            (Holding::Missing, HoldMode::Fetch) => {
                wanted.push((i, rel));
                Holding::Missing
            }
            // An older version this end held goes to the trash, never lost.
            (Holding::Other { hash }, HoldMode::Fetch) => {
                match Trash::for_location(&root).put(&root.join(&rel), &rel, now_ms) {
                    Ok(_) => {
                        wanted.push((i, rel));
                        Holding::Missing
                    }
                    Err(e) => Holding::Failed {
                        reason: format!("{e} (it holds {})", blake3::Hash::from(hash).to_hex()),
                    },
                }
            }
            (other, _) => other,
        });
    }
    if wanted.is_empty() {
        return Ok(HoldAnswer::Held { results });
    }
    let peer = state.peer_for_device(device, req.library)?;
    let requests = wanted
        .iter()
        .map(|(i, rel)| FileRequest {
            library: req.library,
            location: req.peer_location,
            path: joined(&req.peer_dir, &req.files[*i].path),
            hash: Some(req.files[*i].hash),
            dest_root: root.clone(),
            dest_path: rel.clone(),
        })
        .collect();
    let fetched = handle.block_on(client.fetch_many(&peer, requests, Arc::default()));
    for ((i, _), got) in wanted.into_iter().zip(fetched) {
        let want = &req.files[i];
        results[i] = match got {
            Ok(f) if f.hash == want.hash && f.size == want.size => Holding::Same,
            Ok(f) => Holding::Other { hash: f.hash },
            Err(e) => Holding::Failed {
                reason: e.to_string(),
            },
        };
    }
    Ok(HoldAnswer::Held { results })
}
