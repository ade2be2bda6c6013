//! Tests on real networks built from Linux network namespaces: every host is
//! a namespace with its own interfaces and addresses, joined by veth pairs
//! and bridges that live in namespaces too, so nothing here touches the
//! machine's own network and no packet leaves the namespaces a test creates.
//!
//! They need root and `ip netns`; without them each test prints why it is
//! skipped and passes. Every namespace is named after the test process and a
//! counter, and is deleted (with the links inside it) when the test ends,
//! however it ends.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod support;
use support::node::*;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The namespaces (and veth pairs in creation) of one test, removed on drop.
struct Net {
    namespaces: Vec<String>,
    pending_links: Vec<String>,
}

impl Net {
    /// A new empty network, or `None` (with the reason printed) where
    /// namespaces cannot be made.
    fn new(test: &str) -> Option<Net> {
        let mut net = Net {
            namespaces: Vec::new(),
            pending_links: Vec::new(),
        };
        let probe = net.name("probe");
        let ok = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "skipping {test}: it needs root and `ip netns` (iproute2) to build its network"
            );
            return None;
        }
        net.namespaces.push(probe);
        Some(net)
    }

    fn name(&self, what: &str) -> String {
        format!(
            "cc{}n{}{what}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A new namespace with its loopback up.
    fn host(&mut self, what: &str) -> String {
        let ns = self.name(what);
        sh(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.ip(&ns, "link set lo up");
        ns
    }

    /// `ip -n NS ARGS...`, which must succeed.
    fn ip(&self, ns: &str, args: &str) {
        let mut all = vec!["-n", ns];
        all.extend(args.split_whitespace());
        sh(&all);
    }

    /// A veth pair from `a` (interface `a_if`) to `b` (`b_if`), both up.
    fn wire(&mut self, a: &str, a_if: &str, b: &str, b_if: &str) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (x, y) = (
            format!("cv{}{n}a", std::process::id() % 100_000),
            format!("cv{}{n}b", std::process::id() % 100_000),
        );
        self.pending_links.push(x.clone());
        sh(&["link", "add", &x, "type", "veth", "peer", "name", &y]);
        sh(&["link", "set", &x, "netns", a, "name", a_if]);
        sh(&["link", "set", &y, "netns", b, "name", b_if]);
        self.pending_links.pop();
        self.ip(a, &format!("link set {a_if} up"));
        self.ip(b, &format!("link set {b_if} up"));
    }

    /// A switch: a namespace holding a bridge `br0`.
    fn switch(&mut self, what: &str) -> String {
        let ns = self.host(what);
        self.ip(&ns, "link add br0 type bridge");
        self.ip(&ns, "link set br0 up");
        ns
    }

    /// Plug `host` into `switch` as `dev` with `addr` (CIDR); multicast (mDNS)
    /// goes out on it.
    fn plug(&mut self, host: &str, dev: &str, addr: &str, switch: &str) {
        let port = format!("p{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.wire(host, dev, switch, &port);
        self.ip(switch, &format!("link set {port} master br0"));
        self.ip(host, &format!("addr add {addr} dev {dev}"));
        self.ip(host, &format!("route add 224.0.0.0/4 dev {dev}"));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in &self.pending_links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node inside namespace `ns`, listening on every address there.
fn node_in(root: &std::path::Path, name: &str, ns: &str, args: &[&str]) -> Node {
    let mut n = Node::new(root, name);
    n.netns = Some(ns.to_string());
    n.listen = "0.0.0.0:0".into();
    n.start_args = args.iter().map(|s| s.to_string()).collect();
    n.start();
    n
}

/// `cond` stays false for all of `window` (an absence, which can only be
/// observed over a period).
fn stays_false(window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < window {
        if cond() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn has_tags(n: &Node, lib: &str, tags: &[&str]) -> bool {
    let have = n.tags(lib);
    tags.iter().all(|t| have.iter().any(|h| h == t))
}

/// Two hosts on one bridge, paired and sharing library `lib`, in sync.
fn lan_pair(net: &mut Net, root: &std::path::Path, args: &[&str]) -> (Vec<String>, Vec<Node>) {
    let sw = net.switch("sw");
    let h1 = net.host("h1");
    let h2 = net.host("h2");
    net.plug(&h1, "eth0", "10.201.0.1/24", &sw);
    net.plug(&h2, "eth0", "10.201.0.2/24", &sw);
    let a = node_in(root, "h1", &h1, args);
    let b = node_in(root, "h2", &h2, args);
    pair(&a, &b);
    a.json(&["library", "create", "lib"]);
    b.json(&["library", "join", "lib", "h1"]);
    a.json(&["tag", "create", "lib", "before"]);
    wait_until("both hold the first tag", || {
        has_tags(&b, "lib", &["before"])
    });
    (vec![h1, h2], vec![a, b])
}

/// Move both hosts to new addresses: nobody's remembered address is good.
fn readdress(net: &Net, hosts: &[String]) {
    net.ip(&hosts[0], "addr del 10.201.0.1/24 dev eth0");
    net.ip(&hosts[1], "addr del 10.201.0.2/24 dev eth0");
    net.ip(&hosts[0], "addr add 10.201.0.11/24 dev eth0");
    net.ip(&hosts[1], "addr add 10.201.0.12/24 dev eth0");
    // Removing a device's last address drops its routes, the multicast one
    // too; a DHCP client puts it back the same way.
    for h in hosts {
        net.ip(h, "route replace 224.0.0.0/4 dev eth0");
    }
}

#[test]
fn lan_devices_find_each_other_again_after_address_changes_through_mdns() {
    let Some(mut net) = Net::new("lan mDNS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (hosts, nodes) = lan_pair(&mut net, tmp.path(), &[]);
    readdress(&net, &hosts);
    nodes[0].json(&["tag", "create", "lib", "from-h1"]);
    nodes[1].json(&["tag", "create", "lib", "from-h2"]);
    wait_until("both sides' writes on both, without pairing again", || {
        nodes
            .iter()
            .all(|n| has_tags(n, "lib", &["from-h1", "from-h2"]))
    });
    wait_until("digests equal", || {
        converged(&[&nodes[0], &nodes[1]], "lib")
    });
}

#[test]
fn without_mdns_a_moved_device_is_found_only_when_it_dials_in() {
    let Some(mut net) = Net::new("lan without mDNS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (hosts, nodes) = lan_pair(&mut net, tmp.path(), &["--no-mdns"]);
    readdress(&net, &hosts);
    nodes[0].json(&["tag", "create", "lib", "from-h1"]);
    nodes[1].json(&["tag", "create", "lib", "from-h2"]);
    assert!(
        stays_false(Duration::from_secs(5), || has_tags(
            &nodes[1],
            "lib",
            &["from-h1"]
        ) || has_tags(
            &nodes[0],
            "lib",
            &["from-h2"]
        )),
        "without mDNS neither should find the other at its new address"
    );
    // h1 returns to the address h2 remembers: h2 dials in, h1 learns h2's new one.
    net.ip(&hosts[0], "addr add 10.201.0.1/24 dev eth0");
    wait_until("both sides' writes on both once h2 dials in", || {
        nodes
            .iter()
            .all(|n| has_tags(n, "lib", &["from-h1", "from-h2"]))
    });
    wait_until("digests equal", || {
        converged(&[&nodes[0], &nodes[1]], "lib")
    });
}

/// `concord relay --insecure-http` inside a namespace, stopped on drop.
struct Relay {
    child: std::process::Child,
    url: String,
}

impl Relay {
    fn start(ns: &str, listen: &str) -> Relay {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                support::BIN,
                "relay",
                "--listen",
                listen,
                "--insecure-http",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn concord relay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.next().and_then(Result::ok).unwrap_or_default();
            let url = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send((ready, url));
        });
        let (ready, url) = rx
            .recv_timeout(DEADLINE)
            .expect("relay did not print ready");
        assert_eq!(ready, "ready");
        assert!(url.starts_with("http://"), "{url}");
        Relay { child, url }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path `sync status` on `n` shows for its peer named `peer`.
fn path_to(n: &Node, peer: &str) -> Option<String> {
    let st = n.json(&["sync", "status", "lib"]);
    st["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == peer)
        .and_then(|p| p["path"].as_str().map(String::from))
}

#[test]
fn hosts_without_a_route_sync_through_a_relay_then_move_to_a_direct_path() {
    let Some(mut net) = Net::new("relay") else {
        return;
    };
    // A router joins three networks: A (10.202.1.0/24), B (10.202.2.0/24)
    // and the relay's (10.202.3.0/24). A and B route only to the relay's.
    let rt = net.host("rt");
    let ha = net.host("ha");
    let hb = net.host("hb");
    let hr = net.host("hr");
    net.wire(&ha, "eth0", &rt, "ra");
    net.wire(&hb, "eth0", &rt, "rb");
    net.wire(&hr, "eth0", &rt, "rc");
    net.ip(&rt, "addr add 10.202.1.1/24 dev ra");
    net.ip(&rt, "addr add 10.202.2.1/24 dev rb");
    net.ip(&rt, "addr add 10.202.3.1/24 dev rc");
    let fwd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &rt,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .unwrap();
    assert!(fwd.success());
    net.ip(&ha, "addr add 10.202.1.2/24 dev eth0");
    net.ip(&hb, "addr add 10.202.2.2/24 dev eth0");
    net.ip(&hr, "addr add 10.202.3.2/24 dev eth0");
    net.ip(&ha, "route add 10.202.3.0/24 via 10.202.1.1");
    net.ip(&hb, "route add 10.202.3.0/24 via 10.202.2.1");
    net.ip(&hr, "route add default via 10.202.3.1");

    let relay = Relay::start(&hr, "10.202.3.2:3340");
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--no-mdns", "--relay", relay.url.as_str()];
    let a = node_in(tmp.path(), "ha", &ha, &args);
    let b = node_in(tmp.path(), "hb", &hb, &args);
    let ticket = a.json(&["pair", "invite"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ticket.starts_with("concord2"), "{ticket}");
    assert_eq!(b.json(&["pair", "join", &ticket])["name"], "ha");
    a.json(&["library", "create", "lib"]);
    b.json(&["library", "join", "lib", "ha"]);
    a.json(&["tag", "create", "lib", "from-a"]);
    b.json(&["tag", "create", "lib", "from-b"]);
    wait_until("both sides' tags on both through the relay", || {
        has_tags(&a, "lib", &["from-a", "from-b"]) && has_tags(&b, "lib", &["from-a", "from-b"])
    });
    wait_until("digests equal", || converged(&[&a, &b], "lib"));
    wait_until("sync status says relay", || {
        path_to(&a, "hb").as_deref() == Some("relay")
            && path_to(&b, "ha").as_deref() == Some("relay")
    });

    // A route appears: the connection moves to the direct path.
    net.ip(&ha, "route add 10.202.2.0/24 via 10.202.1.1");
    net.ip(&hb, "route add 10.202.1.0/24 via 10.202.2.1");
    wait_until("sync status says direct", || {
        path_to(&a, "hb").as_deref() == Some("direct")
            && path_to(&b, "ha").as_deref() == Some("direct")
    });
    a.json(&["tag", "create", "lib", "direct-a"]);
    b.json(&["tag", "create", "lib", "direct-b"]);
    wait_until("writes after the move on both", || {
        has_tags(&a, "lib", &["direct-a", "direct-b"])
            && has_tags(&b, "lib", &["direct-a", "direct-b"])
    });
}

#[test]
fn writes_on_both_sides_of_a_cut_link_all_arrive_once_it_returns() {
    let Some(mut net) = Net::new("cut link") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (hosts, nodes) = lan_pair(&mut net, tmp.path(), &[]);
    net.ip(&hosts[1], "link set eth0 down");
    let mut written = Vec::new();
    let write_round = |round: &str, written: &mut Vec<String>| {
        for i in 0..5 {
            for (n, side) in nodes.iter().zip(["h1", "h2"]) {
                let tag = format!("{side}-{round}-{i}");
                n.json(&["tag", "create", "lib", &tag]); // acknowledged
                written.push(tag);
            }
        }
    };
    write_round("cut", &mut written);
    // Keep writing until the connections have died on both sides (QUIC idle
    // timeout), so what follows is a reconnection, not a retransmission.
    wait_until("both sides see the connection gone", || {
        nodes.iter().zip(["h2", "h1"]).all(|(n, other)| {
            n.peers()
                .iter()
                .any(|p| p["name"] == other && p["path"].is_null())
        })
    });
    write_round("dead", &mut written);
    assert!(
        !has_tags(&nodes[1], "lib", &["h1-cut-0"]) && !has_tags(&nodes[0], "lib", &["h2-cut-0"]),
        "nothing crosses a link that is down"
    );
    net.ip(&hosts[1], "link set eth0 up");
    net.ip(&hosts[1], "route replace 224.0.0.0/4 dev eth0");
    let tags: Vec<&str> = written.iter().map(String::as_str).collect();
    let took = wait_within("every acknowledged write on both", DEADLINE, || {
        nodes.iter().all(|n| has_tags(n, "lib", &tags))
    });
    wait_until("digests equal", || {
        converged(&[&nodes[0], &nodes[1]], "lib")
    });
    eprintln!("all writes on both {took:?} after the link returned");
}
