//! A remote end of a conduit: its listing (`List` pages of
//! `concord/content/1`) as a [`Tree`], and a [`ContentSource`] that fetches
//! its files through the transfer engine (verified and resumable) for the
//! executor. Runs on a blocking thread; network calls go back to the
//! runtime through its handle.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use concord::conduit::content::{copy_verified, ContentSource};
use concord::conduit::error::{ConduitError, Result};
use concord::conduit::path::RelPath;
use concord::conduit::tree::{FileState, Tree, Version};
use concord::Uuid;
use tokio::runtime::Handle;

use crate::error::NetError;
use crate::peers::Peer;
use crate::transfer::wire::{ContentCall, ListPage, ListRequest};
use crate::transfer::{ContentClient, FileRequest, TransferProgress};

/// Most pages of one listing (a million files at the page limit).
const MAX_PAGES: usize = 1000;

/// What a listing found.
pub enum Listed {
    Tree(Tree),
    /// The source's root is missing or swapped: pause, never "all deleted".
    Missing,
}

/// The files of `dir` in `location` on `peer`, page by page.
pub async fn list(
    client: &ContentClient,
    peer: &Peer,
    library: Uuid,
    location: Uuid,
    dir: &str,
    now_ms: i64,
) -> std::result::Result<Listed, NetError> {
    let mut tree = Tree {
        scanned_at_ms: now_ms,
        ..Tree::default()
    };
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let call = ContentCall::List(ListRequest {
            library,
            location,
            dir: dir.to_string(),
            after: after.take(),
        });
        let (files, more) = match client.call::<ListPage>(peer, &call).await? {
            ListPage::Files { files, more } => (files, more),
            ListPage::Missing => return Ok(Listed::Missing),
            ListPage::Refused { reason } => return Err(NetError::Refused(reason)),
        };
        let before = tree.files.len();
        for f in files {
            let path =
                RelPath::parse(&f.path).map_err(|e| NetError::Protocol(format!("listing: {e}")))?;
            after = Some(f.path);
            let version = Version {
                hash: f.hash,
                size: f.size,
                mtime_ns: f.mtime_ns,
                exec: f.exec,
            };
            tree.files.insert(
                path,
                FileState {
                    version,
                    inode: f.inode,
                },
            );
        }
        if !more {
            return Ok(Listed::Tree(tree));
        }
        if tree.files.len() == before {
            return Err(NetError::Protocol(
                "an empty listing page said more follow".into(),
            ));
        }
    }
    Err(NetError::Protocol(format!(
        "a listing longer than {MAX_PAGES} pages"
    )))
}

/// Content of a remote end, fetched through the transfer engine into the
/// destination location's `.concord/incoming/` (named by hash, so an
/// interrupted transfer resumes in the next cycle), then copied verified
/// into the executor's temp file.
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

impl ContentSource for RemoteSource {
    fn fetch(&mut self, from: &RelPath, version: &Version, out: &mut File) -> Result<u64> {
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
        let fetched = self
            .handle
            .block_on(self.client.fetch(&self.peer, req, &self.progress))
            .map_err(|e| match e.to_string() {
                m if m.contains("disk full") => ConduitError::DiskFull(self.incoming.clone()),
                m => ConduitError::Invalid(format!("fetching {}: {m}", from.as_str())),
            })?;
        let mut f = File::open(&fetched.path).map_err(|e| ConduitError::io(&fetched.path, e))?;
        let n = copy_verified(&mut f, out, version, &fetched.path);
        let _ = std::fs::remove_file(&fetched.path);
        n
    }
}
