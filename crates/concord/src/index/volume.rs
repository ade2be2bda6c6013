//! Which filesystem a path lives on (the [`crate::model::Volume`] of a location).

use std::path::Path;

use crate::error::Result;

/// The identity of the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeIdentity {
    /// Stable identity of the filesystem; equal fingerprints mean the same
    /// filesystem. On Linux, from `/proc/self/mountinfo`, the mount containing
    /// the path (the longest mount point above it):
    /// - `uuid:<fs uuid>` when its source is a block device listed in
    ///   `/dev/disk/by-uuid` (stable across reboots and re-plugging);
    /// - otherwise `dev:<major>:<minor>:<source>` (stable while mounted; virtual
    ///   filesystems such as overlay or tmpfs get a new minor on remount).
    ///
    /// Elsewhere, or when mountinfo is unreadable: `dev:<st_dev>`.
    pub fingerprint: String,
    pub mount_point: String,
}

/// Find the filesystem holding `path` (an existing absolute path).
pub fn volume_identity(path: &Path) -> Result<VolumeIdentity> {
    #[cfg(target_os = "linux")]
    if let Some(v) = linux::volume_identity(path) {
        return Ok(v);
    }
    let md = std::fs::metadata(path)?;
    #[cfg(unix)]
    let dev = {
        use std::os::unix::fs::MetadataExt;
        md.dev()
    };
    #[cfg(not(unix))]
    let dev = {
        let _ = md;
        0u64
    };
    let root = path
        .ancestors()
        .last()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    Ok(VolumeIdentity {
        fingerprint: format!("dev:{dev}"),
        mount_point: root,
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::{Path, PathBuf};

    use super::VolumeIdentity;

    struct Mount {
        devno: String,
        mount_point: PathBuf,
        source: String,
    }

    /// Undo mountinfo's octal escapes (`\040` for a space, ...).
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                if let Some(v) = s
                    .get(i + 1..i + 4)
                    .filter(|o| o.bytes().all(|c| (b'0'..=b'7').contains(&c)))
                    .and_then(|o| u8::from_str_radix(o, 8).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn parse(line: &str) -> Option<Mount> {
        // id parent major:minor root mount_point options [optional...] - fstype source super
        let mut parts = line.split(' ');
        let _id = parts.next()?;
        let _parent = parts.next()?;
        let devno = parts.next()?.to_string();
        let _root = parts.next()?;
        let mount_point = PathBuf::from(unescape(parts.next()?));
        let mut parts = parts.skip_while(|p| *p != "-");
        parts.next()?; // the separator
        let _fstype = parts.next()?;
        let source = unescape(parts.next()?);
        Some(Mount {
            devno,
            mount_point,
            source,
        })
    }

    fn fs_uuid(source: &str) -> Option<String> {
        if !source.starts_with("/dev/") {
            return None;
        }
        let dev = std::fs::canonicalize(source).ok()?;
        for link in std::fs::read_dir("/dev/disk/by-uuid").ok()?.flatten() {
            if std::fs::canonicalize(link.path()).ok().as_deref() == Some(dev.as_path()) {
                return link.file_name().into_string().ok();
            }
        }
        None
    }

    pub(super) fn volume_identity(path: &Path) -> Option<VolumeIdentity> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut best: Option<Mount> = None;
        for m in text.lines().filter_map(parse) {
            if !path.starts_with(&m.mount_point) {
                continue;
            }
            // Later lines mount over earlier ones at the same point.
            let better = best
                .as_ref()
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
            if better {
                best = Some(m);
            }
        }
        let mount = best?;
        let fingerprint = match fs_uuid(&mount.source) {
            Some(u) => format!("uuid:{u}"),
            None => format!("dev:{}:{}", mount.devno, mount.source),
        };
        Some(VolumeIdentity {
            fingerprint,
            mount_point: mount.mount_point.to_string_lossy().into_owned(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_mountinfo_lines() {
            let m = parse("36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw,errors=continue").unwrap();
            assert_eq!(m.devno, "98:0");
            assert_eq!(m.mount_point, PathBuf::from("/mnt/my disk"));
            assert_eq!(m.source, "/dev/root");
            assert_eq!(unescape("a\\134b"), "a\\b");
            assert_eq!(unescape("tail\\"), "tail\\");
        }
    }
}
