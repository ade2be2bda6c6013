//! The `concord` binary against the CLI contract (`CLI.md`): real processes,
//! temporary data dirs and real directory trees.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod support;
use support::{expect_failure, expect_success, one_json, BIN};

/// A data dir and a scratch folder for directory trees.
struct Env {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    files: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let files = tmp.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        Env {
            data,
            files: files.canonicalize().unwrap(),
            _tmp: tmp,
        }
    }

    fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .current_dir(dir)
            .env_remove("CONCORD_DATA_DIR")
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in(&self.files, args)
    }

    /// Plain stdout of a successful command, without the final newline.
    fn ok(&self, args: &[&str]) -> String {
        expect_success(self.run(args), args)
    }

    /// The single JSON value a successful `--json` command prints.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        one_json(&self.ok(&a))
    }

    /// The one `error: ` line of a command that must fail with exit code 1.
    fn fail(&self, args: &[&str]) -> String {
        expect_failure(self.run(args), args)
    }

    fn digest(&self, lib: &str) -> String {
        self.ok(&["library", "digest", lib])
    }

    /// Write `files` (relative path → content) below `self.files/root`.
    fn tree(&self, root: &str, files: &[(&str, &str)]) -> PathBuf {
        let base = self.files.join(root);
        std::fs::create_dir_all(&base).unwrap();
        for (path, content) in files {
            let p = base.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        base
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
        .to_string()
}

/// `entry list` as `path → entry`.
fn entries(env: &Env, args: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let mut a = vec!["entry", "list", "lib"];
    a.extend_from_slice(args);
    env.json(&a)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (str_of(e, "path"), e.clone()))
        .collect()
}

#[test]
fn device_and_libraries() {
    let env = Env::new();
    let dev = env.json(&["device"]);
    assert!(is_uuid(&str_of(&dev, "device_id")), "{dev}");
    assert!(
        str_of(&dev, "node_id").len() >= 52,
        "the Iroh node id: {dev}"
    );
    assert!(!str_of(&dev, "name").is_empty());
    let plain = env.ok(&["device"]);
    assert!(plain.contains(&str_of(&dev, "device_id")), "{plain}");
    assert!(plain.contains(&str_of(&dev, "node_id")), "{plain}");

    // Plain create prints the UUID alone; --json the object.
    let photos = env.ok(&["library", "create", "photos"]);
    assert!(is_uuid(&photos), "{photos:?}");
    let docs = env.json(&["library", "create", "docs"]);
    assert_eq!(docs["name"], "docs");
    let docs_id = str_of(&docs, "id");
    env.fail(&["library", "create", "photos"]);
    env.fail(&["library", "create", ""]);

    let list = env.json(&["library", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for l in list {
        assert_eq!(l["devices"], 1, "{l}");
    }
    assert!(list.iter().any(|l| l["id"] == photos.as_str()));
    assert!(env.ok(&["library", "list"]).contains("photos"));

    // LIB by name or UUID; the digest alone in plain output.
    let d = env.digest("photos");
    assert_eq!(d.len(), 64);
    assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(env.digest(&photos), d);
    let dj = env.json(&["library", "digest", "photos"]);
    assert_eq!(dj["digest"], d.as_str());
    assert!(dj["records"].as_u64().unwrap() >= 1);
    let shared = env.json(&["library", "digest", "photos", "--shared"]);
    assert!(shared["digest"].is_string());

    let export = one_json(&env.ok(&["library", "export", &docs_id]));
    assert_eq!(export["library"], docs_id.as_str());
    assert_eq!(export["models"]["device"].as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["library", "export", "docs"]), export);

    // $CONCORD_DATA_DIR is the default data dir.
    let out = Command::new(BIN)
        .args(["--json", "library", "list"])
        .env("CONCORD_DATA_DIR", &env.data)
        .output()
        .unwrap();
    assert_eq!(
        one_json(&expect_success(out, &["library", "list"]))
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Usage errors exit with 2.
    for args in [
        &["tag"][..],
        &["no-such-command"],
        &["tag", "create", "photos"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn tags_albums_and_tagging_by_path() {
    let env = Env::new();
    env.ok(&["library", "create", "lib"]);
    let root = env.tree(
        "pics",
        &[("a.jpg", "aaaa"), ("sub/b.jpg", "bb"), ("sub/c.jpg", "c")],
    );
    let loc = env.ok(&["location", "add", "lib", root.to_str().unwrap()]);
    assert!(is_uuid(&loc));

    // Tags: create (UUID alone / {"id"}), list, rename, recolor.
    let holiday = env.ok(&["tag", "create", "lib", "holiday", "--color", "#FF8800"]);
    assert!(is_uuid(&holiday));
    let work = str_of(&env.json(&["tag", "create", "lib", "work"]), "id");
    let tags = env.json(&["tag", "list", "lib"]);
    assert_eq!(
        tags,
        serde_json::json!([
            {"id": holiday, "name": "holiday", "color": "#ff8800"},
            {"id": work, "name": "work", "color": null},
        ])
    );
    assert_eq!(env.ok(&["tag", "rename", "lib", "work", "office"]), "");
    env.ok(&["tag", "recolor", "lib", "office", "00aa11"]);
    let tags = env.json(&["tag", "list", "lib"]);
    assert_eq!(tags[1]["name"], "office");
    assert_eq!(tags[1]["color"], "#00aa11");

    // Apply by relative path (from the tree's folder), absolute path and UUID.
    let listed = entries(&env, &[]);
    let c_id = str_of(&listed["sub/c.jpg"], "id");
    let out = env.run_in(
        &root,
        &[
            "tag",
            "apply",
            "lib",
            "holiday",
            "a.jpg",
            "./sub/../sub/b.jpg",
        ],
    );
    expect_success(out, &["tag", "apply"]);
    env.ok(&["tag", "apply", "lib", &holiday, &c_id]);
    env.ok(&[
        "tag",
        "apply",
        "lib",
        "office",
        root.join("sub").to_str().unwrap(),
    ]);
    let listed = entries(&env, &[]);
    assert_eq!(listed["a.jpg"]["tags"], serde_json::json!(["holiday"]));
    assert_eq!(listed["sub/b.jpg"]["tags"], serde_json::json!(["holiday"]));
    assert_eq!(listed["sub/c.jpg"]["tags"], serde_json::json!(["holiday"]));
    assert_eq!(listed["sub"]["tags"], serde_json::json!(["office"]));
    assert!(env.ok(&["entry", "list", "lib"]).contains("holiday"));

    env.ok(&[
        "tag",
        "remove",
        "lib",
        "holiday",
        root.join("a.jpg").to_str().unwrap(),
    ]);
    assert_eq!(entries(&env, &[])["a.jpg"]["tags"], serde_json::json!([]));

    // Deleting a tag removes it from every entry.
    env.ok(&["tag", "delete", "lib", "holiday"]);
    assert_eq!(
        env.json(&["tag", "list", "lib"]).as_array().unwrap().len(),
        1
    );
    assert_eq!(
        entries(&env, &[])["sub/b.jpg"]["tags"],
        serde_json::json!([])
    );

    // Two tags with one name: the name is ambiguous, the UUID is not.
    let t1 = env.ok(&["tag", "create", "lib", "dup"]);
    env.ok(&["tag", "create", "lib", "dup"]);
    let err = env.fail(&["tag", "delete", "lib", "dup"]);
    assert!(err.contains("UUID"), "{err}");
    env.ok(&["tag", "delete", "lib", &t1]);

    // Albums.
    let trip = env.ok(&["album", "create", "lib", "trip"]);
    assert!(is_uuid(&trip));
    let other = str_of(&env.json(&["album", "create", "lib", "other"]), "id");
    env.ok(&[
        "album",
        "add",
        "lib",
        "trip",
        root.join("a.jpg").to_str().unwrap(),
        &c_id,
    ]);
    env.ok(&["album", "rename", "lib", "trip", "journey"]);
    let albums = env.json(&["album", "list", "lib"]);
    assert_eq!(
        albums,
        serde_json::json!([
            {"id": trip, "name": "journey", "entries": 2},
            {"id": other, "name": "other", "entries": 0},
        ])
    );
    env.ok(&["album", "remove", "lib", &trip, &c_id]);
    assert_eq!(env.json(&["album", "list", "lib"])[0]["entries"], 1);
    env.ok(&["album", "delete", "lib", "journey"]);
    assert_eq!(
        env.json(&["album", "list", "lib"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(env.ok(&["album", "list", "lib"]).contains("other"));
}

#[test]
fn locations_index_rescan_and_remove() {
    let env = Env::new();
    env.ok(&["library", "create", "lib"]);
    let mut files: Vec<(String, String)> = (0..30)
        .map(|i| (format!("d{}/f{i}.txt", i % 3), "x".repeat(i)))
        .collect();
    files.push(("deep/er/still/file".into(), "deep".into()));
    files.push(("top".into(), "t".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let root = env.tree("tree", &refs);
    #[cfg(unix)]
    std::os::unix::fs::symlink("..", root.join("d0/up")).unwrap();

    let added = env.json(&["location", "add", "lib", root.to_str().unwrap()]);
    let loc = str_of(&added, "id");
    let listed = entries(&env, &[]);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (f, _) in &files {
        let mut p = String::new();
        for part in f.split('/') {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            expected.insert(p.clone());
        }
    }
    if cfg!(unix) {
        expected.insert("d0/up".into());
    }
    assert_eq!(listed.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(added["entries"], expected.len());
    assert_eq!(listed["d1/f4.txt"]["kind"], "file");
    assert_eq!(listed["d1/f4.txt"]["size"], 4);
    assert_eq!(listed["d1"]["kind"], "dir");
    if cfg!(unix) {
        assert_eq!(listed["d0/up"]["kind"], "symlink");
    }
    let dev = str_of(&env.json(&["device"]), "device_id");
    for e in listed.values() {
        assert_eq!(e["location_id"], loc.as_str());
        assert_eq!(e["device_id"], dev.as_str());
    }

    let locs = env.json(&["location", "list", "lib"]);
    assert_eq!(
        locs,
        serde_json::json!([{
            "id": loc, "device_id": dev, "path": root.to_str().unwrap(),
            "entries": expected.len(), "name": "tree",
            "volume_id": added["volume_id"],
        }])
    );
    assert!(env
        .ok(&["location", "list", "lib"])
        .contains(root.to_str().unwrap()));

    // Filters.
    assert_eq!(entries(&env, &["--location", &loc]).len(), expected.len());
    assert_eq!(entries(&env, &["--location", "tree"]).len(), expected.len());
    assert_eq!(entries(&env, &["--device", &dev]).len(), expected.len());
    env.fail(&["entry", "list", "lib", "--location", "nowhere"]);
    env.fail(&["entry", "list", "lib", "--device", "nobody"]);

    // Nested and overlapping locations, files and missing paths are refused.
    env.fail(&["location", "add", "lib", root.join("d1").to_str().unwrap()]);
    env.fail(&["location", "add", "lib", env.files.to_str().unwrap()]);
    env.fail(&["location", "add", "lib", root.join("top").to_str().unwrap()]);

    // A tagged file that is later deleted takes its tag assignment along.
    env.ok(&["tag", "create", "lib", "t"]);
    env.ok(&[
        "tag",
        "apply",
        "lib",
        "t",
        root.join("top").to_str().unwrap(),
    ]);

    // Modify, add and remove files; rescan.
    std::fs::write(root.join("d1/f4.txt"), "now much longer").unwrap();
    std::fs::write(root.join("d2/new.txt"), "new").unwrap();
    std::fs::create_dir_all(root.join("fresh/dir")).unwrap();
    std::fs::write(root.join("fresh/dir/n"), "n").unwrap();
    std::fs::remove_file(root.join("top")).unwrap();
    std::fs::remove_dir_all(root.join("deep")).unwrap();
    let r = env.json(&["location", "rescan", "lib", "tree"]);
    assert_eq!(r["inserted"], 4, "{r}");
    assert_eq!(r["deleted"], 5, "{r}");
    assert!(r["updated"].as_u64().unwrap() >= 1, "{r}");
    let after = entries(&env, &[]);
    assert_eq!(after["d1/f4.txt"]["size"], 15);
    assert_eq!(
        after["d1/f4.txt"]["id"], listed["d1/f4.txt"]["id"],
        "same entry"
    );
    assert!(after.contains_key("d2/new.txt"));
    assert!(after.contains_key("fresh/dir/n"));
    assert!(!after.contains_key("top"));
    assert!(!after.keys().any(|k| k.starts_with("deep")));
    assert_eq!(after.len(), expected.len() + 4 - 5);

    // Nothing changed: nothing written.
    let d = env.digest("lib");
    let r = env.json(&["location", "rescan", "lib", &loc]);
    assert_eq!(
        (
            r["inserted"].as_u64(),
            r["updated"].as_u64(),
            r["deleted"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(env.digest("lib"), d);

    // Removing the location removes its entries, not the files.
    assert_eq!(env.ok(&["location", "remove", "lib", "tree"]), "");
    assert!(entries(&env, &[]).is_empty());
    assert_eq!(
        env.json(&["location", "list", "lib"]),
        serde_json::json!([])
    );
    assert!(root.join("d1/f4.txt").exists());
    env.fail(&["location", "rescan", "lib", &loc]);
    // The folder can be indexed again as a new location.
    let again = env.ok(&["location", "add", "lib", root.to_str().unwrap()]);
    assert_ne!(again, loc);
}

#[test]
fn bad_input_fails_cleanly_and_changes_nothing() {
    let env = Env::new();
    env.ok(&["library", "create", "lib"]);
    let root = env.tree("tree", &[("a.txt", "a"), ("b/c.txt", "c")]);
    env.ok(&["location", "add", "lib", root.to_str().unwrap()]);
    env.ok(&["tag", "create", "lib", "tag"]);
    env.ok(&["album", "create", "lib", "album"]);
    let outside = env.tree("outside", &[("x.txt", "x")]).join("x.txt");
    let outside = outside.to_str().unwrap();
    let a = root.join("a.txt");
    let a = a.to_str().unwrap();
    let long = "x".repeat(10 * 1024);
    let missing = env.files.join("missing");
    let unknown_uuid = uuid::Uuid::now_v7().to_string();

    let cases: Vec<Vec<&str>> = vec![
        // unknown library
        vec!["tag", "list", "nolib"],
        vec!["tag", "create", "nolib", "x"],
        vec!["library", "digest", "nolib"],
        vec!["location", "add", "nolib", root.to_str().unwrap()],
        vec!["entry", "list", &unknown_uuid],
        // unknown tag / album / location / entry
        vec!["tag", "apply", "lib", "notag", a],
        vec!["tag", "rename", "lib", "notag", "y"],
        vec!["tag", "delete", "lib", &unknown_uuid],
        vec!["album", "add", "lib", "noalbum", a],
        vec!["album", "delete", "lib", "noalbum"],
        vec!["location", "rescan", "lib", "noloc"],
        vec!["location", "remove", "lib", "noloc"],
        vec!["tag", "apply", "lib", "tag", &unknown_uuid],
        // a path outside every location (with a good one: still nothing changes)
        vec!["tag", "apply", "lib", "tag", a, outside],
        vec!["album", "add", "lib", "album", outside],
        vec!["tag", "apply", "lib", "tag", missing.to_str().unwrap()],
        vec!["tag", "apply", "lib", "tag", root.to_str().unwrap()],
        // names
        vec!["tag", "create", "lib", ""],
        vec!["tag", "create", "lib", &long],
        vec!["tag", "rename", "lib", "tag", ""],
        vec!["tag", "rename", "lib", "tag", &long],
        vec!["album", "create", "lib", "a\nb"],
        vec!["album", "rename", "lib", "album", &long],
        // colours
        vec!["tag", "create", "lib", "x", "--color", "red"],
        vec!["tag", "create", "lib", "x", "--color", "#12345"],
        vec!["tag", "recolor", "lib", "tag", "#ggg000"],
        // location add
        vec!["location", "add", "lib", missing.to_str().unwrap()],
        vec!["location", "add", "lib", a],
        vec!["location", "add", "lib", root.to_str().unwrap()],
    ];
    let before = env.digest("lib");
    let entries_before = env.json(&["entry", "list", "lib"]);
    for args in &cases {
        let err = env.fail(args);
        assert!(err.len() > "error: ".len() + 10, "{args:?}: {err}");
        assert_eq!(env.digest("lib"), before, "{args:?} changed the library");
    }
    assert_eq!(env.json(&["entry", "list", "lib"]), entries_before);
    // The JSON flag does not change how errors look.
    env.fail(&["--json", "tag", "list", "nolib"]);
}

/// `concord relay` serves TLS with exactly the certificate and key it is
/// given, and refuses a configuration that is neither TLS nor an explicit
/// `--insecure-http` (DESIGN §14). The TLS part needs `openssl` to make a
/// certificate and to look at what the relay presents; it skips without it.
#[test]
fn relay_serves_tls_with_the_given_certificate_and_refuses_half_a_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = tmp.path().join("cert.pem");
    let key = tmp.path().join("key.pem");
    fn relay(extra: &[&str]) -> (Output, Vec<String>) {
        let mut args: Vec<String> = ["relay", "--listen", "127.0.0.1:0"]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        (Command::new(BIN).args(&args).output().unwrap(), args)
    }
    let (out, args) = relay(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(expect_failure(out, &args).contains("--insecure-http"));
    let cert_arg = cert.to_str().unwrap();
    let (out, args) = relay(&["--cert", cert_arg, "--insecure-http"]);
    assert!(out.status.code() != Some(0), "{args:?} must not start");

    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=concord-relay-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping the TLS part: it needs openssl to make a certificate");
        return;
    }
    let mut child = Command::new(BIN)
        .args(["relay", "--listen", "127.0.0.1:0", "--cert", cert_arg])
        .arg("--key")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let ready = lines.next().unwrap().unwrap();
    let url = lines.next().unwrap().unwrap();
    assert_eq!(ready, "ready");
    let host_port = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("a TLS relay's URL is https: {url}"))
        .trim_end_matches('/')
        .to_string();
    let shown = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &host_port,
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("concord-relay-test"),
        "the relay presents the given certificate: {text}"
    );
}

#[test]
fn conduit_commands_without_a_node_write_the_library() {
    let env = Env::new();
    for d in ["photos", "backup"] {
        std::fs::create_dir_all(env.files.join(d)).unwrap();
    }
    env.ok(&["library", "create", "lib"]);
    env.ok(&["location", "add", "lib", "photos"]);
    env.ok(&["location", "add", "lib", "backup"]);
    let id = env.ok(&[
        "conduit",
        "create",
        "lib",
        "--from",
        "photos",
        "--to",
        "backup:2026",
        "--policy",
        "replicate",
        "--delete",
        "--cadence",
        "15m",
    ]);
    assert!(is_uuid(&id), "{id}");
    let list = env.json(&["conduit", "list", "lib"]);
    let c = &list.as_array().unwrap()[0];
    let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        ["from", "id", "last_run", "policy", "reason", "state", "to"].into()
    );
    assert_eq!(
        (c["from"].as_str(), c["to"].as_str()),
        (Some("photos"), Some("backup:2026"))
    );
    assert_eq!(
        (c["policy"].as_str(), c["state"].as_str()),
        (Some("replicate"), Some("idle"))
    );
    let status = env.json(&["conduit", "status", "lib", &id]);
    for k in [
        "id",
        "policy",
        "state",
        "reason",
        "files_total",
        "files_done",
        "bytes_total",
        "bytes_done",
        "bytes_sent",
        "bytes_received",
        "conflicts",
        "last_error",
        "last_run",
    ] {
        assert!(status.get(k).is_some(), "{k} missing from {status}");
    }
    env.ok(&["conduit", "pause", "lib", &id]);
    let status = env.json(&["conduit", "status", "lib", &id]);
    assert_eq!(
        (status["state"].as_str(), status["reason"].as_str()),
        (Some("paused"), Some("user"))
    );
    env.ok(&["conduit", "resume", "lib", &id, "--allow-deletes"]);
    assert_eq!(
        env.json(&["conduit", "status", "lib", &id])["state"],
        "idle"
    );

    // Refusals change nothing.
    let before = env.json(&["conduit", "list", "lib"]);
    for (args, says) in [
        (vec!["--policy", "offload"], "--min-free is required"),
        (
            vec!["--policy", "offload", "--min-free", "100%"],
            "min-free",
        ),
        (
            vec!["--policy", "offload", "--min-free", "10G"],
            "offload moves files to another device",
        ),
        (
            vec!["--policy", "replicate", "--pin-tag", "x"],
            "--pin-tag applies to offload only",
        ),
        (vec!["--policy", "mirror"], "policy"),
        (
            vec!["--policy", "sync", "--delete"],
            "--delete applies to replicate only",
        ),
        (vec!["--policy", "replicate", "--cadence", "0s"], "cadence"),
    ] {
        let mut a = vec![
            "conduit", "create", "lib", "--from", "photos", "--to", "backup",
        ];
        a.extend(args);
        assert!(env.fail(&a).contains(says), "{a:?}");
    }
    let overlap = [
        "conduit",
        "create",
        "lib",
        "--from",
        "photos",
        "--to",
        "photos:sub",
        "--policy",
        "sync",
    ];
    assert!(env.fail(&overlap).contains("overlap"));
    let escape = [
        "conduit",
        "create",
        "lib",
        "--from",
        "photos",
        "--to",
        "backup:../x",
        "--policy",
        "replicate",
    ];
    assert!(env.fail(&escape).contains("invalid"));
    assert!(env
        .fail(&["conduit", "run", "lib", &id, "--wait"])
        .contains("no node is running"));
    assert!(env
        .fail(&["conduit", "pause", "lib", "nope"])
        .contains("not a conduit UUID"));
    assert_eq!(env.json(&["conduit", "list", "lib"]), before);

    // Removing keeps every file.
    std::fs::write(env.files.join("backup/keep.txt"), b"x").unwrap();
    env.ok(&["conduit", "remove", "lib", &id]);
    assert_eq!(env.json(&["conduit", "list", "lib"]), serde_json::json!([]));
    assert!(env.files.join("backup/keep.txt").is_file());
}
