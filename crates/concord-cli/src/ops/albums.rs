//! `album ...`.

use concord::model::{Album, AlbumItem};
use concord::{query, validate, Change, Uuid};
use serde_json::{json, Value};

use crate::context::{CliResult, Context};
use crate::request::EntryRef;
use crate::resolve;

/// `album create LIB NAME`.
pub fn create(ctx: &Context, library: &str, name: &str) -> CliResult<Value> {
    validate::name("album name", name)?;
    let lib = ctx.library(library)?;
    let album = Album {
        id: Uuid::now_v7(),
        name: name.to_string(),
        description: None,
    };
    lib.commit(Change::insert(&album))?;
    Ok(json!({ "id": album.id.to_string(), "name": album.name }))
}

/// `album rename LIB ALBUM NEW_NAME`.
pub fn rename(ctx: &Context, library: &str, album: &str, name: &str) -> CliResult<Value> {
    validate::name("album name", name)?;
    let lib = ctx.library(library)?;
    let id = resolve::album(&lib, library, album)?;
    lib.commit(Change::update::<Album>(id).set("name", name))?;
    Ok(json!({ "id": id.to_string(), "name": name }))
}

/// `album delete LIB ALBUM`.
pub fn delete(ctx: &Context, library: &str, album: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let id = resolve::album(&lib, library, album)?;
    lib.commit(Change::delete::<Album>(id))?;
    Ok(json!({ "id": id.to_string() }))
}

/// `album list LIB`.
pub fn list(ctx: &Context, library: &str) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    Ok(Value::Array(
        query::albums(&lib)?
            .into_iter()
            .map(|a| {
                json!({ "id": a.album.id.to_string(), "name": a.album.name, "entries": a.entries })
            })
            .collect(),
    ))
}

/// `album add` and `album remove`: one batch for every entry.
pub fn add(
    ctx: &Context,
    library: &str,
    album: &str,
    entries: &[EntryRef],
    add: bool,
) -> CliResult<Value> {
    let lib = ctx.library(library)?;
    let id = resolve::album(&lib, library, album)?;
    let entries = resolve::entries(&lib, entries)?;
    let changes = entries
        .iter()
        .map(|e| {
            let item = AlbumItem::new(id, *e);
            if add {
                Change::insert(&item)
            } else {
                Change::delete::<AlbumItem>(item.id)
            }
        })
        .collect();
    lib.commit_batch(changes)?;
    Ok(json!({
        "album": id.to_string(),
        "entries": entries.iter().map(Uuid::to_string).collect::<Vec<_>>(),
    }))
}
