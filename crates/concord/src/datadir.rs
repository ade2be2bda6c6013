//! A data directory: this device's identity and its libraries.
//!
//! ```text
//! <data-dir>/device.json                  device id and name
//! <data-dir>/libraries/<uuid>/library.db  domain tables, clocks, tombstones, conflicts
//! <data-dir>/libraries/<uuid>/sync.db     the sync log
//! ```
//!
//! The data dir and its folders are 0700, its files 0600 (`crate::private`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hlc::SystemClock;
use crate::model::Device;
use crate::private::{create_new, private_dir, restrict};
use crate::store::meta::{key, meta_get};
use crate::sync::seal::NodeKey;
use crate::sync::txn::{Change, Library, LibraryOptions};
use crate::validate;

/// This device, as stored in `device.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub device_id: Uuid,
    pub name: String,
}

/// An opened data directory.
pub struct DataDir {
    root: PathBuf,
    identity: DeviceIdentity,
}

/// Summary of a local library.
#[derive(Debug, Clone, Serialize)]
pub struct LibrarySummary {
    pub id: Uuid,
    pub name: String,
    pub devices: u64,
}

fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "concord-device".to_string())
}

impl DataDir {
    /// Open `root`, creating it and this device's identity on first use.
    pub fn open(root: &Path) -> Result<DataDir> {
        private_dir(root)
            .and_then(|_| private_dir(&root.join("libraries")))
            .map_err(|e| Error::Other(format!("cannot create data dir {}: {e}", root.display())))?;
        for file in [
            "device.json",
            "node.key",
            "node.json",
            "peers.json",
            "node.lock",
        ] {
            restrict(&root.join(file))?;
        }
        let id_path = root.join("device.json");
        let identity = match std::fs::read(&id_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Other(format!(
                    "{} is corrupt ({e}); restore it or move the data dir away",
                    id_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = DeviceIdentity {
                    device_id: Uuid::now_v7(),
                    name: default_device_name(),
                };
                write_atomic(
                    &id_path,
                    &serde_json::to_vec_pretty(&identity).unwrap_or_default(),
                )?;
                identity
            }
            Err(e) => return Err(e.into()),
        };
        Ok(DataDir {
            root: root.to_path_buf(),
            identity,
        })
    }

    /// The data dir's root, under which every library has its own folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This device's identity, the same in every library it joins.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Rename this device.
    pub fn set_name(&mut self, name: &str) -> Result<()> {
        validate::name("device name", name)?;
        self.identity.name = name.to_string();
        write_atomic(
            &self.root.join("device.json"),
            &serde_json::to_vec_pretty(&self.identity).unwrap_or_default(),
        )
    }

    fn library_dir(&self, id: Uuid) -> PathBuf {
        self.root.join("libraries").join(id.to_string())
    }

    /// Create a library; this device is registered as its first member.
    pub fn create_library(&self, name: &str) -> Result<Library> {
        validate::name("library name", name)?;
        if self.list_libraries()?.iter().any(|l| l.name == name) {
            return Err(Error::Invalid(format!(
                "a library named {name:?} already exists; pick another name"
            )));
        }
        let id = Uuid::now_v7();
        let lib = self.create_library_with_id(id, name)?;
        // DESIGN §5: the device that created the library is its first leader.
        lib.with_log(|l| {
            l.set_term(crate::service::protocol::Term {
                epoch: 1,
                leader: self.identity.device_id,
            })
        })?;
        Ok(lib)
    }

    /// Create a library with a given UUID (joining a remote one).
    pub fn create_library_with_id(&self, id: Uuid, name: &str) -> Result<Library> {
        let dir = self.library_dir(id);
        let opts = self.library_options()?;
        // The first registration carries the node id: the key this device's
        // seals verify against (it certifies itself, `sync::seal`).
        let node_id = opts.key.as_ref().map(NodeKey::node_id);
        let lib = Library::create_with(
            &dir,
            id,
            name,
            self.identity.device_id,
            Box::new(SystemClock),
            opts,
        )?;
        lib.commit(Change::insert(&Device {
            id: self.identity.device_id,
            name: self.identity.name.clone(),
            node_id,
            addrs: None,
            removed: None,
        }))?;
        Ok(lib)
    }

    /// Open a library by UUID.
    pub fn open_library(&self, id: Uuid) -> Result<Library> {
        let dir = self.library_dir(id);
        if !dir.join("library.db").exists() {
            return Err(Error::LibraryNotFound(id.to_string()));
        }
        Library::open_with(
            &dir,
            self.identity.device_id,
            Box::new(SystemClock),
            self.library_options()?,
        )
    }

    /// How this data dir's libraries are opened: with the node key in
    /// `node.key` when there is one (the node creates it on its first start),
    /// so that local entries are sealed and received ones verified. Entries
    /// written before the key existed are sealed when a library is next opened
    /// with it.
    pub fn library_options(&self) -> Result<LibraryOptions> {
        let path = self.root.join("node.key");
        let key = match std::fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::Other(format!("{} is corrupt (expected 32 bytes)", path.display()))
                })?;
                Some(NodeKey::from_bytes(&secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        Ok(LibraryOptions {
            key,
            ..LibraryOptions::default()
        })
    }

    /// Every local library.
    pub fn list_libraries(&self) -> Result<Vec<LibrarySummary>> {
        let mut out = Vec::new();
        let dir = self.root.join("libraries");
        let Ok(read) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for ent in read.flatten() {
            let Some(id) = ent
                .file_name()
                .to_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                continue;
            };
            if !ent.path().join("library.db").exists() {
                continue;
            }
            // Read-only peek: no recovery, no lock, so listing works while a
            // node (or another command) holds the library open.
            match peek(&ent.path().join("library.db")) {
                Ok((name, devices)) => out.push(LibrarySummary { id, name, devices }),
                Err(e) => tracing::warn!(library = %id, "cannot read library: {e}"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Resolve `LIB` (a UUID or a unique name) to a library UUID.
    pub fn resolve_library(&self, key: &str) -> Result<Uuid> {
        let libs = self.list_libraries()?;
        if let Ok(id) = Uuid::parse_str(key) {
            if libs.iter().any(|l| l.id == id) {
                return Ok(id);
            }
        }
        let matches: Vec<_> = libs.iter().filter(|l| l.name == key).collect();
        match matches.len() {
            1 => Ok(matches[0].id),
            0 => Err(Error::LibraryNotFound(format!(
                "{key:?} (see `concord library list`)"
            ))),
            _ => Err(Error::Invalid(format!(
                "more than one library is named {key:?}; use its UUID (see `concord library list`)"
            ))),
        }
    }
}

/// Write a file so that a crash leaves either the old or the new content.
/// The file is 0600 (`private::create_new`: a fresh temp file, whatever
/// a crash left under its name).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = create_new(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Name and member count of a library, read without opening it for writing.
fn peek(db: &Path) -> Result<(String, u64)> {
    use rusqlite::{Connection, OpenFlags};
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    let name: String = meta_get(&c, key::NAME)?
        .ok_or_else(|| Error::Other(format!("{} has no name", db.display())))?;
    let devices: i64 = c.query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))?;
    Ok((name, devices as u64))
}
