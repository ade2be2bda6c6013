//! A remote end of a conduit: its listing (`List` pages of
//! `concord/content/1`) as a [`Tree`]. Its content comes through
//! [`crate::transfer::remote::RemoteSource`].

use concord::conduit::path::RelPath;
use concord::conduit::tree::{FileState, Tree, Version};
use concord::Uuid;

use crate::error::NetError;
use crate::peers::Peer;
use crate::transfer::wire::{ContentCall, ListPage, ListRequest};
use crate::transfer::ContentClient;

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
