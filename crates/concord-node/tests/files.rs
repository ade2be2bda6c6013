//! Real files, real nodes on 127.0.0.1 in one process: a peer's bulk index
//! becomes this device's own index job, and watched locations reach peers live.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use concord::model::FileEntry;
use concord::sync::txn::Source;
use concord::{index, query, Library, Uuid};
use concord_node::Node;

mod support;
use support::{add_location, fast_config, init_tracing, pair, share_new_library, start, wait_for};

/// Two paired nodes sharing a new library: (A, B, library id).
async fn two_nodes(tmp: &Path, b_watches: bool) -> (Node, Node, Uuid) {
    let a = start(&tmp.join("a"), fast_config("alpha", true)).await;
    let b = start(&tmp.join("b"), fast_config("beta", b_watches)).await;
    pair(&a, &b).await;
    let lib_id = share_new_library(&a, &b, "files").await;
    (a, b, lib_id)
}

fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root
            .join(format!("d{}", i / 10_000))
            .join(format!("e{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}.txt")), vec![b'x'; i % 100]).unwrap();
    }
}

/// (path, kind, size) of every entry of a location, with the devices owning them.
fn entry_set(lib: &Library, location: Uuid) -> (BTreeSet<(String, i64, i64)>, BTreeSet<Uuid>) {
    let entries = query::location_entries(lib, location).unwrap();
    let devices = entries.iter().map(|e| e.device).collect();
    let set = entries
        .into_iter()
        .map(|e| (e.path, e.kind, e.size))
        .collect();
    (set, devices)
}

/// A indexes `files` real files: A's log grows by one bulk entry for them; B,
/// which has a location of the very same folder (indexed when it held two
/// files, and not watched), runs its own index job and ends with the same
/// entries, owned by B.
async fn peer_bulk_index_becomes_own_job(files: usize, limit: Duration) {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("readme.txt"), "two files").unwrap();
    std::fs::write(tree.join("notes.txt"), "so far").unwrap();
    let (a, b, lib_id) = two_nodes(tmp.path(), false).await;
    let la = a.state.library(lib_id).unwrap();
    let lb = b.state.library(lib_id).unwrap();

    let b_loc = add_location(&lb, &tree).await;
    // A has no location there: B's initial index is browsable on A.
    wait_for("B's initial index browsable on A", limit, || {
        let jobs = a.host.jobs(lib_id).unwrap();
        jobs.len() == 1 && jobs[0].origin == b.device_id() && jobs[0].state == "browsable"
    })
    .await;

    let t = Instant::now();
    let tree2 = tree.clone();
    tokio::task::spawn_blocking(move || make_tree(&tree2, files))
        .await
        .unwrap();
    eprintln!("made {files} files in {:?}", t.elapsed());

    // (Counted by sequence and commits: acknowledged entries may be pruned.)
    let seq_before = la.with_log(|l| l.max_seq(la.replica())).unwrap();
    let mut commits = la.subscribe();
    let t = Instant::now();
    let a_loc = add_location(&la, &tree).await;
    eprintln!("A indexed in {:?}", t.elapsed());
    let seq_after = la.with_log(|l| l.max_seq(la.replica())).unwrap();
    let mut local = Vec::new();
    while let Ok(e) = commits.try_recv() {
        if e.source == Source::Local {
            let mut models = e.models.clone();
            models.sort();
            local.push((models, e.entries));
        }
    }
    // The new volume and location in one commit, then the files: ONE entry.
    assert_eq!(
        local,
        [(vec!["location", "volume"], 2), (vec!["file_entry"], 1)]
    );
    assert_eq!(seq_after - seq_before, 3);
    let bulk: Vec<_> = query::bulk_operations(&la)
        .unwrap()
        .into_iter()
        .filter(|r| r.origin == a.device_id())
        .collect();
    assert_eq!(bulk.len(), 1);
    assert_eq!(bulk[0].origin_seq, seq_after);

    // B receives it and runs its own job for its own location.
    let t = Instant::now();
    let took = wait_for("B's index job", limit, || {
        b.host
            .jobs(lib_id)
            .unwrap()
            .iter()
            .any(|j| j.origin == a.device_id() && j.location == a_loc && j.state == "indexed")
    })
    .await;
    eprintln!("B's job done {took:?} after A's index ({:?})", t.elapsed());
    let jobs = b.host.jobs(lib_id).unwrap();
    let job = jobs.iter().find(|j| j.location == a_loc).unwrap();
    assert_eq!(job.local_location, Some(b_loc));
    assert_eq!(job.kind, "initial_index");
    let (set_a, dev_a) = entry_set(&la, a_loc);
    let (set_b, dev_b) = entry_set(&lb, b_loc);
    assert_eq!(
        set_a.len(),
        files + files.div_ceil(1000) + files.div_ceil(10_000) + 2
    );
    assert_eq!(job.count, set_a.len() as u64);
    assert_eq!(
        (job.done, job.total),
        (set_a.len() as u64, Some(set_a.len() as u64))
    );
    assert!(job.rate > 0);
    assert_eq!(
        job.inserted,
        set_a.len() as u64 - 2,
        "B found what it lacked"
    );
    assert!(set_a == set_b, "B ends with A's paths, kinds and sizes");
    assert_eq!(dev_a, BTreeSet::from([a.device_id()]));
    assert_eq!(
        dev_b,
        BTreeSet::from([b.device_id()]),
        "B's entries are B's"
    );

    // B's job wrote its new entries in bulk; A, which has the same folder,
    // rescans its own location for it and finds nothing to change.
    if files > index::BATCH_MAX {
        wait_for("A's job for B's rescan", limit, || {
            a.host
                .jobs(lib_id)
                .unwrap()
                .iter()
                .any(|j| j.origin == b.device_id() && j.kind == "rescan" && j.state == "indexed")
        })
        .await;
        let jobs = a.host.jobs(lib_id).unwrap();
        let job = jobs.iter().find(|j| j.kind == "rescan").unwrap();
        assert_eq!(job.local_location, Some(a_loc));
        assert_eq!((job.inserted, job.updated, job.deleted), (0, 0, 0));
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_bulk_index_becomes_own_job_5k() {
    peer_bulk_index_becomes_own_job(5_000, Duration::from_secs(120)).await;
}

/// The acceptance size: `cargo test -p concord-node --release --test files -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "200k real files: about 30 s"]
async fn peer_bulk_index_becomes_own_job_200k() {
    peer_bulk_index_becomes_own_job(200_000, Duration::from_secs(900)).await;
}

fn entry_on(lib: &Library, location: Uuid, path: &str) -> Option<FileEntry> {
    query::file_entry_by_path(lib, location, path).unwrap()
}

/// Changes in a watched location on A show on B within 2 s each, and a burst
/// of 5,000 new files arrives as batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_location_changes_reach_the_peer_live() {
    init_tracing();
    const LIVE: Duration = Duration::from_secs(2);
    let limit = Duration::from_secs(60);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("seed.txt"), "seed").unwrap();
    let (a, b, lib_id) = two_nodes(tmp.path(), true).await;
    let la = a.state.library(lib_id).unwrap();
    let lb = b.state.library(lib_id).unwrap();

    // A location added while the node runs is watched.
    let loc = add_location(&la, &tree).await;
    wait_for("A watching its new location", limit, || {
        a.host
            .watching(lib_id)
            .iter()
            .any(|w| w.location == loc && w.ready)
    })
    .await;
    wait_for("A's location on B", limit, || {
        query::location(&lb, loc).unwrap().is_some()
    })
    .await;

    let mut timings = Vec::new();
    // Create.
    let t = Instant::now();
    std::fs::write(tree.join("new.txt"), "hello").unwrap();
    wait_for("a new file on B", limit, || {
        entry_on(&lb, loc, "new.txt").is_some_and(|e| e.size == 5 && e.device == a.device_id())
    })
    .await;
    timings.push(("create", t.elapsed()));

    // Modify (an editor's save: truncate, write, write again).
    let t = Instant::now();
    std::fs::write(tree.join("new.txt"), "").unwrap();
    std::fs::write(tree.join("new.txt"), "hello, world").unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(tree.join("new.txt"))
            .unwrap();
        f.write_all(b"!").unwrap();
    }
    wait_for("the modified size on B", limit, || {
        entry_on(&lb, loc, "new.txt").is_some_and(|e| e.size == 13)
    })
    .await;
    timings.push(("modify", t.elapsed()));

    // Rename.
    let t = Instant::now();
    std::fs::rename(tree.join("new.txt"), tree.join("renamed.txt")).unwrap();
    wait_for("the rename on B", limit, || {
        entry_on(&lb, loc, "new.txt").is_none()
            && entry_on(&lb, loc, "renamed.txt").is_some_and(|e| e.size == 13)
    })
    .await;
    timings.push(("rename", t.elapsed()));

    // A new folder with a file in it.
    let t = Instant::now();
    std::fs::create_dir(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/inner.txt"), "inner").unwrap();
    wait_for("a new folder's file on B", limit, || {
        let sub = entry_on(&lb, loc, "sub");
        let inner = entry_on(&lb, loc, "sub/inner.txt");
        matches!((sub, inner), (Some(s), Some(i)) if i.parent == Some(s.id))
    })
    .await;
    timings.push(("mkdir", t.elapsed()));

    // A renamed folder keeps being watched under its new name.
    std::fs::create_dir(tree.join("dir1")).unwrap();
    std::fs::write(tree.join("dir1/x.txt"), "x").unwrap();
    wait_for("a file in a new folder on B", limit, || {
        entry_on(&lb, loc, "dir1/x.txt").is_some()
    })
    .await;
    let t = Instant::now();
    std::fs::rename(tree.join("dir1"), tree.join("dir2")).unwrap();
    wait_for("the renamed folder on B", limit, || {
        entry_on(&lb, loc, "dir1/x.txt").is_none() && entry_on(&lb, loc, "dir2/x.txt").is_some()
    })
    .await;
    timings.push(("rename folder", t.elapsed()));
    let t = Instant::now();
    std::fs::write(tree.join("dir2/y.txt"), "yy").unwrap();
    wait_for("a file in the renamed folder on B", limit, || {
        entry_on(&lb, loc, "dir2/y.txt").is_some_and(|e| e.size == 2)
    })
    .await;
    timings.push(("create in renamed folder", t.elapsed()));
    std::fs::remove_dir_all(tree.join("dir2")).unwrap();

    // Delete.
    let t = Instant::now();
    std::fs::remove_file(tree.join("renamed.txt")).unwrap();
    std::fs::remove_dir_all(tree.join("sub")).unwrap();
    wait_for("the deletes on B", limit, || {
        entry_on(&lb, loc, "renamed.txt").is_none()
            && entry_on(&lb, loc, "sub").is_none()
            && entry_on(&lb, loc, "sub/inner.txt").is_none()
    })
    .await;
    timings.push(("delete", t.elapsed()));
    eprintln!("live changes on B after: {timings:?}");
    for (what, took) in &timings {
        assert!(*took < LIVE, "{what} took {took:?} to reach B");
    }

    // A burst of 5,000 new files: batches through the log, not 5,000 commits.
    const BURST: usize = 5_000;
    let mut commits = la.subscribe();
    let mut received = lb.subscribe();
    let own_bulk = |lib: &Library| {
        query::bulk_operations(lib)
            .unwrap()
            .iter()
            .filter(|r| r.origin == a.device_id())
            .count()
    };
    let bulk_before = own_bulk(&la);
    let seq_before = la.with_log(|l| l.max_seq(la.replica())).unwrap();
    let t = Instant::now();
    let burst = tree.join("burst");
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir(&burst).unwrap();
        for i in 0..BURST {
            std::fs::write(burst.join(format!("b{i}.dat")), i.to_string()).unwrap();
        }
    })
    .await
    .unwrap();
    let written = t.elapsed();
    let count_on = |lib: &Library| -> usize {
        query::location_entries(lib, loc)
            .unwrap()
            .iter()
            .filter(|e| e.path.starts_with("burst/"))
            .count()
    };
    let took = wait_for("the burst on B", limit, || count_on(&lb) == BURST).await;
    eprintln!("{BURST} files written in {written:?}, all on B {took:?} later");
    // A's commits for the burst (its only local writes meanwhile).
    let mut sizes = Vec::new();
    while let Ok(e) = commits.try_recv() {
        if e.source == Source::Local {
            sizes.push(e.entries);
        }
    }
    let mut applies = 0;
    while let Ok(e) = received.try_recv() {
        if e.source == Source::Remote {
            applies += 1;
        }
    }
    eprintln!(
        "A committed the burst in {} commits {sizes:?}; B applied it in {applies}",
        sizes.len()
    );
    assert!(
        sizes.len() <= BURST / 10,
        "{} commits for {BURST} files: not batched",
        sizes.len()
    );
    assert!(sizes.iter().all(|n| *n <= index::BATCH_MAX + 1));
    assert_eq!(count_on(&la), BURST);
    // Every file through the log (one entry each, plus the folder and time
    // updates), none in bulk.
    let written = la.with_log(|l| l.max_seq(la.replica())).unwrap() - seq_before;
    assert!(written as usize > BURST, "{written}");
    assert_eq!(sizes.iter().sum::<usize>(), written as usize);
    assert_eq!(own_bulk(&la), bulk_before, "no bulk write");
    a.shutdown().await;
    b.shutdown().await;
}

/// Changes made while the node was stopped are picked up when it starts again
/// (each watched location is rescanned once) and reach the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_stopped_are_caught_up_on_start() {
    init_tracing();
    let limit = Duration::from_secs(60);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("kept.txt"), "kept").unwrap();
    std::fs::write(tree.join("gone.txt"), "gone").unwrap();
    let (a, b, lib_id) = two_nodes(tmp.path(), true).await;
    let la = a.state.library(lib_id).unwrap();
    let lb = b.state.library(lib_id).unwrap();
    let loc = add_location(&la, &tree).await;
    drop(la);
    wait_for("A's location on B", limit, || {
        query::location(&lb, loc).unwrap().is_some()
    })
    .await;
    a.shutdown().await;

    std::fs::remove_file(tree.join("gone.txt")).unwrap();
    std::fs::write(tree.join("while-stopped.txt"), "offline").unwrap();

    let a = start(&tmp.path().join("a"), fast_config("alpha", true)).await;
    let la = a.state.library(lib_id).unwrap();
    wait_for("the catch-up on A", limit, || {
        entry_on(&la, loc, "while-stopped.txt").is_some()
            && entry_on(&la, loc, "gone.txt").is_none()
    })
    .await;
    // The new file went through the log (a small change: single commits).
    wait_for("the catch-up on B", limit, || {
        entry_on(&lb, loc, "while-stopped.txt").is_some_and(|e| e.size == 7)
    })
    .await;
    assert!(a.host.watching(lib_id).iter().any(|w| w.location == loc));
    a.shutdown().await;
    b.shutdown().await;
}
