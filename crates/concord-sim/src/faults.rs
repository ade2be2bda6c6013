//! Which faults a run injects, and the `--faults` syntax that names them. The
//! injection itself happens in `chaos` (devices) and `net`
//! (messages).

/// Which faults a run injects. All on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Messages lost (either leg of a request).
    pub drop: bool,
    /// Requests delivered twice.
    pub duplicate: bool,
    /// Latency drawn per message (so messages overtake each other), some slow.
    pub delay: bool,
    /// The devices split in two groups that cannot talk, then heal.
    pub partition: bool,
    /// A device's service aborted mid-flight and its library closed.
    pub crash: bool,
    /// Wall clocks skewed by up to an hour and jumping back.
    pub clock: bool,
    /// The leader crashed right after a burst of writes.
    pub leader_kill: bool,
    /// Short log retention and long outages: pruning and snapshot backfill.
    pub prune: bool,
    /// A device's files replaced by an earlier copy (a restored backup).
    pub rollback: bool,
    /// A power cut: the last transactions of a device's `library.db` vanish.
    pub lost_fsync: bool,
    /// The last device also forges: entries in others' names, altered relayed
    /// chunks, terms it does not lead (`byzantine`).
    pub byzantine: bool,
}

impl Faults {
    /// The names `--faults` accepts, in field order.
    pub const NAMES: &'static [&'static str] = &[
        "drop",
        "dup",
        "delay",
        "partition",
        "crash",
        "clock",
        "leader-kill",
        "prune",
        "rollback",
        "lost-fsync",
        "byzantine",
    ];

    /// Every fault on: the default, and what the sweeps run.
    pub fn all() -> Self {
        Self {
            drop: true,
            duplicate: true,
            delay: true,
            partition: true,
            crash: true,
            clock: true,
            leader_kill: true,
            prune: true,
            rollback: true,
            lost_fsync: true,
            byzantine: true,
        }
    }

    /// No fault: a run that only checks convergence of the workload.
    pub fn none() -> Self {
        Self {
            drop: false,
            duplicate: false,
            delay: false,
            partition: false,
            crash: false,
            clock: false,
            leader_kill: false,
            prune: false,
            rollback: false,
            lost_fsync: false,
            byzantine: false,
        }
    }

    /// Parse `all`, `none` or a comma-separated list of [`Faults::NAMES`];
    /// a name prefixed with `-` removes it from `all`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" || s.is_empty() {
            return Ok(Self::all());
        }
        if s == "none" {
            return Ok(Self::none());
        }
        let negative = s.split(',').all(|p| p.trim().starts_with('-'));
        let mut f = if negative { Self::all() } else { Self::none() };
        for part in s.split(',') {
            let part = part.trim();
            let (on, name) = match part.strip_prefix('-') {
                Some(n) => (false, n),
                None => (true, part),
            };
            match name {
                "drop" => f.drop = on,
                "dup" => f.duplicate = on,
                "delay" => f.delay = on,
                "partition" => f.partition = on,
                "crash" => f.crash = on,
                "clock" => f.clock = on,
                "leader-kill" => f.leader_kill = on,
                "prune" => f.prune = on,
                "rollback" => f.rollback = on,
                "lost-fsync" => f.lost_fsync = on,
                "byzantine" => f.byzantine = on,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}; known: all, none, {}",
                        Self::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(f)
    }

    /// The `--faults` argument that selects exactly these.
    pub fn arg(&self) -> String {
        if *self == Self::all() {
            return "all".into();
        }
        let on = [
            self.drop,
            self.duplicate,
            self.delay,
            self.partition,
            self.crash,
            self.clock,
            self.leader_kill,
            self.prune,
            self.rollback,
            self.lost_fsync,
            self.byzantine,
        ];
        let names: Vec<&str> = Self::NAMES
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}
