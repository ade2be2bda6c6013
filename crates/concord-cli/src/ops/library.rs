//! `device` and `library ...`.

use concord::digest::Scope;
use serde_json::{json, Value};

use crate::context::{CliError, CliResult, Context};

/// `device`: this device's id, node id and name.
pub fn device(ctx: &Context) -> CliResult<Value> {
    let id = ctx.data_dir().identity();
    let key = concord_node::identity::load_or_create(ctx.data_dir().root())
        .map_err(|e| CliError::new(e.to_string()))?;
    Ok(json!({
        "device_id": id.device_id.to_string(),
        "node_id": key.public().to_string(),
        "name": id.name,
    }))
}

/// `library create NAME [--private]`.
pub fn create(ctx: &Context, name: &str, private: bool) -> CliResult<Value> {
    let lib = ctx.data_dir().create_library(name)?;
    if private {
        concord_node::LibrarySettings { private: true }
            .save(ctx.data_dir().root(), lib.id())
            .map_err(|e| CliError::new(e.to_string()))?;
    }
    Ok(json!({ "id": lib.id().to_string(), "name": lib.name() }))
}

/// Most conflicts `sync conflicts` shows: enough for any person to read, few
/// enough to keep the answer small.
const MAX_CONFLICTS_SHOWN: usize = 10_000;

/// `sync conflicts LIB`: the overridden writes this device recorded, newest first.
pub fn conflicts(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let rows = concord::query::conflicts(&lib, MAX_CONFLICTS_SHOWN)?
        .into_iter()
        .map(|conflict| {
            json!({
                "model": conflict.model,
                "record": conflict.record.to_string(),
                "field": conflict.field,
                "kept": conflict.kept,
                "discarded": conflict.discarded,
                "at": conflict.at,
            })
        })
        .collect();
    Ok(Value::Array(rows))
}

/// `device list` without a node: paired devices, all shown offline.
pub fn device_list_offline(ctx: &Context) -> CliResult<Value> {
    let peers = concord_node::peers::PeerStore::open(ctx.data_dir().root())
        .map_err(|e| CliError::new(e.to_string()))?;
    Ok(Value::Array(
        peers
            .list()
            .into_iter()
            .map(|p| json!({"device_id": p.device_id.to_string(), "name": p.name, "online": false, "last_seen": null, "path": null, "rtt_ms": null}))
            .collect(),
    ))
}

/// `library list`.
pub fn list(ctx: &Context) -> CliResult<Value> {
    let libs = ctx.data_dir().list_libraries()?;
    Ok(Value::Array(
        libs.into_iter()
            .map(|l| json!({ "id": l.id.to_string(), "name": l.name, "devices": l.devices }))
            .collect(),
    ))
}

/// `library digest LIB [--shared]`: compare devices' contents.
pub fn digest(ctx: &Context, library: &str, shared: bool) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let scope = if shared { Scope::Shared } else { Scope::All };
    let (digest, records) = lib.read(|c| concord::digest::digest(c, scope))?;
    Ok(json!({ "digest": digest, "records": records }))
}

/// `library export LIB`: the whole library as JSON.
pub fn export(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(lib.read(|c| concord::digest::export(c, lib.id(), Scope::All))?)
}
