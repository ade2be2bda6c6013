//! Real `concord` nodes for the multi-process tests: each a daemon on
//! 127.0.0.1 with real Iroh and its own data dir, driven through the CLI as a
//! script would. Every wait is on a condition with a deadline, never a fixed
//! sleep.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{expect_failure, expect_success, one_json, BIN};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Node {
    pub dir: PathBuf,
    pub name: String,
    child: Option<Child>,
    pub retention_ms: Option<u64>,
    /// Run with the production heartbeat and leader timeouts instead of the
    /// fast ones most tests use.
    pub default_timeouts: bool,
    /// The umask the node runs under (the inherited one when `None`).
    pub umask: Option<u32>,
    /// Extra environment of the node and of every command run for it.
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`), for the tests on
    /// namespace networks.
    pub netns: Option<String>,
    /// The `--listen` address.
    pub listen: String,
    /// More `concord start` arguments (`--no-mdns`, `--relay URL`).
    pub start_args: Vec<String>,
}

impl Node {
    pub fn new(root: &Path, name: &str) -> Node {
        Node {
            dir: root.join(name),
            name: name.to_string(),
            child: None,
            retention_ms: None,
            default_timeouts: false,
            umask: None,
            env: Vec::new(),
            netns: None,
            listen: "127.0.0.1:0".into(),
            start_args: Vec::new(),
        }
    }

    /// The `concord` binary, under this node's umask and environment.
    fn command(&self) -> Command {
        self.command_in(None)
    }

    /// The daemon runs inside the node's network namespace, if it has one
    /// (commands reach it over its socket in the data dir, from anywhere).
    fn daemon_command(&self) -> Command {
        self.command_in(self.netns.as_deref())
    }

    fn command_in(&self, netns: Option<&str>) -> Command {
        let mut program: Vec<String> = Vec::new();
        if let Some(ns) = netns {
            program.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(mask) = self.umask {
            program.extend(
                [
                    "sh",
                    "-c",
                    &format!("umask {mask:03o} && exec \"$0\" \"$@\""),
                ]
                .map(String::from),
            );
        }
        program.push(BIN.to_string());
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn start(&mut self) {
        let mut cmd = self.daemon_command();
        cmd.arg("--data-dir").arg(&self.dir).args([
            "start",
            "--name",
            &self.name,
            "--listen",
            &self.listen,
        ]);
        cmd.args(&self.start_args);
        if !self.default_timeouts {
            cmd.args([
                "--heartbeat-ms",
                "100",
                "--leader-timeout-ms",
                "500",
                "--presence-ms",
                "200",
            ]);
        }
        if let Some(r) = self.retention_ms {
            cmd.args(["--retention-ms", &r.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("CONCORD_TEST_LOGS") {
                Some(dir) => {
                    std::fs::File::create(Path::new(&dir).join(format!("{}.log", self.name)))
                        .map(Stdio::from)
                        .unwrap_or_else(|_| Stdio::null())
                }
                None => Stdio::null(),
            })
            .spawn()
            .expect("spawn concord start");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).expect("node did not print ready");
        assert_eq!(line.trim(), "ready", "{}: {line}", self.name);
        self.child = Some(child);
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// `concord stop`, then wait for the process to end.
    pub fn stop(&mut self) {
        let out = self.run(&["stop"]);
        assert!(
            out.status.success(),
            "stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut c) = self.child.take() {
            c.wait().unwrap();
        }
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command()
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("run concord")
    }

    /// Run with `--json`; must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        one_json(&expect_success(out, &a))
    }

    /// Run expecting failure: exit 1 and one `error:` line; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        expect_failure(self.run(args), args)
    }

    pub fn device_id(&self) -> String {
        self.json(&["device"])["device_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn digest(&self, lib: &str) -> String {
        self.json(&["library", "digest", lib])["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn tags(&self, lib: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .json(&["tag", "list", lib])
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    pub fn peers(&self) -> Vec<Value> {
        self.json(&["device", "list"]).as_array().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_within(what, DEADLINE, f);
}

/// Wait for `f` up to `limit`; how long it took.
pub fn wait_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

pub fn pair(inviter: &Node, joiner: &Node) {
    let ticket = inviter.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let j = joiner.json(&["pair", "join", &ticket]);
    assert_eq!(j["name"], inviter.name.as_str());
}

pub fn online(n: &Node, other: &str) -> bool {
    n.peers()
        .iter()
        .any(|p| p["name"] == other && p["online"] == true)
}

pub fn converged(nodes: &[&Node], lib: &str) -> bool {
    let d: Vec<String> = nodes.iter().map(|n| n.digest(lib)).collect();
    d.windows(2).all(|w| w[0] == w[1])
}

/// Two paired nodes, `alpha` and `beta`, run with `env`, sharing library
/// `lib`; `src` a location of alpha and `dst` one of beta, each known to the
/// other. Returns (alpha, beta, alpha's location id, beta's).
pub fn two_devices_with(
    tmp: &Path,
    src: &Path,
    dst: &Path,
    env: &[(&str, &str)],
) -> (Node, Node, String, String) {
    let mut a = Node::new(tmp, "alpha");
    let mut b = Node::new(tmp, "beta");
    for n in [&mut a, &mut b] {
        n.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    a.start();
    b.start();
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    let la = a.json(&["location", "add", "lib", src.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    b.json(&["library", "join", "lib", "alpha"]);
    let lb = b.json(&["location", "add", "lib", dst.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (n, l) in [(&b, &la), (&a, &lb)] {
        wait_until("each sees the other's location", || {
            n.json(&["location", "list", "lib"])
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == l.as_str())
        });
    }
    (a, b, la, lb)
}
