//! Version vectors: per origin device, the highest `origin_seq` up to which a
//! log holds every entry. Comparing two tells what one device lacks of another;
//! their minimum over all devices tells what every device holds (and may be
//! pruned).

use std::collections::BTreeMap;

use uuid::Uuid;

/// Per-origin highest contiguous `origin_seq`.
pub type VersionVector = BTreeMap<Uuid, u64>;

/// Elementwise minimum of version vectors (an origin missing from one counts as 0).
pub fn vv_min<'a>(vvs: impl IntoIterator<Item = &'a VersionVector>) -> VersionVector {
    let mut iter = vvs.into_iter();
    let Some(first) = iter.next() else {
        return VersionVector::new();
    };
    let mut out = first.clone();
    for vv in iter {
        for (origin, seq) in out.iter_mut() {
            *seq = (*seq).min(vv.get(origin).copied().unwrap_or(0));
        }
    }
    out.retain(|_, s| *s > 0);
    out
}

/// Entries `a` has that `b` lacks, counted per origin.
pub fn vv_lag(a: &VersionVector, b: &VersionVector) -> u64 {
    a.iter()
        .map(|(o, s)| s.saturating_sub(b.get(o).copied().unwrap_or(0)))
        .sum()
}

/// Whether `a` covers everything in `b`.
pub fn vv_covers(a: &VersionVector, b: &VersionVector) -> bool {
    b.iter().all(|(o, s)| a.get(o).copied().unwrap_or(0) >= *s)
}
