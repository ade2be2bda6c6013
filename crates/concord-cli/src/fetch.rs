//! `entry fetch LIB ENTRY --to PATH`: a file or folder of another device
//! (an offloaded entry of this device comes back by `fetch_back.rs`)
//! copied to this one through the transfer engine (`concord/content/1`),
//! inside the running node. Files are verified against the BLAKE3 hash the
//! owner announces, written to temp files next to the destination and
//! renamed into place; an interrupted fetch resumes when run again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concord::model::{entry_kind, FileEntry};
use concord::{query, Uuid};
use concord_node::transfer::path::CONCORD_DIR;
use concord_node::transfer::{FileRequest, TransferProgress};
use concord_node::Node;
use serde_json::{json, Value};

use crate::context::{CliError, CliResult, Context};
use crate::request::EntryRef;

/// Files requested from the owner at once; a larger folder goes in batches.
const BATCH: usize = 1000;

/// What to copy: from which device and location, to which folder.
struct Plan {
    library: Uuid,
    device: Uuid,
    location: Uuid,
    /// The folder the copy goes in (its temp files go in its `.concord/`).
    root: PathBuf,
    /// Folders to create below `root`, parents first.
    dirs: Vec<String>,
    /// (path on the owner, path below `root`, size).
    files: Vec<(String, String, u64)>,
}

/// Run `entry fetch`; `{"path","bytes","files","received"}`.
pub async fn entry_fetch(
    node: &Node,
    ctx: Arc<Context>,
    library: String,
    entry: EntryRef,
    to: Option<String>,
) -> CliResult<Value> {
    // This device's own offloaded entry: back to its original path.
    if to.is_none() {
        let restored = crate::fetch_back::restore(node, ctx.clone(), &library, &entry).await?;
        if let Some(v) = restored {
            return Ok(v);
        }
    }
    let plan = tokio::task::spawn_blocking(move || plan(&ctx, &library, entry, to))
        .await
        .map_err(|e| CliError::new(format!("command failed: {e}")))??;
    let peer = node
        .state
        .peer_for_device(plan.device, plan.library)
        .map_err(|e| CliError::new(e.to_string()))?;
    for dir in &plan.dirs {
        let path = plan.root.join(dir);
        std::fs::create_dir(&path)
            .map_err(|e| CliError::new(format!("cannot create {}: {e}", path.display())))?;
    }
    let progress = Arc::new(TransferProgress::default());
    let mut bytes = 0u64;
    let mut failed = Vec::new();
    for batch in plan.files.chunks(BATCH) {
        let requests = batch
            .iter()
            .map(|(from, to, _)| FileRequest {
                library: plan.library,
                location: plan.location,
                path: from.clone(),
                hash: None,
                dest_root: plan.root.clone(),
                dest_path: to.clone(),
            })
            .collect();
        let results = node
            .fetcher
            .fetch_many(&peer, requests, progress.clone())
            .await;
        for ((from, _, _), result) in batch.iter().zip(results) {
            match result {
                Ok(done) => bytes += done.size,
                Err(e) => failed.push(format!("{from}: {e}")),
            }
        }
    }
    if let Some(first) = failed.first() {
        return Err(CliError::new(format!(
            "{} of {} files could not be fetched (run the command again to resume): {first}",
            failed.len(),
            plan.files.len()
        )));
    }
    // Leave no empty `.concord/tmp` behind in a folder that had none.
    let _ = std::fs::remove_dir(plan.root.join(CONCORD_DIR).join("tmp"));
    let _ = std::fs::remove_dir(plan.root.join(CONCORD_DIR));
    let top = plan.dirs.first().or(plan.files.first().map(|f| &f.1));
    let path = top.map(|t| plan.root.join(t)).unwrap_or(plan.root);
    Ok(json!({
        "path": path.display().to_string(),
        "bytes": bytes,
        "files": plan.files.len(),
        // On the wire this time (data and tree nodes): less than `bytes`
        // when an interrupted fetch resumed.
        "received": progress.snapshot().bytes_received,
    }))
}

/// Resolve the entry and the destination; refuse what cannot work before
/// anything is written.
fn plan(ctx: &Context, library: &str, entry: EntryRef, to: Option<String>) -> CliResult<Plan> {
    let lib = ctx.library(library)?;
    let id = match entry {
        EntryRef::Id(id) => id,
        path => crate::resolve::entries(&lib, &[path])?
            .into_iter()
            .next()
            .ok_or_else(|| CliError::new("no entry given"))?,
    };
    let e = query::file_entry(&lib, id)?.ok_or_else(|| {
        CliError::new(format!(
            "no entry {id} in {library}; list another device's entries with \
             `concord entry list {library} --device DEVICE` first"
        ))
    })?;
    if e.device == lib.device() {
        return Err(CliError::new(format!(
            "entry {id} ({}) is already on this device",
            e.path
        )));
    }
    let to = to.ok_or_else(|| {
        CliError::new("--to PATH is required: where to put the copy on this device")
    })?;
    let (root, top) = destination(Path::new(&to))?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    match e.kind {
        entry_kind::FILE => files.push((e.path.clone(), top, size(&e))),
        entry_kind::DIR => {
            dirs.push(top.clone());
            let prefix = format!("{}/", e.path);
            let mut below: Vec<FileEntry> = query::location_entries(&lib, e.location)?
                .into_iter()
                .filter(|c| c.path.starts_with(&prefix))
                .collect();
            below.sort_by(|a, b| a.path.cmp(&b.path));
            for c in below {
                let rel = format!("{top}/{}", &c.path[prefix.len()..]);
                match c.kind {
                    entry_kind::DIR => dirs.push(rel),
                    entry_kind::FILE => files.push((c.path.clone(), rel, size(&c))),
                    _ => {} // symlinks are not followed, nor copied
                }
            }
        }
        _ => {
            return Err(CliError::new(format!(
                "entry {id} is a symlink; only files and folders are fetched"
            )))
        }
    }
    Ok(Plan {
        library: lib.id(),
        device: e.device,
        location: e.location,
        root,
        dirs,
        files,
    })
}

fn size(e: &FileEntry) -> u64 {
    u64::try_from(e.size).unwrap_or(0)
}

/// `--to PATH` as (existing parent folder, new name); an existing PATH is
/// refused rather than overwritten.
fn destination(to: &Path) -> CliResult<(PathBuf, String)> {
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(CliError::new(format!(
            "{} already exists; choose another --to",
            to.display()
        )));
    }
    let name = to
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::new(format!("{} does not name a file", to.display())))?;
    let parent = to
        .parent()
        .filter(|p| p.is_dir())
        .ok_or_else(|| CliError::new(format!("the folder of {} does not exist", to.display())))?;
    Ok((parent.to_path_buf(), name.to_string()))
}
