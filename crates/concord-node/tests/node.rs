//! Two real nodes on 127.0.0.1 in one process: pairing, refusals, library join.

use std::time::Duration;

use concord::digest::{digest, Scope};
use concord::model::Tag;
use concord::{Change, Uuid};
use concord_node::ticket::Ticket;
use concord_node::LibrarySettings;
use concord_node::Node;

mod support;
use support::{config, fast_config, init_tracing, pair, share_new_library, start, wait_for};

/// How long a test waits for sync to happen.
const LIMIT: Duration = Duration::from_secs(30);

async fn node(dir: &std::path::Path, name: &str) -> Node {
    start(dir, config(name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_join_library_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&tmp.path().join("a"), "alpha").await;
    let b = node(&tmp.path().join("b"), "beta").await;
    let c = node(&tmp.path().join("c"), "gamma").await;

    // Wrong secret: refused, nothing stored on either side.
    let mut t = a.pairing.invite(None);
    t.secret[0] ^= 1;
    let err = b.pairing.join(&t.encode()).await.unwrap_err();
    assert!(err.to_string().contains("wrong secret"), "{err}");
    assert!(a.state.peers.list().is_empty() && b.state.peers.list().is_empty());

    // Expired.
    let t = a.pairing.invite(Some(0));
    let err = b.pairing.join(&t.encode()).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // Garbage.
    assert!(b.pairing.join("concord1zzzz").await.is_err());

    // Good ticket, then reuse.
    let t = a.pairing.invite(None).encode();
    let peer = b.pairing.join(&t).await.unwrap();
    assert_eq!(peer.device_id, a.device_id());
    assert_eq!(a.state.peers.list().len(), 1);
    let err = c.pairing.join(&t).await.unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
    assert!(c.state.peers.list().is_empty());
    assert_eq!(a.state.peers.list().len(), 1);

    // A makes a library; B lists and joins it.
    let lib = a.state.data.create_library("photos").unwrap();
    let lib_id = lib.id();
    drop(lib);
    let la = a.state.library(lib_id).unwrap();
    for i in 0..50 {
        la.commit(Change::insert(&Tag {
            id: Uuid::now_v7(),
            name: format!("t{i}"),
            color: None,
        }))
        .unwrap();
    }
    let pa = b.state.resolve_peer("alpha").unwrap();
    let remote = b.setup.list_remote(&pa).await.unwrap();
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0].id, lib_id);
    b.setup.join_library(lib_id, &pa).await.unwrap();
    let lb = b.state.library(lib_id).unwrap();
    let da = la.read(|c| digest(c, Scope::All)).unwrap();
    let db = lb.read(|c| digest(c, Scope::All)).unwrap();
    assert_eq!(da, db);

    // A never-paired device is refused.
    let stranger = concord_node::peers::Peer {
        device_id: a.device_id(),
        name: "alpha".into(),
        node_id: a.node_id().to_string(),
        addrs: a.addrs(),
        paired_at: 0,
        relays: Vec::new(),
    };
    let err = c.setup.list_remote(&stranger).await.unwrap_err();
    assert!(err.to_string().contains("not paired"), "{err}");

    // A private library is not shared with B until shared.
    let private = a.state.data.create_library("secret").unwrap().id();
    a.state
        .set_settings(private, &LibrarySettings { private: true })
        .unwrap();
    let err = b.setup.join_library(private, &pa).await.unwrap_err();
    assert!(err.to_string().contains("not shared"), "{err}");
    assert!(b
        .state
        .data
        .list_libraries()
        .unwrap()
        .iter()
        .all(|l| l.id != private));

    // Removal: B loses access at once.
    a.state
        .remove_device(&b.device_id().to_string())
        .await
        .unwrap();
    let err = b.setup.list_remote(&pa).await.unwrap_err();
    assert!(err.to_string().contains("not paired"), "{err}");

    let _ = Ticket::decode("concord1");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_flow_both_ways_over_iroh() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), fast_config("alpha", true)).await;
    let b = start(&tmp.path().join("b"), fast_config("beta", true)).await;
    pair(&a, &b).await;
    let lib_id = share_new_library(&a, &b, "photos").await;
    let la = a.state.library(lib_id).unwrap();
    let lb = b.state.library(lib_id).unwrap();
    let count = |l: &concord::Library, name: &str| -> i64 {
        l.read(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM tags WHERE name = ?1", [name], |r| {
                    r.get(0)
                })?,
            )
        })
        .unwrap()
    };
    la.commit(Change::insert(&Tag {
        id: Uuid::now_v7(),
        name: "from-a".into(),
        color: None,
    }))
    .unwrap();
    wait_for("A's tag on B", LIMIT, || count(&lb, "from-a") == 1).await;
    lb.commit(Change::insert(&Tag {
        id: Uuid::now_v7(),
        name: "from-b".into(),
        color: None,
    }))
    .unwrap();
    wait_for("B's tag on A", LIMIT, || count(&la, "from-b") == 1).await;
    wait_for("equal digests", LIMIT, || {
        la.read(|c| digest(c, Scope::All)).unwrap() == lb.read(|c| digest(c, Scope::All)).unwrap()
    })
    .await;
    let st = b.host.service(lib_id).unwrap().status().await.unwrap();
    assert_eq!(st.leader, a.device_id());
    a.shutdown().await;
    b.shutdown().await;
}

/// Send raw bytes on a fresh sync stream and return what came back (if anything).
async fn raw_sync(from: &Node, to: &Node, bytes: Vec<u8>) -> Vec<u8> {
    let addr = iroh::EndpointAddr::new(to.node_id()).with_ip_addr(to.addrs()[0]);
    let conn = from
        .state
        .endpoint
        .connect(addr, concord_node::SYNC_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let out = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await;
    conn.close(0u32.into(), b"");
    out.ok().and_then(|r| r.ok()).unwrap_or_default()
}

fn frame(env: &concord::service::protocol::Envelope) -> Vec<u8> {
    let raw = postcard::to_allocvec(env).unwrap();
    let mut f = ((raw.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(0);
    f.extend(raw);
    f
}

fn reply(bytes: &[u8]) -> concord::service::protocol::Msg {
    assert!(bytes.len() > 5, "no reply");
    postcard::from_bytes::<concord::service::protocol::Envelope>(&bytes[5..])
        .unwrap()
        .msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_changes_nothing_and_honest_sync_continues() {
    use concord::model::Volume;
    use concord::model::{Syncable, Value};
    use concord::service::protocol::{Envelope, Msg};
    use concord::sync::entry::{FieldWrite, LogEntry, Op};

    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), fast_config("alpha", true)).await;
    let b = start(&tmp.path().join("b"), fast_config("beta", true)).await;
    let m = start(&tmp.path().join("m"), fast_config("mallory", true)).await;
    pair(&a, &b).await;
    pair(&a, &m).await;
    let lib_id = share_new_library(&a, &b, "photos").await;
    let la = a.state.library(lib_id).unwrap();
    let lb = b.state.library(lib_id).unwrap();
    let before = la.read(|c| digest(c, Scope::All)).unwrap();
    let env = |msg: Msg| Envelope {
        id: 7,
        library: lib_id,
        from: m.device_id(),
        msg,
    };

    // Oversized frame: refused before allocation, stream closed, no reply.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend([0u8; 64]);
    assert!(raw_sync(&m, &a, huge).await.is_empty());
    // Garbage bytes.
    assert!(
        raw_sync(&m, &a, vec![0, 0, 0, 9, 0, 255, 1, 2, 3, 4, 5, 6, 7])
            .await
            .is_empty()
    );
    // Entries for a library mallory is not registered in.
    let tag = LogEntry {
        incarnation: 0,
        origin: m.device_id(),
        origin_seq: 1,
        hlc: concord::hlc::Hlc::pack(a.state.now_ms(), 0),
        lib_seq: None,
        epoch: None,
        model: "tag".into(),
        record: Uuid::now_v7(),
        op: Op::Insert(vec![FieldWrite {
            field: 0,
            value: Value::Text("evil".into()),
            base: 0,
        }]),
        seal: None,
    };
    let r = reply(
        &raw_sync(
            &m,
            &a,
            frame(&env(Msg::PushEntries {
                entries: vec![tag.clone()],
            })),
        )
        .await,
    );
    assert!(
        matches!(&r, Msg::Error { message } if message.contains("not registered")),
        "{r:?}"
    );
    // An envelope claiming to come from another device.
    let mut forged = env(Msg::PushEntries { entries: vec![tag] });
    forged.from = b.device_id();
    let r = reply(&raw_sync(&m, &a, frame(&forged)).await);
    assert!(
        matches!(&r, Msg::Error { message } if message.contains("does not match")),
        "{r:?}"
    );
    assert_eq!(
        la.read(|c| digest(c, Scope::All)).unwrap(),
        before,
        "nothing applied"
    );

    // A registered member sending a device-owned change for another owner.
    m.setup
        .join_library(lib_id, &m.state.resolve_peer("alpha").unwrap())
        .await
        .unwrap();
    let before = la.read(|c| digest(c, Scope::All)).unwrap();
    let vol = Volume {
        id: Uuid::now_v7(),
        device: a.device_id(),
        name: "v".into(),
        fingerprint: "f".into(),
        mount_point: "/".into(),
    };
    let writes = FieldWrite::all(vol.to_values());
    let stolen = LogEntry {
        incarnation: 0,
        origin: m.device_id(),
        origin_seq: 1_000_000,
        hlc: concord::hlc::Hlc::pack(a.state.now_ms(), 0),
        lib_seq: None,
        epoch: None,
        model: "volume".into(),
        record: vol.id,
        op: Op::Insert(writes),
        seal: None,
    };
    let r = reply(
        &raw_sync(
            &m,
            &a,
            frame(&env(Msg::PushEntries {
                entries: vec![stolen.clone()],
            })),
        )
        .await,
    );
    // Taken (a leader answers with the range it sequenced them at), not applied.
    assert!(matches!(r, Msg::Ok | Msg::Sequenced { .. }), "{r:?}");
    let n: i64 = la
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM volumes", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 0, "another device's volume was refused");
    // Proposing entries of another origin is refused outright.
    let mut other = stolen;
    other.origin = b.device_id();
    let r = reply(
        &raw_sync(
            &m,
            &a,
            frame(&env(Msg::ProposeEntries {
                entries: vec![other],
            })),
        )
        .await,
    );
    assert!(matches!(&r, Msg::Error { .. }), "{r:?}");
    let after = la.read(|c| digest(c, Scope::All)).unwrap();
    assert_eq!(after, before);

    // Pushed entries not sealed by their origin: alpha's next entries forged in
    // its name and sealed with mallory's own node key, and a genuine chunk of
    // beta's with one entry altered. Refused over the real connection, nothing
    // logged, mallory reported in alpha's `sync status`.
    let mallory_key = m.state.data.library_options().unwrap().key.unwrap();
    let next = la.with_log(|l| l.max_seq(la.replica())).unwrap() + 1;
    let mut in_alphas_name = vec![LogEntry {
        origin: a.device_id(),
        origin_seq: next,
        incarnation: la.incarnation(),
        hlc: concord::hlc::Hlc::pack(a.state.now_ms(), 0),
        lib_seq: None,
        epoch: None,
        model: "tag".into(),
        record: Uuid::now_v7(),
        op: Op::Insert(FieldWrite::all(
            Tag {
                id: Uuid::now_v7(),
                name: "forged-in-alphas-name".into(),
                color: None,
            }
            .to_values(),
        )),
        seal: None,
    }];
    concord::sync::seal::seal_entries(&mallory_key, lib_id, &mut in_alphas_name);
    let held = lb.with_log(|l| l.max_seq(lb.replica())).unwrap();
    lb.commit(Change::insert(&Tag {
        id: Uuid::now_v7(),
        name: "beta-genuine".into(),
        color: None,
    }))
    .unwrap();
    let mut altered = lb
        .with_log(|l| l.fetch_origin(lb.replica(), held, 256))
        .unwrap();
    assert!(
        altered.len() == 1 && altered[0].seal.is_some(),
        "{altered:?}"
    );
    altered[0].hlc += 1;
    for entries in [in_alphas_name.clone(), altered] {
        let r = reply(&raw_sync(&m, &a, frame(&env(Msg::PushEntries { entries }))).await);
        assert!(matches!(r, Msg::Ok | Msg::Sequenced { .. }), "{r:?}");
    }
    assert!(!la.with_log(|l| l.contains(la.replica(), next)).unwrap());
    let forged_tags: i64 = la
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM tags WHERE name = 'forged-in-alphas-name'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(forged_tags, 0);
    let status = a.host.service(lib_id).unwrap().status().await.unwrap();
    let seen = status
        .peers
        .iter()
        .find(|p| p.device_id == m.device_id())
        .unwrap();
    assert!(seen.forged >= 2, "{seen:?}");
    assert!(seen.last_refusal.is_some());

    // Honest sync goes on.
    la.commit(Change::insert(&Tag {
        id: Uuid::now_v7(),
        name: "still-syncing".into(),
        color: None,
    }))
    .unwrap();
    wait_for("honest sync", LIMIT, || {
        lb.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM tags WHERE name = 'still-syncing'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .unwrap()
            == 1
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    m.shutdown().await;
}
