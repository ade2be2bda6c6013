//! Changing who belongs to a library: removing a member, and raising a
//! removal's cutoff to what this device already applied.
//!
//! The rules these writes obey on every member are in
//! `sync/apply/device.rs`; this module only writes them, through the
//! TransactionManager like any other change.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::Device;
use crate::query::members;
use crate::sync::apply::Cutoffs;
use crate::sync::entry::is_replica_of;
use crate::sync::txn::{Change, Library};

/// Remove `device` from `lib`: a synced removal every member learns, whose
/// cutoff is the last of its entries this device holds (the highest
/// contiguous position of its replicas in this device's version vector). Members refuse the device's entries past it, stop
/// serving it and no longer count it in elections. Returns the cutoff;
/// `None` when the device was no member (or was already removed).
pub fn remove(lib: &Library, device: Uuid) -> Result<Option<u64>> {
    if device == lib.device() {
        return Err(Error::Invalid(
            "a device cannot remove itself from a library".into(),
        ));
    }
    if !members::is_member(lib, device)? {
        return Ok(None);
    }
    let through = held_of(lib, device)?;
    lib.commit(Change::update::<Device>(device).set("removed", through as i64))?;
    Ok(Some(through))
}

/// Raise the cutoff of every removed device whose entries this device applied
/// past it (it took them before it learned of the removal): every member then
/// accepts them too, so all end with the same entries (I2). Refused entries
/// are never logged, so a member that refused them fetches them again once
/// the cutoff rises. Returns how many cutoffs were raised.
pub fn raise_cutoffs(lib: &Library) -> Result<usize> {
    let me = lib.device();
    let cutoffs = lib.read(Cutoffs::load)?;
    let mut raised = 0;
    for (device, cut) in cutoffs.iter() {
        if device == me {
            continue;
        }
        let held = held_of(lib, device)?;
        if held > cut.through {
            lib.commit(Change::update::<Device>(device).set("removed", held as i64))?;
            raised += 1;
        }
    }
    Ok(raised)
}

/// How far `lib`'s log holds `device`'s entries without a gap: the highest
/// contiguous position of any of its replicas (incarnations). A cutoff is per
/// device and bounds positions in each replica a member holds; replicas a
/// member never held are refused whole (`Cutoffs::refusal`).
pub fn held_of(lib: &Library, device: Uuid) -> Result<u64> {
    let vv = lib.with_log(|l| l.version_vector())?;
    Ok(vv
        .iter()
        .filter(|(replica, _)| is_replica_of(**replica, device))
        .map(|(_, &seq)| seq)
        .max()
        .unwrap_or(0))
}
