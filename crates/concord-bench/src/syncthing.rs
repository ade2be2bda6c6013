//! The Syncthing baseline of F1 and F2: two headless instances (Debian's
//! `syncthing`) in a network namespace of their own that has nothing but a
//! loopback interface, so no packet of theirs can leave it whatever their
//! defaults. Before either starts, its generated `config.xml` is set to
//! listen on 127.0.0.1 only with relays, global discovery, local announce,
//! NAT traversal, STUN, usage and crash reporting and upgrades off; devices
//! and the folder are then configured through the REST API (plain HTTP on
//! 127.0.0.1 from a thread inside the namespace). The time runs from the
//! folder being shared on both to both reporting it idle with every file
//! in sync; the caller then compares the content.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::b3r::enter;
use crate::common::progress;
use crate::tools;

const API_KEY: &str = "concord-bench-loopback-only";
const FOLDER: &str = "bench";

/// A namespace with only `lo`, up; deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        let name = format!("concord-st-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns(name);
        ok(&["-n", &ns.0, "link", "set", "lo", "up"]).then_some(ns)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Seconds from sharing `src` (on instance A) with `dst` (on B) to both in
/// sync with `files` files; `None` (and why, on stderr) when Syncthing or a
/// network namespace cannot be had here. `work` holds both homes.
pub fn time_sync(work: &Path, src: &Path, dst: &Path, files: usize) -> anyhow::Result<Option<f64>> {
    if !tools::ensure("syncthing", "syncthing") {
        progress!("Syncthing baseline skipped: syncthing cannot be installed");
        return Ok(None);
    }
    let Some(ns) = Netns::create() else {
        progress!("Syncthing baseline skipped: it needs root and `ip netns` (loopback only)");
        return Ok(None);
    };
    let (path, work, src, dst) = (
        ns.path(),
        work.to_path_buf(),
        src.to_path_buf(),
        dst.to_path_buf(),
    );
    let secs = std::thread::spawn(move || -> anyhow::Result<f64> {
        enter(&path)?;
        let a = Instance::launch(&work.join("st-a"), 22001, 18384)?;
        let b = Instance::launch(&work.join("st-b"), 22002, 18385)?;
        run(&a, &b, &src, &dst, files)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the Syncthing thread panicked"))??;
    drop(ns);
    Ok(Some(secs))
}

/// Connect the two, then time the shared folder to in sync.
fn run(a: &Instance, b: &Instance, src: &Path, dst: &Path, files: usize) -> anyhow::Result<f64> {
    a.add_device(b)?;
    b.add_device(a)?;
    wait("the instances to connect", Duration::from_secs(120), || {
        let c = a.get("/rest/system/connections")?;
        Ok(c["connections"][&b.id]["connected"] == json!(true))
    })?;
    std::fs::create_dir_all(dst)?;
    let t = Instant::now();
    a.add_folder(src, &[a, b])?;
    b.add_folder(dst, &[a, b])?;
    wait("Syncthing to sync", Duration::from_secs(3600), || {
        Ok(a.in_sync(files)? && b.in_sync(files)?)
    })?;
    Ok(t.elapsed().as_secs_f64())
}

fn wait(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while !f()? {
        anyhow::ensure!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One running instance; killed (by its own handle) on drop.
struct Instance {
    child: Child,
    gui: u16,
    listen: u16,
    id: String,
}

/// Set `<tag>…</tag>`'s first occurrence in `xml` to `value`.
fn set_tag(xml: &str, tag: &str, value: &str) -> anyhow::Result<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let start = xml
        .find(&open)
        .ok_or_else(|| anyhow::anyhow!("config.xml has no <{tag}>"))?
        + open.len();
    let end = start
        + xml[start..]
            .find(&close)
            .ok_or_else(|| anyhow::anyhow!("config.xml has no </{tag}>"))?;
    Ok(format!("{}{value}{}", &xml[..start], &xml[end..]))
}

/// Loopback only, nothing that reaches out, no lowered priority.
fn loopback_only(xml: &str, listen: u16, gui: u16) -> anyhow::Result<String> {
    let mut xml = xml.to_string();
    let listen = format!("tcp://127.0.0.1:{listen}");
    let gui = format!("127.0.0.1:{gui}");
    for (tag, value) in [
        ("listenAddress", listen.as_str()),
        ("address", gui.as_str()), // the first <address> is the GUI's
        ("apikey", API_KEY),
        ("globalAnnounceEnabled", "false"),
        ("localAnnounceEnabled", "false"),
        ("relaysEnabled", "false"),
        ("natEnabled", "false"),
        ("startBrowser", "false"),
        ("urAccepted", "-1"),
        ("autoUpgradeIntervalH", "0"),
        ("crashReportingEnabled", "false"),
        ("stunKeepaliveStartS", "0"),
        ("announceLANAddresses", "false"),
        ("setLowPriority", "false"),
        ("reconnectionIntervalS", "1"),
    ] {
        xml = set_tag(&xml, tag, value)?;
    }
    Ok(xml)
}

impl Instance {
    fn launch(home: &Path, listen: u16, gui: u16) -> anyhow::Result<Instance> {
        std::fs::create_dir_all(home)?;
        let home_arg = format!("--home={}", home.display());
        let out = Command::new("syncthing")
            .args([
                "generate",
                &home_arg,
                "--no-default-folder",
                "--skip-port-probing",
            ])
            .output()?;
        anyhow::ensure!(out.status.success(), "syncthing generate failed");
        let config = home.join("config.xml");
        // The GUI's <address> comes before any device's in the file.
        let xml = std::fs::read_to_string(&config)?;
        let gui_at = xml
            .find("<gui ")
            .ok_or_else(|| anyhow::anyhow!("no <gui> in config.xml"))?;
        let (head, tail) = xml.split_at(gui_at);
        let tail = loopback_only(tail, listen, gui)?;
        std::fs::write(&config, format!("{head}{tail}"))?;
        let log = std::fs::File::create(home.join("syncthing.log"))?;
        let child = Command::new("syncthing")
            .args([
                "serve",
                &home_arg,
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
            ])
            .arg(format!("--gui-address=http://127.0.0.1:{gui}"))
            .arg(format!("--gui-apikey={API_KEY}"))
            .env("STNODEFAULTFOLDER", "1")
            .env("STNOUPGRADE", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut me = Instance {
            child,
            gui,
            listen,
            id: String::new(),
        };
        wait("Syncthing's REST API", Duration::from_secs(60), || {
            Ok(me.get("/rest/system/ping").is_ok())
        })?;
        me.id = me.get("/rest/system/status")?["myID"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no myID"))?
            .to_string();
        Ok(me)
    }

    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.gui))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let (head, text) = reply
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("{method} {path}: no HTTP reply"))?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{method} {path}: {} {text}",
            head.lines().next().unwrap_or_default()
        );
        Ok(serde_json::from_str(text).unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.http("GET", path, None)
    }

    fn add_device(&self, other: &Instance) -> anyhow::Result<()> {
        let device = json!({
            "deviceID": other.id,
            "name": format!("peer-{}", other.listen),
            "addresses": [format!("tcp://127.0.0.1:{}", other.listen)],
        });
        self.http("POST", "/rest/config/devices", Some(&device))?;
        Ok(())
    }

    fn add_folder(&self, path: &Path, with: &[&Instance]) -> anyhow::Result<()> {
        let devices: Vec<Value> = with.iter().map(|i| json!({ "deviceID": i.id })).collect();
        let folder = json!({
            "id": FOLDER,
            "label": FOLDER,
            "path": path.display().to_string(),
            "type": "sendreceive",
            "devices": devices,
            "rescanIntervalS": 3600,
            "fsWatcherEnabled": false,
        });
        self.http("POST", "/rest/config/folders", Some(&folder))?;
        Ok(())
    }

    /// The folder idle here with `files` files and nothing needed.
    fn in_sync(&self, files: usize) -> anyhow::Result<bool> {
        let s = self.get(&format!("/rest/db/status?folder={FOLDER}"))?;
        let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
        Ok(s["state"] == json!("idle")
            && n("needFiles") == 0
            && n("localFiles") == files as u64
            && n("globalFiles") == files as u64)
    }
}

impl Drop for Instance {
    /// Ask it to shut down (its monitor and the process it runs), then wait;
    /// kill it by its own handle only if it does not go.
    fn drop(&mut self) {
        let _ = self.http("POST", "/rest/system/shutdown", None);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where Syncthing keeps its marker in a shared folder (left out of the
/// content comparison).
pub const MARKER: &str = ".stfolder";

#[cfg(test)]
mod tests {
    use super::*;

    /// The `<gui>` and `<options>` of a config `syncthing generate` wrote
    /// (1.19.2), the tags that reach outside trimmed to their defaults.
    const GENERATED: &str = "<gui enabled=\"true\" tls=\"false\">
        <address>127.0.0.1:8384</address>
        <apikey>random</apikey>
    </gui>
    <options>
        <listenAddress>default</listenAddress>
        <globalAnnounceServer>default</globalAnnounceServer>
        <globalAnnounceEnabled>true</globalAnnounceEnabled>
        <localAnnounceEnabled>true</localAnnounceEnabled>
        <reconnectionIntervalS>60</reconnectionIntervalS>
        <relaysEnabled>true</relaysEnabled>
        <startBrowser>true</startBrowser>
        <natEnabled>true</natEnabled>
        <urAccepted>0</urAccepted>
        <autoUpgradeIntervalH>12</autoUpgradeIntervalH>
        <setLowPriority>true</setLowPriority>
        <crashReportingEnabled>true</crashReportingEnabled>
        <stunKeepaliveStartS>180</stunKeepaliveStartS>
        <announceLANAddresses>true</announceLANAddresses>
    </options>
    <device id=\"X\"><address>dynamic</address></device>";

    #[test]
    fn the_config_listens_on_loopback_and_reaches_nothing_outside() {
        let xml = loopback_only(GENERATED, 22001, 18384).unwrap();
        assert!(xml.contains("<listenAddress>tcp://127.0.0.1:22001</listenAddress>"));
        assert!(xml.contains("<address>127.0.0.1:18384</address>"));
        assert!(!xml.contains(">true<"), "an option left on: {xml}");
        assert!(xml.contains("<urAccepted>-1</urAccepted>"));
        assert!(xml.contains("<stunKeepaliveStartS>0</stunKeepaliveStartS>"));
        // Another device's address is not the GUI's.
        assert!(xml.contains("<address>dynamic</address>"));
    }

    #[test]
    fn a_config_without_an_expected_option_is_refused() {
        let trimmed = GENERATED.replace("<natEnabled>true</natEnabled>", "");
        assert!(loopback_only(&trimmed, 22001, 18384).is_err());
    }
}
