//! `concord demo [--devices N]`: N real `concord` nodes on 127.0.0.1 in
//! temporary data dirs. They pair, share a library, write on every device, lose
//! their leader, elect a new one, and converge, and the demo exits 0 once every
//! digest matches (non-zero if they do not within the time limit).
//!
//! Everything runs through the same binary and commands a user would type.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::context::{CliError, CliResult};

/// How long the whole demo may take.
const LIMIT: Duration = Duration::from_secs(120);

/// One device of the demo: a `concord start` process in its own data dir.
struct DemoDevice {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for DemoDevice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Demo {
    exe: PathBuf,
    root: PathBuf,
    devices: Vec<DemoDevice>,
    started: Instant,
    quiet: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.devices.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Demo {
    fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "[{:5.1}s] {}",
                self.started.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }

    fn start(&mut self, i: usize) -> CliResult<()> {
        let d = &mut self.devices[i];
        let mut child = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(&d.dir)
            .args(["start", "--name", &d.name, "--listen", "127.0.0.1:0"])
            .args([
                "--heartbeat-ms",
                "200",
                "--leader-timeout-ms",
                "1000",
                "--presence-ms",
                "300",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| CliError::new(format!("cannot start a node: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| CliError::new("no stdout from the node"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| CliError::new(format!("{} did not start within 30 s", d.name)))?;
        if line.trim() != "ready" {
            let _ = child.kill();
            return Err(CliError::new(format!("{} failed to start", d.name)));
        }
        d.child = Some(child);
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.devices[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run a command on device `i` with `--json`.
    fn cli(&self, i: usize, args: &[&str]) -> CliResult<Value> {
        let out = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(&self.devices[i].dir)
            .arg("--json")
            .args(args)
            .output()
            .map_err(|e| CliError::new(format!("cannot run concord: {e}")))?;
        if !out.status.success() {
            return Err(CliError::new(format!(
                "{} `{}` failed: {}",
                self.devices[i].name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| CliError::new(format!("bad output from concord: {e}")))
    }

    fn wait(&self, what: &str, mut done: impl FnMut() -> CliResult<bool>) -> CliResult<()> {
        loop {
            if done()? {
                return Ok(());
            }
            if self.started.elapsed() > LIMIT {
                return Err(CliError::new(format!(
                    "demo: {what} did not happen within {} s",
                    LIMIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn digests(&self, which: &[usize]) -> CliResult<Vec<String>> {
        which
            .iter()
            .map(|&i| {
                Ok(self.cli(i, &["library", "digest", "demo"])?["digest"]
                    .as_str()
                    .unwrap_or("")
                    .to_string())
            })
            .collect()
    }

    fn converged(&self, which: &[usize]) -> CliResult<bool> {
        let d = self.digests(which)?;
        Ok(d.windows(2).all(|w| w[0] == w[1]))
    }

    fn status(&self, i: usize) -> CliResult<(String, u64)> {
        let status = self.cli(i, &["sync", "status", "demo"])?;
        Ok((
            status["leader"].as_str().unwrap_or("").to_string(),
            status["epoch"].as_u64().unwrap_or(0),
        ))
    }

    fn name_of(&self, id: &str, ids: &[String]) -> String {
        ids.iter()
            .position(|x| x == id)
            .map(|i| self.devices[i].name.clone())
            .unwrap_or_else(|| id.to_string())
    }
}

/// Run the demo with `n` devices; with `json`, quietly, returning a summary.
pub fn run(n: usize, json: bool) -> CliResult<Value> {
    if !(2..=7).contains(&n) {
        return Err(CliError::new("--devices takes 2 to 7 devices"));
    }
    let mut demo = Demo::new(n, json)?;
    let ids = demo.start_and_pair()?;
    demo.share_and_write()?;
    let all: Vec<usize> = (0..n).collect();
    demo.wait("first convergence", || demo.converged(&all))?;
    let (leader, epoch) = demo.status(1)?;
    demo.say(format!(
        "converged: digest {} on all {n}; leader {} (epoch {epoch})",
        &demo.digests(&[0])?[0][..16],
        demo.name_of(&leader, &ids)
    ));
    let dead = demo.kill_leader(&ids, &leader, epoch)?;
    demo.outage(dead)?;
    let dead_name = demo.devices[dead].name.clone();
    demo.say(format!("restarting {dead_name}"));
    demo.start(dead)?;
    demo.wait("every device to converge", || demo.converged(&all))?;
    let tags = demo
        .cli(0, &["tag", "list", "demo"])?
        .as_array()
        .map_or(0, Vec::len);
    let digest = demo.digests(&[0])?[0].clone();
    let (leader_after, epoch_after) = demo.status(dead)?;
    demo.say(format!(
        "converged: all {n} devices hold digest {} ({tags} tags); {dead_name} follows {} at epoch {epoch_after}",
        &digest[..16],
        demo.name_of(&leader_after, &ids)
    ));
    for i in 0..n {
        let _ = demo.cli(i, &["stop"]);
    }
    let summary = json!({
        "devices": n,
        "leader_before": leader,
        "leader_after": leader_after,
        "epoch": epoch_after,
        "digest": digest,
        "tags": tags,
        "seconds": demo.started.elapsed().as_secs_f64(),
    });
    demo.say(format!(
        "done in {:.1} s",
        demo.started.elapsed().as_secs_f64()
    ));
    Ok(if json { summary } else { Value::Null })
}

/// The demo's phases, in the order [`run`] plays them.
impl Demo {
    /// `n` devices in a fresh temporary folder, none started yet.
    fn new(n: usize, quiet: bool) -> CliResult<Demo> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::new(format!("cannot find the concord binary: {e}")))?;
        let root = std::env::temp_dir().join(format!("concord-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        Ok(Demo {
            exe,
            root: root.clone(),
            devices: (0..n)
                .map(|i| DemoDevice {
                    name: format!("device-{}", i + 1),
                    dir: root.join(format!("device-{}", i + 1)),
                    child: None,
                })
                .collect(),
            started: Instant::now(),
            quiet,
        })
    }

    /// Start every device and pair each with every other; their device ids.
    fn start_and_pair(&mut self) -> CliResult<Vec<String>> {
        let n = self.devices.len();
        self.say(format!(
            "starting {n} devices on 127.0.0.1 in {}",
            self.root.display()
        ));
        for i in 0..n {
            self.start(i)?;
        }
        let ids: Vec<String> = (0..n)
            .map(|i| {
                Ok(self.cli(i, &["device"])?["device_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string())
            })
            .collect::<CliResult<_>>()?;
        self.say("pairing every device with every other (one-time tickets)");
        for i in 0..n {
            for j in i + 1..n {
                let invite = self.cli(i, &["pair", "invite"])?;
                self.cli(
                    j,
                    &["pair", "join", invite["ticket"].as_str().unwrap_or("")],
                )?;
            }
        }
        Ok(ids)
    }

    /// The first device creates the library, the others join, all write.
    fn share_and_write(&self) -> CliResult<()> {
        let n = self.devices.len();
        self.say("device-1 creates library \"demo\"; the others join it");
        self.cli(0, &["library", "create", "demo"])?;
        self.cli(
            0,
            &["tag", "create", "demo", "shared", "--color", "#3366ff"],
        )?;
        for j in 1..n {
            self.cli(j, &["library", "join", "demo", &self.devices[0].name])?;
        }
        self.say("every device writes: a tag and an album each");
        for i in 0..n {
            let name = self.devices[i].name.clone();
            self.cli(i, &["tag", "create", "demo", &format!("tag-from-{name}")])?;
            self.cli(
                i,
                &["album", "create", "demo", &format!("album-from-{name}")],
            )?;
        }
        Ok(())
    }

    /// Kill the leader and wait for the survivors to elect another; the
    /// killed device's index.
    fn kill_leader(&mut self, ids: &[String], leader: &str, epoch: u64) -> CliResult<usize> {
        let dead = ids.iter().position(|x| *x == leader).unwrap_or(0);
        self.say(format!(
            "killing the leader, {} (SIGKILL)",
            self.devices[dead].name
        ));
        self.kill(dead);
        let survivors: Vec<usize> = (0..self.devices.len()).filter(|&i| i != dead).collect();
        let mut new_leader = (String::new(), 0);
        self.wait("a new leader", || {
            let views: Vec<(String, u64)> = survivors
                .iter()
                .map(|&i| self.status(i))
                .collect::<CliResult<_>>()?;
            let agreed = views.windows(2).all(|w| w[0] == w[1]);
            if agreed && views[0].1 > epoch && !views[0].0.is_empty() && views[0].0 != leader {
                new_leader = views[0].clone();
                return Ok(true);
            }
            Ok(false)
        })?;
        self.say(format!(
            "re-elected: {} leads at epoch {} (the highest device id among the reachable ones)",
            self.name_of(&new_leader.0, ids),
            new_leader.1
        ));
        Ok(dead)
    }

    /// Writes while `dead` is down, on the survivors and on the dead device's
    /// files; the survivors converge.
    fn outage(&self, dead: usize) -> CliResult<()> {
        let survivors: Vec<usize> = (0..self.devices.len()).filter(|&i| i != dead).collect();
        self.say(
            "writes during the outage, including one on the dead device's files (offline mode)",
        );
        for &i in &survivors {
            let name = self.devices[i].name.clone();
            self.cli(i, &["tag", "create", "demo", &format!("outage-{name}")])?;
        }
        let dead_name = self.devices[dead].name.clone();
        self.cli(
            dead,
            &["tag", "create", "demo", &format!("offline-{dead_name}")],
        )?;
        self.wait("survivors to converge", || self.converged(&survivors))
    }
}
