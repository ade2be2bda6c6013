//! F1 and F2's shared run: one source tree copied by Concord's transfer
//! engine between two nodes on loopback, then by each baseline, each into a
//! fresh destination that is checked equal to the source, then removed
//! when it holds few files, or kept to the end when it holds many
//! (`files::done_with`: the side after a mass delete would pay for it).
//!
//! Development aid: `CONCORD_BENCH_SKIP_EXTERNAL=1` stops after Concord and
//! the bare Iroh stream (no rsync, no Syncthing), for quick comparisons.

use std::path::Path;
use std::time::Instant;

use crate::common::progress;
use crate::content::ContentPair;
use crate::files::{assert_same, done_with, settle, temp};
use crate::net::{runtime, BareIroh};
use crate::{syncthing, tools};

/// Seconds each side took for the same tree; `None`: skipped here.
#[derive(Debug, Default)]
pub struct Times {
    /// List the source end (A scans and hashes it), fetch every file
    /// verified (from the first connection on).
    pub concord: f64,
    /// The same bytes through one bare Iroh stream (bytes/s).
    pub bare_iroh_rate: Option<f64>,
    pub rsync: Option<f64>,
    pub rsync_fsync: Option<f64>,
    pub syncthing: Option<f64>,
}

/// Which baselines to run besides rsync -a and Syncthing.
pub struct Extra {
    pub bare_iroh: bool,
    pub rsync_fsync: bool,
}

/// Copy `src` (`files` files, `bytes` bytes) with Concord and each baseline.
pub fn run(id: &str, src: &Path, files: usize, bytes: u64, extra: Extra) -> anyhow::Result<Times> {
    let work = temp(&format!("concord-{}-run-", id.to_lowercase()))?;
    let rt = runtime()?;
    let mut times = Times::default();
    let dest = work.path().join("dest-concord");
    let (secs, bare) = rt.block_on(async {
        let pair = ContentPair::new(&work.path().join("nodes"), src).await?;
        settle();
        let (t, cpu) = (Instant::now(), cpu_secs());
        let scanned = pair.scan_source().await?;
        let listed = t.elapsed().as_secs_f64();
        pair.fetch_all(&scanned, &dest).await?;
        let secs = t.elapsed().as_secs_f64();
        progress!(
            "{id} concord: listed in {listed:.2} s, fetched in {:.2} s, {:.2} s of CPU (both nodes)",
            secs - listed,
            cpu_secs() - cpu
        );
        pair.shutdown().await;
        let bare = if extra.bare_iroh {
            let b = BareIroh::connect().await?;
            settle();
            let cpu = cpu_secs();
            let rate = b.throughput(bytes).await?;
            progress!("{id} bare Iroh: {:.2} s of CPU (both ends)", cpu_secs() - cpu);
            b.close().await;
            Some(rate)
        } else {
            None
        };
        anyhow::Ok((secs, bare))
    })?;
    anyhow::ensure!(holds(&dest, files)?, "{id}: not every file arrived");
    assert_same(src, &dest, &[".concord"])?;
    done_with(&dest, files)?;
    progress!("{id} concord: {secs:.2} s for {files} files, {bytes} bytes");
    times.concord = secs;
    times.bare_iroh_rate = bare;
    if std::env::var_os("CONCORD_BENCH_SKIP_EXTERNAL").is_some() {
        return Ok(times);
    }
    if tools::ensure("rsync", "rsync") {
        times.rsync = Some(rsync_once(
            id,
            (src, files),
            &work.path().join("dest-rsync"),
            &[],
        )?);
        if extra.rsync_fsync {
            let d = work.path().join("dest-rsync-fsync");
            times.rsync_fsync = Some(rsync_once(id, (src, files), &d, &["--fsync"])?);
        }
    } else {
        progress!("{id}: rsync baselines skipped (rsync cannot be installed)");
    }
    let dst = work.path().join("dest-syncthing");
    settle();
    times.syncthing = syncthing::time_sync(work.path(), src, &dst, files)?;
    if let Some(secs) = times.syncthing {
        assert_same(src, &dst, &[syncthing::MARKER])?;
        progress!("{id} syncthing: {secs:.2} s");
    }
    Ok(times)
}

/// CPU time (user and system) this process has used: both nodes run in
/// it, so on a loaded machine this, not the wall time, shows what a change
/// saved.
fn cpu_secs() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid start.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Whether `dest` holds exactly `files` files (our temp folder left out).
fn holds(dest: &Path, files: usize) -> anyhow::Result<bool> {
    Ok(crate::files::list(dest, &[".concord"])?.len() == files)
}

fn rsync_once(
    id: &str,
    (src, files): (&Path, usize),
    dst: &Path,
    extra: &[&str],
) -> anyhow::Result<f64> {
    settle();
    let secs = tools::rsync(src, dst, extra)?;
    assert_same(src, dst, &[])?;
    done_with(dst, files)?;
    progress!("{id} rsync -a {}: {secs:.2} s", extra.join(" "));
    Ok(secs)
}
