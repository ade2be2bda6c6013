//! One command, parsed and resolved as far as the client can: the unit a running
//! node will receive over its socket.
//!
//! Paths are made absolute against the client's current directory (the node has
//! another one), and arguments that may be a UUID or a path (`ENTRY`) are told
//! apart here. Names of libraries, tags, albums, locations and devices are
//! resolved where the library lives, by `execute`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An `ENTRY` argument: a file entry's UUID, or an absolute path below an
/// indexed location of this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryRef {
    Id(Uuid),
    Path(String),
}

/// Every command `execute` runs. `library`, `tag`, `album`, `location` and
/// `device` hold what the user typed: a UUID or a unique name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Device,

    LibraryCreate {
        name: String,
        /// Visible only to devices it is shared with.
        #[serde(default)]
        private: bool,
    },
    LibraryList,
    LibraryDigest {
        library: String,
        shared: bool,
    },
    LibraryExport {
        library: String,
    },

    TagCreate {
        library: String,
        name: String,
        color: Option<String>,
    },
    TagRename {
        library: String,
        tag: String,
        name: String,
    },
    TagRecolor {
        library: String,
        tag: String,
        color: String,
    },
    TagDelete {
        library: String,
        tag: String,
    },
    TagList {
        library: String,
    },
    TagApply {
        library: String,
        tag: String,
        entries: Vec<EntryRef>,
    },
    TagRemove {
        library: String,
        tag: String,
        entries: Vec<EntryRef>,
    },

    AlbumCreate {
        library: String,
        name: String,
    },
    AlbumRename {
        library: String,
        album: String,
        name: String,
    },
    AlbumDelete {
        library: String,
        album: String,
    },
    AlbumAdd {
        library: String,
        album: String,
        entries: Vec<EntryRef>,
    },
    AlbumRemove {
        library: String,
        album: String,
        entries: Vec<EntryRef>,
    },
    AlbumList {
        library: String,
    },

    LocationAdd {
        library: String,
        /// Absolute, not yet canonical.
        path: String,
    },
    LocationList {
        library: String,
    },
    LocationRescan {
        library: String,
        location: String,
    },
    LocationRemove {
        library: String,
        location: String,
    },

    EntryList {
        library: String,
        location: Option<String>,
        device: Option<String>,
    },

    // ---- served by a running node ----
    Stop,
    PairInvite {
        ttl_ms: Option<u64>,
    },
    PairJoin {
        ticket: String,
    },
    DeviceList,
    DeviceRemove {
        device: String,
    },
    LibraryRemote {
        device: String,
    },
    LibraryShare {
        library: String,
        device: String,
    },
    LibraryJoin {
        library: String,
        device: String,
    },
    SyncStatus {
        library: String,
    },
    SyncConflicts {
        library: String,
    },
    LocationPull {
        library: String,
        location: Option<String>,
    },
    EntryFetch {
        library: String,
        entry: EntryRef,
        /// Absolute, not yet existing.
        to: Option<String>,
    },

    ConduitCreate {
        library: String,
        /// `LOC[:SUBDIR]`.
        from: String,
        to: String,
        policy: String,
        delete: bool,
        cadence: String,
        min_free: Option<String>,
        pin_tag: Option<String>,
    },
    ConduitList {
        library: String,
    },
    ConduitStatus {
        library: String,
        conduit: String,
    },
    ConduitPause {
        library: String,
        conduit: String,
    },
    ConduitResume {
        library: String,
        conduit: String,
        allow_deletes: bool,
    },
    ConduitRemove {
        library: String,
        conduit: String,
    },
    /// Served by a running node (cycles run there).
    ConduitRun {
        library: String,
        conduit: String,
        wait: bool,
    },
}

impl Request {
    /// The command as the user types it, which also selects its plain rendering.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Device => "device",
            Request::LibraryCreate { .. } => "library create",
            Request::LibraryList => "library list",
            Request::LibraryDigest { .. } => "library digest",
            Request::LibraryExport { .. } => "library export",
            Request::TagCreate { .. } => "tag create",
            Request::TagRename { .. } => "tag rename",
            Request::TagRecolor { .. } => "tag recolor",
            Request::TagDelete { .. } => "tag delete",
            Request::TagList { .. } => "tag list",
            Request::TagApply { .. } => "tag apply",
            Request::TagRemove { .. } => "tag remove",
            Request::AlbumCreate { .. } => "album create",
            Request::AlbumRename { .. } => "album rename",
            Request::AlbumDelete { .. } => "album delete",
            Request::AlbumAdd { .. } => "album add",
            Request::AlbumRemove { .. } => "album remove",
            Request::AlbumList { .. } => "album list",
            Request::LocationAdd { .. } => "location add",
            Request::LocationList { .. } => "location list",
            Request::LocationRescan { .. } => "location rescan",
            Request::LocationRemove { .. } => "location remove",
            Request::EntryList { .. } => "entry list",
            Request::Stop => "stop",
            Request::PairInvite { .. } => "pair invite",
            Request::PairJoin { .. } => "pair join",
            Request::DeviceList => "device list",
            Request::DeviceRemove { .. } => "device remove",
            Request::LibraryRemote { .. } => "library remote",
            Request::LibraryShare { .. } => "library share",
            Request::LibraryJoin { .. } => "library join",
            Request::SyncStatus { .. } => "sync status",
            Request::SyncConflicts { .. } => "sync conflicts",
            Request::LocationPull { .. } => "location pull",
            Request::EntryFetch { .. } => "entry fetch",
            Request::ConduitCreate { .. } => "conduit create",
            Request::ConduitList { .. } => "conduit list",
            Request::ConduitStatus { .. } => "conduit status",
            Request::ConduitPause { .. } => "conduit pause",
            Request::ConduitResume { .. } => "conduit resume",
            Request::ConduitRemove { .. } => "conduit remove",
            Request::ConduitRun { .. } => "conduit run",
        }
    }

    /// Commands only a running node can serve (they need the network).
    pub fn needs_node(&self) -> bool {
        matches!(
            self,
            Request::Stop
                | Request::PairInvite { .. }
                | Request::PairJoin { .. }
                | Request::DeviceRemove { .. }
                | Request::LibraryRemote { .. }
                | Request::LibraryShare { .. }
                | Request::LibraryJoin { .. }
                | Request::SyncStatus { .. }
                | Request::LocationPull { .. }
                | Request::EntryFetch { .. }
                | Request::ConduitRun { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_json() {
        let r = Request::TagApply {
            library: "photos".into(),
            tag: "holiday".into(),
            entries: vec![
                EntryRef::Id(Uuid::nil()),
                EntryRef::Path("/home/me/a.jpg".into()),
            ],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""command":"tag_apply""#), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }
}
