//! The conduit calls of `concord/content/1` between real nodes on
//! 127.0.0.1: `List` pages a large folder in order and bounded, reports a
//! missing folder as `Missing` and refuses an escaping one; `Release`
//! removes a file only through an archive conduit to the requester's own
//! location, only when the file is still the version it names, and records
//! it in the audit log; `Apply` only through a sync conduit; `Hold` only
//! through an offload conduit, verified, bounded.

use std::time::Duration;

use concord::model::Conduit;
use concord::{Change, Uuid};
use concord_node::transfer::wire::{
    ApplyAnswer, ApplyRequest, ContentCall, ListPage, ListRequest, ReleaseAnswer, ReleaseRequest,
    WireAction, WireState, PAGE_FILES,
};

mod support;
use support::{add_location, config, init_tracing, pair, share_new_library, start, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn list_pages_and_release_only_through_an_archive_conduit() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(src.join("many")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let n = 2 * PAGE_FILES + 100;
    for i in 0..n {
        std::fs::write(src.join(format!("many/{i:05}")), i.to_string()).unwrap();
    }
    std::fs::write(src.join("keep.txt"), b"precious").unwrap();
    let server = start(&tmp.path().join("a"), config("alpha")).await;
    let client = start(&tmp.path().join("b"), config("beta")).await;
    pair(&server, &client).await;
    let lib = share_new_library(&server, &client, "calls").await;
    let location = add_location(&server.state.library(lib).unwrap(), &src).await;
    let peer = client
        .state
        .resolve_peer(&server.device_id().to_string())
        .unwrap();
    let list = |dir: &str, after: Option<String>| {
        let call = ContentCall::List(ListRequest {
            library: lib,
            location,
            dir: dir.into(),
            after,
        });
        let (fetcher, peer) = (client.fetcher.clone(), peer.clone());
        async move { fetcher.call::<ListPage>(&peer, &call).await.unwrap() }
    };

    // Pages in path order, each within its bound, together everything once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let ListPage::Files { files, more } = list("many", after.clone()).await else {
            panic!("not a page");
        };
        assert!(files.len() <= PAGE_FILES);
        after = files.last().map(|f| f.path.clone());
        seen.extend(files.into_iter().map(|f| f.path));
        if !more {
            break;
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("{i:05}")).collect();
    assert_eq!(seen, want);
    assert_eq!(list("gone", None).await, ListPage::Missing);
    assert!(matches!(
        list("../dst", None).await,
        ListPage::Refused { .. }
    ));

    // A release without an archive conduit is refused; the file stays.
    let hash = *blake3::hash(b"precious").as_bytes();
    let mtime_ns = {
        let md = std::fs::metadata(src.join("keep.txt")).unwrap();
        let d = md
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        d.as_nanos() as i64
    };
    let release = |hash: [u8; 32]| {
        let call = ContentCall::Release(ReleaseRequest {
            library: lib,
            location,
            dir: String::new(),
            path: "keep.txt".into(),
            size: 8,
            mtime_ns,
            hash,
            to_device: "beta".into(),
            to_path: "keep.txt".into(),
        });
        let (fetcher, peer) = (client.fetcher.clone(), peer.clone());
        async move { fetcher.call::<ReleaseAnswer>(&peer, &call).await.unwrap() }
    };
    assert!(matches!(release(hash).await, ReleaseAnswer::Refused { .. }));
    assert!(src.join("keep.txt").is_file());

    // With an archive conduit to beta's own location: only the right version.
    let blib = client.state.library(lib).unwrap();
    let theirs = add_location(&blib, &dst).await;
    let conduit = Conduit {
        id: Uuid::now_v7(),
        source: location,
        source_dir: String::new(),
        destination: theirs,
        destination_dir: String::new(),
        policy: "archive".into(),
        propagate_deletes: false,
        cadence: "manual".into(),
        min_free: None,
        pin_tag: None,
        paused: None,
        allow_deletes: false,
        last_run: None,
        last_error: None,
    };
    blib.commit(Change::insert(&conduit)).unwrap();
    let alib = server.state.library(lib).unwrap();
    wait_for("alpha sees the conduit", Duration::from_secs(60), || {
        concord::query::conduit(&alib, conduit.id)
            .unwrap()
            .is_some_and(|_| concord::query::location(&alib, theirs).unwrap().is_some())
    })
    .await;
    assert!(matches!(
        release([9; 32]).await,
        ReleaseAnswer::Refused { .. }
    ));
    assert!(src.join("keep.txt").is_file());
    assert_eq!(release(hash).await, ReleaseAnswer::Released);
    assert!(!src.join("keep.txt").exists());
    let audit = std::fs::read_to_string(src.join(".concord/audit/archive.jsonl")).unwrap();
    assert!(
        audit.contains(&blake3::Hash::from(hash).to_hex().to_string()),
        "{audit}"
    );
    // Gone now: a second release is refused.
    assert!(matches!(release(hash).await, ReleaseAnswer::Refused { .. }));

    // Apply (Synchronize) needs a sync conduit: the archive one is not.
    let victim = src.join("many/00000");
    let md = std::fs::metadata(&victim).unwrap();
    let version = concord::conduit::tree::FileState::from_metadata(&md);
    let call = ContentCall::Apply(ApplyRequest {
        library: lib,
        location,
        dir: String::new(),
        peer_location: theirs,
        peer_dir: String::new(),
        peer_device: "beta".into(),
        actions: vec![WireAction::Delete {
            path: "many/00000".into(),
            expected: WireState {
                version: version.version,
                inode: version.inode,
            },
        }],
    });
    let answer: ApplyAnswer = client.fetcher.call(&peer, &call).await.unwrap();
    assert!(matches!(answer, ApplyAnswer::Refused { .. }), "{answer:?}");
    assert!(victim.is_file());
    client.shutdown().await;
    server.shutdown().await;
}

/// `Hold` (Offload) between real nodes: refused without an offload conduit
/// from the requester's folder to this one; with it, the destination fetches
/// the requester's file verified, says what it holds (`Same`, `Missing`,
/// `Other`), keeps an older version in its trash, refuses a path that
/// escapes and a call over its bound, and never holds unverified bytes.
#[tokio::test(flavor = "multi_thread")]
async fn hold_fetches_and_checks_only_through_an_offload_conduit() {
    use concord_node::transfer::wire::{
        HoldAnswer, HoldFile, HoldMode, HoldRequest, Holding, MAX_HOLD_FILES,
    };
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("laptop"), tmp.path().join("nas"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(src.join("sub/a.bin"), vec![5u8; 100_000]).unwrap();
    std::fs::write(src.join("b.txt"), b"new").unwrap();
    std::fs::write(dst.join("b.txt"), b"old").unwrap();
    let nas = start(&tmp.path().join("a"), config("nas")).await;
    let laptop = start(&tmp.path().join("b"), config("laptop")).await;
    pair(&nas, &laptop).await;
    let lib = share_new_library(&nas, &laptop, "hold").await;
    let theirs = add_location(&nas.state.library(lib).unwrap(), &dst).await;
    let llib = laptop.state.library(lib).unwrap();
    let mine = add_location(&llib, &src).await;
    let peer = laptop
        .state
        .resolve_peer(&nas.device_id().to_string())
        .unwrap();
    let file = |path: &str, data: &[u8]| HoldFile {
        path: path.into(),
        size: data.len() as u64,
        hash: *blake3::hash(data).as_bytes(),
    };
    let a = file("sub/a.bin", &[5u8; 100_000]);
    let hold = |mode: HoldMode, files: Vec<HoldFile>| {
        let call = ContentCall::Hold(HoldRequest {
            library: lib,
            location: theirs,
            dir: String::new(),
            peer_location: mine,
            peer_dir: String::new(),
            mode,
            files,
        });
        let (fetcher, peer) = (laptop.fetcher.clone(), peer.clone());
        async move { fetcher.call::<HoldAnswer>(&peer, &call).await.unwrap() }
    };
    let refused = hold(HoldMode::Fetch, vec![a.clone()]).await;
    assert!(matches!(refused, HoldAnswer::Refused { .. }), "{refused:?}");
    assert!(!dst.join("sub").exists());

    let conduit = Conduit {
        id: Uuid::now_v7(),
        source: mine,
        source_dir: String::new(),
        destination: theirs,
        destination_dir: String::new(),
        policy: "offload".into(),
        propagate_deletes: false,
        cadence: "manual".into(),
        min_free: Some("10%".into()),
        pin_tag: None,
        paused: None,
        allow_deletes: false,
        last_run: None,
        last_error: None,
    };
    llib.commit(Change::insert(&conduit)).unwrap();
    let nlib = nas.state.library(lib).unwrap();
    wait_for("the NAS sees the conduit", Duration::from_secs(60), || {
        concord::query::conduit(&nlib, conduit.id)
            .unwrap()
            .is_some_and(|_| concord::query::location(&nlib, mine).unwrap().is_some())
    })
    .await;
    let held = |answer: HoldAnswer| match answer {
        HoldAnswer::Held { results } => results,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        held(hold(HoldMode::Check, vec![a.clone()]).await),
        vec![Holding::Missing]
    );
    // A wrong hash is never held; an escaping path is refused per file.
    let mut wrong = a.clone();
    wrong.path = "sub/wrong.bin".into();
    wrong.hash = [7; 32];
    let mut escape = a.clone();
    escape.path = "../escape".into();
    let b = file("b.txt", b"new");
    let results = held(hold(HoldMode::Fetch, vec![a.clone(), wrong, escape, b.clone()]).await);
    assert_eq!(results[0], Holding::Same);
    assert!(matches!(results[1], Holding::Failed { .. }), "{results:?}");
    assert!(matches!(results[2], Holding::Failed { .. }), "{results:?}");
    assert_eq!(results[3], Holding::Same);
    assert_eq!(
        std::fs::read(dst.join("sub/a.bin")).unwrap(),
        vec![5u8; 100_000]
    );
    assert!(!dst.join("sub/wrong.bin").exists());
    assert!(!tmp.path().join("escape").exists());
    assert_eq!(std::fs::read(dst.join("b.txt")).unwrap(), b"new");
    let trashed = std::fs::read_dir(dst.join(".concord/trash"))
        .unwrap()
        .flatten()
        .any(|stamp| std::fs::read(stamp.path().join("b.txt")).is_ok_and(|d| d == b"old"));
    assert!(trashed, "the older version is not in the trash");
    assert_eq!(
        held(hold(HoldMode::Check, vec![a.clone()]).await),
        vec![Holding::Same]
    );
    // Changed on the destination: `Other` with what it holds.
    std::fs::write(dst.join("sub/a.bin"), b"changed").unwrap();
    assert_eq!(
        held(hold(HoldMode::Check, vec![a.clone()]).await),
        vec![Holding::Other {
            hash: *blake3::hash(b"changed").as_bytes()
        }]
    );
    let too_many = vec![a.clone(); MAX_HOLD_FILES + 1];
    let refused = hold(HoldMode::Check, too_many).await;
    assert!(matches!(refused, HoldAnswer::Refused { .. }), "{refused:?}");
    laptop.shutdown().await;
    nas.shutdown().await;
}

/// A listing keeps the BLAKE3 tree it built so that the fetch after it does
/// not hash the file again; that tree serves only the very version it was
/// built from: a file rewritten with the same size and its old mtime put
/// back is hashed afresh and arrives as it is now.
#[tokio::test(flavor = "multi_thread")]
async fn a_tree_kept_from_a_listing_serves_only_that_version() {
    use concord_node::transfer::{FileRequest, TransferProgress};
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let bytes = |seed: u8| {
        (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>()
    };
    let file = src.join("big.bin");
    std::fs::write(&file, bytes(1)).unwrap();
    let server = start(&tmp.path().join("a"), config("alpha")).await;
    let client = start(&tmp.path().join("b"), config("beta")).await;
    pair(&server, &client).await;
    let lib = share_new_library(&server, &client, "trees").await;
    let location = add_location(&server.state.library(lib).unwrap(), &src).await;
    let peer = client
        .state
        .resolve_peer(&server.device_id().to_string())
        .unwrap();
    let call = ContentCall::List(ListRequest {
        library: lib,
        location,
        dir: String::new(),
        after: None,
    });
    let ListPage::Files { files, .. } = client.fetcher.call(&peer, &call).await.unwrap() else {
        panic!("not a page");
    };
    let listed = files[0].hash.unwrap();
    assert_eq!(listed, *blake3::hash(&bytes(1)).as_bytes());
    let request = |hash: Option<[u8; 32]>, name: &str| FileRequest {
        library: lib,
        location,
        path: "big.bin".into(),
        hash,
        dest_root: dst.clone(),
        dest_path: name.into(),
    };
    let progress = TransferProgress::default();
    let got = client
        .fetcher
        .fetch(&peer, request(Some(listed), "one"), &progress)
        .await;
    assert_eq!(got.unwrap().hash, listed);
    assert_eq!(std::fs::read(dst.join("one")).unwrap(), bytes(1));

    // Same size, same mtime, other bytes: only the change time tells.
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, bytes(2)).unwrap();
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    drop(f);
    let now = *blake3::hash(&bytes(2)).as_bytes();
    let got = client
        .fetcher
        .fetch(&peer, request(None, "two"), &progress)
        .await;
    assert_eq!(got.unwrap().hash, now);
    assert_eq!(std::fs::read(dst.join("two")).unwrap(), bytes(2));
    let old = client
        .fetcher
        .fetch(&peer, request(Some(listed), "three"), &progress)
        .await;
    assert!(old.unwrap_err().to_string().contains("changed"));
    assert!(!dst.join("three").exists());
    client.shutdown().await;
    server.shutdown().await;
}
