//! The distribution's programs the conduit workloads compare against
//! (`rsync`, `syncthing`): installed with `apt-get install -y` when missing,
//! and `rsync` timed on a local copy.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::progress;

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` can be run, installing Debian's `package` first if it
/// is missing (the harness runs as root here). A baseline whose program
/// cannot be had is reported as skipped, not failed.
pub fn ensure(program: &str, package: &str) -> bool {
    if found(program) {
        return true;
    }
    progress!("{program} is missing: apt-get install -y {package}");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        install();
    }
    found(program)
}

/// Seconds `rsync -a [extra] src/ dst/` took (a fresh destination).
pub fn rsync(src: &Path, dst: &Path, extra: &[&str]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new("rsync")
        .arg("-a")
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}
