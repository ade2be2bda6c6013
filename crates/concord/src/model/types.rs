//! The library's models. Each is plain data; `#[derive(Syncable)]` turns the
//! attributes into the static description the store and merge code work from.
//!
//! Attributes: `#[sync(model = "..", table = "..", shared | device_owned, membership)]`
//! on the struct; on fields `#[sync(id)]` (the record UUID), `#[sync(owner)]` (the
//! owning device), `#[sync(key)]` (immutable, travels in every entry, cascades),
//! `#[sync(references = "model")]` (a UUID reference) and `#[sync(skip)]`
//! (device-local, never synced).

use concord_derive::Syncable;
use uuid::Uuid;

use super::contract::derived_uuid;

/// A member device of the library (the synced `devices` table, DESIGN §9).
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "device", table = "devices", shared)]
pub struct Device {
    #[sync(id)]
    pub id: Uuid,
    pub name: String,
    /// Iroh node id (public key) in its string form, once known.
    pub node_id: Option<String>,
    /// Where the device's node listens (`ip:port`, comma-separated), written
    /// by the device itself when they change: members that never paired
    /// directly reach each other through these when the device that
    /// introduced them is away.
    pub addrs: Option<String>,
    /// Set when another member removed the device from the library
    /// (`device remove`): the last of its entries (`origin_seq`) members
    /// accept. Never cleared; concurrent removals keep the highest value
    /// (ARCHITECTURE.md, "Membership").
    pub removed: Option<i64>,
}

/// A user tag.
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "tag", table = "tags", shared)]
pub struct Tag {
    #[sync(id)]
    pub id: Uuid,
    pub name: String,
    /// `#rrggbb`, lower case.
    pub color: Option<String>,
}

/// A user album.
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "album", table = "albums", shared)]
pub struct Album {
    #[sync(id)]
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
}

/// A filesystem of one device.
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "volume", table = "volumes", device_owned)]
pub struct Volume {
    #[sync(id)]
    pub id: Uuid,
    #[sync(owner)]
    pub device: Uuid,
    pub name: String,
    /// Stable identity of the filesystem (see ARCHITECTURE.md).
    pub fingerprint: String,
    pub mount_point: String,
}

/// An indexed folder of one device.
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "location", table = "locations", device_owned)]
pub struct Location {
    #[sync(id)]
    pub id: Uuid,
    #[sync(owner)]
    pub device: Uuid,
    #[sync(key, references = "volume")]
    pub volume: Uuid,
    /// Absolute path on the owning device.
    pub path: String,
    pub name: String,
}

/// `FileEntry::kind` values.
pub mod entry_kind {
    pub const FILE: i64 = 0;
    pub const DIR: i64 = 1;
    pub const SYMLINK: i64 = 2;

    /// The kind's display name, for listings.
    pub fn name(kind: i64) -> &'static str {
        match kind {
            FILE => "file",
            DIR => "dir",
            SYMLINK => "symlink",
            _ => "other",
        }
    }
}

/// A file or folder inside a location (device-owned).
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "file_entry", table = "file_entries", device_owned)]
pub struct FileEntry {
    #[sync(id)]
    pub id: Uuid,
    #[sync(owner)]
    pub device: Uuid,
    #[sync(key, references = "location")]
    pub location: Uuid,
    /// The containing folder; `None` directly under the location root.
    #[sync(references = "file_entry")]
    pub parent: Option<Uuid>,
    pub name: String,
    /// Path relative to the location root, `/`-separated.
    pub path: String,
    pub kind: i64,
    pub size: i64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified: Option<i64>,
    /// Set while the file's content lives elsewhere (an Offload conduit moved
    /// it off this device, DESIGN §12): the destination *location*, so the
    /// bytes stay findable after the conduit is removed. The entry (UUID,
    /// tags, albums) stays; a rescan keeps it while its file is absent and
    /// clears the three `offloaded_*` fields when a file reappears at its
    /// path. Written by the owner only, like every field of the entry.
    pub offloaded_to: Option<Uuid>,
    /// With `offloaded_to`: where the bytes are, relative to that location's
    /// root (`/`-separated; the conduit's destination subfolder plus the
    /// path inside its source folder). Untrusted like any peer input: parse
    /// it as a `conduit::path::RelPath` before use.
    pub offloaded_path: Option<String>,
    /// With `offloaded_to`: the BLAKE3 (lower-case hex) of the bytes verified
    /// on the destination, so a fetch back is verified and a changed or
    /// missing copy is recognised as lost content.
    pub offloaded_hash: Option<String>,
    /// Device-local: the inode, to recognise renames on rescan.
    #[sync(skip)]
    pub inode: Option<i64>,
}

/// A tag on a file entry (a set membership).
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(
    model = "tag_assignment",
    table = "tag_assignments",
    shared,
    membership
)]
pub struct TagAssignment {
    #[sync(id)]
    pub id: Uuid,
    #[sync(key, references = "tag")]
    pub tag: Uuid,
    #[sync(key, references = "file_entry")]
    pub entry: Uuid,
}

/// A file entry in an album (a set membership).
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "album_item", table = "album_items", shared, membership)]
pub struct AlbumItem {
    #[sync(id)]
    pub id: Uuid,
    #[sync(key, references = "album")]
    pub album: Uuid,
    #[sync(key, references = "file_entry")]
    pub entry: Uuid,
}

/// A user's note and favourite flag on a file entry; one record per entry.
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "user_metadata", table = "user_metadata", shared)]
pub struct UserMetadata {
    #[sync(id)]
    pub id: Uuid,
    #[sync(key, references = "file_entry")]
    pub entry: Uuid,
    pub note: Option<String>,
    pub favorite: bool,
}

/// A sync conduit (DESIGN §12): keeps file content flowing from a folder of
/// one location to a folder of another under a policy. Shared, so every member
/// sees every conduit, and any member may pause, resume or change it; the two
/// locations are its keys, so removing either location removes the conduit
/// (never a file). What is synced and what stays with the working device is
/// listed in ARCHITECTURE.md ("Conduits"); the typed view of the text fields
/// is `crate::conduit::settings`.
#[derive(Debug, Clone, PartialEq, Eq, Syncable)]
#[sync(model = "conduit", table = "conduits", shared)]
pub struct Conduit {
    #[sync(id)]
    pub id: Uuid,
    /// The location content is read from (for `sync`, the first end).
    #[sync(key, references = "location")]
    pub source: Uuid,
    /// A relative folder inside the source location; empty for its root.
    pub source_dir: String,
    /// The location content is written to (for `sync`, the second end).
    #[sync(key, references = "location")]
    pub destination: Uuid,
    /// A relative folder inside the destination location; empty for its root.
    pub destination_dir: String,
    /// `replicate`, `sync`, `archive` or `offload`.
    pub policy: String,
    /// Replicate only: deletions on the source propagate (to the trash).
    pub propagate_deletes: bool,
    /// `instant`, `manual`, or a period such as `90s`, `15m`, `2h`.
    pub cadence: String,
    /// Offload only: free space to keep on the source (`10G`, `15%`).
    pub min_free: Option<String>,
    /// Offload only: files with this tag are never offloaded. A plain UUID
    /// rather than a reference, so deleting the tag leaves the conduit.
    pub pin_tag: Option<Uuid>,
    /// Why the conduit is paused (`user`, `mass-delete`, `source-missing`,
    /// `disk-full`, `destination-unreachable`); `None` while it runs.
    /// Synced so that every member sees a pause and any may resume it.
    pub paused: Option<String>,
    /// Set by `resume --allow-deletes`: the next cycle may delete past the
    /// mass-delete guard; the working device clears it after that cycle.
    pub allow_deletes: bool,
    /// When the last cycle finished (ms since the Unix epoch).
    pub last_run: Option<i64>,
    /// Why the last cycle failed, if it did; cleared by a good cycle.
    pub last_error: Option<String>,
}

impl TagAssignment {
    pub fn new(tag: Uuid, entry: Uuid) -> Self {
        Self {
            id: derived_uuid("tag_assignment", &[tag, entry]),
            tag,
            entry,
        }
    }
}

impl AlbumItem {
    pub fn new(album: Uuid, entry: Uuid) -> Self {
        Self {
            id: derived_uuid("album_item", &[album, entry]),
            album,
            entry,
        }
    }
}

impl UserMetadata {
    pub fn id_for(entry: Uuid) -> Uuid {
        derived_uuid("user_metadata", &[entry])
    }
}
