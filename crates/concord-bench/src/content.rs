//! Two Concord nodes on 127.0.0.1 moving file content with the transfer
//! engine (`concord/content/1`: `ContentServer` on A, `ContentClient` on B),
//! the path a conduit cycle takes for its copies: B lists the source end
//! (`List` pages: A scans and hashes its folder as a cycle's listing does),
//! then fetches every file from A (`fetch_many`), verified against those
//! hashes. F1, F2 and F4 drive this directly; a conduit cycle adds its
//! planning and the agreed state around it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concord::{index, Uuid};
use concord_node::conduits::remote::{list, Listed};
use concord_node::peers::Peer;
use concord_node::transfer::{FileRequest, TransferProgress};
use concord_node::Node;

use crate::common::progress;
use crate::net::{node_config, pair, start};

/// A (serving a location at `src`) and B (a member of the same library).
pub struct ContentPair {
    pub a: Node,
    pub b: Node,
    pub lib: Uuid,
    pub location: Uuid,
    /// A's source folder (the location's root).
    pub src: PathBuf,
}

/// A file of the source end and its BLAKE3 hash, as a cycle's scan saw it.
pub type Scanned = Vec<(String, [u8; 32])>;

impl ContentPair {
    /// Start both nodes under `dir`, pair them, share a library and add
    /// `src` as a location of A (untimed setup: indexing is not a transfer).
    pub async fn new(dir: &Path, src: &Path) -> anyhow::Result<ContentPair> {
        let a = start(&dir.join("a"), node_config("alpha")).await?;
        let b = start(&dir.join("b"), node_config("beta")).await?;
        pair(&a, &b).await?;
        progress!("nodes started and paired");
        let lib = a.state.data.create_library("conduits")?.id();
        a.host.start(lib)?;
        let peer = b.state.resolve_peer(&a.device_id().to_string())?;
        b.setup.join_library(lib, &peer).await?;
        progress!("library shared");
        let la = a.state.library(lib)?;
        let path = src.to_path_buf();
        let location = tokio::task::spawn_blocking(move || {
            index::add_location(&la, &path, &mut |_, _| {}).map(|i| i.location.id)
        })
        .await??;
        Ok(ContentPair {
            a,
            b,
            lib,
            location,
            src: src.to_path_buf(),
        })
    }

    /// A as B knows it.
    pub fn peer(&self) -> anyhow::Result<Peer> {
        Ok(self.b.state.resolve_peer(&self.a.device_id().to_string())?)
    }

    /// List the source end as a conduit cycle does (A scans and hashes it,
    /// with no earlier scan: a first cycle).
    pub async fn scan_source(&self) -> anyhow::Result<Scanned> {
        let peer = self.peer()?;
        let listed = list(
            &self.b.fetcher,
            &peer,
            self.lib,
            self.location,
            "",
            now_ms(),
        )
        .await?;
        let Listed::Tree(tree) = listed else {
            anyhow::bail!("the source end is missing");
        };
        tree.files
            .into_iter()
            .map(|(path, state)| {
                let hash = state
                    .version
                    .hash
                    .ok_or_else(|| anyhow::anyhow!("{} was not hashed", path.as_str()))?;
                Ok((path.as_str().to_string(), hash))
            })
            .collect()
    }

    /// One request per scanned file, into the same path under `dest` (a
    /// folder that must exist: a location's root).
    pub fn requests(&self, files: &Scanned, dest: &Path) -> Vec<FileRequest> {
        files
            .iter()
            .map(|(path, hash)| FileRequest {
                library: self.lib,
                location: self.location,
                path: path.clone(),
                hash: Some(*hash),
                dest_root: dest.to_path_buf(),
                dest_path: path.clone(),
            })
            .collect()
    }

    /// Fetch every file into `dest` (several at once on one connection);
    /// fails on the first file that did not arrive verified.
    pub async fn fetch_all(&self, files: &Scanned, dest: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dest)?;
        let progress = Arc::new(TransferProgress::default());
        let results = self
            .b
            .fetcher
            .fetch_many(&self.peer()?, self.requests(files, dest), progress)
            .await;
        for ((path, _), r) in files.iter().zip(results) {
            r.map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        }
        Ok(())
    }

    /// Drop B's connection to A, so the next fetch dials anew (what a
    /// restarted receiver does).
    pub async fn disconnect(&self) -> anyhow::Result<()> {
        self.b.state.disconnect(&self.peer()?.node_id).await;
        Ok(())
    }

    pub async fn shutdown(self) {
        self.b.shutdown().await;
        self.a.shutdown().await;
    }
}

/// Wall-clock milliseconds since the Unix epoch (what a cycle is given).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
