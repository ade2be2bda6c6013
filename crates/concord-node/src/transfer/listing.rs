//! The two conduit calls of `concord/content/1` besides content: `List`, a
//! page of a conduit folder's files (what the destination's device plans a
//! cycle from), and `Release`, Archive's removal of a source file once its
//! copy was verified on the destination. Both are authorised like content
//! (a paired member, a location this device added) and bounded: a page
//! holds at most [`PAGE_FILES`] files and [`PAGE_PATH_BYTES`] of paths
//! (the messages are in [`crate::transfer::wire`]).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use concord::conduit::ignore::IgnoreRules;
use concord::conduit::path::{RelPath, SafeRoot};
use concord::conduit::settings::parse_dir;
use concord::conduit::trash::reserved_dir;
use concord::conduit::tree::{hash_reader, scan_with, FileState, Tree};
use concord::{query, Uuid};
use iroh::EndpointId;

use crate::error::NetError;
use crate::state::NodeState;
use crate::transfer::outboard::OutboardCache;
use crate::transfer::source::{authorize_location, hash_for_listing, location_present};
use crate::transfer::wire::{
    ListPage, ListRequest, ListedFile, ReleaseAnswer, ReleaseRequest, PAGE_FILES, PAGE_PATH_BYTES,
};

/// The last scan of each listed folder: a listing's first page scans (not
/// hashing again what the previous scan hashed, for files whose stat did
/// not change) and its later pages are cut from that same scan, so a
/// listing is one walk however many pages it has. Also the trees the scans
/// built, for the content requests that follow.
#[derive(Default)]
pub struct ScanCache {
    scans: Mutex<HashMap<(Uuid, String), Tree>>,
    pub trees: OutboardCache,
}

/// How long a scan serves the later pages of its listing; past it (a
/// listing resumed much later) the folder is scanned again.
const PAGE_REUSE_MS: i64 = 60_000;

fn refused(e: impl std::fmt::Display) -> NetError {
    NetError::Refused(e.to_string())
}

/// The root of `dir` in a location of this device, if the remote may read
/// it; `Ok(None)` when the location's root is missing or swapped.
fn open_root(
    state: &NodeState,
    remote: EndpointId,
    library: Uuid,
    location: Uuid,
    dir: &str,
) -> Result<Option<SafeRoot>, NetError> {
    let root = authorize_location(state, remote, library, location)?;
    if !location_present(state, library, location, &root)? {
        return Ok(None);
    }
    let dir = parse_dir(dir).map_err(refused)?;
    Ok(SafeRoot::open(&root, dir.as_ref(), false).ok())
}

/// Serve one page of a listing (blocking: it walks and hashes).
pub fn serve_list(
    state: &NodeState,
    cache: &ScanCache,
    remote: EndpointId,
    req: &ListRequest,
    now_ms: i64,
) -> ListPage {
    let answer = (|| {
        let Some(root) = open_root(state, remote, req.library, req.location, &req.dir)? else {
            return Ok(ListPage::Missing);
        };
        let rules = IgnoreRules::load(&root).map_err(refused)?;
        let key = (req.location, req.dir.clone());
        let prior = cache
            .scans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let tree = match prior {
            Some(t) if req.after.is_some() && now_ms - t.scanned_at_ms < PAGE_REUSE_MS => t,
            prior => scan_with(&root, &rules, prior.as_ref(), now_ms, &|f, md| {
                hash_for_listing(f, md, &cache.trees)
            })
            .map_err(refused)?,
        };
        let mut files = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let after = req.after.as_deref().unwrap_or("");
        for (path, f) in tree.files.iter().filter(|(p, _)| p.as_str() > after) {
            if files.len() == PAGE_FILES || bytes + path.as_str().len() > PAGE_PATH_BYTES {
                more = true;
                break;
            }
            bytes += path.as_str().len();
            files.push(ListedFile {
                path: path.as_str().to_string(),
                size: f.version.size,
                mtime_ns: f.version.mtime_ns,
                exec: f.version.exec,
                hash: f.version.hash,
                inode: f.inode,
            });
        }
        let mut map = cache.scans.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 256 {
            map.clear();
        }
        map.insert(key, tree);
        Ok::<_, NetError>(ListPage::Files { files, more })
    })();
    answer.unwrap_or_else(|e| ListPage::Refused {
        reason: e.to_string(),
    })
}

/// A member may ask for a release only through an Archive conduit, not
/// paused, from this location and folder to a location of its own: being a
/// member lets it read, never remove.
fn archive_allowed(
    state: &NodeState,
    remote: EndpointId,
    req: &ReleaseRequest,
) -> Result<(), NetError> {
    let device = state.authorize(remote)?.device_id;
    let lib = state.library(req.library)?;
    let allowed = query::conduits(&lib)?.iter().any(|c| {
        c.policy == "archive"
            && c.paused.is_none()
            && c.source == req.location
            && c.source_dir == req.dir
            && query::location(&lib, c.destination)
                .ok()
                .flatten()
                .is_some_and(|l| l.device == device)
    });
    if allowed {
        Ok(())
    } else {
        Err(NetError::Refused(format!(
            "no archive conduit from this folder to device {device}"
        )))
    }
}

/// Serve a release (blocking): the file must still have the size, mtime
/// and BLAKE3 hash the requester verified its copy against; then an audit
/// line is appended to the location's `.concord/audit/archive.jsonl` and
/// the file is removed.
pub fn serve_release(
    state: &NodeState,
    remote: EndpointId,
    req: &ReleaseRequest,
    now_ms: i64,
) -> ReleaseAnswer {
    let answer = (|| {
        archive_allowed(state, remote, req)?;
        let Some(root) = open_root(state, remote, req.library, req.location, &req.dir)? else {
            return Err(NetError::Refused("the source folder is missing".into()));
        };
        let rel = RelPath::parse(&req.path).map_err(refused)?;
        let path = root.resolve(&rel).map_err(refused)?;
        let mut f = root.open_file(&rel).map_err(refused)?;
        let md = f.metadata()?;
        let now = FileState::from_metadata(&md);
        if now.version.size != req.size || now.version.mtime_ns != req.mtime_ns {
            return Err(refused(format!("{} changed since it was copied", req.path)));
        }
        let (hash, _) = hash_reader(&mut f)?;
        if hash != req.hash {
            return Err(refused(format!("{} changed since it was copied", req.path)));
        }
        let record = serde_json::json!({
            "at_ms": now_ms,
            "path": root.in_location(&rel),
            "size": req.size,
            "mtime_ns": req.mtime_ns,
            "blake3": blake3::Hash::from(req.hash).to_hex().as_str(),
            "archived_to_device": req.to_device,
            "archived_to": req.to_path,
        });
        let log = reserved_dir(root.location(), "audit")
            .map_err(refused)?
            .join("archive.jsonl");
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        writeln!(out, "{record}")?;
        out.sync_all()?;
        std::fs::remove_file(&path)?;
        Ok(ReleaseAnswer::Released)
    })();
    answer.unwrap_or_else(|e| ReleaseAnswer::Refused {
        reason: e.to_string(),
    })
}
