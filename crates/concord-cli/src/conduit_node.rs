//! The conduit commands a running node serves itself: `conduit run` (a
//! cycle, by the node's [`concord_node::conduits::ConduitRunner`]), and
//! `conduit status|list` with the live state of a cycle running here.

use std::sync::Arc;

use concord::query;
use concord_node::Node;
use serde_json::{json, Value};

use crate::context::{CliError, CliResult, Context};
use crate::ops::conduits::{find, list_line, status_value};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> CliResult<T> + Send + 'static,
) -> CliResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::new(format!("command failed: {e}")))?
}

/// `conduit run LIB CONDUIT [--wait]`: without `--wait` the cycle starts
/// and the command returns; with it, a pause or a failed action is an error
/// that says why.
pub async fn run(
    node: &Node,
    ctx: Arc<Context>,
    library: String,
    conduit: String,
    wait: bool,
) -> CliResult<Value> {
    let (lib_id, id) = blocking(move || {
        let lib = ctx.library(&library)?;
        let c = find(&lib, &library, &conduit)?;
        Ok((lib.id(), c.id))
    })
    .await?;
    if !wait {
        let runner = node.conduits.clone();
        tokio::spawn(async move {
            if let Err(e) = runner.run(lib_id, id).await {
                tracing::warn!(conduit = %id, "conduit cycle failed: {e}");
            }
        });
        return Ok(json!({ "id": id.to_string(), "started": true }));
    }
    let report = node
        .conduits
        .run(lib_id, id)
        .await
        .map_err(|e| CliError::new(format!("conduit {id} failed: {e}")))?;
    if let Some(reason) = report.reason {
        return Err(CliError::new(format!(
            "conduit {id} paused: {reason}; see `concord conduit status`, then `concord conduit resume`"
        )));
    }
    if let Some(first) = report.failed.first() {
        return Err(CliError::new(format!(
            "conduit {id}: {} actions failed (the next cycle retries them): {first}",
            report.failed.len()
        )));
    }
    let mut v = serde_json::to_value(&report).unwrap_or_default();
    v["id"] = json!(id.to_string());
    Ok(v)
}

/// `conduit status`, with the progress of a cycle this node runs.
pub async fn status(
    node: &Node,
    ctx: Arc<Context>,
    library: String,
    conduit: String,
) -> CliResult<Value> {
    let c = blocking(move || {
        let lib = ctx.library(&library)?;
        find(&lib, &library, &conduit)
    })
    .await?;
    let live = node.conduits.live(c.id);
    let mut v = status_value(&c, live.as_ref().and_then(|l| l.running));
    // What this device served from the conduit's folders since it started.
    v["bytes_sent"] =
        json!(node.content.sent_from(c.source) + node.content.sent_from(c.destination));
    if let Some(l) = live {
        v["files_total"] = json!(l.files_total);
        v["files_done"] = json!(l.files_done);
        v["bytes_total"] = json!(l.bytes_total);
        v["bytes_done"] = json!(l.bytes_done);
        v["bytes_received"] = json!(l.bytes_received);
        v["conflicts"] = json!(l.conflicts);
        // Offload, on its source's device: why it waits, what was lost.
        if let (Some(why), None) = (&l.waiting, &c.paused) {
            v["reason"] = json!("destination-unreachable");
            v["waiting"] = json!(why);
        }
        if c.policy == "offload" {
            let lost: Vec<Value> = l
                .lost
                .iter()
                .map(|(path, why)| json!({ "path": path, "why": why }))
                .collect();
            v["lost"] = json!(lost);
            if let Some((free, threshold)) = l.free {
                v["free_bytes"] = json!(free);
                v["min_free_bytes"] = json!(threshold);
            }
        }
    }
    Ok(v)
}

/// `conduit list`, with the state of cycles this node runs.
pub async fn list(node: &Node, ctx: Arc<Context>, library: String) -> CliResult<Value> {
    let runner = node.conduits.clone();
    blocking(move || {
        let lib = ctx.library(&library)?;
        Ok(Value::Array(
            query::conduits(&lib)?
                .iter()
                .map(|c| list_line(&lib, c, runner.live(c.id).and_then(|l| l.running)))
                .collect(),
        ))
    })
    .await
}
