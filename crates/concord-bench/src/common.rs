//! Helpers shared by the workloads: seeded randomness, deterministic UUIDv7s,
//! baseline SQLite connections, timing and peak memory.

use std::path::Path;
use std::time::Instant;

use concord::Uuid;
use rusqlite::Connection;

/// The size of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// CI smoke run: every workload at about a tenth of its size.
    Small,
    /// The sizes of PERFORMANCE.md.
    Full,
}

impl Scale {
    pub fn name(self) -> &'static str {
        match self {
            Scale::Small => "small",
            Scale::Full => "full",
        }
    }
    /// `full` at full scale, `small` otherwise.
    pub fn pick(self, small: usize, full: usize) -> usize {
        match self {
            Scale::Small => small,
            Scale::Full => full,
        }
    }
}

/// SplitMix64: tiny, fast, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Milliseconds of the first generated UUIDv7 (2025-01-01T00:00:00Z).
const UUID_EPOCH_MS: u64 = 1_735_689_600_000;

/// Deterministic time-ordered UUIDs (v7): one millisecond per id, random tail
/// from the seed, so ids sort in creation order as `Uuid::now_v7()` ones do.
#[derive(Debug, Clone)]
pub struct UuidGen {
    rng: SplitMix64,
    ms: u64,
}

impl UuidGen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            ms: UUID_EPOCH_MS,
        }
    }
    pub fn next_id(&mut self) -> Uuid {
        self.ms += 1;
        let mut tail = [0u8; 10];
        tail[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        tail[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(self.ms, &tail).into_uuid()
    }
}

/// A baseline connection configured as Concord's own (`store::open_db`): WAL,
/// `synchronous=NORMAL`, the same page cache.
pub fn open_baseline(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Wall time of `f` in seconds, with its result. The CPU time it used (user and
/// system, from `/proc/self/stat`) is kept for [`last_cpu`].
pub fn timed<R>(f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<(R, f64)> {
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let r = f()?;
    let wall = t.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        if let Ok(mut last) = LAST_CPU.lock() {
            *last = Some((b.0 - a.0, b.1 - a.1, wall));
        }
    }
    Ok((r, wall))
}

static LAST_CPU: std::sync::Mutex<Option<(f64, f64, f64)>> = std::sync::Mutex::new(None);

/// `user s, sys s, wall s` of the last [`timed`] call, for progress lines.
pub fn last_cpu() -> String {
    match LAST_CPU.lock().ok().and_then(|l| *l) {
        Some((user, sys, wall)) => {
            format!("cpu {user:.2} s user + {sys:.2} s sys of {wall:.2} s wall")
        }
        None => String::new(),
    }
}

/// User and system CPU seconds of this process so far (clock ticks of 10 ms).
fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    Some((
        f.get(11)?.parse::<f64>().ok()? / tick,
        f.get(12)?.parse::<f64>().ok()? / tick,
    ))
}

/// Reset the process's peak resident set size (Linux: `clear_refs` 5), so the
/// next [`peak_rss_mb`] covers only what runs in between. Freed heap memory is
/// handed back to the OS first (glibc keeps it resident otherwise, and an earlier
/// phase's peak would count again). Best effort.
pub fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free heap pages; it takes
        // no pointers and is safe to call at any time.
        unsafe {
            malloc_trim(0);
        }
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size in MB (`VmHWM` from `/proc/self/status`), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Progress on stderr (stdout carries the results).
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("  {}", format!($($arg)*))
    };
}
pub(crate) use progress;
