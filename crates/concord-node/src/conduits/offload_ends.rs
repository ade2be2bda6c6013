//! The two devices of an Offload conduit as the core's step machine
//! ([`concord::conduit::offload_steps::drive`]) sees them for one file, on
//! the source's device: the entry from the library, the source file from
//! disk (stat and BLAKE3), the destination's copy as its device last
//! reported it through `Hold` (a batch of files at once, before the steps
//! run), a copy as one more `Hold` call. Blocking code: network calls go
//! back to the runtime through its handle.

use std::path::PathBuf;
use std::sync::Arc;

use concord::conduit::offload_steps::{DestinationCopy, Ends, EntryState, Observed};
use concord::conduit::tree::FileState;
use concord::index::{commit_local, commit_offloaded, OffloadedTo};
use concord::{query, Library, Uuid};
use tokio::runtime::Handle;

use crate::conduits::offload::{source_state, used_recently};
use crate::error::NetError;
use crate::peers::Peer;
use crate::transfer::fetch::ContentClient;
use crate::transfer::wire::{ContentCall, HoldAnswer, HoldFile, HoldMode, HoldRequest, Holding};

/// What every file of one cycle shares.
#[derive(Clone)]
pub struct Cx {
    pub handle: Handle,
    pub client: ContentClient,
    pub peer: Peer,
    pub lib: Arc<Library>,
    /// The `Hold` call's ends (`files` and `mode` filled per call).
    pub call: HoldRequest,
    /// The source folder on this device.
    pub root: PathBuf,
    /// Whether the source volume records access times.
    pub atime: bool,
    /// Now (ms), as "used within the hour" is judged.
    pub now_ms: i64,
}

impl Cx {
    /// One `Hold` call for `files`; one result per file, in order.
    pub async fn hold(
        &self,
        mode: HoldMode,
        files: Vec<HoldFile>,
    ) -> Result<Vec<Holding>, NetError> {
        let n = files.len();
        let call = ContentCall::Hold(HoldRequest {
            mode,
            files,
            ..self.call.clone()
        });
        match self.client.call::<HoldAnswer>(&self.peer, &call).await? {
            HoldAnswer::Held { results } if results.len() == n => Ok(results),
            HoldAnswer::Held { .. } => Err(NetError::Protocol(
                "a Hold answer with another number of results".into(),
            )),
            HoldAnswer::Refused { reason } => Err(NetError::Refused(reason)),
        }
    }
}

/// What the destination's answer says of the copy, for the steps; a failed
/// copy or check says nothing (`Err`).
pub fn copy_state(h: Holding, want: [u8; 32]) -> Result<DestinationCopy, String> {
    match h {
        Holding::Same => Ok(DestinationCopy::Present(want)),
        Holding::Missing => Ok(DestinationCopy::Missing),
        Holding::Other { hash } => Ok(DestinationCopy::Present(hash)),
        Holding::Failed { reason } => Err(reason),
    }
}

/// One file's two ends.
pub struct FileEnds<'a> {
    pub cx: &'a Cx,
    pub entry: Uuid,
    /// Below the conduit's folders (the same on both ends).
    pub path: String,
    pub destination: Result<DestinationCopy, String>,
}

impl Ends for FileEnds<'_> {
    type Error = NetError;

    fn observe(&mut self) -> Result<Observed, NetError> {
        let entry = match query::file_entry(&self.cx.lib, self.entry)? {
            Some(e) => match OffloadedTo::of(&e) {
                Some(to) => EntryState::Offloaded(to),
                None => EntryState::Local,
            },
            None => EntryState::Local,
        };
        let source = source_state(&self.cx.root.join(&self.path))
            .map_err(|e| NetError::Other(format!("{}: {e}", self.path)))?;
        let destination = self
            .destination
            .clone()
            .map_err(|why| NetError::Refused(format!("the destination: {why}")))?;
        Ok(Observed {
            entry,
            source,
            destination,
        })
    }

    fn copy(&mut self, version: &FileState) -> Result<(), NetError> {
        let Some(hash) = version.version.hash else {
            return Ok(());
        };
        // A file used or changed since it was chosen stays (the steps give
        // up on it after their copies).
        let file = self.cx.root.join(&self.path);
        if used_recently(&file, self.cx.atime, self.cx.now_ms) {
            return Ok(());
        }
        let one = vec![HoldFile {
            path: self.path.clone(),
            size: version.version.size,
            hash,
        }];
        let mut got = self
            .cx
            .handle
            .block_on(self.cx.hold(HoldMode::Fetch, one))?;
        self.destination = copy_state(got.remove(0), hash);
        Ok(())
    }

    fn commit_and_remove(&mut self, to: &OffloadedTo, version: &FileState) -> Result<(), NetError> {
        let file = self.cx.root.join(&self.path);
        commit_offloaded(&self.cx.lib, self.entry, to, || {
            concord::conduit::offload_steps::remove_if_unchanged(&file, version)
                .map(|_| ())
                .map_err(|e| concord::Error::Invalid(e.to_string()))
        })?;
        Ok(())
    }

    fn return_local(&mut self) -> Result<(), NetError> {
        commit_local(&self.cx.lib, self.entry)?;
        Ok(())
    }
}
