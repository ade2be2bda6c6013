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
        let mut st = c.prepare_cached(sql)?;
        let rows = st.query_map(p, |r| r.get::<_, Uuid>(0))?;
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
        inode: None,
    }
}

/// One random change on `lib` (the device `me`).
pub fn step(rng: &mut Rng, lib: &Library, me: Owned, bulk: bool) -> Done {
    let tags = || ids(lib, "SELECT uuid FROM tags ORDER BY uuid", &[]);
    let albums = || ids(lib, "SELECT uuid FROM albums ORDER BY uuid", &[]);
    let files = || ids(lib, "SELECT uuid FROM file_entries ORDER BY uuid", &[]);
    let own_files = || {
        ids(
            lib,
            "SELECT uuid FROM file_entries WHERE device = ?1 ORDER BY uuid",
            &[&me.device],
        )
    };
    let own_dirs = || {
        ids(
            lib,
            "SELECT uuid FROM file_entries WHERE device = ?1 AND kind = 1 ORDER BY uuid",
            &[&me.device],
        )
    };
    let mut bulk_rows = Vec::new();
    let roll = rng.below(if bulk { 100 } else { 98 });
    let (what, change): (&'static str, Vec<Change>) = match roll {
        0..=9 => {
            let t = Tag {
                id: rng.uuid(),
                name: name(rng),
                color: color(rng),
            };
            ("tag-create", vec![Change::insert(&t)])
        }
        10..=15 => match rng.pick(&tags()) {
            Some(&t) => (
                "tag-rename",
                vec![Change::update::<Tag>(t).set("name", name(rng))],
            ),
            None => return nothing("tag-rename"),
        },
        16..=20 => match rng.pick(&tags()) {
            Some(&t) => (
                "tag-recolor",
                vec![Change::update::<Tag>(t).set("color", color(rng))],
            ),
            None => return nothing("tag-recolor"),
        },
        21..=24 => match rng.pick(&tags()) {
            Some(&t) => ("tag-delete", vec![Change::delete::<Tag>(t)]),
            None => return nothing("tag-delete"),
        },
        25..=30 => {
            let a = Album {
                id: rng.uuid(),
                name: name(rng),
                description: rng.chance(0.5).then(|| name(rng)),
            };
            ("album-create", vec![Change::insert(&a)])
        }
        31..=35 => match rng.pick(&albums()) {
            Some(&a) => {
                let c = if rng.chance(0.5) {
                    Change::update::<Album>(a).set("name", name(rng))
                } else {
                    Change::update::<Album>(a).set("description", Some(name(rng)))
                };
                ("album-rename", vec![c])
            }
            None => return nothing("album-rename"),
        },
        36..=38 => match rng.pick(&albums()) {
            Some(&a) => ("album-delete", vec![Change::delete::<Album>(a)]),
            None => return nothing("album-delete"),
        },
        39..=50 => {
            let parent = if rng.chance(0.5) {
                rng.pick(&own_dirs()).copied()
            } else {
                None
            };
            let id = rng.uuid();
            let f = new_file(rng, me, parent, id);
            ("file-insert", vec![Change::insert(&f)])
        }
        51..=56 => match rng.pick(&own_files()) {
            Some(&f) => {
                let mut c = Change::update::<FileEntry>(f).set("size", rng.below(1 << 30) as i64);
                if rng.chance(0.4) {
                    c = c.set("name", name(rng));
                }
                if rng.chance(0.3) {
                    c = c.set("modified", Value::Null);
                }
                ("file-update", vec![c])
            }
            None => return nothing("file-update"),
        },
        57..=60 => match rng.pick(&own_files()) {
            Some(&f) => ("file-delete", vec![Change::delete::<FileEntry>(f)]),
            None => return nothing("file-delete"),
        },
        61..=70 => match (rng.pick(&tags()).copied(), rng.pick(&files()).copied()) {
            (Some(t), Some(f)) => (
                "tag-assign",
                vec![Change::insert(&TagAssignment::new(t, f))],
            ),
            _ => return nothing("tag-assign"),
        },
        71..=75 => {
            let members = ids(
                lib,
                "SELECT uuid FROM tag_assignments WHERE present = 1 ORDER BY uuid",
                &[],
            );
            match rng.pick(&members) {
                Some(&m) => ("tag-unassign", vec![Change::delete::<TagAssignment>(m)]),
                None => return nothing("tag-unassign"),
            }
        }
        76..=82 => match (rng.pick(&albums()).copied(), rng.pick(&files()).copied()) {
            (Some(a), Some(f)) => ("album-add", vec![Change::insert(&AlbumItem::new(a, f))]),
            _ => return nothing("album-add"),
        },
        83..=86 => {
            let members = ids(
                lib,
                "SELECT uuid FROM album_items WHERE present = 1 ORDER BY uuid",
                &[],
            );
            match rng.pick(&members) {
                Some(&m) => ("album-remove", vec![Change::delete::<AlbumItem>(m)]),
                None => return nothing("album-remove"),
            }
        }
        87..=93 => match rng.pick(&files()) {
            Some(&f) => {
                let id = UserMetadata::id_for(f);
                let exists = !ids(
                    lib,
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
                ("metadata", vec![c])
            }
            None => return nothing("metadata"),
        },
        94..=97 => {
            // A batch: several new files and a tag on each.
            let n = rng.range(2, 8);
            let tag = rng.pick(&tags()).copied();
            let mut v = Vec::new();
            for _ in 0..n {
                let id = rng.uuid();
                let f = new_file(rng, me, None, id);
                v.push(Change::insert(&f));
                if let Some(t) = tag {
                    v.push(Change::insert(&TagAssignment::new(t, f.id)));
                }
            }
            ("batch", v)
        }
        _ => {
            let n = rng.range(3, 40);
            let rows: Vec<FileEntry> = (0..n)
                .map(|_| {
                    let id = rng.uuid();
                    new_file(rng, me, None, id)
                })
                .collect();
            bulk_rows = rows.iter().map(|r| r.id).collect();
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
            return Done {
                what: "bulk",
                result,
                bulk_rows,
            };
        }
    };
    Done {
        what,
        result: lib.commit_batch(change),
        bulk_rows,
    }
}

fn nothing(what: &'static str) -> Done {
    Done {
        what,
        result: Ok(Receipt::default()),
        bulk_rows: Vec::new(),
    }
}
