//! The random workload: what users do on each device. Every change goes through
//! the real TransactionManager of that device's library; targets are picked from
//! what that device currently sees, as a user would.

use concord::model::{
    entry_kind, Album, AlbumItem, FileEntry, Tag, TagAssignment, UserMetadata, Value,
};
use concord::sync::entry::BulkOperation;
use concord::sync::txn::Receipt;
use concord::{Change, Library, Result};
use uuid::Uuid;

use crate::rng::Rng;

/// What one device needs to write its own file entries.
#[derive(Debug, Clone, Copy)]
pub struct Owned {
    pub device: Uuid,
    pub location: Uuid,
}

/// The outcome of one workload step.
pub struct Done {
    pub what: &'static str,
    pub result: Result<Receipt>,
    /// File entries written by `commit_bulk` (their rows do not travel).
    pub bulk_rows: Vec<Uuid>,
}

fn ids(lib: &Library, sql: &str, p: &[&dyn concord::rusqlite::ToSql]) -> Vec<Uuid> {
    lib.read(|c| {
        let mut stmt = c.prepare_cached(sql)?;
        let rows = stmt.query_map(p, |r| r.get::<_, Uuid>(0))?;
        Ok(rows.collect::<concord::rusqlite::Result<Vec<Uuid>>>()?)
    })
    .unwrap_or_default()
}

const NAMES: &[&str] = &[
    "red", "work", "family", "2024", "holiday", "raw", "keep", "todo", "archive", "best",
];
const COLORS: &[&str] = &["#ff0000", "#00ff00", "#0000ff", "#123456", "#abcdef"];

fn name(rng: &mut Rng) -> String {
    format!("{}-{}", rng.pick(NAMES).unwrap(), rng.below(1000))
}

fn color(rng: &mut Rng) -> Option<String> {
    rng.chance(0.7)
        .then(|| rng.pick(COLORS).unwrap().to_string())
}

fn new_file(rng: &mut Rng, me: Owned, parent: Option<Uuid>, id: Uuid) -> FileEntry {
    let n = name(rng);
    let dir = rng.chance(0.25);
    FileEntry {
        id,
        device: me.device,
        location: me.location,
        parent,
        path: format!("p/{n}"),
        name: n,
        kind: if dir {
            entry_kind::DIR
        } else {
            entry_kind::FILE
        },
        size: rng.below(1 << 20) as i64,
        modified: rng.chance(0.8).then(|| rng.below(1 << 40) as i64),
        offloaded_to: None,
        offloaded_path: None,
        offloaded_hash: None,
        inode: None,
    }
}

/// The records a device can see, as a user picking a target would: each list
/// read fresh from its library, in UUID order so picks are deterministic.
struct Visible<'a> {
    lib: &'a Library,
    me: Owned,
}

impl Visible<'_> {
    fn tags(&self) -> Vec<Uuid> {
        ids(self.lib, "SELECT uuid FROM tags ORDER BY uuid", &[])
    }

    fn albums(&self) -> Vec<Uuid> {
        ids(self.lib, "SELECT uuid FROM albums ORDER BY uuid", &[])
    }

    fn files(&self) -> Vec<Uuid> {
        ids(self.lib, "SELECT uuid FROM file_entries ORDER BY uuid", &[])
    }

    fn own_files(&self) -> Vec<Uuid> {
        ids(
            self.lib,
            "SELECT uuid FROM file_entries WHERE device = ?1 ORDER BY uuid",
            &[&self.me.device],
        )
    }

    fn own_dirs(&self) -> Vec<Uuid> {
        ids(
            self.lib,
            "SELECT uuid FROM file_entries WHERE device = ?1 AND kind = 1 ORDER BY uuid",
            &[&self.me.device],
        )
    }

    /// Present members of a membership table.
    fn members(&self, table: &str) -> Vec<Uuid> {
        ids(
            self.lib,
            &format!("SELECT uuid FROM {table} WHERE present = 1 ORDER BY uuid"),
            &[],
        )
    }
}

/// A step's name and its changes, or only its name when it found no target.
type Planned = std::result::Result<(&'static str, Vec<Change>), &'static str>;

/// One random change on `lib` (the device `me`).
pub fn step(rng: &mut Rng, lib: &Library, me: Owned, bulk: bool) -> Done {
    let visible = Visible { lib, me };
    let roll = rng.below(if bulk { 100 } else { 98 });
    let planned = match roll {
        0..=24 => tag_change(rng, &visible, roll),
        25..=38 => album_change(rng, &visible, roll),
        39..=60 => file_change(rng, &visible, roll),
        61..=86 => membership_change(rng, &visible, roll),
        87..=93 => metadata_change(rng, &visible),
        94..=97 => Ok(new_files_tagged(rng, &visible)),
        _ => return bulk_files(rng, lib, me),
    };
    match planned {
        Ok((what, changes)) => Done {
            what,
            result: lib.commit_batch(changes),
            bulk_rows: Vec::new(),
        },
        Err(what) => nothing(what),
    }
}

/// Rolls 0..=24: create, rename, recolor or delete a tag.
fn tag_change(rng: &mut Rng, visible: &Visible<'_>, roll: u64) -> Planned {
    if roll <= 9 {
        let t = Tag {
            id: rng.uuid(),
            name: name(rng),
            color: color(rng),
        };
        return Ok(("tag-create", vec![Change::insert(&t)]));
    }
    let what = match roll {
        10..=15 => "tag-rename",
        16..=20 => "tag-recolor",
        _ => "tag-delete",
    };
    let Some(&t) = rng.pick(&visible.tags()) else {
        return Err(what);
    };
    let change = match roll {
        10..=15 => Change::update::<Tag>(t).set("name", name(rng)),
        16..=20 => Change::update::<Tag>(t).set("color", color(rng)),
        _ => Change::delete::<Tag>(t),
    };
    Ok((what, vec![change]))
}

/// Rolls 25..=38: create, rename or delete an album.
fn album_change(rng: &mut Rng, visible: &Visible<'_>, roll: u64) -> Planned {
    if roll <= 30 {
        let a = Album {
            id: rng.uuid(),
            name: name(rng),
            description: rng.chance(0.5).then(|| name(rng)),
        };
        return Ok(("album-create", vec![Change::insert(&a)]));
    }
    let what = if roll <= 35 {
        "album-rename"
    } else {
        "album-delete"
    };
    let Some(&a) = rng.pick(&visible.albums()) else {
        return Err(what);
    };
    let change = if roll > 35 {
        Change::delete::<Album>(a)
    } else if rng.chance(0.5) {
        Change::update::<Album>(a).set("name", name(rng))
    } else {
        Change::update::<Album>(a).set("description", Some(name(rng)))
    };
    Ok((what, vec![change]))
}

/// Rolls 39..=60: insert, update or delete one of this device's file entries.
fn file_change(rng: &mut Rng, visible: &Visible<'_>, roll: u64) -> Planned {
    if roll <= 50 {
        let parent = if rng.chance(0.5) {
            rng.pick(&visible.own_dirs()).copied()
        } else {
            None
        };
        let id = rng.uuid();
        let f = new_file(rng, visible.me, parent, id);
        return Ok(("file-insert", vec![Change::insert(&f)]));
    }
    let what = if roll <= 56 {
        "file-update"
    } else {
        "file-delete"
    };
    let Some(&f) = rng.pick(&visible.own_files()) else {
        return Err(what);
    };
    if roll > 56 {
        return Ok((what, vec![Change::delete::<FileEntry>(f)]));
    }
    let mut c = Change::update::<FileEntry>(f).set("size", rng.below(1 << 30) as i64);
    if rng.chance(0.4) {
        c = c.set("name", name(rng));
    }
    if rng.chance(0.3) {
        c = c.set("modified", Value::Null);
    }
    Ok((what, vec![c]))
}

/// Rolls 61..=86: tag a file or untag it, add a file to an album or remove it.
fn membership_change(rng: &mut Rng, visible: &Visible<'_>, roll: u64) -> Planned {
    match roll {
        61..=70 => match (
            rng.pick(&visible.tags()).copied(),
            rng.pick(&visible.files()).copied(),
        ) {
            (Some(t), Some(f)) => Ok((
                "tag-assign",
                vec![Change::insert(&TagAssignment::new(t, f))],
            )),
            _ => Err("tag-assign"),
        },
        71..=75 => match rng.pick(&visible.members("tag_assignments")) {
            Some(&member) => Ok((
                "tag-unassign",
                vec![Change::delete::<TagAssignment>(member)],
            )),
            None => Err("tag-unassign"),
        },
        76..=82 => match (
            rng.pick(&visible.albums()).copied(),
            rng.pick(&visible.files()).copied(),
        ) {
            (Some(a), Some(f)) => Ok(("album-add", vec![Change::insert(&AlbumItem::new(a, f))])),
            _ => Err("album-add"),
        },
        _ => match rng.pick(&visible.members("album_items")) {
            Some(&member) => Ok(("album-remove", vec![Change::delete::<AlbumItem>(member)])),
            None => Err("album-remove"),
        },
    }
}

/// Rolls 87..=93: write, change or delete a file's note and favorite flag.
fn metadata_change(rng: &mut Rng, visible: &Visible<'_>) -> Planned {
    let Some(&f) = rng.pick(&visible.files()) else {
        return Err("metadata");
    };
    let id = UserMetadata::id_for(f);
    let exists = !ids(
        visible.lib,
        "SELECT uuid FROM user_metadata WHERE uuid = ?1",
        &[&id],
    )
    .is_empty();
    let note = rng.chance(0.7).then(|| name(rng));
    let fav = rng.chance(0.5);
    let c = if exists && rng.chance(0.15) {
        Change::delete::<UserMetadata>(id)
    } else if exists {
        Change::update::<UserMetadata>(id)
            .set("note", note)
            .set("favorite", fav)
    } else {
        Change::insert(&UserMetadata {
            id,
            entry: f,
            note,
            favorite: fav,
        })
    };
    Ok(("metadata", vec![c]))
}

/// Rolls 94..=97: a batch of several new files and a tag on each.
fn new_files_tagged(rng: &mut Rng, visible: &Visible<'_>) -> (&'static str, Vec<Change>) {
    let n = rng.range(2, 8);
    let tag = rng.pick(&visible.tags()).copied();
    let mut changes = Vec::new();
    for _ in 0..n {
        let id = rng.uuid();
        let f = new_file(rng, visible.me, None, id);
        changes.push(Change::insert(&f));
        if let Some(t) = tag {
            changes.push(Change::insert(&TagAssignment::new(t, f.id)));
        }
    }
    ("batch", changes)
}

/// Rolls 98..=99 (when bulk writes are on): new file entries through
/// `commit_bulk`, as an indexer writes them.
fn bulk_files(rng: &mut Rng, lib: &Library, me: Owned) -> Done {
    let n = rng.range(3, 40);
    let rows: Vec<FileEntry> = (0..n)
        .map(|_| {
            let id = rng.uuid();
            new_file(rng, me, None, id)
        })
        .collect();
    let mut bulk_rows: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let op = BulkOperation::InitialIndex {
        location: me.location,
        path: "/sim".into(),
        volume_fingerprint: "sim".into(),
        count: 0,
    };
    let result = lib.commit_bulk(rows, op);
    if result.is_err() {
        bulk_rows.clear();
    }
    Done {
        what: "bulk",
        result,
        bulk_rows,
    }
}

/// A step that found nothing to change: nothing written, nothing acknowledged.
fn nothing(what: &'static str) -> Done {
    Done {
        what,
        result: Ok(Receipt::default()),
        bulk_rows: Vec::new(),
    }
}
