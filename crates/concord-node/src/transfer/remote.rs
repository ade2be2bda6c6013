//! The transfer engine as a conduit [`ContentSource`]: a remote end's files
//! fetched (verified, resumable) into the receiving location's
//! `.concord/incoming/`, from where the executor renames them into place
//! (a version without a hash is copied verified into its temp file).
//! Used on a blocking thread; network calls go back to the runtime through
//! its handle.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use concord::conduit::content::{copy_verified, ContentSource};
use concord::conduit::error::{ConduitError, Result};
use concord::conduit::path::RelPath;
use concord::conduit::tree::Version;
use concord::Uuid;
use tokio::runtime::Handle;

use crate::peers::Peer;
use crate::transfer::fetch::{ContentClient, Fetched, FileRequest};
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
}

impl RemoteSource {
    /// Fetch `from` (which must be `version`) into `.concord/incoming/`,
    /// verified and fsynced; its folder is not fsynced, as the caller
    /// renames the file again.
    fn fetch_incoming(&mut self, from: &RelPath, version: &Version) -> Result<Fetched> {
        let path = match &self.dir {
            Some(d) => format!("{}/{}", d.as_str(), from.as_str()),
            None => from.as_str().to_string(),
        };
        let name = match version.hash {
            Some(h) => blake3::Hash::from(h).to_hex().to_string(),
            None => format!("{}-{}", version.size, version.mtime_ns),
        };
        let req = FileRequest {
            library: self.library,
            location: self.location,
            path,
            hash: version.hash,
            dest_root: self.incoming.clone(),
            dest_path: name,
        };
        self.handle
            .block_on(self.client.fetch_unsynced(&self.peer, req, &self.progress))
            .map_err(|e| match e.to_string() {
                m if m.contains("disk full") => ConduitError::DiskFull(self.incoming.clone()),
                m => ConduitError::Invalid(format!("fetching {}: {m}", from.as_str())),
            })
    }
}

impl ContentSource for RemoteSource {
    fn fetch(&mut self, from: &RelPath, version: &Version, out: &mut File) -> Result<u64> {
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
    fn fetch_file(&mut self, from: &RelPath, version: &Version) -> Option<Result<PathBuf>> {
        version.hash?;
        Some(self.fetch_incoming(from, version).map(|f| f.path))
    }
}
