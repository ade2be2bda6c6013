//! Invariant I2 (DESIGN §4) as a property: libraries that received the same set of
//! log entries, in any order, with any duplicates, in any batch split, are
//! identical.
//!
//! Entries are not made up: 3–5 origin devices run the real TransactionManager on
//! their own libraries, each with a [`ManualClock`] the test drives, and now and
//! then pull subsets of each other's logs, so later edits build on earlier ones.
//! Every case starts with a prologue that writes the hard cases by construction
//! (exact-HLC-tie renames, add vs remove of a member at the same HLC time, rename
//! vs delete, delete of a tag/album/folder vs changes under it); a random script
//! follows. The union of all entries then goes to fresh libraries in different
//! orders, and to the origins themselves: every digest must be equal, and the
//! state must be what the merge rules say (an independent oracle computed from the
//! entries alone).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use concord::hlc::{Hlc, ManualClock};
use concord::model::{
    entry_kind, registry, Album, AlbumItem, FileEntry, Location, ModelKind, Syncable, Tag,
    TagAssignment, UserMetadata, Value, Volume,
};
use concord::sync::entry::{LogEntry, Op};
use concord::{Change, Error, Library, Uuid};
use proptest::prelude::*;

mod support;
use support::{all_entries, count, digest_all, scratch, tag, uuids, volume, Rng};

/// Base wall-clock time of every case (ms since the epoch).
const T0: u64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------
// Helpers on libraries.

fn pick(v: &[Uuid], i: usize) -> Option<Uuid> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

// ---------------------------------------------------------------------------
// The world: origin devices and what each knew when it wrote each entry.

type Id = (Uuid, u64);

struct Node {
    lib: Library,
    clock: Arc<ManualClock>,
    dev: Uuid,
    skew: u64,
    vol: Uuid,
    /// Entries this node holds (own and received).
    known: HashSet<Id>,
}

struct World {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    /// Global wall time; a node's clock reads `now + skew`.
    now: u64,
    /// Whether node clock skews apply (off during the prologue, for exact ties).
    skewed: bool,
    next_id: u128,
    /// Per entry: what its author held when writing it.
    deps: HashMap<Id, Arc<HashSet<Id>>>,
}

#[derive(Debug, Clone, Copy)]
enum SyncMode {
    All,
    /// The first `k`/4 of the sender's log.
    Prefix(u8),
    /// A random half of the sender's log.
    Mask(u64),
}

impl World {
    fn new(n: usize, dev_keys: &[u128], skews: &[u64]) -> World {
        let tmp = scratch("concord-conv");
        let lib_id = Uuid::from_u128(0x11b);
        let mut nodes = Vec::new();
        for i in 0..n {
            let dev = Uuid::from_u128(0xde00_0000_0000_0000_0000_0000_0000_0000 | dev_keys[i]);
            let clock = Arc::new(ManualClock::new(T0));
            let lib = Library::create(
                &tmp.path().join(format!("o{i}")),
                lib_id,
                "conv",
                dev,
                Box::new(clock.clone()),
            )
            .unwrap();
            nodes.push(Node {
                lib,
                clock,
                dev,
                skew: skews[i],
                vol: Uuid::nil(),
                known: HashSet::new(),
            });
        }
        World {
            _tmp: tmp,
            nodes,
            now: T0,
            skewed: false,
            next_id: 1,
            deps: HashMap::new(),
        }
    }

    fn id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 | self.next_id)
    }

    fn set_clock(&self, d: usize) {
        let n = &self.nodes[d];
        n.clock.set(self.now + if self.skewed { n.skew } else { 0 });
    }

    /// Commit `changes` on node `d` as one batch; false if the TM refused it for a
    /// reason a user could run into (the record is gone, or already there).
    fn commit(&mut self, d: usize, changes: Vec<Change>) -> bool {
        self.set_clock(d);
        let before = Arc::new(self.nodes[d].known.clone());
        match self.nodes[d].lib.commit_batch(changes) {
            Ok(r) => {
                for id in r.entries {
                    self.nodes[d].known.insert(id);
                    self.deps.insert(id, before.clone());
                }
                true
            }
            Err(Error::Deleted { .. } | Error::NotFound { .. } | Error::AlreadyExists { .. }) => {
                false
            }
            Err(e) => panic!("node {d}: unexpected commit error: {e}"),
        }
    }

    fn must(&mut self, d: usize, changes: Vec<Change>) {
        assert!(self.commit(d, changes), "node {d}: prologue commit refused");
    }

    fn sync(&mut self, from: usize, to: usize, mode: SyncMode) {
        let mut entries = all_entries(&self.nodes[from].lib);
        match mode {
            SyncMode::All => {}
            SyncMode::Prefix(k) => {
                let keep = entries.len() * (k as usize % 4 + 1) / 4;
                entries.truncate(keep);
            }
            SyncMode::Mask(seed) => {
                let mut rng = Rng(seed);
                entries.retain(|_| rng.next() & 1 == 0);
            }
        }
        self.set_clock(to);
        let r = self.nodes[to].lib.apply_remote(&entries).unwrap();
        assert!(r.rejected.is_empty(), "sync {from}->{to}: {:?}", r.rejected);
        self.nodes[to]
            .known
            .extend(entries.iter().map(LogEntry::id));
    }

    fn sync_all(&mut self) {
        let n = self.nodes.len();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    self.sync(from, to, SyncMode::All);
                }
            }
        }
    }

    // Reads of a node's current state.
    fn tags(&self, d: usize) -> Vec<Uuid> {
        uuids(
            &self.nodes[d].lib,
            "SELECT uuid FROM tags ORDER BY uuid",
            &[],
        )
    }
    fn albums(&self, d: usize) -> Vec<Uuid> {
        uuids(
            &self.nodes[d].lib,
            "SELECT uuid FROM albums ORDER BY uuid",
            &[],
        )
    }
    fn files(&self, d: usize) -> Vec<Uuid> {
        uuids(
            &self.nodes[d].lib,
            "SELECT uuid FROM file_entries ORDER BY uuid",
            &[],
        )
    }
    fn own_files(&self, d: usize, dirs_only: bool) -> Vec<Uuid> {
        let sql = if dirs_only {
            "SELECT uuid FROM file_entries WHERE device = ?1 AND kind = 1 ORDER BY uuid"
        } else {
            "SELECT uuid FROM file_entries WHERE device = ?1 ORDER BY uuid"
        };
        uuids(&self.nodes[d].lib, sql, &[&self.nodes[d].dev])
    }
    fn own_locations(&self, d: usize) -> Vec<Uuid> {
        uuids(
            &self.nodes[d].lib,
            "SELECT uuid FROM locations WHERE device = ?1 ORDER BY uuid",
            &[&self.nodes[d].dev],
        )
    }
    fn members(&self, d: usize, table: &str) -> Vec<Uuid> {
        uuids(
            &self.nodes[d].lib,
            &format!("SELECT uuid FROM {table} WHERE present = 1 ORDER BY uuid"),
            &[],
        )
    }

    fn file(&mut self, d: usize, loc: Uuid, parent: Option<Uuid>, dir: bool) -> FileEntry {
        let id = self.id();
        let n = self.next_id;
        FileEntry {
            id,
            device: self.nodes[d].dev,
            location: loc,
            parent,
            name: format!("f{n}"),
            path: format!("p/f{n}"),
            kind: if dir {
                entry_kind::DIR
            } else {
                entry_kind::FILE
            },
            size: n as i64,
            modified: Some(n as i64),
            offloaded_to: None,
            offloaded_path: None,
            offloaded_hash: None,
            inode: Some(n as i64),
        }
    }

    fn location(&mut self, d: usize) -> Location {
        let id = self.id();
        Location {
            id,
            device: self.nodes[d].dev,
            volume: self.nodes[d].vol,
            path: format!("/data/{}", id.simple()),
            name: "data".into(),
        }
    }
}

fn album(id: Uuid, name: &str) -> Album {
    Album {
        id,
        name: name.into(),
        description: None,
    }
}

fn rename<M: Syncable>(id: Uuid, name: &str) -> Change {
    Change::update::<M>(id).set("name", name)
}

/// Records written by the prologue, to check its outcomes.
struct Prologue {
    /// Renamed on a and b at the same HLC time.
    tie_tag: Uuid,
    a: usize,
    b: usize,
    /// Removed on b and added on c at the same HLC time.
    tie_member: Uuid,
    /// Deleted by c while a renamed it.
    deleted_tag: Uuid,
}

/// Write the must-have cases by construction. `a`, `b`, `c` are distinct nodes.
fn prologue(w: &mut World, (a, b, c): (usize, usize, usize), gap: u64) -> Prologue {
    // Every node has a volume and a location.
    let mut locs = Vec::new();
    for d in 0..w.nodes.len() {
        let vol = volume(w.id(), w.nodes[d].dev, "disk", &format!("fp{d}"));
        w.nodes[d].vol = vol.id;
        let loc = w.location(d);
        locs.push(loc.id);
        w.must(d, vec![Change::insert(&vol), Change::insert(&loc)]);
    }
    let (t1, t2, t3, t4) = (w.id(), w.id(), w.id(), w.id());
    let a1 = w.id();
    let folder = w.file(a, locs[a], None, true);
    let child = w.file(a, locs[a], Some(folder.id), false);
    let e = w.file(a, locs[a], None, false);
    w.must(
        a,
        vec![
            Change::insert(&tag(t1, "one")),
            Change::insert(&tag(t2, "two")),
            Change::insert(&tag(t3, "three")),
            Change::insert(&tag(t4, "four")),
            Change::insert(&album(a1, "album")),
            Change::insert(&folder),
            Change::insert(&child),
            Change::insert(&e),
        ],
    );
    w.sync_all();
    // A member present on a and b, unknown on c.
    let m = TagAssignment::new(t4, e.id);
    w.must(a, vec![Change::insert(&m)]);
    w.sync(a, b, SyncMode::All);

    // Exact HLC tie: first writes at a fresh millisecond on both devices.
    w.now += 1000;
    w.must(a, vec![rename::<Tag>(t1, "alpha")]);
    w.must(b, vec![rename::<Tag>(t1, "beta")]);
    // Add vs remove of the same member at the same HLC time: the member stays.
    w.now += 1000;
    w.must(b, vec![Change::delete::<TagAssignment>(m.id)]);
    w.must(c, vec![Change::insert(&m)]);

    // Concurrent, not tied.
    w.now += gap;
    // Rename vs delete.
    w.must(c, vec![Change::delete::<Tag>(t2)]);
    w.must(a, vec![rename::<Tag>(t2, "gamma")]);
    // Delete a parent vs add a child to it.
    w.must(b, vec![Change::delete::<Album>(a1)]);
    w.must(c, vec![Change::insert(&AlbumItem::new(a1, e.id))]);
    w.must(b, vec![Change::delete::<Tag>(t3)]);
    w.must(a, vec![Change::insert(&TagAssignment::new(t3, e.id))]);
    // Delete a folder (its child goes with it) vs changes to the child.
    w.must(a, vec![Change::delete::<FileEntry>(folder.id)]);
    w.must(
        b,
        vec![Change::insert(&UserMetadata {
            id: UserMetadata::id_for(child.id),
            entry: child.id,
            note: Some("keep".into()),
            favorite: true,
        })],
    );
    w.must(c, vec![Change::insert(&TagAssignment::new(t1, child.id))]);
    w.now += 1;
    Prologue {
        tie_tag: t1,
        a,
        b,
        tie_member: m.id,
        deleted_tag: t2,
    }
}

// ---------------------------------------------------------------------------
// The random script.

#[derive(Debug, Clone)]
enum Act {
    NewTag(u8),
    RenameTag(usize, u8),
    RecolorTag(usize, Option<u8>),
    DeleteTag(usize),
    NewAlbum(u8),
    RenameAlbum(usize, u8),
    DescribeAlbum(usize, Option<u8>),
    DeleteAlbum(usize),
    AddTag(usize, usize),
    RemoveTag(usize),
    AddToAlbum(usize, usize),
    RemoveFromAlbum(usize),
    SetMeta(usize, Option<u8>, bool),
    NewFile(usize, Option<usize>, bool),
    EditFile(usize, u8),
    DeleteFile(usize),
    NewLocation,
    DeleteLocation(usize),
    Sync(usize, SyncMode),
    Tick(u64),
}

fn act() -> impl Strategy<Value = Act> {
    let p = || 0usize..64;
    let name = || 0u8..4;
    prop_oneof![
        3 => name().prop_map(Act::NewTag),
        4 => (p(), name()).prop_map(|(i, n)| Act::RenameTag(i, n)),
        2 => (p(), proptest::option::of(name())).prop_map(|(i, c)| Act::RecolorTag(i, c)),
        2 => p().prop_map(Act::DeleteTag),
        2 => name().prop_map(Act::NewAlbum),
        2 => (p(), name()).prop_map(|(i, n)| Act::RenameAlbum(i, n)),
        1 => (p(), proptest::option::of(name())).prop_map(|(i, n)| Act::DescribeAlbum(i, n)),
        1 => p().prop_map(Act::DeleteAlbum),
        4 => (p(), p()).prop_map(|(t, e)| Act::AddTag(t, e)),
        3 => p().prop_map(Act::RemoveTag),
        3 => (p(), p()).prop_map(|(a, e)| Act::AddToAlbum(a, e)),
        2 => p().prop_map(Act::RemoveFromAlbum),
        3 => (p(), proptest::option::of(name()), any::<bool>())
            .prop_map(|(e, n, f)| Act::SetMeta(e, n, f)),
        4 => (p(), proptest::option::of(p()), any::<bool>())
            .prop_map(|(l, parent, dir)| Act::NewFile(l, parent, dir)),
        2 => (p(), name()).prop_map(|(i, s)| Act::EditFile(i, s)),
        2 => p().prop_map(Act::DeleteFile),
        1 => Just(Act::NewLocation),
        1 => p().prop_map(Act::DeleteLocation),
        6 => (p(), prop_oneof![
            Just(SyncMode::All),
            (0u8..4).prop_map(SyncMode::Prefix),
            any::<u64>().prop_map(SyncMode::Mask),
        ])
        .prop_map(|(to, m)| Act::Sync(to, m)),
        5 => prop_oneof![4 => 0u64..3, 1 => Just(1000u64)].prop_map(Act::Tick),
    ]
}

fn run_act(w: &mut World, d: usize, a: &Act) {
    let n = |k: u8| format!("n{k}");
    match *a {
        Act::NewTag(k) => {
            let id = w.id();
            w.commit(d, vec![Change::insert(&tag(id, &n(k)))]);
        }
        Act::RenameTag(i, k) => {
            if let Some(t) = pick(&w.tags(d), i) {
                w.commit(d, vec![rename::<Tag>(t, &n(k))]);
            }
        }
        Act::RecolorTag(i, c) => {
            if let Some(t) = pick(&w.tags(d), i) {
                let color = c.map(|c| format!("#00000{c}"));
                w.commit(d, vec![Change::update::<Tag>(t).set("color", color)]);
            }
        }
        Act::DeleteTag(i) => {
            if let Some(t) = pick(&w.tags(d), i) {
                w.commit(d, vec![Change::delete::<Tag>(t)]);
            }
        }
        Act::NewAlbum(k) => {
            let id = w.id();
            w.commit(d, vec![Change::insert(&album(id, &n(k)))]);
        }
        Act::RenameAlbum(i, k) => {
            if let Some(x) = pick(&w.albums(d), i) {
                w.commit(d, vec![rename::<Album>(x, &n(k))]);
            }
        }
        Act::DescribeAlbum(i, k) => {
            if let Some(x) = pick(&w.albums(d), i) {
                let desc = k.map(n);
                w.commit(d, vec![Change::update::<Album>(x).set("description", desc)]);
            }
        }
        Act::DeleteAlbum(i) => {
            if let Some(x) = pick(&w.albums(d), i) {
                w.commit(d, vec![Change::delete::<Album>(x)]);
            }
        }
        Act::AddTag(t, e) => {
            if let (Some(t), Some(e)) = (pick(&w.tags(d), t), pick(&w.files(d), e)) {
                w.commit(d, vec![Change::insert(&TagAssignment::new(t, e))]);
            }
        }
        Act::RemoveTag(i) => {
            if let Some(m) = pick(&w.members(d, "tag_assignments"), i) {
                w.commit(d, vec![Change::delete::<TagAssignment>(m)]);
            }
        }
        Act::AddToAlbum(a, e) => {
            if let (Some(a), Some(e)) = (pick(&w.albums(d), a), pick(&w.files(d), e)) {
                w.commit(d, vec![Change::insert(&AlbumItem::new(a, e))]);
            }
        }
        Act::RemoveFromAlbum(i) => {
            if let Some(m) = pick(&w.members(d, "album_items"), i) {
                w.commit(d, vec![Change::delete::<AlbumItem>(m)]);
            }
        }
        Act::SetMeta(e, note, fav) => {
            if let Some(e) = pick(&w.files(d), e) {
                let id = UserMetadata::id_for(e);
                let note = note.map(n);
                let exists = count(
                    &w.nodes[d].lib,
                    &format!(
                        "SELECT COUNT(*) FROM user_metadata WHERE uuid = x'{}'",
                        id.simple()
                    ),
                ) > 0;
                let change = if exists {
                    Change::update::<UserMetadata>(id)
                        .set("note", note)
                        .set("favorite", fav)
                } else {
                    Change::insert(&UserMetadata {
                        id,
                        entry: e,
                        note,
                        favorite: fav,
                    })
                };
                w.commit(d, vec![change]);
            }
        }
        Act::NewFile(l, parent, dir) => {
            if let Some(loc) = pick(&w.own_locations(d), l) {
                let parent = parent.and_then(|p| {
                    let dirs: Vec<Uuid> = uuids(
                        &w.nodes[d].lib,
                        "SELECT uuid FROM file_entries WHERE location = ?1 AND kind = 1 ORDER BY uuid",
                        &[&loc],
                    );
                    pick(&dirs, p)
                });
                let f = w.file(d, loc, parent, dir);
                w.commit(d, vec![Change::insert(&f)]);
            }
        }
        Act::EditFile(i, s) => {
            if let Some(f) = pick(&w.own_files(d, false), i) {
                w.commit(
                    d,
                    vec![Change::update::<FileEntry>(f)
                        .set("size", s as i64)
                        .set("name", n(s))],
                );
            }
        }
        Act::DeleteFile(i) => {
            // Prefer folders: their children go with them.
            let dirs = w.own_files(d, true);
            let files = if i % 2 == 0 && !dirs.is_empty() {
                dirs
            } else {
                w.own_files(d, false)
            };
            if let Some(f) = pick(&files, i / 2) {
                w.commit(d, vec![Change::delete::<FileEntry>(f)]);
            }
        }
        Act::NewLocation => {
            let loc = w.location(d);
            w.commit(d, vec![Change::insert(&loc)]);
        }
        Act::DeleteLocation(i) => {
            let locs = w.own_locations(d);
            // Keep at least one location per node most of the time.
            if locs.len() > 1 || i % 4 == 0 {
                if let Some(l) = pick(&locs, i) {
                    w.commit(d, vec![Change::delete::<Location>(l)]);
                }
            }
        }
        Act::Sync(from, mode) => {
            let from = from % w.nodes.len();
            if from != d {
                w.sync(from, d, mode);
            }
        }
        Act::Tick(ms) => w.now += ms,
    }
}

// ---------------------------------------------------------------------------
// The oracle: the state the merge rules prescribe, computed from entries alone.

/// Expected rows per model (uuid → synced values) and tombstones (uuid → model).
struct Expected {
    rows: BTreeMap<&'static str, BTreeMap<Uuid, Vec<Value>>>,
    tombstones: BTreeMap<Uuid, String>,
}

fn oracle(entries: &[LogEntry]) -> Expected {
    let models: HashMap<&str, &'static concord::model::ModelInfo> =
        registry().iter().map(|m| (m.name, *m)).collect();
    let mut by_record: BTreeMap<Uuid, Vec<&LogEntry>> = BTreeMap::new();
    for e in entries {
        if models.contains_key(e.model.as_str()) {
            by_record.entry(e.record).or_default().push(e);
        }
    }
    // Tombstones: record deletes, then key references to tombstoned records, to a
    // fixpoint.
    let mut tombstones: BTreeMap<Uuid, String> = BTreeMap::new();
    for (r, es) in &by_record {
        for e in es {
            let m = models[e.model.as_str()];
            if m.kind == ModelKind::Record && matches!(e.op, Op::Delete(_)) {
                tombstones.insert(*r, e.model.clone());
            }
        }
    }
    loop {
        let mut grew = false;
        for (r, es) in &by_record {
            if tombstones.contains_key(r) {
                continue;
            }
            let m = models[es[0].model.as_str()];
            let dead = es.iter().any(|e| {
                e.op.writes().iter().any(|w| {
                    let f = &m.fields[w.field as usize];
                    f.key
                        && f.references.is_some()
                        && matches!(w.value, Value::Uuid(t) if tombstones.contains_key(&t))
                })
            });
            if dead {
                tombstones.insert(*r, m.name.to_string());
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut rows: BTreeMap<&'static str, BTreeMap<Uuid, Vec<Value>>> = BTreeMap::new();
    for m in registry() {
        rows.insert(m.name, BTreeMap::new());
    }
    for (r, es) in &by_record {
        if tombstones.contains_key(r) {
            continue;
        }
        let m = models[es[0].model.as_str()];
        match m.kind {
            ModelKind::Membership => {
                let last = es
                    .iter()
                    .max_by_key(|e| (e.hlc, !matches!(e.op, Op::Delete(_)), e.origin))
                    .unwrap();
                if matches!(last.op, Op::Delete(_)) {
                    continue;
                }
                let mut vals = vec![Value::Null; m.fields.len()];
                for w in last.op.writes() {
                    vals[w.field as usize] = w.value.clone();
                }
                rows.get_mut(m.name).unwrap().insert(*r, vals);
            }
            ModelKind::Record => {
                let mut vals: Vec<(Hlc, Value)> =
                    vec![(Hlc::new(0, Uuid::nil()), Value::Null); m.fields.len()];
                for e in es {
                    for w in e.op.writes() {
                        let slot = &mut vals[w.field as usize];
                        if e.stamp() > slot.0 {
                            *slot = (e.stamp(), w.value.clone());
                        }
                    }
                }
                rows.get_mut(m.name)
                    .unwrap()
                    .insert(*r, vals.into_iter().map(|(_, v)| v).collect());
            }
        }
    }
    Expected { rows, tombstones }
}

fn actual(lib: &Library) -> Expected {
    lib.read(|c| {
        let mut rows = BTreeMap::new();
        for m in registry() {
            let cols: Vec<&str> = m.fields.iter().map(|f| f.name).collect();
            let filter = if m.kind == ModelKind::Membership {
                " WHERE present = 1"
            } else {
                ""
            };
            let mut stmt = c.prepare(&format!(
                "SELECT uuid, {} FROM {}{filter}",
                cols.join(", "),
                m.table
            ))?;
            let mut q = stmt.query([])?;
            let mut map = BTreeMap::new();
            while let Some(r) = q.next()? {
                let id: Uuid = r.get(0)?;
                let mut vals = Vec::new();
                for (i, f) in m.fields.iter().enumerate() {
                    vals.push(Value::from_sql(f.kind, r.get_ref(i + 1)?)?);
                }
                map.insert(id, vals);
            }
            rows.insert(m.name, map);
        }
        let mut tombstones = BTreeMap::new();
        let mut stmt = c.prepare("SELECT uuid, model FROM tombstones")?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            tombstones.insert(r.get(0)?, r.get(1)?);
        }
        Ok(Expected { rows, tombstones })
    })
    .unwrap()
}

// ---------------------------------------------------------------------------
// Which hard cases a set of entries contains.

#[derive(Debug, Default, Clone, Copy)]
struct Cases {
    rename_rename: usize,
    rename_delete: usize,
    delete_parent_add_child: usize,
    delete_folder_vs_child_change: usize,
    add_remove: usize,
    hlc_tie: usize,
    add_remove_tie: usize,
}

fn writes_field(e: &LogEntry, m: &concord::model::ModelInfo, name: &str) -> bool {
    matches!(e.op, Op::Update(_)) && {
        let i = m.field_index(name).unwrap() as u16;
        e.op.writes().iter().any(|w| w.field == i)
    }
}

fn key_target(e: &LogEntry, m: &concord::model::ModelInfo, name: &str) -> Option<Uuid> {
    let i = m.field_index(name)? as u16;
    e.op.writes()
        .iter()
        .find(|w| w.field == i)
        .and_then(|w| w.value.as_uuid())
}

fn classify(entries: &[LogEntry], deps: &HashMap<Id, Arc<HashSet<Id>>>) -> Cases {
    let concurrent = |x: &LogEntry, y: &LogEntry| {
        x.origin != y.origin && !deps[&y.id()].contains(&x.id()) && !deps[&x.id()].contains(&y.id())
    };
    let is = |e: &LogEntry, m: &concord::model::ModelInfo| e.model == m.name;
    let del = |e: &LogEntry| matches!(e.op, Op::Delete(_));
    let ins = |e: &LogEntry| matches!(e.op, Op::Insert(_));
    let mut c = Cases::default();
    let mut by_record: HashMap<Uuid, Vec<&LogEntry>> = HashMap::new();
    for e in entries {
        by_record.entry(e.record).or_default().push(e);
    }
    for es in by_record.values() {
        for (i, x) in es.iter().enumerate() {
            for y in &es[i + 1..] {
                if x.origin == y.origin {
                    continue;
                }
                let conc = concurrent(x, y);
                if is(x, Tag::INFO) {
                    let rx = writes_field(x, Tag::INFO, "name");
                    let ry = writes_field(y, Tag::INFO, "name");
                    if rx && ry && conc {
                        c.rename_rename += 1;
                    }
                    if rx && ry && x.hlc == y.hlc {
                        c.hlc_tie += 1;
                    }
                    if conc && ((rx && del(y)) || (ry && del(x))) {
                        c.rename_delete += 1;
                    }
                }
                if is(x, TagAssignment::INFO) || is(x, AlbumItem::INFO) {
                    let add_rm = (ins(x) && del(y)) || (del(x) && ins(y));
                    if add_rm && conc {
                        c.add_remove += 1;
                    }
                    if add_rm && x.hlc == y.hlc {
                        c.add_remove_tie += 1;
                    }
                }
            }
        }
    }
    // Parents (tags, albums, folders) deleted vs changes under them.
    let mut children_of: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for e in entries.iter().filter(|e| is(e, FileEntry::INFO) && ins(e)) {
        if let Some(p) = key_target(e, FileEntry::INFO, "parent") {
            children_of.entry(p).or_default().push(e.record);
        }
    }
    let mut by_target: HashMap<Uuid, Vec<&LogEntry>> = HashMap::new();
    for e in entries {
        for (m, f) in [
            (TagAssignment::INFO, "tag"),
            (TagAssignment::INFO, "entry"),
            (AlbumItem::INFO, "album"),
            (AlbumItem::INFO, "entry"),
            (UserMetadata::INFO, "entry"),
        ] {
            if is(e, m) {
                if let Some(t) = key_target(e, m, f) {
                    by_target.entry(t).or_default().push(e);
                }
            }
        }
    }
    for d in entries.iter().filter(|e| del(e)) {
        if is(d, Tag::INFO) || is(d, Album::INFO) {
            for y in by_target.get(&d.record).into_iter().flatten() {
                if ins(y) && concurrent(d, y) {
                    c.delete_parent_add_child += 1;
                }
            }
        }
        if is(d, FileEntry::INFO) {
            for child in children_of.get(&d.record).into_iter().flatten() {
                for y in by_target.get(child).into_iter().flatten() {
                    if concurrent(d, y) {
                        c.delete_folder_vs_child_change += 1;
                    }
                }
            }
        }
    }
    c
}

// ---------------------------------------------------------------------------
// One case.

#[derive(Debug, Clone)]
struct Scenario {
    nodes: usize,
    dev_keys: Vec<u128>,
    skews: Vec<u64>,
    gap: u64,
    steps: Vec<(usize, Act)>,
    seed: u64,
}

fn scenario(max_steps: usize) -> impl Strategy<Value = Scenario> {
    (3usize..=5).prop_flat_map(move |n| {
        (
            Just((1..=n as u128).collect::<Vec<_>>()).prop_shuffle(),
            proptest::collection::vec(
                prop_oneof![3 => Just(0u64), 1 => 1u64..5, 1 => Just(40u64)],
                n,
            ),
            0u64..5,
            proptest::collection::vec((0..n, act()), 10..max_steps),
            any::<u64>(),
        )
            .prop_map(move |(dev_keys, skews, gap, steps, seed)| Scenario {
                nodes: n,
                dev_keys,
                skews,
                gap,
                steps,
                seed,
            })
    })
}

/// Apply `entries` to `lib` in chunks of 1..=`max_chunk`.
fn apply_chunked(lib: &Library, entries: &[LogEntry], rng: &mut Rng, max_chunk: usize) {
    let mut i = 0;
    while i < entries.len() {
        let k = 1 + rng.index(max_chunk);
        let end = (i + k).min(entries.len());
        let r = lib.apply_remote(&entries[i..end]).unwrap();
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        i = end;
    }
}

/// `entries` with random duplicates inserted at random places.
fn with_duplicates(entries: &[LogEntry], rng: &mut Rng) -> Vec<LogEntry> {
    let mut v = entries.to_vec();
    for _ in 0..entries.len() / 4 + 1 {
        if entries.is_empty() {
            break;
        }
        let e = entries[rng.index(entries.len())].clone();
        let at = rng.index(v.len() + 1);
        v.insert(at, e);
    }
    v
}

fn run(s: &Scenario) -> Cases {
    let mut w = World::new(s.nodes, &s.dev_keys, &s.skews);
    let mut rng = Rng(s.seed);
    let roles = (0, 1, 2); // dev_keys are shuffled, so which device id wins a tie varies
    let p = prologue(&mut w, roles, s.gap);
    w.skewed = true;
    for (d, a) in &s.steps {
        run_act(&mut w, *d, a);
    }

    // The union of every origin's log.
    let mut union: BTreeMap<Id, LogEntry> = BTreeMap::new();
    for n in &w.nodes {
        for e in all_entries(&n.lib) {
            union.insert(e.id(), e);
        }
    }
    let union: Vec<LogEntry> = union.into_values().collect();
    for e in &union {
        assert!(
            w.deps.contains_key(&e.id()),
            "entry {:?} has no author",
            e.id()
        );
    }
    let cases = classify(&union, &w.deps);
    assert!(cases.rename_rename >= 1, "{cases:?}");
    assert!(cases.rename_delete >= 1, "{cases:?}");
    assert!(cases.delete_parent_add_child >= 2, "{cases:?}");
    assert!(cases.delete_folder_vs_child_change >= 2, "{cases:?}");
    assert!(cases.add_remove >= 1, "{cases:?}");
    assert!(cases.hlc_tie >= 1, "{cases:?}");
    assert!(cases.add_remove_tie >= 1, "{cases:?}");

    // Fresh libraries, each fed the union its own way.
    let max_ms = union.iter().map(|e| e.hlc >> 16).max().unwrap_or(T0);
    let tmp = scratch("concord-conv");
    let fresh = |i: u128| {
        Library::create(
            &tmp.path().join(format!("f{i}")),
            Uuid::from_u128(0x11b),
            "fresh",
            Uuid::from_u128(0xf0_0000 + i),
            Box::new(ManualClock::new(max_ms + 1)),
        )
        .unwrap()
    };
    let mut digests: Vec<(String, String)> = Vec::new();

    // 1. Random order, random duplicates, random batches.
    let f1 = fresh(1);
    let mut order = union.clone();
    rng.shuffle(&mut order);
    apply_chunked(&f1, &with_duplicates(&order, &mut rng), &mut rng, 20);
    digests.push(("random order, duplicates, batches".into(), digest_all(&f1)));

    // 2. Newest first in one batch: deletes before inserts, children before parents.
    let f2 = fresh(2);
    let mut order = union.clone();
    order.sort_by_key(|e| std::cmp::Reverse(e.stamp()));
    let r = f2.apply_remote(&order).unwrap();
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    digests.push(("newest first".into(), digest_all(&f2)));

    // 3. One entry at a time, shuffled, every entry twice.
    let f3 = fresh(3);
    let mut order: Vec<LogEntry> = union.iter().chain(union.iter()).cloned().collect();
    rng.shuffle(&mut order);
    apply_chunked(&f3, &order, &mut rng, 1);
    digests.push(("one at a time, all twice".into(), digest_all(&f3)));

    // 4. Origin by origin in random origin order, each origin's entries backwards.
    let f4 = fresh(4);
    let mut origins: Vec<Uuid> = union
        .iter()
        .map(|e| e.origin)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    rng.shuffle(&mut origins);
    let mut order = Vec::new();
    for o in origins {
        let mut es: Vec<LogEntry> = union.iter().filter(|e| e.origin == o).cloned().collect();
        es.reverse();
        order.extend(es);
    }
    apply_chunked(&f4, &order, &mut rng, 50);
    digests.push(("origin by origin, backwards".into(), digest_all(&f4)));

    // The origins themselves, once they received everything.
    for (i, n) in w.nodes.iter().enumerate() {
        n.clock.set(max_ms + 1);
        let mut order = union.clone();
        rng.shuffle(&mut order);
        apply_chunked(&n.lib, &order, &mut rng, 30);
        digests.push((format!("origin {i}"), digest_all(&n.lib)));
    }
    for (what, d) in &digests[1..] {
        assert_eq!(d, &digests[0].1, "{what} diverged from {}", digests[0].0);
    }

    // The state is the one the merge rules prescribe.
    let want = oracle(&union);
    for lib in [&f1, &w.nodes[0].lib] {
        let got = actual(lib);
        assert_eq!(got.tombstones, want.tombstones, "tombstones");
        for (m, rows) in &want.rows {
            assert_eq!(&got.rows[m], rows, "rows of {m}");
        }
    }

    // Semantic properties, spelled out.
    let deleted_tags: BTreeSet<Uuid> = union
        .iter()
        .filter(|e| e.model == Tag::INFO.name && matches!(e.op, Op::Delete(_)))
        .map(|e| e.record)
        .collect();
    assert!(deleted_tags.contains(&p.deleted_tag));
    for t in &deleted_tags {
        let live = count(
            &f1,
            &format!("SELECT COUNT(*) FROM tags WHERE uuid = x'{}'", t.simple()),
        );
        assert_eq!(live, 0, "deleted tag {t} reappeared");
    }
    for (table, key) in [
        ("tag_assignments", "tag"),
        ("tag_assignments", "entry"),
        ("album_items", "album"),
        ("album_items", "entry"),
        ("user_metadata", "entry"),
    ] {
        let orphans = count(
            &f1,
            &format!("SELECT COUNT(*) FROM {table} WHERE {key} IN (SELECT uuid FROM tombstones)"),
        );
        assert_eq!(orphans, 0, "{table} rows outlived their deleted {key}");
    }
    // The prologue's ties, unless later writes in the script overrode them.
    let later = |r: Uuid, after: u64| union.iter().any(|e| e.record == r && e.hlc > after);
    let tie_time = union
        .iter()
        .filter(|e| e.record == p.tie_tag && matches!(e.op, Op::Update(_)))
        .map(|e| e.hlc)
        .min()
        .unwrap();
    if !later(p.tie_tag, tie_time) && !want.tombstones.contains_key(&p.tie_tag) {
        let winner = if w.nodes[p.a].dev > w.nodes[p.b].dev {
            "alpha"
        } else {
            "beta"
        };
        assert_eq!(want.rows["tag"][&p.tie_tag][0], Value::Text(winner.into()));
    }
    let member_time = union
        .iter()
        .filter(|e| e.record == p.tie_member && matches!(e.op, Op::Delete(_)))
        .map(|e| e.hlc)
        .min()
        .unwrap();
    if !later(p.tie_member, member_time) && !want.tombstones.contains_key(&p.tie_member) {
        let present = count(
            &f1,
            &format!(
                "SELECT COUNT(*) FROM tag_assignments WHERE present = 1 AND uuid = x'{}'",
                p.tie_member.simple()
            ),
        );
        assert_eq!(
            present, 1,
            "add vs remove at the same HLC time must keep the member"
        );
    }
    cases
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn same_entries_any_order_same_library(s in scenario(60)) {
        run(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The long run: `cargo test --test convergence -- --ignored`.
    #[test]
    #[ignore]
    fn same_entries_any_order_same_library_long(s in scenario(200)) {
        run(&s);
    }
}

// ---------------------------------------------------------------------------
// HLC acceptance (DESIGN §2).

#[test]
fn remote_entry_an_hour_ahead_is_rejected_and_changes_nothing() {
    let tmp = scratch("concord-conv");
    let lib_id = Uuid::from_u128(0x11b);
    let now = T0;
    let clock = Arc::new(ManualClock::new(now));
    let lib = Library::create(
        &tmp.path().join("a"),
        lib_id,
        "a",
        Uuid::from_u128(0xa),
        Box::new(clock.clone()),
    )
    .unwrap();
    lib.commit(Change::insert(&tag(Uuid::from_u128(1), "here")))
        .unwrap();

    // A peer whose clock runs an hour ahead writes a change.
    let peer_dev = Uuid::from_u128(0xb);
    let peer = Library::create(
        &tmp.path().join("b"),
        lib_id,
        "b",
        peer_dev,
        Box::new(ManualClock::new(now + 3_600_000)),
    )
    .unwrap();
    peer.commit(Change::insert(&tag(Uuid::from_u128(2), "future")))
        .unwrap();
    let future = all_entries(&peer);
    assert_eq!(future.len(), 1);

    let before = digest_all(&lib);
    let log_before = lib.with_log(|l| l.count()).unwrap();
    let hlc_before = lib.hlc().last();
    let r = lib.apply_remote(&future).unwrap();
    assert_eq!(r.applied, 0, "{r:?}");
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    let msg = &r.rejected[0];
    assert!(
        msg.contains(&peer_dev.to_string()) && msg.contains("ahead of ours"),
        "the message names the device and the problem: {msg}"
    );
    assert_eq!(digest_all(&lib), before, "nothing applied");
    assert_eq!(
        lib.with_log(|l| l.count()).unwrap(),
        log_before,
        "nothing logged"
    );
    assert_eq!(lib.hlc().last(), hlc_before, "the stamp was not absorbed");

    // Within the drift bound the same kind of entry is accepted.
    let near = Library::create(
        &tmp.path().join("c"),
        lib_id,
        "c",
        Uuid::from_u128(0xc),
        Box::new(ManualClock::new(now + 60_000)),
    )
    .unwrap();
    near.commit(Change::insert(&tag(Uuid::from_u128(3), "soon")))
        .unwrap();
    let r = lib.apply_remote(&all_entries(&near)).unwrap();
    assert_eq!(r.applied, 1, "{r:?}");
    assert!(lib.hlc().tick().time > all_entries(&near)[0].hlc);
}

// ---------------------------------------------------------------------------
// Regressions for merge bugs (each a minimal failing sequence).

fn fresh_lib(dir: &std::path::Path, dev: u128) -> Library {
    Library::create(
        dir,
        Uuid::from_u128(0x11b),
        "r",
        Uuid::from_u128(dev),
        Box::new(ManualClock::new(T0 + 1000)),
    )
    .unwrap()
}

/// Regression: a membership is named by its members (`derived_uuid` of its key
/// fields), but apply accepted any id. Two entries giving one id different members
/// then diverged: the first to arrive fixed the members and the other was refused
/// as "cannot change its tag", so each device kept a different pair. Now an entry
/// whose id is not its members' is refused wherever it arrives.
#[test]
fn membership_whose_id_is_not_its_members_is_refused_in_any_order() {
    use concord::sync::entry::FieldWrite;
    let tmp = scratch("concord-conv");
    let m = TagAssignment::INFO;
    let (t1, t2, e) = (
        Uuid::from_u128(21),
        Uuid::from_u128(22),
        Uuid::from_u128(23),
    );
    let id = TagAssignment::new(t1, e).id;
    let add = |origin: u128, tag: Uuid| LogEntry {
        incarnation: 0,
        origin: Uuid::from_u128(origin),
        origin_seq: 1,
        hlc: Hlc::pack(T0, 1),
        lib_seq: None,
        epoch: None,
        model: m.name.into(),
        record: id,
        op: Op::Insert(vec![
            FieldWrite {
                field: m.field_index("tag").unwrap() as u16,
                value: Value::Uuid(tag),
                base: 0,
            },
            FieldWrite {
                field: m.field_index("entry").unwrap() as u16,
                value: Value::Uuid(e),
                base: 0,
            },
        ]),
        seal: None,
    };
    let (honest, forged) = (add(0xa, t1), add(0xb, t2));
    let r1 = fresh_lib(&tmp.path().join("r1"), 0xc1);
    let r2 = fresh_lib(&tmp.path().join("r2"), 0xc2);
    r1.apply_remote(&[honest.clone(), forged.clone()]).unwrap();
    let r = r2.apply_remote(&[forged, honest]).unwrap();
    assert_eq!(r.refused, 1, "{r:?}");
    assert_eq!(digest_all(&r1), digest_all(&r2));
    let tag_of = |l: &Library| -> Uuid {
        l.read(|c| Ok(c.query_row("SELECT tag FROM tag_assignments", [], |r| r.get(0))?))
            .unwrap()
    };
    assert_eq!(tag_of(&r1), t1);
    assert_eq!(tag_of(&r2), t1);

    // The TM never writes one: a hand-made membership with a foreign id fails.
    let lib = fresh_lib(&tmp.path().join("local"), 0xd);
    let bad = TagAssignment {
        id: Uuid::from_u128(99),
        tag: t1,
        entry: e,
    };
    assert!(lib.commit(Change::insert(&bad)).is_err());
    assert_eq!(lib.with_log(|l| l.count()).unwrap(), 0);
}

/// The tie rules on their own: equal packed HLC times, in both arrival orders.
/// A rename tie goes to the higher device id; an add/remove tie keeps the member.
#[test]
fn exact_hlc_ties_resolve_the_same_way_in_any_order() {
    let tmp = scratch("concord-conv");
    let lib_id = Uuid::from_u128(0x11b);
    let clock = Arc::new(ManualClock::new(T0));
    let mk = |name: &str, dev: u128| {
        Library::create(
            &tmp.path().join(name),
            lib_id,
            name,
            Uuid::from_u128(dev),
            Box::new(clock.clone()),
        )
        .unwrap()
    };
    let (lo, hi) = (mk("lo", 0x2), mk("hi", 0x3));
    let (t, e) = (Uuid::from_u128(10), Uuid::from_u128(11));
    let m = TagAssignment::new(t, e);
    lo.commit_batch(vec![Change::insert(&tag(t, "start")), Change::insert(&m)])
        .unwrap();
    hi.apply_remote(&all_entries(&lo)).unwrap();

    // Same wall time, nothing exchanged: both stamps are pack(T0 + 1000, 0).
    clock.set(T0 + 1000);
    hi.commit(rename::<Tag>(t, "from hi")).unwrap();
    lo.commit(rename::<Tag>(t, "from lo")).unwrap();
    clock.set(T0 + 2000);
    // hi removes the member; a device that never saw it adds it at the same time,
    // and has the lowest device id, so only "an add wins a tie" can keep it.
    hi.commit(Change::delete::<TagAssignment>(m.id)).unwrap();
    let (eh, el) = (all_entries(&hi), all_entries(&lo));
    let last = |v: &[LogEntry]| v.last().unwrap().hlc;
    assert_eq!(eh[eh.len() - 2].hlc, last(&el), "the renames tie exactly");

    let third = mk("third", 0x1);
    third.apply_remote(&el[..1]).unwrap(); // the tag, not the member
    third.commit(Change::insert(&m)).unwrap();
    let et = all_entries(&third);
    assert_eq!(last(&et), last(&eh), "the add and the remove tie exactly");

    let everything: Vec<LogEntry> = [eh, el, et].concat();
    let mut digests = Vec::new();
    for (i, order) in [false, true].into_iter().enumerate() {
        let r = fresh_lib(&tmp.path().join(format!("r{i}")), 0xf0 + i as u128);
        let mut es = everything.clone();
        if order {
            es.reverse();
        }
        r.apply_remote(&es).unwrap();
        let name: String = r
            .read(|c| Ok(c.query_row("SELECT name FROM tags", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(name, "from hi", "the higher device id wins the tie");
        let present = count(&r, "SELECT COUNT(*) FROM tag_assignments WHERE present = 1");
        assert_eq!(present, 1, "an add/remove tie keeps the member");
        digests.push(digest_all(&r));
    }
    assert_eq!(digests[0], digests[1]);
}

/// Device-owned data changes only by its owner (DESIGN §4): entries from another
/// device about it are refused in any order, whether they name the real owner or
/// not, and change nothing.
#[test]
fn changes_to_another_devices_data_are_refused() {
    use concord::sync::entry::FieldWrite;
    let tmp = scratch("concord-conv");
    let owner = fresh_lib(&tmp.path().join("owner"), 0xa);
    let vol = volume(Uuid::from_u128(10), owner.device(), "disk", "fp");
    owner.commit(Change::insert(&vol)).unwrap();
    let m = Volume::INFO;
    let intruder = Uuid::from_u128(0xb);
    let f = |name: &str, value: Value| FieldWrite {
        field: m.field_index(name).unwrap() as u16,
        value,
        base: 0,
    };
    // Renames the owner's volume, naming the real owner.
    let forged = LogEntry {
        incarnation: 0,
        origin: intruder,
        origin_seq: 1,
        hlc: Hlc::pack(T0 + 500, 0),
        lib_seq: None,
        epoch: None,
        model: m.name.into(),
        record: vol.id,
        op: Op::Update(vec![
            f("device", Value::Uuid(owner.device())),
            f("name", Value::Text("mine now".into())),
        ]),
        seal: None,
    };
    let honest = all_entries(&owner);
    let mut digests = Vec::new();
    for (i, es) in [
        [honest.clone(), vec![forged.clone()]].concat(),
        [vec![forged.clone()], honest.clone()].concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let r = fresh_lib(&tmp.path().join(format!("r{i}")), 0xc0 + i as u128);
        let rep = r.apply_remote(&es).unwrap();
        assert_eq!((rep.applied, rep.refused), (1, 1), "{rep:?}");
        let name: String = r
            .read(|c| Ok(c.query_row("SELECT name FROM volumes", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(name, "disk");
        digests.push(digest_all(&r));
    }
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[0], digest_all(&owner));
}
