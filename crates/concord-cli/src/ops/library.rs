//! `device` and `library ...`.

use concord::digest::Scope;
use serde_json::{json, Value};

use crate::context::{CliResult, Context};

pub fn device(ctx: &Context) -> CliResult<Value> {
    let id = ctx.data_dir().identity();
    // The node id exists once networking does; until then it is unknown.
    Ok(json!({
        "device_id": id.device_id.to_string(),
        "node_id": null,
        "name": id.name,
    }))
}

pub fn create(ctx: &Context, name: &str) -> CliResult<Value> {
    let lib = ctx.data_dir().create_library(name)?;
    Ok(json!({ "id": lib.id().to_string(), "name": lib.name() }))
}

pub fn list(ctx: &Context) -> CliResult<Value> {
    let libs = ctx.data_dir().list_libraries()?;
    Ok(Value::Array(
        libs.into_iter()
            .map(|l| json!({ "id": l.id.to_string(), "name": l.name, "devices": l.devices }))
            .collect(),
    ))
}

pub fn digest(ctx: &Context, library: &str, shared: bool) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let scope = if shared { Scope::Shared } else { Scope::All };
    let (digest, records) = lib.read(|c| concord::digest::digest(c, scope))?;
    Ok(json!({ "digest": digest, "records": records }))
}

pub fn export(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(lib.read(|c| concord::digest::export(c, lib.id(), Scope::All))?)
}
