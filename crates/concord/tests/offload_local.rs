//! Offload's crash-safe steps on real files and a real library: `drive`
//! over an `Ends` built from the index (`commit_offloaded`, `commit_local`),
//! the source folder and a destination folder on this machine, with writes
//! and crashes injected at the named points between steps. What the node's
//! runner does across devices, minus the network.

use std::path::{Path, PathBuf};

use concord::conduit::content::copy_verified;
use concord::conduit::offload_steps::{
    drive, remove_if_unchanged, DestinationCopy, Ends, EntryState, Intent, LostHow, Observed,
    Outcome, SourceFile, Step, Waiting,
};
use concord::conduit::tree::{hash_reader, FileState};
use concord::hlc::SystemClock;
use concord::index::{add_location, commit_local, commit_offloaded, rescan_location, OffloadedTo};
use concord::{query, Library, Uuid};

mod support;

/// A point between two steps, where a test may write to the file or crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    BeforeCopy,
    AfterCopy,
    BeforeCommit,
    BeforeRemove,
}

/// Called at each point with the source file; `Err` is a crash there.
type Hook<'a> = Box<dyn FnMut(Point, &Path) -> Result<(), String> + 'a>;

struct LocalEnds<'a> {
    lib: &'a Library,
    entry: Uuid,
    source: PathBuf,
    rel: String,
    dest_root: PathBuf,
    dest_location: Uuid,
    reachable: bool,
    hook: Hook<'a>,
}

impl LocalEnds<'_> {
    fn dest_rel(&self) -> String {
        format!("offloaded/{}", self.rel)
    }

    fn at(&mut self, p: Point) -> Result<(), String> {
        let path = self.source.join(&self.rel);
        (self.hook)(p, &path)
    }
}

fn hash_file(p: &Path) -> Option<[u8; 32]> {
    let mut f = std::fs::File::open(p).ok()?;
    hash_reader(&mut f).ok().map(|(h, _)| h)
}

impl Ends for LocalEnds<'_> {
    type Error = String;

    fn observe(&mut self) -> Result<Observed, String> {
        let e = query::file_entry(self.lib, self.entry)
            .map_err(|e| e.to_string())?
            .ok_or("entry gone")?;
        let offloaded = OffloadedTo::of(&e);
        let path = self.source.join(&self.rel);
        let source = match std::fs::symlink_metadata(&path) {
            Ok(md) => {
                let mut state = FileState::from_metadata(&md);
                state.version.hash = hash_file(&path);
                SourceFile::Present(state)
            }
            Err(_) => SourceFile::Absent,
        };
        let at = offloaded
            .as_ref()
            .map_or(self.dest_rel(), |o| o.path.clone());
        let destination = if !self.reachable {
            DestinationCopy::Unreachable
        } else {
            match hash_file(&self.dest_root.join(at)) {
                Some(h) => DestinationCopy::Present(h),
                None => DestinationCopy::Missing,
            }
        };
        let entry = offloaded.map_or(EntryState::Local, EntryState::Offloaded);
        Ok(Observed {
            entry,
            source,
            destination,
        })
    }

    fn copy(&mut self, version: &FileState) -> Result<(), String> {
        self.at(Point::BeforeCopy)?;
        let dest = self.dest_root.join(self.dest_rel());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let tmp = dest.with_extension("part");
        let mut out = std::fs::File::create(&tmp).unwrap();
        let src = self.source.join(&self.rel);
        let mut input = std::fs::File::open(&src).map_err(|e| e.to_string())?;
        match copy_verified(&mut input, &mut out, &version.version, &src) {
            Ok(_) => {
                out.sync_all().unwrap();
                std::fs::rename(&tmp, &dest).unwrap();
            }
            // The source changed under the copy: nothing lands.
            Err(_) => std::fs::remove_file(&tmp).unwrap(),
        }
        self.at(Point::AfterCopy)
    }

    fn commit_and_remove(&mut self, to: &OffloadedTo, version: &FileState) -> Result<(), String> {
        self.at(Point::BeforeCommit)?;
        let path = self.source.join(&self.rel);
        let hook = &mut self.hook;
        let mut crashed = None;
        commit_offloaded(self.lib, self.entry, to, || {
            if let Err(e) = hook(Point::BeforeRemove, &path) {
                crashed = Some(e);
                return Ok(());
            }
            remove_if_unchanged(&path, version)
                .map(|_| ())
                .map_err(|e| concord::Error::Other(e.to_string()))
        })
        .map_err(|e| e.to_string())?;
        crashed.map_or(Ok(()), Err)
    }

    fn return_local(&mut self) -> Result<(), String> {
        commit_local(self.lib, self.entry).map_err(|e| e.to_string())
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    lib: Library,
    root: PathBuf,
    dest: PathBuf,
    location: Uuid,
    entry: Uuid,
}

fn setup() -> Setup {
    let tmp = support::scratch("offload-local");
    let lib = Library::create(
        &tmp.path().join("lib"),
        Uuid::now_v7(),
        "t",
        Uuid::now_v7(),
        Box::new(SystemClock),
    )
    .unwrap();
    let root = tmp.path().join("laptop");
    let dest = tmp.path().join("nas");
    std::fs::create_dir_all(root.join("work")).unwrap();
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(root.join("work/report.pdf"), vec![7u8; 300_000]).unwrap();
    let location = add_location(&lib, &root, &mut |_, _| {})
        .unwrap()
        .location
        .id;
    let entry = query::file_entry_by_path(&lib, location, "work/report.pdf")
        .unwrap()
        .unwrap()
        .id;
    Setup {
        _tmp: tmp,
        lib,
        root,
        dest,
        location,
        entry,
    }
}

fn ends<'a>(
    s: &'a Setup,
    hook: impl FnMut(Point, &Path) -> Result<(), String> + 'a,
) -> LocalEnds<'a> {
    LocalEnds {
        lib: &s.lib,
        entry: s.entry,
        source: s.root.clone(),
        rel: "work/report.pdf".into(),
        dest_root: s.dest.clone(),
        dest_location: Uuid::from_u128(0xDE57),
        reachable: true,
        hook: Box::new(hook),
    }
}

fn offload_intent(e: &LocalEnds<'_>) -> Intent {
    Intent::Offload {
        location: e.dest_location,
        path: e.dest_rel(),
        copies: 0,
    }
}

fn entry_state(s: &Setup) -> Option<OffloadedTo> {
    OffloadedTo::of(&query::file_entry(&s.lib, s.entry).unwrap().unwrap())
}

#[test]
fn a_file_is_offloaded_verified_and_its_entry_stays() {
    let s = setup();
    let bytes = std::fs::read(s.root.join("work/report.pdf")).unwrap();
    let mut e = ends(&s, |_, _| Ok(()));
    let step = drive(offload_intent(&e), &mut e).unwrap();
    assert_eq!(step, Step::Done(Outcome::Offloaded));
    assert!(!s.root.join("work/report.pdf").exists());
    assert_eq!(
        std::fs::read(s.dest.join("offloaded/work/report.pdf")).unwrap(),
        bytes
    );
    let to = entry_state(&s).unwrap();
    assert_eq!(to.hash, blake3::hash(&bytes).to_hex().to_string());
    // The index keeps it; a check finds it in place.
    rescan_location(&s.lib, s.location, &mut |_, _| {}).unwrap();
    assert_eq!(entry_state(&s), Some(to));
    let mut e = ends(&s, |_, _| Ok(()));
    assert_eq!(
        drive(Intent::Check, &mut e).unwrap(),
        Step::Done(Outcome::Offloaded)
    );
}

#[test]
fn a_file_modified_between_copy_and_removal_is_not_removed() {
    let s = setup();
    let path = s.root.join("work/report.pdf");
    // Written to at every point before its removal: it keeps changing.
    let mut e = ends(&s, |p, f| {
        if p == Point::BeforeRemove || p == Point::AfterCopy {
            let mut b = std::fs::read(f).unwrap();
            b.extend_from_slice(b"more");
            std::fs::write(f, b).unwrap();
        }
        Ok(())
    });
    let step = drive(offload_intent(&e), &mut e).unwrap();
    assert_eq!(step, Step::Done(Outcome::Changing));
    assert!(path.exists(), "a changing file stays");
    assert_eq!(entry_state(&s), None);
    assert_eq!(std::fs::read(&path).unwrap().len(), 300_000 + 4 * 2);

    // Written to once, between the commit and the removal: not removed then;
    // the entry returns to local, and the new content is offloaded.
    let mut once = true;
    let mut e = ends(&s, |p, f| {
        if p == Point::BeforeRemove && std::mem::take(&mut once) {
            std::fs::write(f, b"rewritten").unwrap();
        }
        Ok(())
    });
    let step = drive(offload_intent(&e), &mut e).unwrap();
    assert_eq!(step, Step::Done(Outcome::Offloaded));
    assert!(!path.exists());
    assert_eq!(
        std::fs::read(s.dest.join("offloaded/work/report.pdf")).unwrap(),
        b"rewritten"
    );
    assert_eq!(
        entry_state(&s).unwrap().hash,
        blake3::hash(b"rewritten").to_hex().to_string()
    );
}

#[test]
fn a_crash_at_any_point_leaves_the_file_on_a_device_and_recovery_settles_it() {
    for crash_at in [
        Point::BeforeCopy,
        Point::AfterCopy,
        Point::BeforeCommit,
        Point::BeforeRemove,
    ] {
        let s = setup();
        let bytes = std::fs::read(s.root.join("work/report.pdf")).unwrap();
        let mut e = ends(&s, |p, _| {
            if p == crash_at {
                Err("crash".into())
            } else {
                Ok(())
            }
        });
        assert!(drive(offload_intent(&e), &mut e).is_err());
        // The file is still here, whatever the entry says.
        assert_eq!(
            std::fs::read(s.root.join("work/report.pdf")).unwrap(),
            bytes
        );
        // A restart settles it (the entry local again), then a new run
        // offloads it (without copying again when the copy is there).
        let mut e = ends(&s, |_, _| Ok(()));
        assert_eq!(
            drive(Intent::Check, &mut e).unwrap(),
            Step::Done(Outcome::Local),
            "{crash_at:?}"
        );
        assert_eq!(entry_state(&s), None);
        let step = drive(offload_intent(&e), &mut e).unwrap();
        assert_eq!(step, Step::Done(Outcome::Offloaded), "{crash_at:?}");
        assert_eq!(
            std::fs::read(s.dest.join("offloaded/work/report.pdf")).unwrap(),
            bytes
        );
    }
}

#[test]
fn an_unreachable_destination_waits_and_a_deleted_copy_is_lost_content() {
    let s = setup();
    let mut e = ends(&s, |_, _| Ok(()));
    e.reachable = false;
    let step = drive(offload_intent(&e), &mut e).unwrap();
    assert_eq!(step, Step::Wait(Waiting::DestinationUnreachable));
    assert!(s.root.join("work/report.pdf").exists());

    e.reachable = true;
    assert_eq!(
        drive(offload_intent(&e), &mut e).unwrap(),
        Step::Done(Outcome::Offloaded)
    );
    std::fs::remove_file(s.dest.join("offloaded/work/report.pdf")).unwrap();
    let Step::Lost(lost) = drive(Intent::Check, &mut e).unwrap() else {
        panic!("not reported lost");
    };
    assert_eq!(lost.found, LostHow::Missing);
    assert!(lost
        .message("work/report.pdf")
        .starts_with("lost content: work/report.pdf"));
    // Reported, not dropped: the entry stays through rescans.
    rescan_location(&s.lib, s.location, &mut |_, _| {}).unwrap();
    assert!(entry_state(&s).is_some());
}
