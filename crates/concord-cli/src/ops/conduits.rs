//! `conduit create|list|status|pause|resume|remove`: library writes and
//! reads of the synced [`Conduit`] record, the same with or without a
//! running node (cycles themselves run in the node: `conduit run`).

use concord::conduit::settings::{display_state, PauseReason, Settings};
use concord::model::{Conduit, Location, Tag};
use concord::{query, Change, Library, Uuid};
use serde_json::{json, Value};

use crate::context::{CliError, CliResult, Context};
use crate::request::Request;
use crate::resolve;

/// What `conduit create` was given, as typed.
pub struct CreateArgs<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub policy: &'a str,
    pub delete: bool,
    pub cadence: &'a str,
    pub min_free: Option<&'a str>,
    pub pin_tag: Option<&'a str>,
}

/// `LOC[:SUBDIR]`: a location named in full (names may hold `:`), else the
/// part before the first `:` and a subfolder after it.
fn locspec(lib: &Library, lib_key: &str, spec: &str) -> CliResult<(Location, String)> {
    if let Ok(loc) = resolve::location(lib, lib_key, spec) {
        return Ok((loc, String::new()));
    }
    match spec.split_once(':') {
        Some((loc, dir)) => {
            let loc = resolve::location(lib, lib_key, loc)?;
            Ok((loc, dir.trim_matches('/').to_string()))
        }
        None => resolve::location(lib, lib_key, spec).map(|l| (l, String::new())),
    }
}

/// `conduit create`: checks every setting before writing the record.
pub fn create(ctx: &Context, library: &str, a: &CreateArgs) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let (src, src_dir) = locspec(&lib, library, a.from)?;
    let (dst, dst_dir) = locspec(&lib, library, a.to)?;
    let offload = a.policy == "offload";
    if a.pin_tag.is_some() && !offload {
        return Err(CliError::new("--pin-tag applies to offload only"));
    }
    let (pin_tag, new_tag) = match (a.pin_tag, offload) {
        (Some(t), _) => (Some(resolve::tag(&lib, library, t)?), None),
        (None, true) => default_pin_tag(&lib)?,
        (None, false) => (None, None),
    };
    let c = Conduit {
        id: Uuid::now_v7(),
        source: src.id,
        source_dir: src_dir,
        destination: dst.id,
        destination_dir: dst_dir,
        policy: a.policy.to_string(),
        propagate_deletes: a.delete,
        cadence: a.cadence.to_string(),
        min_free: a.min_free.map(str::to_string),
        pin_tag,
        paused: None,
        allow_deletes: false,
        last_run: None,
        last_error: None,
    };
    Settings::from_record(&c).map_err(|e| CliError::new(e.to_string()))?;
    if offload && src.device == dst.device {
        return Err(CliError::new(
            "offload moves files to another device: --to must be a location of another member",
        ));
    }
    if let Some(tag) = new_tag {
        lib.commit(Change::insert(&tag))?;
    }
    lib.commit(Change::insert(&c))?;
    Ok(json!({ "id": c.id.to_string() }))
}

/// The tag an Offload conduit pins with when `--pin-tag` is not given: the
/// library's tag named [`DEFAULT_PIN_TAG`], or a new one (returned to be
/// written with the conduit), so `tag apply LIB Pinned ENTRY` works at once.
fn default_pin_tag(lib: &Library) -> CliResult<(Option<Uuid>, Option<Tag>)> {
    let found: Vec<Uuid> = query::tags(lib)?
        .into_iter()
        .filter(|t| t.name == DEFAULT_PIN_TAG)
        .map(|t| t.id)
        .collect();
    match found.as_slice() {
        [one] => Ok((Some(*one), None)),
        [] => {
            let tag = Tag {
                id: Uuid::now_v7(),
                name: DEFAULT_PIN_TAG.to_string(),
                color: None,
            };
            Ok((Some(tag.id), Some(tag)))
        }
        _ => Err(CliError::new(format!(
            "several tags are named {DEFAULT_PIN_TAG}; choose one with --pin-tag UUID"
        ))),
    }
}

/// The pin tag's name when `conduit create --policy offload` names none.
pub const DEFAULT_PIN_TAG: &str = "Pinned";

/// A conduit of the library by UUID.
pub fn find(lib: &Library, library: &str, key: &str) -> CliResult<Conduit> {
    let id = Uuid::parse_str(key).map_err(|_| {
        CliError::new(format!(
            "{key:?} is not a conduit UUID; see `concord conduit list {library}`"
        ))
    })?;
    query::conduit(lib, id)?.ok_or_else(|| {
        CliError::new(format!(
            "no conduit {id} in {library}; see `concord conduit list {library}`"
        ))
    })
}

/// A location's display form for `conduit list`: `LOC[:SUBDIR]` by name.
fn end(lib: &Library, loc: Uuid, dir: &str) -> String {
    let name = query::location(lib, loc)
        .ok()
        .flatten()
        .map(|l| l.name)
        .unwrap_or_else(|| loc.to_string());
    if dir.is_empty() {
        name
    } else {
        format!("{name}:{dir}")
    }
}

/// `conduit list`'s line for one conduit; `running` is the working
/// device's state of a cycle in progress, when this device runs it.
pub fn list_line(lib: &Library, c: &Conduit, running: Option<&'static str>) -> Value {
    json!({
        "id": c.id.to_string(),
        "policy": c.policy,
        "from": end(lib, c.source, &c.source_dir),
        "to": end(lib, c.destination, &c.destination_dir),
        "state": display_state(c, running),
        "reason": c.paused,
        "last_run": c.last_run,
    })
}

/// `conduit list LIB`.
pub fn list(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(Value::Array(
        query::conduits(&lib)?
            .iter()
            .map(|c| list_line(&lib, c, None))
            .collect(),
    ))
}

/// `conduit status`'s value from the record alone (no cycle running here);
/// a node overwrites the progress fields of a cycle it runs.
pub fn status_value(c: &Conduit, running: Option<&'static str>) -> Value {
    json!({
        "id": c.id.to_string(),
        "policy": c.policy,
        "state": display_state(c, running),
        "reason": c.paused,
        "files_total": 0,
        "files_done": 0,
        "bytes_total": 0,
        "bytes_done": 0,
        "bytes_sent": 0,
        "bytes_received": 0,
        "conflicts": [],
        "last_error": c.last_error,
        "last_run": c.last_run,
    })
}

/// `conduit status LIB CONDUIT`.
pub fn status(ctx: &Context, library: &str, conduit: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(status_value(&find(&lib, library, conduit)?, None))
}

/// `conduit pause`: reason `user`, seen by every member.
pub fn pause(ctx: &Context, library: &str, conduit: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let c = find(&lib, library, conduit)?;
    lib.commit(Change::update::<Conduit>(c.id).set("paused", PauseReason::User.as_str()))?;
    Ok(json!({ "id": c.id.to_string() }))
}

/// `conduit resume [--allow-deletes]`.
pub fn resume(ctx: &Context, library: &str, conduit: &str, allow: bool) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let c = find(&lib, library, conduit)?;
    let mut change = Change::update::<Conduit>(c.id).set("paused", Option::<String>::None);
    if allow {
        change = change.set("allow_deletes", true);
    }
    lib.commit(change)?;
    Ok(json!({ "id": c.id.to_string() }))
}

/// `conduit remove`: the record goes, every file stays.
pub fn remove(ctx: &Context, library: &str, conduit: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let c = find(&lib, library, conduit)?;
    lib.commit(Change::delete::<Conduit>(c.id))?;
    Ok(json!({ "id": c.id.to_string() }))
}

/// Run a `conduit ...` library command.
pub fn execute(ctx: &Context, req: Request) -> CliResult<Value> {
    match req {
        Request::ConduitCreate {
            library,
            from,
            to,
            policy,
            delete,
            cadence,
            min_free,
            pin_tag,
        } => create(
            ctx,
            &library,
            &CreateArgs {
                from: &from,
                to: &to,
                policy: &policy,
                delete,
                cadence: &cadence,
                min_free: min_free.as_deref(),
                pin_tag: pin_tag.as_deref(),
            },
        ),
        Request::ConduitList { library } => list(ctx, &library),
        Request::ConduitStatus { library, conduit } => status(ctx, &library, &conduit),
        Request::ConduitPause { library, conduit } => pause(ctx, &library, &conduit),
        Request::ConduitResume {
            library,
            conduit,
            allow_deletes,
        } => resume(ctx, &library, &conduit, allow_deletes),
        Request::ConduitRemove { library, conduit } => remove(ctx, &library, &conduit),
        other => Err(CliError::new(format!(
            "internal: `{}` is not a conduit library command",
            other.name()
        ))),
    }
}
