//! B8: failover liveness with the production timeouts (heartbeat 30 s, leader
//! timeout 60 s). N real `concord` daemons (the release binary beside this
//! one) on loopback; every other device paired with the first only and joined
//! to its library, so the survivors know each other only through the library.
//! The leader is killed with SIGKILL and a follower creates a tag at once.
//!
//! Figures, each from the SIGKILL:
//! - the tag visible on every other live member (goal ≤ 1 s; before direct
//!   pushes it waited for the leader timeout and an election, or forever);
//! - one new leader agreed by every live member.
//!
//! Visibility is read from each member's `library.db` (read-only, WAL), so
//! watching 47 members costs them nothing; the leader from `sync status`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::common::Scale;
use crate::report::Row;

/// The goal for a change made right after the leader's death.
const DELIVERY_GOAL_S: f64 = 1.0;
/// Give up waiting for anything after this long.
const GIVE_UP: Duration = Duration::from_secs(240);

pub fn run(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let bin = concord_binary()?;
    let mut rows = Vec::new();
    let sizes: &[usize] = match scale {
        Scale::Small => &[3],
        Scale::Full => &[3, 48],
    };
    for &n in sizes {
        let (delivery, leader) = failover(&bin, n)?;
        eprintln!(
            "  {n} devices: delivered in {delivery:.3} s, new leader agreed after {leader:.1} s"
        );
        rows.push(Row::at_most(
            "B8",
            &format!("kill_to_visible_{n}_devices"),
            delivery,
            "s",
            DELIVERY_GOAL_S,
            true,
        ));
        rows.push(Row::info(
            "B8",
            &format!("kill_to_agreed_leader_{n}_devices"),
            leader,
            "s",
            "leader_timeout",
            60.0,
        ));
    }
    Ok(rows)
}

/// `concord` built in the same profile, beside this binary.
fn concord_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?
        .join("concord");
    if !bin.exists() {
        bail!(
            "B8 runs real daemons: build them first with `cargo build --release -p concord-cli` ({} is missing)",
            bin.display()
        );
    }
    Ok(bin)
}

struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemon {
    fn start(bin: &Path, root: &Path, name: &str) -> anyhow::Result<Daemon> {
        let dir = root.join(name);
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(&dir)
            .args(["start", "--name", name, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("{name} did not start: {line:?}");
        }
        Ok(Daemon {
            dir,
            child: Some(child),
        })
    }

    fn cli(&self, bin: &Path, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--json")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether this member's library holds a tag of that name (read-only).
    fn has_tag(&self, library: &str, tag: &str) -> bool {
        let path = self.dir.join("libraries").join(library).join("library.db");
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let Ok(conn) = rusqlite::Connection::open_with_flags(path, flags) else {
            return false;
        };
        conn.query_row("SELECT COUNT(*) FROM tags WHERE name = ?1", [tag], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok_and(|n| n > 0)
    }
}

/// One failover of `n` devices: seconds from the SIGKILL to the follower's tag
/// on every other live member, and to one agreed new leader.
fn failover(bin: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let root = tempfile::tempdir()?;
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(Daemon::start(bin, root.path(), &format!("d{i}"))?);
    }
    for node in &nodes[1..] {
        let ticket = nodes[0].cli(bin, &["pair", "invite"])?["ticket"]
            .as_str()
            .context("ticket")?
            .to_string();
        node.cli(bin, &["pair", "join", &ticket])?;
    }
    let library = nodes[0].cli(bin, &["library", "create", "b8"])?["id"]
        .as_str()
        .context("library id")?
        .to_string();
    nodes[0].cli(bin, &["tag", "create", "b8", "seed"])?;
    for node in &nodes[1..] {
        node.cli(bin, &["library", "join", "b8", "d0"])?;
    }
    wait("every member holds the library", || {
        Ok(nodes.iter().all(|d| d.has_tag(&library, "seed")))
    })?;

    nodes[0].kill();
    let killed = Instant::now();
    nodes[1].cli(bin, &["tag", "create", "b8", "gap"])?;
    let live = &nodes[1..];
    let mut seen: Vec<Option<f64>> = vec![None; live.len()];
    wait("the tag on every live member", || {
        for (i, d) in live.iter().enumerate() {
            if seen[i].is_none() && d.has_tag(&library, "gap") {
                seen[i] = Some(killed.elapsed().as_secs_f64());
            }
        }
        Ok(seen.iter().all(Option::is_some))
    })?;
    let delivery = seen.iter().flatten().copied().fold(0.0, f64::max);
    wait("one agreed new leader", || {
        let terms: Vec<(Value, Value)> = live
            .iter()
            .map(|d| {
                d.cli(bin, &["sync", "status", "b8"])
                    .map(|s| (s["leader"].clone(), s["epoch"].clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(terms.windows(2).all(|w| w[0] == w[1]) && terms[0].1.as_u64() > Some(1))
    })?;
    let leader = killed.elapsed().as_secs_f64();
    Ok((delivery, leader))
}

fn wait(what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > GIVE_UP {
            bail!("B8: gave up waiting for {what} after {GIVE_UP:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
