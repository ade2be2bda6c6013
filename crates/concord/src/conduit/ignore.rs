//! `.concordignore`: paths a conduit leaves alone, in a subset of gitignore.
//!
//! One pattern per line, read from the file `.concordignore` at a conduit
//! root (the file itself is never synced; both ends' patterns apply to both):
//!
//! - blank lines and lines starting with `#` are skipped;
//! - `*` matches any run of characters inside one name, `?` one character;
//! - `**` as a whole segment matches any number of folders (`**/x`, `a/**`,
//!   `a/**/b`);
//! - a pattern with a `/` at its start or in its middle is anchored to the
//!   conduit root; otherwise it matches a name at any depth;
//! - a trailing `/` matches folders only;
//! - `!` negates: the last pattern that matches decides;
//! - an ignored folder hides everything below it.
//!
//! Not supported: character classes (`[abc]`) and escapes; such characters
//! match themselves. The file is bounded: at most 64 KiB and 1,000 patterns.

use super::error::{ConduitError, Result};

/// The name of the ignore file at a conduit root.
pub const IGNORE_FILE: &str = ".concordignore";
/// Largest ignore file read, in bytes.
pub const MAX_IGNORE_BYTES: u64 = 64 * 1024;
/// Most patterns in one ignore file.
pub const MAX_PATTERNS: usize = 1000;

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    anchored: bool,
    dir_only: bool,
    negated: bool,
}

/// The parsed patterns of one or more ignore files.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
}

impl IgnoreRules {
    /// Parse the text of an ignore file.
    pub fn parse(text: &str) -> Result<IgnoreRules> {
        if text.len() as u64 > MAX_IGNORE_BYTES {
            return Err(ConduitError::TooLarge {
                what: "a .concordignore file",
                limit: MAX_IGNORE_BYTES,
            });
        }
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if patterns.len() == MAX_PATTERNS {
                return Err(ConduitError::TooLarge {
                    what: "the patterns of a .concordignore file",
                    limit: MAX_PATTERNS as u64,
                });
            }
            let (negated, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (dir_only, body) = match body.strip_suffix('/') {
                Some(rest) => (true, rest),
                None => (false, body),
            };
            let anchored = body.contains('/');
            let body = body.trim_start_matches('/');
            if body.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                segments: body.split('/').map(str::to_string).collect(),
                anchored,
                dir_only,
                negated,
            });
        }
        Ok(IgnoreRules { patterns })
    }

    /// Read the ignore file at `root`, if there is one (never through a link).
    pub fn load(root: &super::path::SafeRoot) -> Result<IgnoreRules> {
        let p = root.path().join(IGNORE_FILE);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IgnoreRules::default()),
            Err(e) => Err(ConduitError::io(&p, e)),
            Ok(m) if m.len() > MAX_IGNORE_BYTES => Err(ConduitError::TooLarge {
                what: "a .concordignore file",
                limit: MAX_IGNORE_BYTES,
            }),
            Ok(_) => {
                use std::io::Read;
                let mut text = String::new();
                super::path::open_nofollow(&p)?
                    .take(MAX_IGNORE_BYTES + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| ConduitError::io(&p, e))?;
                IgnoreRules::parse(&text)
            }
        }
    }

    /// Both ends' rules together.
    pub fn merged(mut self, other: IgnoreRules) -> IgnoreRules {
        self.patterns.extend(other.patterns);
        self
    }

    /// Whether `path` (relative to the conduit root, `/`-separated) is
    /// ignored; `is_dir` says whether it is a folder. Callers walking a tree
    /// skip an ignored folder's contents themselves.
    pub fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        if path == IGNORE_FILE {
            return true;
        }
        if self.patterns.is_empty() {
            return false; // the common case: asked once per file of a scan
        }
        let last = path.rsplit('/').next().unwrap_or(path);
        let mut names: Option<Vec<&str>> = None;
        let mut ignored = false;
        for p in &self.patterns {
            if p.dir_only && !is_dir {
                continue;
            }
            let hit = if p.anchored {
                let names = names.get_or_insert_with(|| path.split('/').collect());
                match_segments(&p.segments, names)
            } else {
                p.segments.len() == 1 && match_name(&p.segments[0], last)
            };
            if hit {
                ignored = !p.negated;
            }
        }
        ignored
    }
}

/// Segments (with `**`) against path names, by dynamic programming so that
/// no pattern can make matching exponential.
fn match_segments(segs: &[String], names: &[&str]) -> bool {
    // ok[i][j]: segs[i..] matches names[j..].
    let (s, n) = (segs.len(), names.len());
    let mut ok = vec![vec![false; n + 1]; s + 1];
    ok[s][n] = true;
    for i in (0..s).rev() {
        for j in (0..=n).rev() {
            ok[i][j] = if segs[i] == "**" {
                ok[i + 1][j] || (j < n && ok[i][j + 1])
            } else {
                j < n && match_name(&segs[i], names[j]) && ok[i + 1][j + 1]
            };
        }
    }
    ok[0][0]
}

/// `*` and `?` wildcards against one name, without allocating (asked per
/// pattern per file of a scan): matched left to right, and on a mismatch
/// the last `*` takes one more character. Trying only the last `*` again
/// is enough, so matching stays O(pattern × name), never exponential.
fn match_name(pat: &str, name: &str) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // After the last `*`: where the pattern goes on, and where the text did.
    let mut star: Option<(usize, usize)> = None;
    while let Some(tc) = name[ti..].chars().next() {
        match pat[pi..].chars().next() {
            Some('*') => {
                pi += 1;
                star = Some((pi, ti));
                continue;
            }
            Some(pc) if pc == '?' || pc == tc => {
                pi += pc.len_utf8();
                ti += tc.len_utf8();
                continue;
            }
            _ => {}
        }
        let Some((sp, st)) = star else {
            return false;
        };
        let skipped = name[st..].chars().next().map_or(1, char::len_utf8);
        star = Some((sp, st + skipped));
        (pi, ti) = (sp, st + skipped);
    }
    pat[pi..].chars().all(|c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_the_documented_subset() {
        let r = IgnoreRules::parse(
            "# comment\n\n*.tmp\n/build\ncache/\ndocs/**/draft-?.md\n**/node_modules\nkeep*\n!keep.me\n",
        )
        .unwrap();
        assert!(r.is_ignored("a.tmp", false));
        assert!(r.is_ignored("x/y/a.tmp", false));
        assert!(r.is_ignored("build", true));
        assert!(!r.is_ignored("x/build", true), "anchored to the root");
        assert!(r.is_ignored("x/cache", true));
        assert!(!r.is_ignored("x/cache", false), "folders only");
        assert!(r.is_ignored("docs/draft-1.md", false));
        assert!(r.is_ignored("docs/a/b/draft-2.md", false));
        assert!(!r.is_ignored("docs/draft-10.md", false));
        assert!(r.is_ignored("a/b/node_modules", true));
        assert!(r.is_ignored("keepsake", false));
        assert!(!r.is_ignored("keep.me", false), "negation: last match wins");
        assert!(!r.is_ignored("notes.txt", false));
        assert!(r.is_ignored(IGNORE_FILE, false));
    }

    /// The matcher this module used before, by dynamic programming: the
    /// reference the allocation-free one is checked against.
    fn match_name_dp(pat: &str, name: &str) -> bool {
        let p: Vec<char> = pat.chars().collect();
        let t: Vec<char> = name.chars().collect();
        let mut ok = vec![vec![false; t.len() + 1]; p.len() + 1];
        ok[p.len()][t.len()] = true;
        for i in (0..p.len()).rev() {
            for j in (0..=t.len()).rev() {
                ok[i][j] = match p[i] {
                    '*' => ok[i + 1][j] || (j < t.len() && ok[i][j + 1]),
                    '?' => j < t.len() && ok[i + 1][j + 1],
                    c => j < t.len() && t[j] == c && ok[i + 1][j + 1],
                };
            }
        }
        ok[0][0]
    }

    proptest::proptest! {
        #[test]
        fn the_matcher_agrees_with_dynamic_programming(
            pat in "[ab*?é]{0,8}",
            name in "[abé]{0,10}",
        ) {
            proptest::prop_assert_eq!(match_name(&pat, &name), match_name_dp(&pat, &name));
        }
    }

    #[test]
    fn wildcards_match_whole_names() {
        for (pat, name, want) in [
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b", "ab", true),
            ("a*b", "axxbxb", true),
            ("a*b", "axxbx", false),
            ("*.tmp", "x.tmp", true),
            ("*.tmp", "x.tmpl", false),
            ("?é", "aé", true),
            ("é?", "é", false),
            ("**a", "bba", true),
        ] {
            assert_eq!(match_name(pat, name), want, "{pat:?} against {name:?}");
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        assert!(IgnoreRules::parse(&"x\n".repeat(1001)).is_err());
        assert!(IgnoreRules::parse(&"x".repeat(70_000)).is_err());
        // Many stars cannot make matching slow.
        let r = IgnoreRules::parse(&format!("{}b", "*".repeat(200))).unwrap();
        assert!(!r.is_ignored(&"a".repeat(250), false));
    }
}
