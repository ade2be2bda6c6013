//! Turning what the user typed into record UUIDs: `TAG`, `ALBUM`, `LOC` and
//! `DEVICE` (a UUID or a unique name) and `ENTRY` (a UUID or a path).

use std::path::{Path, PathBuf};

use concord::model::Location;
use concord::{query, Library, Uuid};

use crate::context::{CliError, CliResult};
use crate::request::EntryRef;

/// Pick the one item whose UUID or name is `key`. `what` names the kind ("tag")
/// and `list` the command that lists them, for the error messages.
pub fn by_key<T>(
    items: &[T],
    key: &str,
    id: impl Fn(&T) -> Uuid,
    names: impl Fn(&T) -> Vec<&str>,
    what: &str,
    list: &str,
) -> CliResult<Uuid> {
    if let Ok(u) = Uuid::parse_str(key) {
        if items.iter().any(|i| id(i) == u) {
            return Ok(u);
        }
    }
    let hits: Vec<Uuid> = items
        .iter()
        .filter(|i| names(i).contains(&key))
        .map(&id)
        .collect();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(CliError::new(format!(
            "no {what} is named {key:?} or has that UUID; see `{list}`"
        ))),
        _ => Err(CliError::new(format!(
            "{} {what}s are named {key:?}; use the UUID of the one you mean (see `{list}`)",
            hits.len()
        ))),
    }
}

/// `TAG` (UUID or unique name) in a library.
pub fn tag(lib: &Library, lib_key: &str, key: &str) -> CliResult<Uuid> {
    let tags = query::tags(lib)?;
    by_key(
        &tags,
        key,
        |t| t.id,
        |t| vec![t.name.as_str()],
        "tag",
        &format!("concord tag list {lib_key}"),
    )
}

/// `ALBUM` (UUID or unique name) in a library.
pub fn album(lib: &Library, lib_key: &str, key: &str) -> CliResult<Uuid> {
    let albums = query::albums(lib)?;
    by_key(
        &albums,
        key,
        |a| a.album.id,
        |a| vec![a.album.name.as_str()],
        "album",
        &format!("concord album list {lib_key}"),
    )
}

/// A location by UUID, name (its folder's name) or full path.
pub fn location(lib: &Library, lib_key: &str, key: &str) -> CliResult<Location> {
    let locations: Vec<Location> = query::locations(lib)?
        .into_iter()
        .map(|s| s.location)
        .collect();
    let id = by_key(
        &locations,
        key,
        |l| l.id,
        |l| vec![l.name.as_str(), l.path.as_str()],
        "location",
        &format!("concord location list {lib_key}"),
    )?;
    locations
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(|| CliError::new(format!("location {id} vanished; retry")))
}

/// `DEVICE` (UUID or unique name) among a library's members.
pub fn device(lib: &Library, key: &str) -> CliResult<Uuid> {
    let devices = query::devices(lib)?;
    by_key(
        &devices,
        key,
        |d| d.id,
        |d| vec![d.name.as_str()],
        "device",
        "concord library list",
    )
}

/// Resolve every `ENTRY` before anything is written, so that one bad argument
/// changes nothing.
pub fn entries(lib: &Library, refs: &[EntryRef]) -> CliResult<Vec<Uuid>> {
    let mine: Vec<Location> = query::locations(lib)?
        .into_iter()
        .map(|s| s.location)
        .filter(|l| l.device == lib.device())
        .collect();
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let id = match r {
            EntryRef::Id(id) => match query::file_entry(lib, *id)? {
                Some(e) => e.id,
                None => {
                    return Err(CliError::new(format!(
                        "no file entry {id} in this library; see `concord entry list {}`",
                        lib.id()
                    )))
                }
            },
            EntryRef::Path(p) => entry_by_path(lib, &mine, Path::new(p))?,
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The canonical form of `path` without resolving its last component, so that
/// a symbolic link names itself, not its target. A missing last component
/// is allowed (an offloaded file's entry stays while its file is away);
/// `entry_by_path` accepts it only for an offloaded entry.
fn canonical(path: &Path) -> CliResult<PathBuf> {
    let missing = |e: std::io::Error| {
        CliError::new(format!(
            "{}: {e}; give an existing file or folder inside an indexed location",
            path.display()
        ))
    };
    if let Err(e) = std::fs::symlink_metadata(path) {
        // An offloaded file is absent from disk but keeps its entry.
        let offloaded = e.kind() == std::io::ErrorKind::NotFound
            && path.parent().is_some_and(|p| !p.as_os_str().is_empty())
            && path.file_name().is_some();
        if !offloaded {
            return Err(missing(e));
        }
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            Ok(std::fs::canonicalize(parent).map_err(missing)?.join(name))
        }
        _ => std::fs::canonicalize(path).map_err(missing),
    }
}

fn entry_by_path(lib: &Library, mine: &[Location], path: &Path) -> CliResult<Uuid> {
    let canon = canonical(path)?;
    let Some((loc, rel)) = mine.iter().find_map(|l| {
        canon
            .strip_prefix(&l.path)
            .ok()
            .map(|rel| (l, rel.to_path_buf()))
    }) else {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(CliError::new(format!(
                "{}: no such file; give an existing file or folder inside an indexed location",
                path.display()
            )));
        }
        return Err(CliError::new(format!(
            "{} is not inside any indexed location of this device; add its folder with `concord location add`",
            path.display()
        )));
    };
    if rel.as_os_str().is_empty() {
        return Err(CliError::new(format!(
            "{} is the root of location {}; name a file or folder inside it",
            path.display(),
            loc.name
        )));
    }
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let rel = parts.map(|p| p.join("/")).ok_or_else(|| {
        CliError::new(format!(
            "{} is not valid UTF-8, so it is not indexed",
            path.display()
        ))
    })?;
    match query::file_entry_by_path(lib, loc.id, &rel)? {
        Some(e) if e.offloaded_to.is_some() || std::fs::symlink_metadata(path).is_ok() => Ok(e.id),
        _ if std::fs::symlink_metadata(path).is_err() => Err(CliError::new(format!(
            "{}: no such file; give an existing file or folder inside an indexed location",
            path.display()
        ))),
        _ => Err(CliError::new(format!(
            "{} is not indexed yet; run `concord location rescan {} {}`",
            path.display(),
            lib.id(),
            loc.id
        ))),
    }
}
