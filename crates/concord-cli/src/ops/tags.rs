//! `tag ...`.

use concord::model::{Tag, TagAssignment};
use concord::{query, validate, Change, Uuid};
use serde_json::{json, Value};

use crate::context::{CliResult, Context};
use crate::request::EntryRef;
use crate::resolve;

/// `tag create LIB NAME [--color C]`.
pub fn create(ctx: &Context, library: &str, name: &str, color: Option<&str>) -> CliResult<Value> {
    validate::name("tag name", name)?;
    let color = color.map(validate::color).transpose()?;
    let lib = ctx.library(library)?;
    let tag = Tag {
        id: Uuid::now_v7(),
        name: name.to_string(),
        color,
    };
    lib.commit(Change::insert(&tag))?;
    Ok(json!({ "id": tag.id.to_string(), "name": tag.name, "color": tag.color }))
}

/// `tag rename LIB TAG NEW_NAME`.
pub fn rename(ctx: &Context, library: &str, tag: &str, name: &str) -> CliResult<Value> {
    validate::name("tag name", name)?;
    let lib = ctx.library(library)?;
    let id = resolve::tag(&lib, library, tag)?;
    lib.commit(Change::update::<Tag>(id).set("name", name))?;
    Ok(json!({ "id": id.to_string(), "name": name }))
}

/// `tag recolor LIB TAG COLOR`.
pub fn recolor(ctx: &Context, library: &str, tag: &str, color: &str) -> CliResult<Value> {
    let color = validate::color(color)?;
    let lib = ctx.library(library)?;
    let id = resolve::tag(&lib, library, tag)?;
    lib.commit(Change::update::<Tag>(id).set("color", color.as_str()))?;
    Ok(json!({ "id": id.to_string(), "color": color }))
}

/// `tag delete LIB TAG`.
pub fn delete(ctx: &Context, library: &str, tag: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let id = resolve::tag(&lib, library, tag)?;
    lib.commit(Change::delete::<Tag>(id))?;
    Ok(json!({ "id": id.to_string() }))
}

/// `tag list LIB`.
pub fn list(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(Value::Array(
        query::tags(&lib)?
            .into_iter()
            .map(|t| json!({ "id": t.id.to_string(), "name": t.name, "color": t.color }))
            .collect(),
    ))
}

/// `tag apply` (`add`) and `tag remove`: one batch for every entry.
pub fn apply(
    ctx: &Context,
    library: &str,
    tag: &str,
    entries: &[EntryRef],
    add: bool,
) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let id = resolve::tag(&lib, library, tag)?;
    let entries = resolve::entries(&lib, entries)?;
    let changes = entries
        .iter()
        .map(|e| {
            let a = TagAssignment::new(id, *e);
            if add {
                Change::insert(&a)
            } else {
                Change::delete::<TagAssignment>(a.id)
            }
        })
        .collect();
    lib.commit_batch(changes)?;
    Ok(json!({
        "tag": id.to_string(),
        "entries": entries.iter().map(Uuid::to_string).collect::<Vec<_>>(),
    }))
}
