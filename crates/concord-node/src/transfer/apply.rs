//! Synchronize between two devices: the destination's device plans each
//! cycle and asks the source's device to carry out the source end's actions
//! (`Apply` calls of `concord/content/1`), one phase at a time. The serving
//! side checks the call against a `sync` conduit between its folder and one
//! of the requester's own, runs the core's executor on its folder (whatever
//! it overwrites or deletes goes to its trash; every action checks the file
//! is still the one planned) and fetches copies from the requester.
//! Blocking code.

use std::sync::Arc;

use concord::conduit::error::{ConduitError, Result};
use concord::conduit::execute::End;
use concord::conduit::path::{RelPath, SafeRoot, RESERVED_DIR};
use concord::conduit::plan::{Action, Side};
use concord::conduit::settings::parse_dir;
use concord::conduit::trash::{reserved_dir, Trash, RETENTION_MS};
use concord::conduit::tree::FileState;
use concord::query;
use iroh::EndpointId;
use tokio::runtime::Handle;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::fetch::ContentClient;
use crate::transfer::remote::RemoteSource;
use crate::transfer::source::{authorize_location, location_present};
use crate::transfer::wire::{ApplyAnswer, ApplyRequest, WireAction, WireState};

fn wire_state(s: &FileState) -> WireState {
    WireState {
        version: s.version.clone(),
        inode: s.inode,
    }
}

fn file_state(w: WireState) -> FileState {
    FileState {
        version: w.version,
        inode: w.inode,
    }
}

/// A source-side action of a plan as it travels; `None` for actions that
/// are not the source's (or a release, which has its own call).
pub fn to_wire(a: &Action) -> Option<WireAction> {
    let s = |p: &RelPath| p.as_str().to_string();
    if a.side() != Side::Source {
        return None;
    }
    Some(match a {
        Action::Copy {
            path,
            from,
            version,
            replaces,
            ..
        } => WireAction::Copy {
            path: s(path),
            from: s(from),
            version: wire_state(version),
            replaces: replaces.as_ref().map(wire_state),
        },
        Action::CopyLocal {
            from,
            expected,
            path,
            version,
            replaces,
            ..
        } => WireAction::CopyLocal {
            from: s(from),
            expected: wire_state(expected),
            path: s(path),
            version: version.clone(),
            replaces: replaces.as_ref().map(wire_state),
        },
        Action::Move {
            from,
            expected,
            path,
            version,
            replaces,
            ..
        } => WireAction::Move {
            from: s(from),
            expected: wire_state(expected),
            path: s(path),
            version: version.clone(),
            replaces: replaces.as_ref().map(wire_state),
        },
        Action::Delete { path, expected, .. } => WireAction::Delete {
            path: s(path),
            expected: wire_state(expected),
        },
        Action::Release { .. } => return None,
    })
}

/// A received action, its paths checked (they are a peer's input).
pub fn from_wire(a: WireAction) -> Result<Action> {
    let p = |s: &str| RelPath::parse(s);
    let side = Side::Source;
    Ok(match a {
        WireAction::Copy {
            path,
            from,
            version,
            replaces,
        } => Action::Copy {
            side,
            path: p(&path)?,
            from: p(&from)?,
            version: file_state(version),
            replaces: replaces.map(file_state),
        },
        WireAction::CopyLocal {
            from,
            expected,
            path,
            version,
            replaces,
        } => Action::CopyLocal {
            side,
            from: p(&from)?,
            expected: file_state(expected),
            path: p(&path)?,
            version,
            replaces: replaces.map(file_state),
        },
        WireAction::Move {
            from,
            expected,
            path,
            version,
            replaces,
        } => Action::Move {
            side,
            from: p(&from)?,
            expected: file_state(expected),
            path: p(&path)?,
            version,
            replaces: replaces.map(file_state),
        },
        WireAction::Delete { path, expected } => Action::Delete {
            side,
            path: p(&path)?,
            expected: file_state(expected),
        },
    })
}

/// Whether the library holds a `sync` conduit, not paused, from this folder
/// to the requester's folder in a location of the requester's own.
fn sync_allowed(state: &NodeState, remote: EndpointId, req: &ApplyRequest) -> Result<(), NetError> {
    let device = state.authorize(remote)?.device_id;
    let lib = state.library(req.library)?;
    let theirs = query::location(&lib, req.peer_location)?.is_some_and(|l| l.device == device);
    let allowed = theirs
        && query::conduits(&lib)?.iter().any(|c| {
            c.policy == "sync"
                && c.paused.is_none()
                && c.source == req.location
                && c.source_dir == req.dir
                && c.destination == req.peer_location
                && c.destination_dir == req.peer_dir
        });
    if allowed {
        Ok(())
    } else {
        Err(NetError::Refused(format!(
            "no sync conduit from this folder to one of device {device}"
        )))
    }
}

fn refused(e: impl std::fmt::Display) -> NetError {
    NetError::Refused(e.to_string())
}

/// Serve an `Apply` call.
pub fn serve_apply(
    state: &NodeState,
    client: &ContentClient,
    handle: Handle,
    remote: EndpointId,
    req: ApplyRequest,
    now_ms: i64,
) -> ApplyAnswer {
    apply(state, client, handle, remote, req, now_ms).unwrap_or_else(|e| ApplyAnswer::Refused {
        reason: e.to_string(),
    })
}

fn apply(
    state: &NodeState,
    client: &ContentClient,
    handle: Handle,
    remote: EndpointId,
    req: ApplyRequest,
    now_ms: i64,
) -> Result<ApplyAnswer, NetError> {
    let location = authorize_location(state, remote, req.library, req.location)?;
    sync_allowed(state, remote, &req)?;
    if !location_present(state, req.library, req.location, &location)? {
        return Err(NetError::Refused("the folder is missing here".into()));
    }
    let dir = parse_dir(&req.dir).map_err(refused)?;
    let root = SafeRoot::open(&location, dir.as_ref(), false).map_err(refused)?;
    let actions = req
        .actions
        .into_iter()
        .map(from_wire)
        .collect::<Result<Vec<_>, ConduitError>>()
        .map_err(refused)?;
    let device = state.authorize(remote)?.device_id;
    let me = state.device_id();
    let end = End {
        root: root.clone(),
        device: state
            .device_name_of(me, req.library)
            .unwrap_or_else(|| me.to_string()),
    };
    let mut from_peer = RemoteSource {
        handle,
        client: client.clone(),
        peer: state.peer_for_device(device, req.library)?,
        library: req.library,
        location: req.peer_location,
        dir: parse_dir(&req.peer_dir).map_err(refused)?,
        incoming: reserved_dir(&location, "incoming").map_err(refused)?,
        progress: Arc::default(),
        prefetched: Default::default(),
    };
    // Only source-side actions arrive (`from_wire`): copies onto this end,
    // prefetched batch by batch.
    let report = from_peer.run_batched(&end, Side::Source, actions, now_ms);
    let _ = Trash::for_location(&location).purge(now_ms, RETENTION_MS);
    concord::conduit::content::purge_stale_temps(&location.join(RESERVED_DIR).join("tmp"), now_ms);
    crate::transfer::prefetch::purge_stale_incoming(&from_peer.incoming, now_ms);
    crate::transfer::partial::purge_abandoned(&location.join(RESERVED_DIR).join("tmp"), now_ms);
    Ok(ApplyAnswer::Applied {
        done: report.done as u32,
        failed: report
            .failed
            .into_iter()
            .map(|(p, e)| (p.as_str().to_string(), e))
            .collect(),
        disk_full: report.disk_full,
    })
}
