//! The transfer engine as a conduit [`ContentSource`]: a remote end's files
//! fetched (verified, resumable) into the receiving location's
//! `.concord/incoming/`, from where the executor renames them into place
//! (a version without a hash is copied verified into its temp file).
//! Before the executor runs a batch of copies, [`RemoteSource::prefetch`]
//! fetches their content several at once ([`crate::transfer::prefetch`]);
//! each copy then takes its prefetched file, and fetches by itself only
//! what the prefetch could not bring.
//! Used on a blocking thread; network calls go back to the runtime through
//! its handle.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use concord::conduit::content::{copy_verified, ContentSource, LocalSource};
use concord::conduit::error::{ConduitError, Result};
use concord::conduit::execute::{End, ExecReport, Executor};
use concord::conduit::path::RelPath;
use concord::conduit::plan::{Action, Plan, Side};
use concord::conduit::tree::Version;
use concord::Uuid;
use tokio::runtime::Handle;

use crate::peers::Peer;
use crate::transfer::fetch::{ContentClient, Fetched, FileRequest};
use crate::transfer::prefetch::{batches, fetch_batch, Prefetched, Taken, Wanted};
use crate::transfer::progress::TransferProgress;

/// Content of a remote end, fetched through the transfer engine into the
/// destination location's `.concord/incoming/` (named by hash, so an
/// interrupted transfer resumes in the next cycle), then handed to the
/// executor as its temp file.
pub struct RemoteSource {
    pub handle: Handle,
    pub client: ContentClient,
    pub peer: Peer,
    pub library: Uuid,
    pub location: Uuid,
    /// The conduit's subfolder on the remote end (`None`: its root).
    pub dir: Option<RelPath>,
    /// `<destination location>/.concord/incoming`.
    pub incoming: PathBuf,
    pub progress: Arc<TransferProgress>,
    /// The current batch's prefetched files (empty outside a batch).
    pub prefetched: Prefetched,
}

impl RemoteSource {
    /// Fetch `from` (which must be `version`) into `.concord/incoming/`,
    /// verified and fsynced; its folder is not fsynced, as the caller
    /// renames the file again.
    fn fetch_incoming(&mut self, from: &RelPath, version: &Version) -> Result<Fetched> {
        let req = self.request(from, version);
        self.handle
            .block_on(self.client.fetch_unsynced(&self.peer, req, &self.progress))
            .map_err(|e| match e.to_string() {
                m if m.contains("disk full") => ConduitError::DiskFull(self.incoming.clone()),
                m => ConduitError::Invalid(format!("fetching {}: {m}", from.as_str())),
            })
    }

    /// The engine's request for `from` (which must be `version`), landing
    /// in `.concord/incoming/` under its hash.
    fn request(&self, from: &RelPath, version: &Version) -> FileRequest {
        let path = match &self.dir {
            Some(d) => format!("{}/{}", d.as_str(), from.as_str()),
            None => from.as_str().to_string(),
        };
        let name = match version.hash {
            Some(h) => blake3::Hash::from(h).to_hex().to_string(),
            None => format!("{}-{}", version.size, version.mtime_ns),
        };
        FileRequest {
            library: self.library,
            location: self.location,
            path,
            hash: version.hash,
            dest_root: self.incoming.clone(),
            dest_path: name,
        }
    }

    /// Fetch the content of `actions`' copies (those with a hash; each
    /// content once however many copies want it) several at once, for the
    /// executor run that follows; whatever an earlier batch left is removed
    /// first. Call [`RemoteSource::forget_prefetched`] after that run.
    pub fn prefetch(&mut self, actions: &[Action]) {
        self.prefetched.clear();
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut seen: std::collections::HashMap<[u8; 32], usize> = std::collections::HashMap::new();
        for a in actions {
            let Action::Copy { from, version, .. } = a else {
                continue;
            };
            let Some(hash) = version.version.hash else {
                continue;
            };
            match seen.get(&hash) {
                Some(&i) => wanted[i].uses += 1,
                None => {
                    seen.insert(hash, wanted.len());
                    wanted.push(Wanted {
                        hash,
                        request: self.request(from, &version.version),
                        uses: 1,
                    });
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        let progress = self.progress.clone();
        self.prefetched =
            self.handle
                .block_on(fetch_batch(&self.client, &self.peer, wanted, progress));
    }

    /// Remove the prefetched files no copy consumed (an action failed, or a
    /// file changed): the next batch, or cycle, starts clean.
    pub fn forget_prefetched(&mut self) {
        self.prefetched.clear();
    }

    /// Carry out `actions`, all of `end` (the `side` this source copies
    /// onto), with the core's executor: copies in batches
    /// ([`crate::transfer::prefetch::batches`]), each prefetched first and
    /// cleared after; after a full disk the batches left are not started
    /// (their paths stay unsettled).
    pub fn run_batched(
        &mut self,
        end: &End,
        side: Side,
        actions: Vec<Action>,
        now_ms: i64,
    ) -> ExecReport {
        // The executor's other source is never used: every action is this
        // end's, so the end stands in for the other one.
        let mut stand_in = LocalSource::new(end.root.clone());
        let mut report = ExecReport::default();
        for batch in batches(actions) {
            if report.disk_full {
                report
                    .unsettled
                    .extend(batch.iter().flat_map(|a| a.paths()).cloned());
                continue;
            }
            self.prefetch(&batch);
            let plan = Plan {
                actions: batch,
                ..Plan::default()
            };
            let r = match side {
                Side::Destination => {
                    Executor::new(end, end, &mut stand_in, self, now_ms).run(&plan)
                }
                Side::Source => Executor::new(end, end, self, &mut stand_in, now_ms).run(&plan),
            };
            self.forget_prefetched();
            report.merge(r);
        }
        report
    }
}

impl ContentSource for RemoteSource {
    fn fetch(&mut self, from: &RelPath, version: &Version, out: &mut File) -> Result<u64> {
        if let Some(path) = version.hash.and_then(|h| self.prefetched.path_of(&h)) {
            let path = path.to_path_buf();
            let mut f = File::open(&path).map_err(|e| ConduitError::io(&path, e))?;
            return copy_verified(&mut f, out, version, &path);
        }
        let fetched = self.fetch_incoming(from, version)?;
        let mut f = File::open(&fetched.path).map_err(|e| ConduitError::io(&fetched.path, e))?;
        let n = copy_verified(&mut f, out, version, &fetched.path);
        let _ = std::fs::remove_file(&fetched.path);
        n
    }

    /// A version with its hash lands verified in `.concord/incoming/` and
    /// is renamed from there: written once. Without a hash the engine
    /// fetches whatever the file holds, so [`ContentSource::fetch`] checks
    /// its size on a copy.
    /// A prefetched file is handed over as it is (or, when other copies
    /// of the batch want the same content, copied by
    /// [`ContentSource::fetch`]).
    fn fetch_file(&mut self, from: &RelPath, version: &Version) -> Option<Result<PathBuf>> {
        let hash = version.hash?;
        match self.prefetched.take(&hash) {
            Taken::File(path) => Some(Ok(path)),
            Taken::Shared(_) => None,
            Taken::DiskFull => Some(Err(ConduitError::DiskFull(self.incoming.clone()))),
            Taken::Missing => Some(self.fetch_incoming(from, version).map(|f| f.path)),
        }
    }
}
