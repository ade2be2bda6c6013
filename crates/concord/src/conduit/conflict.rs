//! Conflict copies: the name the losing version of a conflict is kept under,
//! `NAME.conflict-DEVICE-YYYYMMDD-HHMMSS.EXT`, and recognising such names so
//! that a conflict copy never begets another.
//!
//! DEVICE is the device name of the end whose version lost, reduced to
//! letters, digits, `-` and `_` (at most 32); the time is that version's
//! modification time in UTC. A name already taken gets `-2`, `-3`, ... after
//! the time.

use super::path::RelPath;

/// The longest device part of a conflict copy's name.
pub const MAX_DEVICE_CHARS: usize = 32;

/// `YYYYMMDD-HHMMSS` in UTC for `ms` since the Unix epoch (no time zone data
/// needed: the civil calendar from days, Howard Hinnant's algorithm).
pub fn utc_stamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Milliseconds since the Unix epoch of a `YYYYMMDD-HHMMSS` stamp.
pub fn parse_utc_stamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 15
        || b[8] != b'-'
        || !s[..8]
            .bytes()
            .chain(s[9..].bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A device name as it may appear inside a file name.
pub fn device_label(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_DEVICE_CHARS)
        .collect();
    if s.is_empty() {
        "device".into()
    } else {
        s
    }
}

/// Split a name into stem and extension (`a.tar.gz` → `a.tar`, `gz`); a
/// leading dot is part of the stem (`.bashrc` has no extension).
fn split_ext(name: &str) -> (&str, Option<&str>) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    }
}

/// The conflict copy name of `path` for a version of `device` written at
/// `mtime_ms`; `n > 1` adds a counter. `None` if the name would be too long.
pub fn conflict_path(path: &RelPath, device: &str, mtime_ms: i64, n: u32) -> Option<RelPath> {
    let (stem, ext) = split_ext(path.file_name());
    let counter = if n > 1 {
        format!("-{n}")
    } else {
        String::new()
    };
    let tag = format!(
        ".conflict-{}-{}{counter}",
        device_label(device),
        utc_stamp(mtime_ms)
    );
    let name = match ext {
        Some(e) => format!("{stem}{tag}.{e}"),
        None => format!("{stem}{tag}"),
    };
    path.with_file_name(&name).ok()
}

/// Whether `name` is a conflict copy's name: it holds
/// `.conflict-DEVICE-YYYYMMDD-HHMMSS` (with an optional `-N`).
pub fn is_conflict_copy(name: &str) -> bool {
    let mut rest = name;
    while let Some(i) = rest.find(".conflict-") {
        let after = &rest[i + ".conflict-".len()..];
        if stamp_follows_device(after) {
            return true;
        }
        rest = after;
    }
    false
}

/// `DEVICE-YYYYMMDD-HHMMSS...` with a device label of 1..=32 characters.
fn stamp_follows_device(s: &str) -> bool {
    let head: String = s.chars().take(MAX_DEVICE_CHARS + 17).collect();
    (1..=MAX_DEVICE_CHARS.min(head.len())).any(|dev_len| {
        let Some(rest) = head.get(dev_len..) else {
            return false;
        };
        let dev = &head[..dev_len];
        rest.starts_with('-')
            && dev
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && rest
                .get(1..16)
                .is_some_and(|st| parse_utc_stamp(st).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2026-12-01 17:15:00 UTC
        let ms = 1_796_145_300_000;
        assert_eq!(utc_stamp(ms), "20261201-171500");
        assert_eq!(parse_utc_stamp("20261201-171500"), Some(ms));
        assert_eq!(utc_stamp(951_782_400_000), "20000229-000000");
        assert_eq!(parse_utc_stamp("20001301-000000"), None);
        assert_eq!(parse_utc_stamp("2000010-0000000"), None);
    }

    #[test]
    fn conflict_names_keep_the_extension_and_are_recognised() {
        let ms = 1_796_145_300_000;
        let p = RelPath::parse("docs/report.final.pdf").unwrap();
        let c = conflict_path(&p, "Laptop (work)", ms, 1).unwrap();
        assert_eq!(
            c.as_str(),
            "docs/report.final.conflict-Laptop__work_-20261201-171500.pdf"
        );
        assert!(is_conflict_copy(c.file_name()));
        let c2 = conflict_path(&RelPath::parse(".bashrc").unwrap(), "pc", ms, 2).unwrap();
        assert_eq!(c2.as_str(), ".bashrc.conflict-pc-20261201-171500-2");
        assert!(is_conflict_copy(c2.file_name()));
        assert!(!is_conflict_copy("notes.conflict-resolution.txt"));
        assert!(!is_conflict_copy("report.pdf"));
        assert!(conflict_path(&RelPath::parse(&"x".repeat(250)).unwrap(), "d", ms, 1).is_none());
    }
}
