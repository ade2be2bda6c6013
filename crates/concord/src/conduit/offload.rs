//! Which files an Offload conduit moves off its source (DESIGN §12): pure,
//! so the node's runner, the property test and the simulation share it.
//!
//! When the source volume's free space is below the conduit's threshold
//! (`--min-free`), files are chosen least recently used first until what
//! they free brings free space back to the threshold plus a margin. Never
//! chosen: a file used or changed within the last hour ([`RECENT_MS`]), a
//! pinned file (carrying the pin tag, or below a folder carrying it), an
//! empty file (it frees nothing), and a file the destination has no room
//! for. How a chosen file is moved safely is `offload_steps`.

use std::collections::HashSet;

use super::settings::MinFree;

/// A file used (read) or changed within this long is never offloaded:
/// somebody is working with it.
pub const RECENT_MS: i64 = 60 * 60 * 1000;

/// The margin above the threshold an offload run frees, in percent of the
/// threshold. **Decision**: 5%, so that a run is not started again by the
/// next few writes (hysteresis), yet small enough not to move much more than
/// asked: with `--min-free 10G` a run stops at 10.5 GiB free.
pub const MARGIN_PERCENT: u64 = 5;

/// One file that could be offloaded, as the source device sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The file's path relative to the source location root (the entry's
    /// `path`), `/`-separated: the same base as [`Pinned`]'s paths.
    pub path: String,
    pub size: u64,
    /// Last access, ms since the Unix epoch; `None` when the volume does not
    /// record access times (mounted `noatime`), so only changes count.
    pub accessed: Option<i64>,
    /// Last modification (mtime), ms since the Unix epoch.
    pub modified: i64,
    /// Last change of the inode (ctime: content, mode, links), ms since the
    /// Unix epoch; unlike mtime it cannot be set back by a tool.
    pub changed: i64,
}

impl Candidate {
    /// When the file was last used: the latest of its access (where the
    /// volume records it) and modification times. The least recently used
    /// file has the smallest.
    pub fn last_used(&self) -> i64 {
        self.accessed.unwrap_or(i64::MIN).max(self.modified)
    }

    /// Whether the file was used or changed within [`RECENT_MS`] of `now`
    /// (a time in the future, from a wrong clock, counts as recent).
    pub fn is_recent(&self, now: i64) -> bool {
        let latest = self.last_used().max(self.changed);
        latest > now.saturating_sub(RECENT_MS)
    }
}

impl Candidate {
    /// A candidate from a file's metadata (`path` relative to the location
    /// root); `records_access` is [`Space::records_access`] of its volume.
    pub fn from_metadata(path: String, md: &std::fs::Metadata, records_access: bool) -> Candidate {
        use std::os::unix::fs::MetadataExt;
        let ms = |s: i64, ns: i64| s.saturating_mul(1000).saturating_add(ns / 1_000_000);
        Candidate {
            path,
            size: md.len(),
            accessed: records_access.then(|| ms(md.atime(), md.atime_nsec())),
            modified: ms(md.mtime(), md.mtime_nsec()),
            changed: ms(md.ctime(), md.ctime_nsec()),
        }
    }
}

/// Files and folders carrying the conduit's pin tag (paths relative to the
/// source location root): a pinned folder pins everything below it.
#[derive(Debug, Clone, Default)]
pub struct Pinned {
    paths: HashSet<String>,
}

impl Pinned {
    pub fn new<I: IntoIterator<Item = String>>(paths: I) -> Pinned {
        Pinned {
            paths: paths
                .into_iter()
                .map(|p| p.trim_matches('/').to_string())
                .collect(),
        }
    }

    /// Whether `path` or one of its folders is pinned (a pin on the location
    /// root, `""`, pins everything).
    pub fn covers(&self, path: &str) -> bool {
        if self.paths.is_empty() {
            return false;
        }
        let mut at = path.trim_matches('/');
        loop {
            if self.paths.contains(at) {
                return true;
            }
            if at.is_empty() {
                return false;
            }
            at = at.rsplit_once('/').map_or("", |(p, _)| p);
        }
    }
}

/// Free space of a volume, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Available to the user (`statvfs` `f_bavail`).
    pub free: u64,
    pub total: u64,
}

impl Space {
    /// The space of the volume holding `path` (`statvfs`), and whether it
    /// records access times (not mounted `noatime`). **Decision**: a
    /// `relatime` volume counts as recording them: it updates a file's
    /// access time at least once a day and whenever the file changed, which
    /// orders files well enough by use; a read within a day of an earlier
    /// one may not count as recent use.
    pub fn measure(path: &std::path::Path) -> Option<(Space, bool)> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a NUL-terminated path and `st` is written by statvfs
        // before it is read (only when it returns 0).
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)] // not u64 on every target
        let (bavail, blocks, frsize, flags) = (
            st.f_bavail as u64,
            st.f_blocks as u64,
            st.f_frsize as u64,
            st.f_flag as u64,
        );
        let space = Space {
            free: bavail.saturating_mul(frsize),
            total: blocks.saturating_mul(frsize),
        };
        #[allow(clippy::unnecessary_cast)] // not u64 on every target
        let noatime = libc::ST_NOATIME as u64;
        Some((space, flags & noatime == 0))
    }
}

/// The free space `min_free` asks for on a volume of `total` bytes.
pub fn threshold(min_free: MinFree, total: u64) -> u64 {
    match min_free {
        MinFree::Bytes(b) => b,
        MinFree::Percent(p) => (total as u128 * p as u128 / 100) as u64,
    }
}

/// The free space an offload run aims for: the threshold plus
/// [`MARGIN_PERCENT`] of it, at most the volume's size.
pub fn target(min_free: MinFree, total: u64) -> u64 {
    let t = threshold(min_free, total);
    t.saturating_add(t / 100 * MARGIN_PERCENT + t % 100 * MARGIN_PERCENT / 100)
        .min(total)
}

/// What one selection decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The files to offload, least recently used first.
    pub chosen: Vec<Candidate>,
    /// Bytes they free together.
    pub frees: u64,
    /// The free space the run aims for (0 when free space is not below the
    /// threshold and nothing needs to move).
    pub target: u64,
    /// Bytes still missing to reach `target` when every file that may move
    /// is chosen (the rest are pinned, recent or do not fit); 0 otherwise.
    pub short: u64,
}

/// What a selection must respect besides the candidates.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub min_free: MinFree,
    pub pinned: &'a Pinned,
    /// Now, ms since the Unix epoch.
    pub now: i64,
    /// Free bytes on the destination, when known: files that do not fit in
    /// what is left are passed over (a smaller one may still fit).
    pub destination_free: Option<u64>,
}

/// Choose the files to offload from `candidates` (any order; ties of last use
/// go to the larger file, then by path, so a selection is deterministic).
/// Nothing is chosen while free space is at or above the threshold.
pub fn select(candidates: &[Candidate], space: Space, rules: &Rules<'_>) -> Selection {
    if space.free >= threshold(rules.min_free, space.total) {
        return Selection::default();
    }
    let target = target(rules.min_free, space.total);
    let need = target.saturating_sub(space.free);
    let mut order: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.size > 0 && !c.is_recent(rules.now) && !rules.pinned.covers(&c.path))
        .collect();
    order.sort_by(|a, b| {
        (a.last_used(), std::cmp::Reverse(a.size), &a.path).cmp(&(
            b.last_used(),
            std::cmp::Reverse(b.size),
            &b.path,
        ))
    });
    let mut room = rules.destination_free.unwrap_or(u64::MAX);
    let mut out = Selection {
        target,
        ..Selection::default()
    };
    for c in order {
        if out.frees >= need {
            break;
        }
        if c.size > room {
            continue;
        }
        room -= c.size;
        out.frees += c.size;
        out.chosen.push(c.clone());
    }
    out.short = need.saturating_sub(out.frees);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 24 * RECENT_MS;

    fn file(path: &str, size: u64, age_days: i64) -> Candidate {
        let t = NOW - age_days * DAY;
        Candidate {
            path: path.into(),
            size,
            accessed: Some(t),
            modified: t,
            changed: t,
        }
    }

    fn rules(min_free: MinFree, pinned: &Pinned) -> Rules<'_> {
        Rules {
            min_free,
            pinned,
            now: NOW,
            destination_free: None,
        }
    }

    fn paths(s: &Selection) -> Vec<&str> {
        s.chosen.iter().map(|c| c.path.as_str()).collect()
    }

    #[test]
    fn nothing_moves_while_free_space_is_at_the_threshold() {
        let none = Pinned::default();
        let files = [file("a", 100, 10)];
        let s = select(
            &files,
            Space {
                free: 100,
                total: 1000,
            },
            &rules(MinFree::Bytes(100), &none),
        );
        assert_eq!(s, Selection::default());
    }

    #[test]
    fn least_recently_used_first_until_threshold_plus_margin() {
        let none = Pinned::default();
        let files = [
            file("new", 300, 2),
            file("oldest", 200, 30),
            file("old", 200, 20),
            file("mid", 200, 10),
        ];
        // Threshold 400, target 420; free 100: 320 to free.
        let s = select(
            &files,
            Space {
                free: 100,
                total: 10_000,
            },
            &rules(MinFree::Bytes(400), &none),
        );
        assert_eq!(paths(&s), ["oldest", "old"]);
        assert_eq!((s.frees, s.target, s.short), (400, 420, 0));
    }

    #[test]
    fn access_time_counts_where_the_volume_records_it() {
        let none = Pinned::default();
        let mut read_yesterday = file("read", 100, 30);
        read_yesterday.accessed = Some(NOW - DAY);
        let mut noatime = file("noatime", 100, 20);
        noatime.accessed = None;
        let s = select(
            &[read_yesterday, noatime],
            Space {
                free: 0,
                total: 1000,
            },
            &rules(MinFree::Bytes(50), &none),
        );
        assert_eq!(paths(&s), ["noatime"]);
    }

    #[test]
    fn never_recent_pinned_or_empty_files() {
        let pinned = Pinned::new(["keep".to_string(), "docs/contract.pdf".to_string()]);
        let mut opened = file("opened", 100, 30);
        opened.accessed = Some(NOW - RECENT_MS / 2);
        let mut chmodded = file("chmodded", 100, 30);
        chmodded.changed = NOW - 1000;
        let mut future = file("future", 100, 30);
        future.modified = NOW + DAY;
        let files = [
            opened,
            chmodded,
            future,
            file("keep/deep/a.bin", 100, 40),
            file("keeper.bin", 100, 40),
            file("docs/contract.pdf", 100, 40),
            file("docs/other.pdf", 100, 35),
            file("empty", 0, 50),
        ];
        let s = select(
            &files,
            Space {
                free: 0,
                total: 10_000,
            },
            &rules(MinFree::Bytes(5_000), &pinned),
        );
        assert_eq!(paths(&s), ["keeper.bin", "docs/other.pdf"]);
        assert_eq!(s.short, 5_250 - 200);
    }

    #[test]
    fn a_pin_on_the_root_pins_everything() {
        let pinned = Pinned::new([String::new()]);
        assert!(pinned.covers("a/b/c"));
        assert!(!Pinned::new(["a/b".to_string()]).covers("a/bc"));
        assert!(Pinned::new(["a/b/".to_string()]).covers("a/b/c"));
    }

    #[test]
    fn percent_thresholds_and_the_destination_room() {
        let none = Pinned::default();
        assert_eq!(threshold(MinFree::Percent(15), 1000), 150);
        assert_eq!(target(MinFree::Percent(15), 1000), 157);
        assert_eq!(target(MinFree::Bytes(u64::MAX), 1000), 1000);
        let files = [file("big", 500, 30), file("small", 100, 20)];
        let mut r = rules(MinFree::Percent(20), &none);
        r.destination_free = Some(300);
        let s = select(
            &files,
            Space {
                free: 0,
                total: 1000,
            },
            &r,
        );
        assert_eq!(paths(&s), ["small"]);
        assert_eq!(s.short, 110);
    }

    #[test]
    fn candidates_and_space_from_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "hello").unwrap();
        let md = std::fs::metadata(&p).unwrap();
        let c = Candidate::from_metadata("f".into(), &md, true);
        assert_eq!(c.size, 5);
        assert!(c.accessed.is_some() && c.modified > 1_600_000_000_000);
        assert!(c.is_recent(c.changed + 1));
        assert_eq!(
            Candidate::from_metadata("f".into(), &md, false).accessed,
            None
        );
        let (space, _) = Space::measure(dir.path()).unwrap();
        assert!(space.total > 0 && space.free <= space.total);
        assert!(Space::measure(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn ties_go_to_the_larger_file_then_the_path() {
        let none = Pinned::default();
        let files = [file("b", 10, 5), file("a", 10, 5), file("c", 20, 5)];
        let s = select(
            &files,
            Space {
                free: 0,
                total: 1000,
            },
            &rules(MinFree::Bytes(500), &none),
        );
        assert_eq!(paths(&s), ["c", "a", "b"]);
    }
}
