//! `location ...` and `entry list`.

use std::path::Path;

use concord::model::{entry_kind, Location};
use concord::query::{self, EntryFilter};
use concord::{index, Change};
use serde_json::{json, Value};

use crate::context::{CliError, CliResult, Context};
use crate::resolve;

/// `location add LIB PATH`: add and index a folder of this device.
pub fn add(ctx: &Context, library: &str, path: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let progress = ctx.progress();
    let result = index::add_location(&lib, Path::new(path), &mut |done, total| {
        progress.update(done, total)
    });
    progress.finish();
    let added = result?;
    Ok(json!({
        "id": added.location.id.to_string(),
        "entries": added.entries,
        "skipped": added.skipped,
        "path": added.location.path,
        "volume_id": added.volume.id.to_string(),
    }))
}

/// `location list LIB`.
pub fn list(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(Value::Array(
        query::locations(&lib)?
            .into_iter()
            .map(|s| {
                json!({
                    "id": s.location.id.to_string(),
                    "device_id": s.location.device.to_string(),
                    "path": s.location.path,
                    "entries": s.entries,
                    "name": s.location.name,
                    "volume_id": s.location.volume.to_string(),
                })
            })
            .collect(),
    ))
}

/// A location of this device (rescanning or removing another's is refused).
fn own_location(
    lib: &concord::Library,
    library: &str,
    key: &str,
    verb: &str,
) -> CliResult<Location> {
    let loc = resolve::location(lib, library, key)?;
    if loc.device != lib.device() {
        return Err(CliError::new(format!(
            "location {} ({}) belongs to device {}; {verb} it on that device",
            loc.name, loc.id, loc.device
        )));
    }
    Ok(loc)
}

/// `location rescan LIB LOC`: catch up with changes on disk.
pub fn rescan(ctx: &Context, library: &str, location: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let loc = own_location(&lib, library, location, "rescan")?;
    let progress = ctx.progress();
    let result = index::rescan_location(&lib, loc.id, &mut |done, total| {
        progress.update(done, total)
    });
    progress.finish();
    let report = result?;
    Ok(json!({
        "id": loc.id.to_string(),
        "inserted": report.inserted,
        "updated": report.updated,
        "deleted": report.deleted,
        "skipped": report.skipped,
    }))
}

/// `location remove LIB LOC`.
pub fn remove(ctx: &Context, library: &str, location: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let loc = own_location(&lib, library, location, "remove")?;
    // Its file entries (and their tags and album items) go with it: they name
    // the location through a key reference, which cascades.
    lib.commit(Change::delete::<Location>(loc.id))?;
    Ok(json!({ "id": loc.id.to_string() }))
}

/// `entry list LIB [--location LOC] [--device DEVICE]`.
pub fn entries(
    ctx: &Context,
    library: &str,
    location: Option<&str>,
    device: Option<&str>,
) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let filter = EntryFilter {
        location: location
            .map(|l| resolve::location(&lib, library, l).map(|l| l.id))
            .transpose()?,
        device: device.map(|d| resolve::device(&lib, d)).transpose()?,
    };
    Ok(Value::Array(
        query::file_entries(&lib, filter)?
            .into_iter()
            .map(|e| {
                let f = e.entry;
                json!({
                    "id": f.id.to_string(),
                    "device_id": f.device.to_string(),
                    "location_id": f.location.to_string(),
                    "path": f.path,
                    "kind": entry_kind::name(f.kind),
                    "size": f.size,
                    "tags": e.tags,
                    "name": f.name,
                    "modified": f.modified,
                    // Offload: the location now holding the content, else null.
                    "offloaded_to": f.offloaded_to.map(|l| l.to_string()),
                })
            })
            .collect(),
    ))
}
