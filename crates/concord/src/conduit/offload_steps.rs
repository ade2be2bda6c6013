//! Moving one file off the source of an Offload conduit without ever losing
//! it (DESIGN §12): a pure decision over what is durable, so the same
//! function drives a file forward and recovers it after a crash of either
//! device between any two steps.
//!
//! The steps: **copy** the file to the destination (the transfer engine
//! writes a temp file, verifies its BLAKE3 while streaming, fsyncs and
//! renames it into place); the destination reports the BLAKE3 of what it
//! holds; the source **re-checks** its file (stat and hash now equal to the
//! destination's verified bytes); then **commit and remove**: the entry is
//! recorded offloaded and the source file removed if its stat is still the
//! re-checked one, both under the location's lock
//! ([`crate::index::commit_offloaded`] with [`remove_if_unchanged`]).
//!
//! [`next_step`] looks only at the entry as stored, the source file as it
//! is now, and the destination's copy as the destination reports it, never
//! at memory of what was done before. So a restart finds:
//!
//! | after a crash… | entry | source file | destination | next step |
//! |---|---|---|---|---|
//! | before or during the copy | local | present | missing (a temp file at most) | copy again (resumed) |
//! | after the copy | local | present, equal | verified, equal | commit and remove |
//! | after the copy, file since changed | local | present, other hash | verified, old | copy again (then give up for this run) |
//! | after the commit, before the removal | offloaded | present | any | return to local (the file is here; a later run offloads it again, without copying) |
//! | after the removal | offloaded | absent | verified, equal | done |
//! | — destination deleted or changed it | offloaded | absent | missing / other hash | lost content, reported; the entry is kept |
//! | — destination away | offloaded | absent | unreachable | wait |
//!
//! **Decision**: one rule for an offloaded entry whose file is present,
//! shared with the index (`index::offloaded`): the entry returns to local.
//! Finishing the removal instead would be wrong after a fetch back that
//! crashed before recording itself. **Decision**: the source file is
//! unlinked, not moved to the trash: freeing space is the point, and the
//! verified copy on the destination is the backup (as Archive's release).
//! Never removed: a file whose destination copy is not verified equal, on a
//! device that is not a member.

use std::path::Path;

use uuid::Uuid;

use super::content::{still, sync_dir};
use super::error::{ConduitError, Result};
use super::tree::{FileState, Hash};
use crate::index::OffloadedTo;

/// Copies of one file tried in one run before it is left for the next run
/// (its content kept changing under the copy).
pub const MAX_COPIES: u32 = 2;

/// The entry as stored in the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    Local,
    Offloaded(OffloadedTo),
}

/// The source file as the source device sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceFile {
    Absent,
    /// Its stat and, filled in by whoever observes it, its BLAKE3 (a file
    /// whose hash is `None` is never offloaded).
    Present(FileState),
}

/// The destination's copy as the destination device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationCopy {
    /// The destination device cannot be reached now.
    Unreachable,
    /// The destination device is not (or no longer) a member of the library.
    NotMember,
    /// No file at the destination path.
    Missing,
    /// The BLAKE3 of the file at the destination path, hashed there.
    Present(Hash),
}

/// What is observed of one file, all of it durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub entry: EntryState,
    pub source: SourceFile,
    pub destination: DestinationCopy,
}

/// What the caller wants for the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Offload it (it was selected) to `path` in `location`, `copies` copies
    /// tried so far in this run.
    Offload {
        location: Uuid,
        path: String,
        copies: u32,
    },
    /// Only settle what a crash left, and check an offloaded entry's copy.
    Check,
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Copy this version of the source file to the destination path.
    Copy { version: FileState },
    /// Record the entry offloaded to `to`, then remove the source file if it
    /// is still `version`, under the location's lock.
    CommitAndRemove { to: OffloadedTo, version: FileState },
    /// A file is at the offloaded entry's path: the entry is local again.
    ReturnLocal,
    /// Nothing more to do now.
    Done(Outcome),
    /// Cannot go on now; say why in `conduit status`.
    Wait(Waiting),
    /// The entry's content is neither here nor on the destination; the
    /// entry is kept and the loss reported in `conduit status`.
    Lost(LostContent),
}

/// How a file ended up when nothing more is to be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The content is on the destination, verified, and not here.
    Offloaded,
    /// The file is here and stays (no offload was asked).
    Local,
    /// No file here and the entry is local: deleted by the user (the index
    /// deletes its entry); nothing to offload.
    Gone,
    /// The file stays this run: it kept changing while it was copied.
    Changing,
    /// The file stays: its hash is not known yet.
    Unhashed,
    /// The file stays: the destination device is not a member.
    NotMember,
}

/// Why offloading waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    DestinationUnreachable,
}

impl Waiting {
    /// The reason as `conduit status` spells it (as the pause reason).
    pub fn reason(&self) -> &'static str {
        match self {
            Waiting::DestinationUnreachable => "destination-unreachable",
        }
    }

    /// A sentence for people.
    pub fn message(&self) -> &'static str {
        match self {
            Waiting::DestinationUnreachable => {
                "waiting for the destination device: it is unreachable; nothing is removed until it verifies the copies"
            }
        }
    }
}

/// An offloaded entry whose content is gone from the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostContent {
    pub at: OffloadedTo,
    pub found: LostHow,
}

/// What the destination holds instead of the offloaded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostHow {
    Missing,
    /// Another content (its BLAKE3).
    Changed(Hash),
    /// The destination device is no longer a member.
    NotMember,
}

impl LostContent {
    /// The line `conduit status` shows for the entry at `entry_path`.
    pub fn message(&self, entry_path: &str) -> String {
        let why = match self.found {
            LostHow::Missing => "is missing on the destination".to_string(),
            LostHow::Changed(h) => format!(
                "holds other content on the destination (blake3 {})",
                blake3::Hash::from(h).to_hex()
            ),
            LostHow::NotMember => "is on a device that is no longer a member".to_string(),
        };
        format!(
            "lost content: {entry_path} was offloaded to location {} path {} (blake3 {}), which {why}; the entry is kept",
            self.at.location, self.at.path, self.at.hash
        )
    }
}

/// The BLAKE3 a hex string spells, if it spells one (an entry's
/// `offloaded_hash` is text from a peer or a file: never trusted).
pub fn parse_hash(hex: &str) -> Option<Hash> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

/// The one next step for a file, from what is durable now.
pub fn next_step(intent: &Intent, seen: &Observed) -> Step {
    match (&seen.entry, &seen.source) {
        (EntryState::Offloaded(_), SourceFile::Present(_)) => Step::ReturnLocal,
        (EntryState::Offloaded(at), SourceFile::Absent) => check_copy(at, &seen.destination),
        (EntryState::Local, SourceFile::Absent) => Step::Done(Outcome::Gone),
        (EntryState::Local, SourceFile::Present(file)) => match intent {
            Intent::Check => Step::Done(Outcome::Local),
            Intent::Offload {
                location,
                path,
                copies,
            } => forward(*location, path, *copies, file, &seen.destination),
        },
    }
}

/// An offloaded entry without its file: its copy must be on the destination.
fn check_copy(at: &OffloadedTo, destination: &DestinationCopy) -> Step {
    let lost = |found| {
        Step::Lost(LostContent {
            at: at.clone(),
            found,
        })
    };
    match destination {
        DestinationCopy::Present(h) if Some(*h) == parse_hash(&at.hash) => {
            Step::Done(Outcome::Offloaded)
        }
        DestinationCopy::Present(h) => lost(LostHow::Changed(*h)),
        DestinationCopy::Missing => lost(LostHow::Missing),
        DestinationCopy::NotMember => lost(LostHow::NotMember),
        DestinationCopy::Unreachable => Step::Wait(Waiting::DestinationUnreachable),
    }
}

/// A local file asked to move: copy it until the destination holds exactly
/// its current bytes, then commit and remove.
fn forward(
    location: Uuid,
    path: &str,
    copies: u32,
    file: &FileState,
    destination: &DestinationCopy,
) -> Step {
    let Some(hash) = file.version.hash else {
        return Step::Done(Outcome::Unhashed);
    };
    match destination {
        DestinationCopy::Unreachable => Step::Wait(Waiting::DestinationUnreachable),
        DestinationCopy::NotMember => Step::Done(Outcome::NotMember),
        DestinationCopy::Present(h) if *h == hash => Step::CommitAndRemove {
            to: OffloadedTo {
                location,
                path: path.to_string(),
                hash: blake3::Hash::from(hash).to_hex().to_string(),
            },
            version: file.clone(),
        },
        _ if copies >= MAX_COPIES => Step::Done(Outcome::Changing),
        _ => Step::Copy {
            version: file.clone(),
        },
    }
}

/// The two devices as the driver of one file sees them: the node's runner
/// implements them with the index, the files and the transfer engine; tests
/// with a model. Each method is one durable effect (or none, on error).
pub trait Ends {
    type Error;
    /// Observe the entry, the source file (hashed) and the destination's copy.
    fn observe(&mut self) -> std::result::Result<Observed, Self::Error>;
    /// Copy `version` to the destination, verified there. `Ok` also when
    /// nothing was written because the source no longer matched `version`
    /// (the next observation decides); `Err` for a failure that ends the
    /// file's turn (the destination went away, a crash).
    fn copy(&mut self, version: &FileState) -> std::result::Result<(), Self::Error>;
    /// [`crate::index::commit_offloaded`] with [`remove_if_unchanged`].
    fn commit_and_remove(
        &mut self,
        to: &OffloadedTo,
        version: &FileState,
    ) -> std::result::Result<(), Self::Error>;
    /// [`crate::index::commit_local`].
    fn return_local(&mut self) -> std::result::Result<(), Self::Error>;
}

/// Steps one file through [`next_step`] until it is done, waits or is lost
/// (that last step is returned). Bounded: a file whose content keeps
/// changing stops after [`MAX_COPIES`] copies with [`Outcome::Changing`].
pub fn drive<E: Ends>(mut intent: Intent, ends: &mut E) -> std::result::Result<Step, E::Error> {
    // Every loop either copies (at most MAX_COPIES times), or moves the
    // entry between local and offloaded, which a copy must follow before it
    // can happen again; so this many loops end every run.
    for _ in 0..3 * (MAX_COPIES + 2) {
        let step = next_step(&intent, &ends.observe()?);
        match &step {
            Step::Copy { version } => {
                if let Intent::Offload { copies, .. } = &mut intent {
                    *copies += 1;
                }
                ends.copy(version)?;
            }
            Step::CommitAndRemove { to, version } => ends.commit_and_remove(to, version)?,
            Step::ReturnLocal => ends.return_local()?,
            Step::Done(_) | Step::Wait(_) | Step::Lost(_) => return Ok(step),
        }
    }
    Ok(Step::Done(Outcome::Changing))
}

/// Remove the source file at `path` if it is still `expected` (same inode,
/// size and mtime; not a link), and make the removal durable. `Ok(false)`
/// when it changed or is gone: it is left alone, and the next step returns
/// the entry to local.
pub fn remove_if_unchanged(path: &Path, expected: &FileState) -> Result<bool> {
    if !still(path, expected)? {
        return Ok(false);
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ConduitError::io(path, e)),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conduit::tree::Version;

    fn file(content: &[u8]) -> FileState {
        FileState {
            version: Version {
                hash: Some(*blake3::hash(content).as_bytes()),
                size: content.len() as u64,
                mtime_ns: 1,
                exec: false,
            },
            inode: 7,
        }
    }

    fn h(content: &[u8]) -> Hash {
        *blake3::hash(content).as_bytes()
    }

    fn at(content: &[u8]) -> OffloadedTo {
        OffloadedTo {
            location: Uuid::nil(),
            path: "nas/a".into(),
            hash: blake3::hash(content).to_hex().to_string(),
        }
    }

    fn offload(copies: u32) -> Intent {
        Intent::Offload {
            location: Uuid::nil(),
            path: "nas/a".into(),
            copies,
        }
    }

    fn seen(entry: EntryState, source: SourceFile, destination: DestinationCopy) -> Observed {
        Observed {
            entry,
            source,
            destination,
        }
    }

    use DestinationCopy as D;
    use EntryState as E;
    use SourceFile as S;

    #[test]
    fn forward_copy_then_commit_and_remove() {
        let v = file(b"v1");
        let o = seen(E::Local, S::Present(v.clone()), D::Missing);
        assert_eq!(
            next_step(&offload(0), &o),
            Step::Copy { version: v.clone() }
        );
        let o = seen(E::Local, S::Present(v.clone()), D::Present(h(b"v1")));
        assert_eq!(
            next_step(&offload(1), &o),
            Step::CommitAndRemove {
                to: at(b"v1"),
                version: v
            }
        );
        let o = seen(E::Offloaded(at(b"v1")), S::Absent, D::Present(h(b"v1")));
        assert_eq!(
            next_step(&Intent::Check, &o),
            Step::Done(Outcome::Offloaded)
        );
    }

    #[test]
    fn a_file_changed_after_its_copy_is_copied_again_then_left() {
        let v2 = file(b"v2");
        let o = seen(E::Local, S::Present(v2.clone()), D::Present(h(b"v1")));
        assert_eq!(next_step(&offload(1), &o), Step::Copy { version: v2 });
        assert_eq!(
            next_step(&offload(MAX_COPIES), &o),
            Step::Done(Outcome::Changing)
        );
    }

    #[test]
    fn never_removed_without_a_verified_copy_on_a_member() {
        let v = file(b"v1");
        for d in [
            D::Unreachable,
            D::NotMember,
            D::Missing,
            D::Present(h(b"x")),
        ] {
            let step = next_step(&offload(0), &seen(E::Local, S::Present(v.clone()), d));
            assert!(!matches!(step, Step::CommitAndRemove { .. }), "{step:?}");
        }
        let mut unhashed = v;
        unhashed.version.hash = None;
        let o = seen(E::Local, S::Present(unhashed), D::Present(h(b"v1")));
        assert_eq!(next_step(&offload(0), &o), Step::Done(Outcome::Unhashed));
        let o = seen(E::Local, S::Present(file(b"v1")), D::Unreachable);
        assert_eq!(
            next_step(&offload(0), &o),
            Step::Wait(Waiting::DestinationUnreachable)
        );
    }

    #[test]
    fn a_present_file_makes_an_offloaded_entry_local() {
        for d in [D::Unreachable, D::Missing, D::Present(h(b"v1"))] {
            let o = seen(E::Offloaded(at(b"v1")), S::Present(file(b"v1")), d);
            assert_eq!(next_step(&Intent::Check, &o), Step::ReturnLocal);
        }
    }

    #[test]
    fn a_missing_or_changed_copy_is_lost_content() {
        let o = seen(E::Offloaded(at(b"v1")), S::Absent, D::Missing);
        let Step::Lost(lost) = next_step(&Intent::Check, &o) else {
            panic!("not lost");
        };
        assert_eq!(lost.found, LostHow::Missing);
        assert!(lost.message("a").contains("lost content: a"));
        let o = seen(E::Offloaded(at(b"v1")), S::Absent, D::Present(h(b"x")));
        assert!(matches!(
            next_step(&Intent::Check, &o),
            Step::Lost(LostContent {
                found: LostHow::Changed(_),
                ..
            })
        ));
        let mut bad = at(b"v1");
        bad.hash = "not hex".into();
        let o = seen(E::Offloaded(bad), S::Absent, D::Present(h(b"v1")));
        assert!(matches!(next_step(&Intent::Check, &o), Step::Lost(_)));
        let o = seen(E::Offloaded(at(b"v1")), S::Absent, D::Unreachable);
        let Step::Wait(w) = next_step(&Intent::Check, &o) else {
            panic!("not waiting");
        };
        assert_eq!(w.reason(), "destination-unreachable");
    }

    #[test]
    fn remove_if_unchanged_leaves_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "v1").unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let before = FileState::from_metadata(&md);
        std::fs::write(&p, "v1 and more").unwrap();
        assert!(!remove_if_unchanged(&p, &before).unwrap());
        assert!(p.exists());
        let now = FileState::from_metadata(&std::fs::symlink_metadata(&p).unwrap());
        assert!(remove_if_unchanged(&p, &now).unwrap());
        assert!(!p.exists());
        assert!(!remove_if_unchanged(&p, &now).unwrap());
    }
}
