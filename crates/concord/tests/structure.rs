//! The workspace's structural rules (ARCHITECTURE.md, "Dependency rules"),
//! checked on the source itself so they stay true:
//!
//! - no import circle between the files of one crate: file A naming a path
//!   into file B (`use crate::…`, `use super::…`, or such a path inline) and B,
//!   directly or through others, naming one into A;
//! - no source file under `crates/*/src` over 700 lines;
//! - no function over 100 lines outside tests and the benchmark harness.
//!
//! Paths are resolved to files the way the compiler finds modules
//! (`a/b.rs` or `a/b/mod.rs`, the longest prefix that exists); an item
//! re-exported by a parent module counts as an import of that parent, which is
//! what makes a child that imports through its parent part of a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 700;
const MAX_FN_LINES: usize = 100;

/// The workspace's `crates/`; `CONCORD_CRATES_DIR` points the checks at
/// another checkout's.
fn crates_dir() -> PathBuf {
    std::env::var_os("CONCORD_CRATES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file below `src` (`lib.rs`/`main.rs` → `[]`,
/// `a/mod.rs` → `[a]`, `a/b.rs` → `[a, b]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file that defines module `path` (the longest prefix that exists).
fn file_of(src: &Path, path: &[String]) -> Option<PathBuf> {
    for n in (0..=path.len()).rev() {
        let prefix = &path[..n];
        let candidates = if prefix.is_empty() {
            vec![src.join("lib.rs"), src.join("main.rs")]
        } else {
            let base = prefix.iter().collect::<PathBuf>();
            vec![
                src.join(&base).with_extension("rs"),
                src.join(&base).join("mod.rs"),
            ]
        };
        if let Some(f) = candidates.into_iter().find(|f| f.exists()) {
            return Some(f);
        }
    }
    None
}

/// Code without comments and string contents (enough for path scanning).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.split("//").next().unwrap_or("");
            let mut out = String::new();
            let mut in_str = false;
            for c in l.chars() {
                if c == '"' {
                    in_str = !in_str;
                } else if !in_str {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths a file names: `crate::a::b`, `super::a`, and `use` groups.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        let (start, base) = if boundary && rest.starts_with("crate::") {
            (i + 7, Vec::new())
        } else if boundary && rest.starts_with("super::") {
            let mut base = module.to_vec();
            let mut j = i;
            // `super::super::` climbs once per `super`.
            while bytes[j..].iter().collect::<String>().starts_with("super::") {
                base.pop();
                j += 7;
            }
            (j, base)
        } else {
            i += 1;
            continue;
        };
        let mut path = base;
        let mut j = start;
        loop {
            let seg: String = bytes[j..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            if seg.is_empty() {
                // A `use` group (`{a, b::c}`): each member extends the path.
                if bytes.get(j) == Some(&'{') {
                    let close = bytes[j..].iter().position(|c| *c == '}').unwrap_or(0) + j;
                    let inner: String = bytes[j + 1..close].iter().collect();
                    for member in inner.split(',') {
                        let mut p = path.clone();
                        p.extend(
                            member
                                .trim()
                                .split("::")
                                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                                .filter(|s| !s.is_empty() && s != "self" && s != "*"),
                        );
                        out.push(p);
                    }
                }
                break;
            }
            path.push(seg.clone());
            j += seg.len();
            if bytes[j..].iter().collect::<String>().starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        out.push(path);
        i = j.max(i + 1);
    }
    out
}

/// Import edges between the files of one crate.
fn edges(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = BTreeMap::new();
    for f in files {
        let module = module_of(src, &f);
        let text = std::fs::read_to_string(&f).unwrap();
        let code = code_only(&text);
        let mut targets = BTreeSet::new();
        for path in named_paths(&module, &code) {
            if let Some(t) = file_of(src, &path) {
                if t != f {
                    targets.insert(t);
                }
            }
        }
        graph.insert(f, targets);
    }
    graph
}

/// One import circle in `graph`, if any.
fn find_cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            return Some(stack[pos..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn crate_sources() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(crates_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

#[test]
fn no_import_circle_between_the_files_of_a_crate() {
    for src in crate_sources() {
        let graph = edges(&src);
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<String> = cycle.iter().map(|p| p.display().to_string()).collect();
            panic!("import circle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn no_source_file_over_700_lines() {
    for src in crate_sources() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            assert!(
                lines <= MAX_FILE_LINES,
                "{} has {lines} lines (at most {MAX_FILE_LINES})",
                f.display()
            );
        }
    }
}

#[test]
fn no_function_over_100_lines_outside_tests_and_benchmarks() {
    for src in crate_sources() {
        if src.parent().is_some_and(|c| c.ends_with("concord-bench")) {
            continue; // the benchmark harness may run long workloads in one function
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            if f.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let mut i = 0;
            while i < lines.len() {
                let line = lines[i];
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break; // tests close the file
                }
                let trimmed = line.trim_start();
                let is_fn = [
                    "fn ",
                    "pub fn ",
                    "pub(crate) fn ",
                    "pub(super) fn ",
                    "async fn ",
                ]
                .iter()
                .chain(&[
                    "pub async fn ",
                    "pub(crate) async fn ",
                    "pub(super) async fn ",
                ])
                .any(|p| trimmed.starts_with(p));
                if !is_fn {
                    i += 1;
                    continue;
                }
                // A declaration without a body (a trait's) ends with `;`.
                let body = (i..lines.len())
                    .find(|&j| lines[j].contains('{') || lines[j].trim_end().ends_with(';'));
                if body.is_none_or(|j| !lines[j].contains('{')) {
                    i += 1;
                    continue;
                }
                let indent = line.len() - trimmed.len();
                let close = format!("{}}}", " ".repeat(indent));
                let end = (i + 1..lines.len()).find(|&j| lines[j] == close);
                if let Some(end) = end {
                    let len = end - i + 1;
                    assert!(
                        len <= MAX_FN_LINES,
                        "{}:{} `{}` is {len} lines (at most {MAX_FN_LINES})",
                        f.display(),
                        i + 1,
                        trimmed
                    );
                }
                i += 1;
            }
        }
    }
}
