//! Offload's destination end: the `Hold` call of `concord/content/1`. The
//! device of an `offload` conduit's source asks the device of its
//! destination to fetch files from it (verified by BLAKE3 while streaming,
//! written under their final name only once complete) and answers, per
//! file, what this end holds there now (hashed again); in `Check` mode it
//! only answers that (what `conduit status` reports as lost content). Only this answer lets the source remove its copy, so a file is
//! never said to be held unless its bytes were hashed here. Blocking code.

use std::path::Path;
use std::sync::Arc;

use concord::conduit::guard::root_present;
use concord::conduit::trash::Trash;
use concord::conduit::tree::hash_reader;
use concord::query;
use iroh::EndpointId;
use tokio::runtime::Handle;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::fetch::{ContentClient, FileRequest};
use crate::transfer::path::{components, open_regular};
use crate::transfer::source::authorize_location;
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

/// What `root/rel` holds now compared with `want`.
fn found(root: &Path, rel: &str, want: &HoldFile) -> Holding {
    match open_regular(root, rel) {
        Ok((mut f, _)) => match hash_reader(&mut f) {
            Ok((hash, size)) if size == want.size && hash == want.hash => Holding::Same,
            Ok((hash, _)) => Holding::Other { hash },
            Err(e) => Holding::Failed {
                reason: format!("{rel}: {e}"),
            },
        },
        Err(_) if std::fs::symlink_metadata(root.join(rel)).is_err() => Holding::Missing,
        Err(e) => Holding::Failed {
            reason: e.to_string(),
        },
    }
}

/// Serve a `Hold` call.
pub fn serve_hold(
    state: &NodeState,
    client: &ContentClient,
    handle: &Handle,
    remote: EndpointId,
    req: HoldRequest,
    now_ms: i64,
) -> HoldAnswer {
    hold(state, client, handle, remote, req, now_ms).unwrap_or_else(|e| HoldAnswer::Refused {
        reason: e.to_string(),
    })
}

fn hold(
    state: &NodeState,
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
    let lib = state.library(req.library)?;
    let fingerprint = query::location(&lib, req.location)?
        .and_then(|l| {
            query::volumes(&lib)
                .ok()?
                .into_iter()
                .find(|v| v.id == l.volume)
        })
        .map(|v| v.fingerprint);
    if !root_present(&root, fingerprint.as_deref()) {
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
        let now = found(&root, &rel, f);
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
