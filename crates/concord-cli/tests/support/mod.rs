//! What the CLI's integration tests share: the binary under test and the
//! checks of the CLI contract every command's output must meet (`CLI.md`:
//! success prints the answer, `--json` prints exactly one value, failure exits
//! 1 with one `error:` line and nothing on stdout).
#![allow(dead_code)]

pub mod node;

use std::process::Output;

use serde_json::Value;

/// The `concord` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_concord");

/// Plain stdout of a command that must succeed, without the final newline.
pub fn expect_success(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "{args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// The one `error: ` line of a command that must fail with exit code 1 and
/// print nothing on stdout.
pub fn expect_failure(out: Output, args: &[&str]) -> String {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail with 1; stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: one stderr line expected: {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr:?}");
    lines[0].to_string()
}

/// The single JSON value `s` holds.
pub fn one_json(s: &str) -> Value {
    let values: Vec<Value> = serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {s}"));
    assert_eq!(values.len(), 1, "exactly one JSON value expected: {s}");
    values.into_iter().next().unwrap()
}
