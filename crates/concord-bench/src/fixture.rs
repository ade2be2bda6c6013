//! The large library B4, B5 and P1 start from: `files` file entries in 1,000
//! folders written with one `commit_bulk`, and `tags` tags, all with ids from
//! fixed seeds so that every run and every device builds the same one.

use concord::model::{entry_kind, FileEntry, Location, Tag, Volume};
use concord::sync::entry::BulkOperation;
use concord::{Change, Library, Uuid};

use crate::common::UuidGen;

/// Folders in the library; files are spread evenly over them.
const FOLDERS: usize = 1_000;

/// Fill `lib` (owned by `device`) with `files` file entries and `tags` tags.
pub fn populate(lib: &Library, device: Uuid, files: usize, tags: usize) -> anyhow::Result<()> {
    let mut ids = UuidGen::new(0xB4);
    let vol = Volume {
        id: ids.next_id(),
        device,
        name: "bench".into(),
        fingerprint: "bench-volume".into(),
        mount_point: "/".into(),
    };
    let loc = Location {
        id: ids.next_id(),
        device,
        volume: vol.id,
        path: "/bench".into(),
        name: "bench".into(),
    };
    lib.commit_batch(vec![Change::insert(&vol), Change::insert(&loc)])?;
    let folders: Vec<Uuid> = (0..FOLDERS).map(|_| ids.next_id()).collect();
    let dirs = folders
        .clone()
        .into_iter()
        .enumerate()
        .map(|(i, id)| FileEntry {
            id,
            device,
            location: loc.id,
            parent: None,
            name: format!("d{i:03}"),
            path: format!("d{i:03}"),
            kind: entry_kind::DIR,
            size: 0,
            modified: Some(1_700_000_000_000),
            offloaded_to: None,
            offloaded_path: None,
            offloaded_hash: None,
            inode: Some(i as i64 + 1),
        });
    // Files grouped by folder, ids in that order: what an indexer walking the
    // tree folder by folder writes.
    let mut fids = UuidGen::new(0xB4F);
    let n_files = files.saturating_sub(FOLDERS);
    let per_folder = n_files.div_ceil(FOLDERS).max(1);
    let file_rows = (0..n_files).map(move |i| FileEntry {
        id: fids.next_id(),
        device,
        location: loc.id,
        parent: Some(folders[i / per_folder]),
        name: format!("file{i:07}.jpg"),
        path: format!("d{:03}/file{i:07}.jpg", i / per_folder),
        kind: entry_kind::FILE,
        size: (i as i64 * 7919) % 10_000_000,
        modified: Some(1_700_000_000_000 + i as i64),
        offloaded_to: None,
        offloaded_path: None,
        offloaded_hash: None,
        inode: Some(i as i64 + 1_000_000),
    });
    lib.commit_bulk(
        dirs.chain(file_rows),
        BulkOperation::InitialIndex {
            location: loc.id,
            path: loc.path.clone(),
            volume_fingerprint: "bench-volume".into(),
            count: 0,
        },
    )?;
    let mut tids = UuidGen::new(0xB47);
    for start in (0..tags).step_by(1_000) {
        let batch: Vec<Change> = (start..(start + 1_000).min(tags))
            .map(|i| {
                Change::insert(&Tag {
                    id: tids.next_id(),
                    name: format!("tag {i}"),
                    color: (i % 3 == 0).then(|| format!("#{:06x}", (i * 7919) & 0xff_ffff)),
                })
            })
            .collect();
        lib.commit_batch(batch)?;
    }
    lib.flush()?;
    Ok(())
}

/// The tag ids `populate` made, in order.
pub fn tag_ids(tags: usize) -> Vec<Uuid> {
    let mut tids = UuidGen::new(0xB47);
    (0..tags).map(|_| tids.next_id()).collect()
}
