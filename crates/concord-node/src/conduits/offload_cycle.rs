//! One Offload cycle on the source's device ([`OffloadCycle`]). First the
//! offloaded entries are settled and checked (a crash's leftovers finished,
//! lost content found); pinned files come back; then, below the threshold,
//! the core's selection picks files and the core's step machine moves each:
//! the destination holds a verified copy → the file is checked again here
//! (stat and BLAKE3) → its entry says where its bytes are (synced) → the
//! file is removed. A crash between any two steps leaves the file here or
//! its verified copy there (and the entry saying so), never neither.
//! Copies go in batches (one `Hold` call fetches many files); the steps of
//! each file then run on what the destination answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concord::conduit::guard::root_present;
use concord::conduit::ignore::IgnoreRules;
use concord::conduit::offload::{select, target, Candidate, Pinned, Rules};
use concord::conduit::offload_steps::{
    drive, parse_hash, DestinationCopy, Intent, Outcome, SourceFile, Step,
};
use concord::conduit::path::SafeRoot;
use concord::conduit::settings::Settings;
use concord::index::{commit_local, OffloadedTo};
use concord::model::{Conduit, FileEntry, Location};
use concord::query::{self, members};
use concord::{Library, Uuid};

use crate::conduits::offload::{
    clock_ahead_ms, hold_batches, is_unreachable, pause_hook, source_state, space, walk, Live,
};
use crate::conduits::offload_ends::{copy_state, Cx, FileEnds};
use crate::conduits::offload_entry::{below, offloaded};
use crate::error::NetError;
use crate::peers::Peer;
use crate::state::NodeState;
use crate::transfer::fetch::{ContentClient, FileRequest};
use crate::transfer::hold::joined;
use crate::transfer::wire::{HoldFile, HoldMode, HoldRequest};
use crate::transfer::TransferProgress;

/// How a cycle went.
#[derive(Debug, Default, Clone)]
pub struct OffloadReport {
    pub offloaded: usize,
    pub bytes: u64,
    pub fetched_back: usize,
    /// Files changed or used while they were being offloaded: kept here.
    pub kept: Vec<String>,
    /// Files that could not be offloaded or fetched back, with why.
    pub failed: Vec<String>,
    /// Offloading waits: the destination is unreachable (why).
    pub waiting: Option<String>,
    pub source_missing: bool,
}

/// Everything one cycle needs; [`OffloadCycle::run`] consumes it.
pub struct OffloadCycle {
    pub state: Arc<NodeState>,
    pub client: ContentClient,
    pub lib: Arc<Library>,
    pub conduit: Conduit,
    pub settings: Settings,
    pub source: Location,
    pub destination: Location,
    pub live: Live,
    pub progress: Arc<TransferProgress>,
    pub now_ms: i64,
}

/// A fault of this device (never read as the destination being away).
fn local(e: std::io::Error) -> NetError {
    NetError::Other(format!("the source volume: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Other(format!("offload task failed: {e}")))
}

/// A file about to go through the steps.
struct Moving {
    entry: Uuid,
    /// Below the conduit's folders.
    path: String,
    size: u64,
    destination: Result<DestinationCopy, String>,
}

impl OffloadCycle {
    /// The source folder on this device.
    fn source_root(&self) -> PathBuf {
        let loc = PathBuf::from(&self.source.path);
        match &self.settings.source_dir {
            Some(d) => loc.join(d.as_str()),
            None => loc,
        }
    }

    fn cx(&self, peer: Peer, atime: bool) -> Cx {
        Cx {
            handle: tokio::runtime::Handle::current(),
            client: self.client.clone(),
            peer,
            lib: self.lib.clone(),
            call: HoldRequest {
                library: self.lib.id(),
                location: self.destination.id,
                dir: self.conduit.destination_dir.clone(),
                peer_location: self.source.id,
                peer_dir: self.conduit.source_dir.clone(),
                mode: HoldMode::Check,
                files: Vec::new(),
            },
            root: self.source_root(),
            atime,
            now_ms: self.now_ms.saturating_add(clock_ahead_ms()),
        }
    }

    /// Run the cycle.
    pub async fn run(self) -> Result<OffloadReport, NetError> {
        let mut report = OffloadReport::default();
        let fingerprint = query::volumes(&self.lib)?
            .into_iter()
            .find(|v| v.id == self.source.volume)
            .map(|v| v.fingerprint);
        let root = self.source_root();
        if !root_present(Path::new(&self.source.path), fingerprint.as_deref()) || !root.is_dir() {
            report.source_missing = true;
            return Ok(report);
        }
        let peer = match self
            .state
            .peer_for_device(self.destination.device, self.lib.id())
        {
            Ok(p) => p,
            Err(e) => return Ok(self.waits(report, e)),
        };
        let (_, atime) = space(&root).map_err(local)?;
        let cx = self.cx(peer, atime);
        let member = members::is_member(&self.lib, self.destination.device)?;
        let outcome = async {
            self.settle(&cx, member, &mut report).await?;
            self.fetch_pinned_back(&cx, &mut report).await;
            if member {
                self.offload(&cx, &mut report).await?;
            }
            Ok::<(), NetError>(())
        };
        match outcome.await {
            Ok(()) => {
                if report.waiting.is_none() {
                    self.live.set_waiting(None);
                }
                Ok(report)
            }
            Err(e) if is_unreachable(&e) => Ok(self.waits(report, e)),
            Err(e) => Err(e),
        }
    }

    fn waits(&self, mut report: OffloadReport, e: impl std::fmt::Display) -> OffloadReport {
        let why = format!("destination unreachable: {e}");
        self.live.set_waiting(Some(why.clone()));
        report.waiting = Some(why);
        report
    }

    /// What the destination holds of `files`, in `mode`, batch by batch.
    async fn hold_all(
        &self,
        cx: &Cx,
        mode: HoldMode,
        files: Vec<HoldFile>,
    ) -> Result<Vec<Result<DestinationCopy, String>>, NetError> {
        let mut out = Vec::with_capacity(files.len());
        for batch in hold_batches(files) {
            let wants: Vec<[u8; 32]> = batch.iter().map(|f| f.hash).collect();
            let got = cx.hold(mode, batch).await?;
            out.extend(got.into_iter().zip(wants).map(|(h, w)| copy_state(h, w)));
        }
        Ok(out)
    }

    /// Every offloaded entry through the steps with nothing to move: a
    /// crash's leftovers settled, each copy checked (lost content shown).
    async fn settle(
        &self,
        cx: &Cx,
        member: bool,
        report: &mut OffloadReport,
    ) -> Result<(), NetError> {
        let entries = offloaded(
            &self.lib,
            self.source.id,
            &self.conduit.source_dir,
            self.destination.id,
        )?;
        let files: Vec<HoldFile> = entries
            .iter()
            .map(|o| HoldFile {
                path: o.path.clone(),
                size: o.held.size,
                hash: o.held.hash_bytes().unwrap_or_default(),
            })
            .collect();
        let states = if member {
            self.hold_all(cx, HoldMode::Check, files).await?
        } else {
            vec![Ok(DestinationCopy::NotMember); files.len()]
        };
        let moving = entries
            .into_iter()
            .zip(states)
            .map(|(o, destination)| Moving {
                entry: o.entry.id,
                path: o.path,
                size: o.held.size,
                destination,
            })
            .collect();
        let mut lost = Vec::new();
        for (m, step) in self.steps(cx, Intent::Check, moving).await? {
            match step {
                Ok(Step::Lost(l)) => lost.push((m.path.clone(), l.message(&m.path))),
                Ok(Step::Wait(w)) => return Err(NetError::Unreachable(w.message().into())),
                Ok(_) => {}
                Err(e) => report.failed.push(format!("{}: {e}", m.path)),
            }
        }
        *self.live.lost.lock().unwrap_or_else(|e| e.into_inner()) = lost;
        Ok(())
    }

    /// Drive each file through the core's steps (blocking, in order).
    async fn steps(
        &self,
        cx: &Cx,
        intent: Intent,
        files: Vec<Moving>,
    ) -> Result<Vec<(Moving, Result<Step, NetError>)>, NetError> {
        let (cx, dir) = (cx.clone(), self.conduit.destination_dir.clone());
        blocking(move || {
            files
                .into_iter()
                .map(|m| {
                    let intent = match &intent {
                        Intent::Offload {
                            location, copies, ..
                        } => Intent::Offload {
                            location: *location,
                            path: joined(&dir, &m.path),
                            copies: *copies,
                        },
                        Intent::Check => Intent::Check,
                    };
                    let mut ends = FileEnds {
                        cx: &cx,
                        entry: m.entry,
                        path: m.path.clone(),
                        destination: m.destination.clone(),
                    };
                    let step = drive(intent, &mut ends);
                    (m, step)
                })
                .collect()
        })
        .await
    }

    /// Paths (relative to the source location) of the files and folders
    /// carrying the conduit's pin tag (a record without one pins with the
    /// tag named `Pinned`, if there is exactly one).
    fn pinned(&self) -> Result<Pinned, NetError> {
        let tag = match self.conduit.pin_tag {
            Some(id) => Some(id),
            None => {
                let named: Vec<Uuid> = query::tags(&self.lib)?
                    .into_iter()
                    .filter(|t| t.name == "Pinned")
                    .map(|t| t.id)
                    .collect();
                (named.len() == 1).then(|| named[0])
            }
        };
        Ok(match tag {
            Some(tag) => Pinned::new(query::tagged_paths(&self.lib, self.source.id, tag)?),
            None => Pinned::default(),
        })
    }

    /// Bring back offloaded files that carry the pin tag now.
    async fn fetch_pinned_back(&self, cx: &Cx, report: &mut OffloadReport) {
        let found = self.pinned().and_then(|pinned| {
            let all = offloaded(
                &self.lib,
                self.source.id,
                &self.conduit.source_dir,
                self.destination.id,
            )?;
            Ok((pinned, all))
        });
        let (pinned, all) = match found {
            Ok(f) => f,
            Err(e) => {
                report.failed.push(format!("pinned files: {e}"));
                return;
            }
        };
        for o in all.iter().filter(|o| pinned.covers(&o.entry.path)) {
            match fetch_back(&self.client, &cx.peer, &self.lib, &o.entry, &self.progress).await {
                Ok(()) => report.fetched_back += 1,
                Err(e) => report.failed.push(format!("{}: {e}", o.path)),
            }
        }
    }

    /// Below the threshold: the core selects, batches are copied, the steps
    /// move each file; until free space reaches the target.
    async fn offload(&self, cx: &Cx, report: &mut OffloadReport) -> Result<(), NetError> {
        let Some(min_free) = self.settings.min_free else {
            return Ok(());
        };
        let (space_now, atime) = space(&cx.root).map_err(local)?;
        let goal = target(min_free, space_now.total);
        *self.live.measured.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            space_now.free,
            concord::conduit::offload::threshold(min_free, space_now.total),
        ));
        let pinned = self.pinned()?;
        let walk_root = cx.root.clone();
        let (location, dir) = (
            PathBuf::from(&self.source.path),
            self.settings.source_dir.clone(),
        );
        let found = blocking(move || {
            let root = SafeRoot::open(&location, dir.as_ref(), false)?;
            let ignore = IgnoreRules::load(&root)?;
            Ok::<_, concord::conduit::error::ConduitError>(walk(&walk_root, &ignore))
        })
        .await?
        .map_err(|e| NetError::Other(format!("the source folder: {e}")))?;
        let candidates: Vec<_> = found
            .iter()
            .map(|(path, md)| {
                Candidate::from_metadata(joined(&self.conduit.source_dir, path), md, atime)
            })
            .collect();
        let rules = Rules {
            min_free,
            pinned: &pinned,
            now: cx.now_ms,
            destination_free: None,
        };
        let chosen = select(&candidates, space_now, &rules).chosen;
        let mut paths: Vec<String> = chosen
            .iter()
            .filter_map(|c| below(&self.conduit.source_dir, &c.path).map(str::to_string))
            .collect();
        while !paths.is_empty() {
            let rest = paths.split_off(paths.len().min(crate::transfer::wire::MAX_HOLD_FILES));
            self.offload_batch(cx, std::mem::replace(&mut paths, rest), report)
                .await?;
            if report.waiting.is_some() || space(&cx.root).map_err(local)?.0.free >= goal {
                break;
            }
        }
        Ok(())
    }

    /// One batch: hashed here, copied there in one call, then each file's
    /// steps (the test hook pauses between the copy and the steps).
    async fn offload_batch(
        &self,
        cx: &Cx,
        paths: Vec<String>,
        report: &mut OffloadReport,
    ) -> Result<(), NetError> {
        let (lib, root, loc, dir) = (
            self.lib.clone(),
            cx.root.clone(),
            self.source.id,
            self.conduit.source_dir.clone(),
        );
        let observed = blocking(move || {
            paths
                .into_iter()
                .map(|p| {
                    let entry = query::file_entry_by_path(&lib, loc, &joined(&dir, &p));
                    let source = source_state(&root.join(&p));
                    (p, entry, source)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut ready = Vec::new();
        for (path, entry, source) in observed {
            match (entry, source) {
                (Ok(Some(e)), Ok(SourceFile::Present(s))) if s.version.hash.is_some() => {
                    ready.push((e.id, path, s));
                }
                (Ok(None), _) => report.failed.push(format!("{path}: not indexed yet; kept")),
                _ => report.kept.push(path),
            }
        }
        let files: Vec<HoldFile> = ready
            .iter()
            .filter_map(|(_, path, s)| {
                Some(HoldFile {
                    path: path.clone(),
                    size: s.version.size,
                    hash: s.version.hash?,
                })
            })
            .collect();
        let held: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        let states = self.hold_all(cx, HoldMode::Fetch, files).await?;
        blocking(move || pause_hook(&held)).await?;
        let moving = ready
            .into_iter()
            .zip(states)
            .map(|((entry, path, s), destination)| Moving {
                entry,
                path,
                size: s.version.size,
                destination,
            })
            .collect();
        let intent = Intent::Offload {
            location: self.destination.id,
            path: String::new(),
            copies: 1,
        };
        for (m, step) in self.steps(cx, intent, moving).await? {
            match step {
                Ok(Step::Done(Outcome::Offloaded)) => {
                    report.offloaded += 1;
                    report.bytes += m.size;
                }
                Ok(Step::Wait(w)) => {
                    let why = format!("{}: {}", w.reason(), w.message());
                    report.waiting = Some(why.clone());
                    self.live.set_waiting(Some(why));
                }
                Ok(Step::Lost(l)) => report.failed.push(l.message(&m.path)),
                Ok(_) => report.kept.push(m.path),
                Err(e) if is_unreachable(&e) => return Err(e),
                Err(e) => report.failed.push(format!("{}: {e}", m.path)),
            }
        }
        Ok(())
    }
}

/// Fetch an offloaded file entry of this device back to its path,
/// verified against the BLAKE3 the destination verified when it took it;
/// then the entry is local again. `peer` is the destination's device.
pub async fn fetch_back(
    client: &ContentClient,
    peer: &Peer,
    lib: &Arc<Library>,
    entry: &FileEntry,
    progress: &TransferProgress,
) -> Result<(), NetError> {
    let to = OffloadedTo::of(entry)
        .ok_or_else(|| NetError::Refused(format!("{} is not offloaded", entry.path)))?;
    let hash = parse_hash(&to.hash).ok_or_else(|| {
        NetError::Refused(format!("{}: its recorded hash is malformed", entry.path))
    })?;
    let source = query::location(lib, entry.location)?
        .ok_or_else(|| NetError::Refused(format!("no location {}", entry.location)))?;
    let req = FileRequest {
        library: lib.id(),
        location: to.location,
        path: to.path,
        hash: Some(hash),
        dest_root: PathBuf::from(&source.path),
        dest_path: entry.path.clone(),
    };
    client.fetch(peer, req, progress).await?;
    let (lib, id) = (lib.clone(), entry.id);
    blocking(move || commit_local(&lib, id)).await??;
    Ok(())
}

/// How many offloaded files [`fetch_back_many`] brings back at once: as
/// many as one of the engine's own batches keeps in flight, so a folder
/// comes back at the engine's rate rather than one file's.
pub const FETCH_BACK_AT_ONCE: usize = 8;

/// Fetch back many offloaded entries of this device (a folder), each from
/// the device holding its content and as [`fetch_back`] does, at most
/// [`FETCH_BACK_AT_ONCE`] at a time; one result per entry, in order.
pub async fn fetch_back_many(
    client: &ContentClient,
    lib: &Arc<Library>,
    files: Vec<(Peer, FileEntry)>,
    progress: &Arc<TransferProgress>,
) -> Vec<Result<(), NetError>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(FETCH_BACK_AT_ONCE));
    let mut out: Vec<Result<(), NetError>> = (0..files.len())
        .map(|_| {
            Err(NetError::Other(
                "the fetch stopped before it finished".into(),
            ))
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (peer, entry)) in files.into_iter().enumerate() {
        let (client, lib) = (client.clone(), lib.clone());
        let (progress, slots) = (progress.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (i, fetch_back(&client, &peer, &lib, &entry, &progress).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, result)) = joined {
            out[i] = result;
        }
    }
    out
}
