//! Retiring superseded replicas from version vectors (compact vectors, see
//! `crate::sync::log::retired`), both sides.
//!
//! The leader decides: a replica is retired at this log's position when it is
//! superseded (its device wrote under a later replica since), this log holds it
//! without a gap, and every member the pruning horizon counts acknowledged
//! exactly that position (none holds less, none more). Devices learn it by
//! exchange: whenever two devices reconcile and their vectors' retired digests
//! differ, each sends the other what it retired (`Retire` → `Retired`), and
//! each records what it holds through the retired position. A device that does
//! not hold it (restored from a backup from before) keeps another digest, so
//! its vector is taken as it is and it is sent what it lacks first.

use std::collections::HashSet;

use uuid::Uuid;

use super::protocol::{Msg, MAX_RETIRED};
use super::state::SyncService;
use crate::error::{Error, Result};
use crate::sync::entry::is_replica_of;
use crate::sync::log::{retired_digest, SyncLog, VersionVector, RETIRED_KEY};

impl SyncService {
    /// Leader: retire every superseded replica that each of `counted` (the
    /// vectors the pruning horizon is the least of, this device's first)
    /// names at exactly this log's position.
    pub(super) async fn retire_superseded(&self, counted: Vec<VersionVector>) {
        let mut proposed: Vec<(Uuid, Uuid)> = self
            .state()
            .peers
            .iter()
            .filter_map(|(device, p)| p.writing.map(|r| (*device, r)))
            .collect();
        proposed.push((self.shared.me, self.shared.lib.replica()));
        let done = self
            .run_sqlite(move |lib| {
                lib.with_log(|l| {
                    let held = l.version_vector()?;
                    let mut ready = Vec::new();
                    for (replica, at) in l.retire_candidates()? {
                        if counted.iter().all(|vv| vv.get(&replica) == Some(&at))
                            && superseded(l, replica, &proposed, &held)?
                        {
                            ready.push((replica, at));
                        }
                    }
                    if ready.is_empty() {
                        return Ok(0);
                    }
                    l.retire(&ready)
                })
            })
            .await;
        match done {
            Ok(0) => {}
            Ok(n) => tracing::debug!(retired = n, "retired replicas every member holds"),
            Err(e) => self.note_error(e),
        }
    }

    /// When `their_digest` (the retired digest of `peer`'s vector, 0 for
    /// none) is not this device's: send `peer` what this device retired and
    /// record what it answers it retired.
    pub(super) async fn exchange_retired(&self, peer: Uuid, their_digest: u64) -> Result<()> {
        let mine = self.run_sqlite(|lib| lib.with_log(|l| l.retired())).await?;
        if retired_digest(&mine) == their_digest {
            return Ok(());
        }
        let retired: Vec<(Uuid, u64)> = mine.into_iter().take(MAX_RETIRED).collect();
        match self.send(peer, Msg::Retire { retired }).await {
            Ok(Msg::Retired { retired }) => {
                self.run_sqlite(move |lib| lib.with_log(|l| l.retire(&retired)))
                    .await?;
                Ok(())
            }
            Ok(other) => Err(Error::Other(format!(
                "unexpected reply {} to Retire",
                other.name()
            ))),
            Err(e) => Err(Error::Other(e.to_string())),
        }
    }

    /// `Retire`: record what the sender retired and this log holds; answer
    /// with what this device retired that the sender did not list.
    pub(super) async fn serve_retire(&self, retired: Vec<(Uuid, u64)>) -> Result<Msg> {
        let told: HashSet<(Uuid, u64)> = retired.iter().copied().collect();
        let mine = self
            .run_sqlite(move |lib| {
                lib.with_log(|l| {
                    l.retire(&retired)?;
                    l.retired()
                })
            })
            .await?;
        Ok(Msg::Retired {
            retired: mine
                .into_iter()
                .filter(|r| !told.contains(r))
                .take(MAX_RETIRED)
                .collect(),
        })
    }
}

/// Whether `replica` is superseded: a replica of a device other than the one
/// it proposed from last (`proposed`: this device's own current replica
/// among them); for a device that did not propose to this leader, other
/// than its replica this log appended entries of last (`held`: the full
/// vector, naming every replica). A device that has not written since it
/// started keeps its newest replica until it does.
fn superseded(
    log: &SyncLog,
    replica: Uuid,
    proposed: &[(Uuid, Uuid)],
    held: &VersionVector,
) -> Result<bool> {
    if let Some((_, current)) = proposed
        .iter()
        .find(|(device, _)| is_replica_of(replica, *device))
    {
        return Ok(*current != replica);
    }
    let mine = log.appended_at(replica)?;
    for sibling in held.keys() {
        if *sibling != replica
            && sibling.as_bytes()[..8] == replica.as_bytes()[..8]
            && log.appended_at(*sibling)? > mine
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The retired digest a vector carries (0: none).
pub(super) fn digest_of(vv: &VersionVector) -> u64 {
    vv.get(&RETIRED_KEY).copied().unwrap_or(0)
}

/// `vv` without its retired digest: replicas only (for sums and horizons).
pub(super) fn replicas_only(mut vv: VersionVector) -> VersionVector {
    vv.remove(&RETIRED_KEY);
    vv
}
