//! `concord demo` (filled in below).
use crate::context::CliResult;

pub fn run(_devices: usize, _json: bool) -> CliResult<serde_json::Value> {
    Err(crate::context::CliError::new("demo: not yet"))
}
