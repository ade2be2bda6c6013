//! One Offload cycle on the source's device ([`OffloadCycle`]): lost
//! content checked, pinned files brought back, then, below the threshold,
//! files offloaded in the safe order: the destination holds a verified
//! copy → the file is checked again here (stat and BLAKE3) → its entry
//! says where its bytes are (synced) → the file is removed. A crash between
//! any two steps leaves the file here or its verified copy there (and the
//! entry saying so), never neither.

use std::path::PathBuf;
use std::sync::Arc;

use concord::conduit::guard::root_present;
use concord::conduit::settings::Settings;
use concord::index::{commit_local, commit_offloaded, OffloadedTo};
use concord::model::{Conduit, FileEntry, Location};
use concord::query::{self, EntryFilter};
use concord::Library;

use crate::conduits::offload::{
    hold_batches, is_unreachable, pause_hook, space, stamp, threshold, walk, Found, Live, Stamp,
};
use crate::conduits::offload_entry::{offloaded, Offloaded};
use crate::error::NetError;
use crate::peers::Peer;
use crate::state::NodeState;
use crate::transfer::fetch::{ContentClient, FileRequest};
use crate::transfer::hold::joined;
use crate::transfer::wire::{ContentCall, HoldAnswer, HoldFile, HoldMode, HoldRequest};
use crate::transfer::TransferProgress;

/// Files used or changed this recently (ns) never leave.
const RECENT_NS: i64 = 3_600 * 1_000_000_000;

/// How a cycle went.
#[derive(Debug, Default, Clone)]
pub struct OffloadReport {
    pub offloaded: usize,
    pub bytes: u64,
    pub fetched_back: usize,
    /// Files changed between their copy and their removal: kept here.
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Other(format!("offload task failed: {e}")))
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

    fn in_source(&self, path: &str) -> String {
        joined(&self.conduit.source_dir, path)
    }

    fn hold_request(&self, mode: HoldMode, files: Vec<HoldFile>) -> ContentCall {
        ContentCall::Hold(HoldRequest {
            library: self.lib.id(),
            location: self.destination.id,
            dir: self.conduit.destination_dir.clone(),
            peer_location: self.source.id,
            peer_dir: self.conduit.source_dir.clone(),
            mode,
            files,
        })
    }

    /// Run the cycle.
    pub async fn run(self) -> Result<OffloadReport, NetError> {
        let mut report = OffloadReport::default();
        let fingerprint = query::volumes(&self.lib)?
            .into_iter()
            .find(|v| v.id == self.source.volume)
            .map(|v| v.fingerprint);
        let root = self.source_root();
        if !root_present(
            std::path::Path::new(&self.source.path),
            fingerprint.as_deref(),
        ) || !root.is_dir()
        {
            report.source_missing = true;
            return Ok(report);
        }
        let offloaded = self.offloaded()?;
        let peer = match self
            .state
            .peer_for_device(self.destination.device, self.lib.id())
        {
            Ok(p) => p,
            Err(e) => return Ok(self.waits(report, e)),
        };
        if let Err(e) = self.check_lost(&peer, &offloaded).await {
            return Ok(self.waits(report, e));
        }
        self.live.set_waiting(None);
        self.fetch_pinned_back(&peer, &offloaded, &mut report).await;
        if let Err(e) = self.offload(&peer, &root, &mut report).await {
            if is_unreachable(&e) {
                return Ok(self.waits(report, e));
            }
            return Err(e);
        }
        Ok(report)
    }

    fn waits(&self, mut report: OffloadReport, e: NetError) -> OffloadReport {
        let why = format!("destination unreachable: {e}");
        self.live.set_waiting(Some(why.clone()));
        report.waiting = Some(why);
        report
    }

    /// The source's entries offloaded to this conduit's destination.
    fn offloaded(&self) -> Result<Vec<Offloaded>, NetError> {
        offloaded(
            &self.lib,
            self.source.id,
            &self.conduit.source_dir,
            self.destination.id,
        )
    }

    /// Ask the destination whether it still holds every offloaded file;
    /// the ones it does not are shown as lost content.
    async fn check_lost(&self, peer: &Peer, offloaded: &[Offloaded]) -> Result<(), NetError> {
        let files: Vec<HoldFile> = offloaded
            .iter()
            .filter_map(|o| {
                Some(HoldFile {
                    hash: o.held.hash_bytes()?,
                    size: o.held.size,
                    path: o.path.clone(),
                })
            })
            .collect();
        let mut lost = Vec::new();
        for batch in hold_batches(files) {
            let call = self.hold_request(HoldMode::Check, batch.clone());
            match self.client.call::<HoldAnswer>(peer, &call).await? {
                HoldAnswer::Held { results } => {
                    for (f, r) in batch.iter().zip(results) {
                        if let Some(why) = r {
                            lost.push((f.path.clone(), why));
                        }
                    }
                }
                HoldAnswer::Refused { reason } => return Err(NetError::Refused(reason)),
            }
        }
        *self.live.lost.lock().unwrap_or_else(|e| e.into_inner()) = lost;
        Ok(())
    }

    /// Paths (below the source folder) of files and folders carrying the
    /// conduit's pin tag.
    fn pinned(&self) -> Result<Vec<String>, NetError> {
        let name = match self.conduit.pin_tag {
            Some(id) => query::tags(&self.lib)?
                .into_iter()
                .find(|t| t.id == id)
                .map(|t| t.name),
            None => Some("Pinned".to_string()),
        };
        let Some(name) = name else {
            return Ok(Vec::new());
        };
        let filter = EntryFilter {
            location: Some(self.source.id),
            device: None,
        };
        let prefix = match self.conduit.source_dir.as_str() {
            "" => String::new(),
            d => format!("{d}/"),
        };
        Ok(query::file_entries(&self.lib, filter)?
            .into_iter()
            .filter(|e| e.tags.contains(&name))
            .filter_map(|e| e.entry.path.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// Bring back offloaded files that carry the pin tag now.
    async fn fetch_pinned_back(
        &self,
        peer: &Peer,
        offloaded: &[Offloaded],
        report: &mut OffloadReport,
    ) {
        let pinned = match self.pinned() {
            Ok(p) => p,
            Err(e) => {
                report.failed.push(format!("pinned files: {e}"));
                return;
            }
        };
        for o in offloaded.iter().filter(|o| is_pinned(&o.path, &pinned)) {
            let back = fetch_back(&self.client, peer, &self.lib, &o.entry, &self.progress).await;
            match back {
                Ok(()) => report.fetched_back += 1,
                Err(e) => report.failed.push(format!("{}: {e}", o.path)),
            }
        }
    }

    /// Below the threshold: offload the chosen files, batch by batch, until
    /// free space is back above the threshold plus the margin.
    async fn offload(
        &self,
        peer: &Peer,
        root: &std::path::Path,
        report: &mut OffloadReport,
    ) -> Result<(), NetError> {
        let Some(min) = self.settings.min_free else {
            return Ok(());
        };
        let measured = space(root)?;
        let thr = threshold(min, measured.total);
        *self.live.measured.lock().unwrap_or_else(|e| e.into_inner()) = Some((measured.free, thr));
        if measured.free >= thr {
            return Ok(());
        }
        let pinned = self.pinned()?;
        let walk_root = root.to_path_buf();
        let found = blocking(move || walk(&walk_root)).await?;
        let now_ns = self.now_ms.saturating_mul(1_000_000);
        let chosen = select(found, &pinned, measured.atime, measured.free, thr, now_ns);
        // Stamp (hash) the chosen files; one changed while read waits.
        let (stamp_root, names) = (root.to_path_buf(), chosen.clone());
        let stamped: Vec<(Found, Option<Stamp>)> = blocking(move || {
            names
                .into_iter()
                .map(|f| {
                    let s = stamp(&stamp_root.join(&f.path)).ok().flatten();
                    (f, s)
                })
                .collect()
        })
        .await?;
        let files: Vec<HoldFile> = stamped
            .iter()
            .filter_map(|(f, s)| {
                s.map(|s| HoldFile {
                    path: f.path.clone(),
                    size: s.size,
                    hash: s.hash,
                })
            })
            .collect();
        for batch in hold_batches(files) {
            let call = self.hold_request(HoldMode::Fetch, batch.clone());
            let results = match self.client.call::<HoldAnswer>(peer, &call).await? {
                HoldAnswer::Held { results } => results,
                HoldAnswer::Refused { reason } => return Err(NetError::Refused(reason)),
            };
            let held: Vec<HoldFile> = batch
                .into_iter()
                .zip(results)
                .filter_map(|(f, r)| match r {
                    None => Some(f),
                    Some(why) => {
                        report.failed.push(format!("{}: {why}", f.path));
                        None
                    }
                })
                .collect();
            let stamps: Vec<Stamp> = held
                .iter()
                .filter_map(|h| {
                    stamped
                        .iter()
                        .find(|(f, _)| f.path == h.path)
                        .and_then(|(_, s)| *s)
                })
                .collect();
            self.release(root, held, stamps, report).await?;
            if space(root)?.free >= thr.saturating_add(margin(thr)) {
                break;
            }
        }
        Ok(())
    }

    /// The destination holds `held` (verified): check each file again here,
    /// then record its entry offloaded and remove it, under the index's
    /// location lock (`commit_offloaded`), checking it once more there.
    async fn release(
        &self,
        root: &std::path::Path,
        held: Vec<HoldFile>,
        stamps: Vec<Stamp>,
        report: &mut OffloadReport,
    ) -> Result<(), NetError> {
        let paths: Vec<String> = held.iter().map(|h| h.path.clone()).collect();
        blocking(move || pause_hook(&paths)).await?;
        for (h, want) in held.into_iter().zip(stamps) {
            let in_source = self.in_source(&h.path);
            let Some(entry) = query::file_entry_by_path(&self.lib, self.source.id, &in_source)?
            else {
                report
                    .failed
                    .push(format!("{}: not indexed yet; kept", h.path));
                continue;
            };
            let to = OffloadedTo {
                location: self.destination.id,
                path: joined(&self.conduit.destination_dir, &h.path),
                hash: blake3::Hash::from(h.hash).to_hex().to_string(),
            };
            let (lib, file) = (self.lib.clone(), root.join(&h.path));
            let outcome = blocking(move || {
                if stamp(&file).ok().flatten() != Some(want) {
                    return Ok(false);
                }
                let removed = commit_offloaded(&lib, entry.id, &to, || {
                    // The last check and the removal, as close as can be.
                    if stamp(&file).ok().flatten() != Some(want) {
                        return Err(concord::Error::Invalid("changed".into()));
                    }
                    std::fs::remove_file(&file).map_err(|e| concord::Error::Invalid(e.to_string()))
                });
                match removed {
                    Ok(()) => Ok(true),
                    // Recorded offloaded but the file stayed: local again.
                    Err(_) => commit_local(&lib, entry.id).map(|()| false),
                }
            })
            .await?;
            match outcome {
                Ok(true) => {
                    report.offloaded += 1;
                    report.bytes += h.size;
                }
                Ok(false) => report.kept.push(h.path),
                Err(e) => report.failed.push(format!("{}: {e}", h.path)),
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
    let hash = blake3::Hash::from_hex(&to.hash).map_err(|_| {
        NetError::Refused(format!("{}: its recorded hash is malformed", entry.path))
    })?;
    let source = query::location(lib, entry.location)?
        .ok_or_else(|| NetError::Refused(format!("no location {}", entry.location)))?;
    let req = FileRequest {
        library: lib.id(),
        location: to.location,
        path: to.path,
        hash: Some(*hash.as_bytes()),
        dest_root: PathBuf::from(&source.path),
        dest_path: entry.path.clone(),
    };
    client.fetch(peer, req, progress).await?;
    let (lib, id) = (lib.clone(), entry.id);
    blocking(move || commit_local(&lib, id)).await??;
    Ok(())
}

/// Whether `path` is pinned: itself, or below a pinned folder.
fn is_pinned(path: &str, pinned: &[String]) -> bool {
    pinned
        .iter()
        .any(|p| path == p || path.starts_with(&format!("{p}/")))
}

/// Free space offloading aims past the threshold, so one file written next
/// does not start another round at once: 5% of the threshold.
pub fn margin(threshold: u64) -> u64 {
    threshold / 20
}

/// The files to offload: unpinned, not used within the hour, least
/// recently used first (access time where the volume records it, else
/// modification time), until free space reaches threshold plus margin.
pub fn select(
    found: Vec<Found>,
    pinned: &[String],
    atime: bool,
    free: u64,
    threshold: u64,
    now_ns: i64,
) -> Vec<Found> {
    let used = |f: &Found| {
        if atime {
            f.atime_ns.max(f.mtime_ns)
        } else {
            f.mtime_ns
        }
    };
    let mut eligible: Vec<Found> = found
        .into_iter()
        .filter(|f| !is_pinned(&f.path, pinned))
        .filter(|f| now_ns.saturating_sub(used(f)) >= RECENT_NS)
        .collect();
    eligible.sort_by_key(|f| (used(f), f.path.clone()));
    let target = threshold.saturating_add(margin(threshold));
    let mut freed = free;
    let mut out = Vec::new();
    for f in eligible {
        if freed >= target {
            break;
        }
        freed = freed.saturating_add(f.size);
        out.push(f);
    }
    out
}
