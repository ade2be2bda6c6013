//! A conduit's copies from a remote end, prefetched in batches
//! (`RemoteSource::run_batched`) between real nodes over Iroh on 127.0.0.1
//! with real folders: every copy lands verified with its mtime, content
//! several copies share is fetched once, a copy that cannot be placed
//! leaves no prefetched file behind, and a full disk (a real small tmpfs)
//! stops the batch with "disk full" and no partial file anywhere; landed
//! files no copy consumed (a killed cycle) are purged after a day.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concord::conduit::execute::{End, ExecReport};
use concord::conduit::path::{RelPath, SafeRoot};
use concord::conduit::plan::{Action, Side};
use concord::conduit::trash::reserved_dir;
use concord::conduit::tree::Tree;
use concord::Uuid;
use concord_node::conduits::remote::{list, Listed};
use concord_node::transfer::prefetch::purge_stale_incoming;
use concord_node::transfer::remote::RemoteSource;
use concord_node::transfer::TransferProgress;
use concord_node::Node;

mod support;
use support::{
    add_location, config, init_tracing, pair, share_new_library, start, write_random, Tmpfs,
};

/// A serving node with a location at `src`, a member that copies from it.
struct Setup {
    server: Node,
    client: Node,
    lib: Uuid,
    location: Uuid,
    src: PathBuf,
    tmp: tempfile::TempDir,
}

impl Setup {
    async fn new(fill: impl FnOnce(&Path)) -> Setup {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        fill(&src);
        let server = start(&tmp.path().join("a"), config("alpha")).await;
        let client = start(&tmp.path().join("b"), config("beta")).await;
        pair(&server, &client).await;
        let lib = share_new_library(&server, &client, "prefetch").await;
        let location = add_location(&server.state.library(lib).unwrap(), &src).await;
        Setup {
            server,
            client,
            lib,
            location,
            src,
            tmp,
        }
    }

    /// The source end's listing, as a cycle gets it.
    async fn listing(&self) -> Tree {
        let peer = self
            .client
            .state
            .resolve_peer(&self.server.device_id().to_string())
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        match list(
            &self.client.fetcher,
            &peer,
            self.lib,
            self.location,
            "",
            now,
        )
        .await
        .unwrap()
        {
            Listed::Tree(t) => t,
            Listed::Missing => panic!("the source is missing"),
        }
    }

    /// Copy every listed file onto `dest` through a [`RemoteSource`], in
    /// batches, on a blocking thread as the runner does.
    async fn copy_all(
        &self,
        tree: &Tree,
        dest: &Path,
        progress: Arc<TransferProgress>,
    ) -> ExecReport {
        let actions: Vec<Action> = tree
            .files
            .iter()
            .map(|(path, state)| Action::Copy {
                side: Side::Destination,
                path: path.clone(),
                from: path.clone(),
                version: state.clone(),
                replaces: None,
            })
            .collect();
        let mut source = RemoteSource {
            handle: tokio::runtime::Handle::current(),
            client: self.client.fetcher.clone(),
            peer: self
                .client
                .state
                .resolve_peer(&self.server.device_id().to_string())
                .unwrap(),
            library: self.lib,
            location: self.location,
            dir: None,
            incoming: reserved_dir(dest, "incoming").unwrap(),
            progress,
            prefetched: Default::default(),
        };
        let end = End {
            root: SafeRoot::open(dest, None, false).unwrap(),
            device: "beta".into(),
        };
        tokio::task::spawn_blocking(move || {
            let report = source.run_batched(&end, Side::Destination, actions, 1_000);
            assert!(source.prefetched.is_empty(), "prefetched files kept");
            report
        })
        .await
        .unwrap()
    }

    async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

fn hash_of(path: &Path) -> [u8; 32] {
    *blake3::hash(&std::fs::read(path).unwrap()).as_bytes()
}

/// Files (not folders) under `dir`, recursively, as relative paths.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Nothing left of a transfer: no file in `.concord/incoming/` or in any
/// temp folder under `dest`'s `.concord/`.
fn assert_nothing_left(dest: &Path) {
    let left = files_under(&dest.join(".concord"));
    assert!(left.is_empty(), "left over under .concord: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copy_of_a_batch_lands_verified_and_shared_content_is_fetched_once() {
    let s = Setup::new(|src| {
        std::fs::create_dir_all(src.join("docs/deep")).unwrap();
        for i in 0..40u8 {
            write_random(&src.join(format!("docs/f{i}.bin")), 1000 + 97 * i as u64, i);
        }
        write_random(&src.join("big.bin"), 3 << 20, 200);
        // Three copies of one content, and two empty files.
        for name in ["same-1", "same-2", "docs/deep/same-3"] {
            std::fs::write(src.join(name), b"the same bytes everywhere").unwrap();
        }
        std::fs::write(src.join("empty-1"), b"").unwrap();
        std::fs::write(src.join("docs/empty-2"), b"").unwrap();
    })
    .await;
    let tree = s.listing().await;
    assert_eq!(tree.files.len(), 46);
    let dest = s.tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let progress = Arc::new(TransferProgress::default());
    let report = s.copy_all(&tree, &dest, progress.clone()).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.done, 46);
    assert!(!report.disk_full);
    for (path, state) in &tree.files {
        let (a, b) = (s.src.join(path.as_str()), dest.join(path.as_str()));
        assert_eq!(hash_of(&a), hash_of(&b), "{}: content", path.as_str());
        let mtime = b.metadata().unwrap().modified().unwrap();
        let ns = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert_eq!(ns, state.version.mtime_ns, "{}: mtime", path.as_str());
    }
    // 41 distinct contents plus one shared and one empty: 43 fetches.
    let fetched = progress
        .files_done
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fetched, 43, "each content once");
    assert_nothing_left(&dest);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_cannot_be_placed_leaves_no_prefetched_file() {
    let s = Setup::new(|src| {
        for i in 0..10u8 {
            write_random(&src.join(format!("f{i}.bin")), 4096, i);
        }
    })
    .await;
    let tree = s.listing().await;
    let dest = s.tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    // Someone wrote f3.bin here after the scan: the copy must not replace it.
    std::fs::write(dest.join("f3.bin"), b"written here meanwhile").unwrap();
    let report = s
        .copy_all(&tree, &dest, Arc::new(TransferProgress::default()))
        .await;
    assert_eq!(report.done, 9);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(report
        .unsettled
        .contains(&RelPath::parse("f3.bin").unwrap()));
    assert_eq!(
        std::fs::read(dest.join("f3.bin")).unwrap(),
        b"written here meanwhile"
    );
    assert_nothing_left(&dest);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_batch_as_disk_full_with_no_partial_file() {
    let s = Setup::new(|src| {
        for i in 0..6u8 {
            write_random(&src.join(format!("f{i}.bin")), 5 << 20, i);
        }
    })
    .await;
    let dest = s.tmp.path().join("small");
    let Some(_volume) = Tmpfs::mount(&dest, "16m") else {
        eprintln!("skipping: mounting a tmpfs needs root");
        s.shutdown().await;
        return;
    };
    let tree = s.listing().await;
    let report = s
        .copy_all(&tree, &dest, Arc::new(TransferProgress::default()))
        .await;
    assert!(report.disk_full, "{report:?}");
    assert!(report.done < 6 && !report.unsettled.is_empty());
    // What landed under a final name is whole and verified; nothing else is.
    for name in files_under(&dest) {
        if name.starts_with(".concord") {
            continue;
        }
        let want = hash_of(&s.src.join(&name));
        assert_eq!(hash_of(&dest.join(&name)), want, "{name} is not whole");
    }
    assert_nothing_left(&dest);
    s.shutdown().await;
}

#[test]
fn landed_files_never_consumed_are_purged_after_a_day_and_resumable_parts_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let incoming = reserved_dir(tmp.path(), "incoming").unwrap();
    std::fs::write(incoming.join("a".repeat(64)), b"left by a killed cycle").unwrap();
    std::fs::create_dir_all(incoming.join(".concord/tmp")).unwrap();
    std::fs::write(incoming.join(".concord/tmp/b.part"), b"resumable").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        purge_stale_incoming(&incoming, now),
        0,
        "a fresh file stays"
    );
    let two_days = 2 * 24 * 3600 * 1000;
    assert_eq!(purge_stale_incoming(&incoming, now + two_days), 1);
    assert_eq!(files_under(&incoming), vec![".concord/tmp/b.part"]);
}

#[test]
fn abandoned_resume_files_are_purged_after_a_week_and_live_ones_kept() {
    use concord_node::transfer::partial::{purge_abandoned, ABANDONED_MS};
    let tmp = tempfile::tempdir().unwrap();
    let dir = reserved_dir(tmp.path(), "tmp").unwrap();
    let now = std::time::SystemTime::now();
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let old = now - std::time::Duration::from_secs(8 * 24 * 3600);
    let write = |name: &str, when: std::time::SystemTime| {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_modified(when).unwrap();
    };
    let (gone, live, fresh, alone) = (
        "a".repeat(32),
        "b".repeat(32),
        "c".repeat(32),
        "d".repeat(32),
    );
    // Abandoned: neither file written for eight days.
    write(&format!("{gone}.part"), old);
    write(&format!("{gone}.state"), old);
    // Still being written: its part file is recent.
    write(&format!("{live}.part"), now);
    write(&format!("{live}.state"), old);
    write(&format!("{fresh}.part"), now);
    write(&format!("{fresh}.state"), now);
    // A small file's transfer keeps no state; killed eight days ago.
    write(&format!("{alone}.part"), old);
    // Not the engine's.
    write("notes.part", old);
    write("1700000000000-1-1.part", now);
    assert_eq!(purge_abandoned(&dir, now_ms), 2);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want = vec![
        "1700000000000-1-1.part".to_string(),
        format!("{live}.part"),
        format!("{live}.state"),
        format!("{fresh}.part"),
        format!("{fresh}.state"),
        "notes.part".to_string(),
    ];
    want.sort();
    assert_eq!(left, want);
    // A week later everything of the engine's that stayed untouched goes.
    assert_eq!(purge_abandoned(&dir, now_ms + ABANDONED_MS + 1000), 2);
}
