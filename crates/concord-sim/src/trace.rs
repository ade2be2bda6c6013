//! The trace hash: every event of a run (messages delivered and lost with a
//! digest of their bytes, commits, crashes, clock changes) folded into one
//! BLAKE3 hash, stamped with the simulated time. Two runs of one seed must
//! print the same hash; if they do not, something outside the seed leaked in.

use std::sync::Mutex;

use tokio::time::Instant;

/// The running hash of a run's events, shared by the world and the network.
pub struct Trace {
    start: Instant,
    inner: Mutex<(blake3::Hasher, u64)>,
}

impl Trace {
    /// An empty trace whose event times count from `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            inner: Mutex::new((blake3::Hasher::new(), 0)),
        }
    }

    /// Fold one event of `kind` with its `parts` into the hash, stamped with the
    /// simulated time (printed too when `CONCORD_SIM_TRACE` is set).
    pub fn event(&self, kind: &str, parts: &[&[u8]]) {
        let at = Instant::now().duration_since(self.start).as_millis() as u64;
        if std::env::var_os("CONCORD_SIM_TRACE").is_some() {
            let shown: Vec<String> = parts.iter().map(|p| show(p)).collect();
            eprintln!(
                "{:>8}.{:03} {kind} {}",
                at / 1000,
                at % 1000,
                shown.join(" ")
            );
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += 1;
        let h = &mut g.0;
        h.update(&at.to_le_bytes());
        h.update(kind.as_bytes());
        for p in parts {
            h.update(&(p.len() as u32).to_le_bytes());
            h.update(p);
        }
    }

    /// The hash so far (hex, 16 digits) and the number of events.
    pub fn finish(&self) -> (String, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.finalize().to_hex()[..16].to_string(), g.1)
    }
}

/// A short form of an event part for `CONCORD_SIM_TRACE` output.
fn show(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ if p.len() == 8 => u64::from_le_bytes(p.try_into().unwrap_or_default()).to_string(),
        _ => p.iter().take(4).map(|b| format!("{b:02x}")).collect(),
    }
}
