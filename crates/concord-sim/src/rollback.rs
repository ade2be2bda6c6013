//! Faults that take a device back in time: a **rollback** (its files replaced
//! by a copy taken at a random earlier point: a restored backup, a VM
//! snapshot rolled back), with or without the device writing before it hears
//! from anyone; and a **lost fsync** (a power cut: `library.db` loses the last
//! transactions its WAL held, `sync.db`, committed with `synchronous=FULL`,
//! keeps everything).
//!
//! Writes a device loses this way are lost for good only when no other device
//! holds them: after each such fault, acknowledged writes that no device's log
//! holds any more are dropped from the ones the final checks require
//! (counted in the report); every other one must still be everywhere at the
//! end.

use std::path::{Path, PathBuf};

use concord::rusqlite::{Connection, OpenFlags};
use concord::sync::log::SyncLog;
use tokio::time::Instant;

use crate::world::World;

impl World {
    /// A copy of device `i`'s files while it is down (its library closed):
    /// the backup a later rollback restores.
    pub(crate) fn take_backup(&mut self, i: usize) -> Result<(), String> {
        let d = &mut self.devices[i];
        let to = backup_dir(&d.dir);
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(|e| format!("backup of d{i}: {e}"))?;
        }
        copy_files(&d.dir, &to).map_err(|e| format!("backup of d{i}: {e}"))?;
        d.backup = Some(to);
        self.trace.event("backup", &[d.id.as_bytes()]);
        Ok(())
    }

    /// Roll a random running device back to its backup (taking one first if
    /// it has none); it comes back at once and maybe writes before it hears
    /// from anyone, or a little later.
    pub(crate) async fn rollback_one(&mut self) -> Result<(), String> {
        let up = self.up();
        if up.len() <= 1 {
            return Ok(());
        }
        let i = *self.rng.pick(&up).unwrap();
        self.crash(i).await?;
        let Some(backup) = self.devices[i].backup.clone() else {
            self.take_backup(i)?;
            return self.start_device(i);
        };
        let dir = self.devices[i].dir.clone();
        std::fs::remove_dir_all(&dir).map_err(|e| format!("rollback of d{i}: {e}"))?;
        copy_files(&backup, &dir).map_err(|e| format!("rollback of d{i}: {e}"))?;
        self.went_back(i)?;
        self.report.rollbacks += 1;
        self.trace
            .event("rollback", &[self.devices[i].id.as_bytes()]);
        match self.rng.below(3) {
            // Writes before any message can reach it (no await in between).
            0 => {
                self.start_device(i)?;
                for _ in 0..self.rng.range(1, 3) {
                    self.write(i)?;
                }
            }
            1 => self.start_device(i)?,
            _ => self.devices[i].restart_at = Some(Instant::now() + self.rng.ms(50, 1_500)),
        }
        Ok(())
    }

    /// A power cut on a random running device: `library.db` loses the last
    /// one to three transactions of its WAL; `sync.db` keeps every commit.
    pub(crate) async fn lose_fsync_one(&mut self) -> Result<(), String> {
        let up = self.up();
        if up.len() <= 1 {
            return Ok(());
        }
        let i = *self.rng.pick(&up).unwrap();
        let dir = self.devices[i].dir.clone();
        // The files as the disk holds them at the cut, read before the
        // library closes (closing checkpoints and moves the outbox, which a
        // power cut never does).
        let files = ["library.db", "library.db-wal", "sync.db", "sync.db-wal"];
        let mut saved = Vec::new();
        for f in files {
            saved.push(std::fs::read(dir.join(f)).ok());
        }
        // Frames a checkpoint copied were synced first: those survive.
        let synced = std::fs::read(dir.join("library.db-shm"))
            .ok()
            .and_then(|shm| backfilled_frames(&shm))
            .unwrap_or(0);
        let mut ends = saved[1].as_deref().map(wal_commit_ends).unwrap_or_default();
        let durable = ends
            .iter()
            .take_while(|(frames, _)| *frames <= synced)
            .count();
        let floor = durable.checked_sub(1).map(|k| ends[k].1);
        let ends: Vec<usize> = ends
            .split_off(durable)
            .into_iter()
            .map(|(_, at)| at)
            .collect();
        let lose = self.rng.range(1, 3) as usize;
        self.crash(i).await?;
        if let Some(wal) = saved[1].as_mut() {
            // Keep the WAL up to the commit `lose` transactions back (none: its
            // header only, every frame lost).
            let keep = ends
                .len()
                .checked_sub(lose + 1)
                .map(|k| ends[k])
                .or(floor)
                .unwrap_or(WAL_HEADER.min(wal.len()));
            wal.truncate(keep);
        }
        for (f, bytes) in files.iter().zip(&saved) {
            let path = dir.join(f);
            let written = match bytes {
                Some(b) => std::fs::write(&path, b),
                None if path.exists() => std::fs::remove_file(&path),
                None => Ok(()),
            };
            written.map_err(|e| format!("power cut on d{i}: {e}"))?;
        }
        for f in ["library.db-shm", "sync.db-shm"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        self.went_back(i)?;
        self.report.lost_fsyncs += 1;
        self.trace
            .event("lost-fsync", &[self.devices[i].id.as_bytes()]);
        self.devices[i].restart_at = Some(Instant::now() + self.rng.ms(50, 1_500));
        Ok(())
    }

    /// After device `i`'s files went back in time (it is down): its clock
    /// checks start over from what its files hold, and acknowledged writes no
    /// device holds any more are no longer required.
    fn went_back(&mut self, i: usize) -> Result<(), String> {
        self.devices[i].hlc_seen = 0;
        let mut logs = Vec::new();
        for (j, d) in self.devices.iter().enumerate() {
            if let Some(lib) = &d.lib {
                lib.flush().map_err(|e| format!("d{j}: {e}"))?;
            }
            logs.push(read_log(&d.dir.join("sync.db")).map_err(|e| format!("d{j}: {e}"))?);
        }
        let before = self.acked.len();
        let mut kept = Vec::with_capacity(before);
        for a in self.acked.drain(..) {
            let mut held = false;
            for log in &logs {
                if log.contains(a.replica, a.seq).map_err(|e| e.to_string())? {
                    held = true;
                    break;
                }
            }
            if held {
                kept.push(a);
            }
        }
        self.report.lost_writes += (before - kept.len()) as u64;
        self.acked = kept;
        Ok(())
    }
}

/// The WAL header's size; frames follow it.
const WAL_HEADER: usize = 32;

/// How many frames of the WAL a checkpoint copied into the database
/// (`nBackfill` of the WAL index in the `-shm` file, after its two 48-byte
/// headers; native byte order). SQLite syncs the WAL before it checkpoints,
/// so a power cut leaves these.
fn backfilled_frames(shm: &[u8]) -> Option<usize> {
    let b = shm.get(96..100)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// `(frames, byte offset)` just past each commit frame of a WAL file, in
/// order: the prefixes a power cut may leave. Frames whose salt differs from
/// the header's are left over from before the WAL restarted and end the list.
pub(crate) fn wal_commit_ends(wal: &[u8]) -> Vec<(usize, usize)> {
    let mut ends = Vec::new();
    if wal.len() < WAL_HEADER {
        return ends;
    }
    let page = u32::from_be_bytes([wal[8], wal[9], wal[10], wal[11]]) as usize;
    let page = if page == 1 { 65_536 } else { page };
    let salt = &wal[16..24];
    let mut at = WAL_HEADER;
    let mut frames = 0;
    while at + 24 + page <= wal.len() {
        let frame = &wal[at..at + 24];
        if &frame[8..16] != salt {
            break;
        }
        at += 24 + page;
        frames += 1;
        if frame[4..8] != [0, 0, 0, 0] {
            ends.push((frames, at));
        }
    }
    ends
}

/// A log read through its own connection (the device's library may be open,
/// or closed); nothing is written through it.
fn read_log(path: &Path) -> concord::Result<SyncLog> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    SyncLog::open(conn)
}

/// Where device files at `dir` keep their backup.
fn backup_dir(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".backup");
    PathBuf::from(name)
}

/// Copy the regular files of `from` (not recursive: a library folder) into
/// `to`.
fn copy_files(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in std::fs::read_dir(from)? {
        let f = f?;
        if f.file_type()?.is_file() {
            std::fs::copy(f.path(), to.join(f.file_name()))?;
        }
    }
    Ok(())
}
