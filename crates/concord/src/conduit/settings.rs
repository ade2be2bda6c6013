//! The typed view of a [`Conduit`] record's text fields: policy, cadence,
//! minimum free space, pause reasons, and the checks a record must pass
//! before it is written or acted on (its fields come from users and peers).

use std::time::Duration;

use super::error::{ConduitError, Result};
use super::path::RelPath;
use crate::model::Conduit;

/// What a conduit does with content (DESIGN §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One-way mirror; deletions propagate only with the `delete` flag.
    Replicate,
    /// Two-way; conflicts keep both versions.
    Synchronize,
    /// Copy, verify the copy, then remove the source (with an audit record).
    Archive,
    /// Free space on the source by moving files to the destination.
    Offload,
}

impl Policy {
    /// The CLI's and the record's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Replicate => "replicate",
            Policy::Synchronize => "sync",
            Policy::Archive => "archive",
            Policy::Offload => "offload",
        }
    }

    pub fn parse(s: &str) -> Result<Policy> {
        Ok(match s {
            "replicate" => Policy::Replicate,
            "sync" => Policy::Synchronize,
            "archive" => Policy::Archive,
            "offload" => Policy::Offload,
            other => {
                return Err(ConduitError::Invalid(format!(
                    "policy {other:?}: expected replicate, sync, archive or offload"
                )))
            }
        })
    }
}

/// When cycles run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// As soon as a change is seen (after the watcher's debounce).
    Instant,
    /// Only on `conduit run`.
    Manual,
    /// At most once per period; changes inside it compress to their final state.
    Every(Duration),
}

/// Shortest period a cadence may have.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Longest period a cadence may have (a year).
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

impl Cadence {
    /// `instant`, `manual`, or a number with `s`, `m`, `h` or `d`.
    pub fn parse(s: &str) -> Result<Cadence> {
        match s {
            "instant" => return Ok(Cadence::Instant),
            "manual" => return Ok(Cadence::Manual),
            _ => {}
        }
        let bad = || {
            ConduitError::Invalid(format!(
                "cadence {s:?}: expected instant, manual or a period such as 90s, 15m, 2h, 1d"
            ))
        };
        let unit = s.chars().last().ok_or_else(bad)?;
        let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => Some(n),
            'm' => n.checked_mul(60),
            'h' => n.checked_mul(3600),
            'd' => n.checked_mul(86_400),
            _ => None,
        }
        .ok_or_else(bad)?;
        let d = Duration::from_secs(secs);
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&d) {
            return Err(ConduitError::Invalid(format!(
                "cadence {s:?}: a period is between 1s and 366d"
            )));
        }
        Ok(Cadence::Every(d))
    }
}

/// Free space an Offload conduit keeps on its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    Percent(u8),
}

impl MinFree {
    /// `15%`, or a size with an optional `K`, `M`, `G` or `T` (powers of 1024).
    pub fn parse(s: &str) -> Result<MinFree> {
        let bad = || {
            ConduitError::Invalid(format!(
                "min-free {s:?}: expected a size such as 10G or a percentage such as 15%"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.parse().map_err(|_| bad())?;
            if p == 0 || p > 99 {
                return Err(bad());
            }
            return Ok(MinFree::Percent(p));
        }
        let (num, mult) = match s.chars().last() {
            Some('K') => (&s[..s.len() - 1], 1u64 << 10),
            Some('M') => (&s[..s.len() - 1], 1 << 20),
            Some('G') => (&s[..s.len() - 1], 1 << 30),
            Some('T') => (&s[..s.len() - 1], 1 << 40),
            _ => (s, 1),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(mult).map(MinFree::Bytes).ok_or_else(bad)
    }
}

/// Why a conduit is paused; the record's `paused` field spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// `conduit pause`.
    User,
    /// A cycle would have deleted more than half of the files (and more than 10).
    MassDelete,
    /// A root that is read from is missing or on another volume than before.
    SourceMissing,
    /// A write ran out of space; no partial file was left.
    DiskFull,
    /// The destination cannot be reached (its root is missing, or its device
    /// is away).
    DestinationUnreachable,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::User => "user",
            PauseReason::MassDelete => "mass-delete",
            PauseReason::SourceMissing => "source-missing",
            PauseReason::DiskFull => "disk-full",
            PauseReason::DestinationUnreachable => "destination-unreachable",
        }
    }

    pub fn parse(s: &str) -> Result<PauseReason> {
        Ok(match s {
            "user" => PauseReason::User,
            "mass-delete" => PauseReason::MassDelete,
            "source-missing" => PauseReason::SourceMissing,
            "disk-full" => PauseReason::DiskFull,
            "destination-unreachable" => PauseReason::DestinationUnreachable,
            other => return Err(ConduitError::Invalid(format!("pause reason {other:?}"))),
        })
    }
}

/// A conduit record, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub policy: Policy,
    pub source_dir: Option<RelPath>,
    pub destination_dir: Option<RelPath>,
    pub propagate_deletes: bool,
    pub cadence: Cadence,
    pub min_free: Option<MinFree>,
    pub paused: Option<PauseReason>,
    pub allow_deletes: bool,
}

/// An optional subfolder: empty means the location's root.
pub fn parse_dir(s: &str) -> Result<Option<RelPath>> {
    if s.is_empty() {
        Ok(None)
    } else {
        RelPath::parse(s).map(Some)
    }
}

/// Whether one folder is the other or inside it.
fn nested(a: &Option<RelPath>, b: &Option<RelPath>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            let (a, b) = (a.as_str(), b.as_str());
            a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
        }
    }
}

impl Settings {
    /// Check a record: every text field parses, and the two ends do not
    /// overlap (a conduit inside itself would copy forever).
    pub fn from_record(c: &Conduit) -> Result<Settings> {
        let s = Settings {
            policy: Policy::parse(&c.policy)?,
            source_dir: parse_dir(&c.source_dir)?,
            destination_dir: parse_dir(&c.destination_dir)?,
            propagate_deletes: c.propagate_deletes,
            cadence: Cadence::parse(&c.cadence)?,
            min_free: c.min_free.as_deref().map(MinFree::parse).transpose()?,
            paused: c.paused.as_deref().map(PauseReason::parse).transpose()?,
            allow_deletes: c.allow_deletes,
        };
        if c.source == c.destination && nested(&s.source_dir, &s.destination_dir) {
            return Err(ConduitError::Invalid(
                "the source and destination folders overlap".into(),
            ));
        }
        if s.propagate_deletes && s.policy != Policy::Replicate {
            return Err(ConduitError::Invalid(
                "--delete applies to replicate only (sync always propagates deletions, archive and offload never do)".into(),
            ));
        }
        if s.min_free.is_some() != (s.policy == Policy::Offload) {
            return Err(ConduitError::Invalid(
                "--min-free is required for offload and applies to it only".into(),
            ));
        }
        Ok(s)
    }
}

/// What `conduit list` shows as `state`: a pause (synced, so every member
/// sees it) wins; then the working device's own state of a running cycle
/// (`scanning`, `transferring`, kept in its memory); then `error` when the
/// last cycle failed; else `idle`.
pub fn display_state(c: &Conduit, running: Option<&'static str>) -> &'static str {
    if c.paused.is_some() {
        "paused"
    } else if let Some(r) = running {
        r
    } else if c.last_error.is_some() {
        "error"
    } else {
        "idle"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn record() -> Conduit {
        Conduit {
            id: Uuid::from_u128(1),
            source: Uuid::from_u128(2),
            source_dir: String::new(),
            destination: Uuid::from_u128(3),
            destination_dir: "backup/photos".into(),
            policy: "replicate".into(),
            propagate_deletes: true,
            cadence: "15m".into(),
            min_free: None,
            pin_tag: None,
            paused: None,
            allow_deletes: false,
            last_run: None,
            last_error: None,
        }
    }

    #[test]
    fn records_parse_and_bad_ones_are_refused() {
        let s = Settings::from_record(&record()).unwrap();
        assert_eq!(s.policy, Policy::Replicate);
        assert_eq!(s.cadence, Cadence::Every(Duration::from_secs(900)));
        assert_eq!(s.destination_dir.unwrap().as_str(), "backup/photos");
        let bad = [
            Conduit {
                policy: "mirror".into(),
                ..record()
            },
            Conduit {
                cadence: "0s".into(),
                ..record()
            },
            Conduit {
                cadence: "5y".into(),
                ..record()
            },
            Conduit {
                destination_dir: "../x".into(),
                ..record()
            },
            Conduit {
                paused: Some("tired".into()),
                ..record()
            },
            Conduit {
                policy: "sync".into(),
                ..record()
            },
            Conduit {
                destination: Uuid::from_u128(2),
                ..record()
            },
            Conduit {
                min_free: Some("10G".into()),
                ..record()
            },
        ];
        for c in bad {
            assert!(Settings::from_record(&c).is_err(), "{c:?}");
        }
        let apart = Conduit {
            destination: Uuid::from_u128(2),
            source_dir: "a".into(),
            destination_dir: "ab".into(),
            ..record()
        };
        assert!(Settings::from_record(&apart).is_ok());
        let offload = Conduit {
            policy: "offload".into(),
            propagate_deletes: false,
            min_free: Some("15%".into()),
            ..record()
        };
        assert_eq!(
            Settings::from_record(&offload).unwrap().min_free,
            Some(MinFree::Percent(15))
        );
    }

    #[test]
    fn values_parse() {
        assert_eq!(MinFree::parse("10G").unwrap(), MinFree::Bytes(10 << 30));
        assert!(MinFree::parse("100%").is_err());
        assert!(MinFree::parse("99999999999T").is_err());
        assert_eq!(Cadence::parse("manual").unwrap(), Cadence::Manual);
        assert!(Cadence::parse("").is_err());
        assert!(Cadence::parse("é").is_err());
        for r in [
            "user",
            "mass-delete",
            "source-missing",
            "disk-full",
            "destination-unreachable",
        ] {
            assert_eq!(PauseReason::parse(r).unwrap().as_str(), r);
        }
        for p in ["replicate", "sync", "archive", "offload"] {
            assert_eq!(Policy::parse(p).unwrap().as_str(), p);
        }
        let mut c = record();
        assert_eq!(display_state(&c, None), "idle");
        assert_eq!(display_state(&c, Some("transferring")), "transferring");
        c.last_error = Some("x".into());
        assert_eq!(display_state(&c, None), "error");
        c.paused = Some("mass-delete".into());
        assert_eq!(display_state(&c, Some("scanning")), "paused");
    }
}
