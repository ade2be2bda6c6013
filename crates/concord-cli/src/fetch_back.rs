//! `entry fetch LIB ENTRY` without `--to` on the device that owns ENTRY:
//! brings an offloaded file, or every offloaded file below a folder, back
//! to its original path from the location holding its content, verified
//! against the BLAKE3 the destination verified when it took it; each entry
//! is local again once its file is back (CLI.md, "Conduits").

use std::sync::Arc;

use concord::model::{entry_kind, FileEntry};
use concord::{query, Uuid};
use concord_node::conduits::offload_cycle::fetch_back_many;
use concord_node::transfer::TransferProgress;
use concord_node::Node;
use serde_json::{json, Value};

use crate::context::{CliError, CliResult, Context};
use crate::request::EntryRef;

/// The offloaded files of an entry of this device (itself, or below it).
struct Restore {
    library: Uuid,
    top: FileEntry,
    root: String,
    files: Vec<FileEntry>,
}

/// `Some` when `entry` is this device's own: restore what of it is
/// offloaded (an error when nothing is); `None` for another device's entry.
pub async fn restore(
    node: &Node,
    ctx: Arc<Context>,
    library: &str,
    entry: &EntryRef,
) -> CliResult<Option<Value>> {
    let (library, entry) = (library.to_string(), entry.clone());
    let plan = tokio::task::spawn_blocking(move || plan(&ctx, &library, entry))
        .await
        .map_err(|e| CliError::new(format!("command failed: {e}")))??;
    let Some(plan) = plan else {
        return Ok(None);
    };
    let lib = node
        .state
        .library(plan.library)
        .map_err(|e| CliError::new(e.to_string()))?;
    let progress = Arc::new(TransferProgress::default());
    let (mut bytes, mut failed, mut fetching) = (0u64, Vec::new(), Vec::new());
    for f in &plan.files {
        let holder = || {
            let to = f.offloaded_to.ok_or_else(|| "not offloaded".to_string())?;
            let holder = query::location(&lib, to)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("its content's location {to} is gone"))?;
            node.state
                .peer_for_device(holder.device, plan.library)
                .map_err(|e| e.to_string())
        };
        match holder() {
            Ok(peer) => fetching.push((peer, f.clone())),
            Err(e) => failed.push(format!("{}: {e}", f.path)),
        }
    }
    let sizes: Vec<(String, i64)> = fetching
        .iter()
        .map(|(_, f)| (f.path.clone(), f.size))
        .collect();
    let results = fetch_back_many(&node.fetcher, &lib, fetching, &progress).await;
    for ((path, size), result) in sizes.into_iter().zip(results) {
        match result {
            Ok(()) => bytes += u64::try_from(size).unwrap_or(0),
            Err(e) => failed.push(format!("{path}: {e}")),
        }
    }
    if let Some(first) = failed.first() {
        return Err(CliError::new(format!(
            "{} of {} offloaded files could not be fetched back (run the command again to resume): {first}",
            failed.len(),
            plan.files.len()
        )));
    }
    let path = std::path::Path::new(&plan.root).join(&plan.top.path);
    Ok(Some(json!({
        "path": path.display().to_string(),
        "bytes": bytes,
        "files": plan.files.len(),
        "received": progress.snapshot().bytes_received,
    })))
}

fn plan(ctx: &Context, library: &str, entry: EntryRef) -> CliResult<Option<Restore>> {
    let lib = ctx.library(library)?;
    let id = match entry {
        EntryRef::Id(id) => id,
        path => crate::resolve::entries(&lib, &[path])?
            .into_iter()
            .next()
            .ok_or_else(|| CliError::new("no entry given"))?,
    };
    let Some(top) = query::file_entry(&lib, id)? else {
        return Ok(None);
    };
    if top.device != lib.device() {
        return Ok(None);
    }
    let files: Vec<FileEntry> = match top.kind {
        entry_kind::DIR => query::entries_below(&lib, top.location, &top.path)?
            .into_iter()
            .filter(|e| e.kind == entry_kind::FILE && e.offloaded_to.is_some())
            .collect(),
        _ => [top.clone()]
            .into_iter()
            .filter(|e| e.offloaded_to.is_some())
            .collect(),
    };
    if files.is_empty() {
        return Err(CliError::new(format!(
            "entry {id} ({}) is already on this device and nothing of it is offloaded; \
             give --to PATH only for another device's entries",
            top.path
        )));
    }
    let root = query::location(&lib, top.location)?
        .map(|l| l.path)
        .ok_or_else(|| CliError::new(format!("the location of entry {id} is gone")))?;
    Ok(Some(Restore {
        library: lib.id(),
        top,
        root,
        files,
    }))
}
