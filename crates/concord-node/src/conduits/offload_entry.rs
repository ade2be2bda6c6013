//! The file entries' side of an Offload conduit: which of its source's
//! entries are offloaded to its destination (their synced `offloaded_*`
//! fields say where the bytes are and what the destination verified), as
//! the cycle and `entry fetch` read them.

use concord::model::{entry_kind, FileEntry};
use concord::{query, Library, Uuid};

use crate::conduits::offload::Held;
use crate::error::NetError;

/// An offloaded file entry of a conduit's source folder.
#[derive(Debug, Clone)]
pub struct Offloaded {
    pub entry: FileEntry,
    /// Its path below the conduit's source folder (and destination folder).
    pub path: String,
    pub held: Held,
}

/// `path` (relative to a location) below `dir`, as a path relative to it.
pub fn below<'a>(dir: &str, path: &'a str) -> Option<&'a str> {
    if dir.is_empty() {
        Some(path)
    } else {
        path.strip_prefix(dir)?.strip_prefix('/')
    }
}

/// Entries of `source` below `source_dir` offloaded to `destination`.
pub fn offloaded(
    lib: &Library,
    source: Uuid,
    source_dir: &str,
    destination: Uuid,
) -> Result<Vec<Offloaded>, NetError> {
    Ok(query::location_entries(lib, source)?
        .into_iter()
        .filter(|e| e.kind == entry_kind::FILE && e.offloaded_to == Some(destination))
        .filter_map(|e| {
            let path = below(source_dir, &e.path)?.to_string();
            let held = Held {
                size: u64::try_from(e.size).ok()?,
                hash: e.offloaded_hash.clone()?,
            };
            Some(Offloaded {
                entry: e,
                path,
                held,
            })
        })
        .collect())
}
