//! The byzantine fault: the last device runs the honest code like every
//! other, and on top of it forges, sending straight to a random running
//! member: entries in another device's name (the next positions of that
//! origin, sealed with the forger's own key), genuine chunks it relays with
//! one entry altered, and terms it does not lead. Every forgery is recorded;
//! the final check is that no device ever logged or applied one.

use concord::model::{Syncable, Tag};
use concord::service::protocol::{Envelope, Msg, Role, Term};
use concord::sync::entry::{replica_id, FieldWrite, LogEntry, Op};
use concord::sync::log::VersionVector;
use concord::sync::seal::seal_entries;
use concord::Library;
use uuid::Uuid;

use crate::world::World;

/// Prefix of every tag name the forger makes up (the workload never uses it).
const FORGED: &str = "forged-";

impl World {
    /// One to three forgeries from the last device, each to a random other
    /// running device.
    pub(crate) fn forge(&mut self) -> Result<(), String> {
        for _ in 0..1 + self.rng.below(3) {
            self.forge_one()?;
        }
        Ok(())
    }

    fn forge_one(&mut self) -> Result<(), String> {
        let n = self.devices.len();
        let byz = n - 1;
        let Some(lib) = self.devices[byz].lib.clone() else {
            return Ok(());
        };
        let others: Vec<usize> = (0..byz).collect();
        let Some(&v) = self.rng.pick(&others) else {
            return Ok(());
        };
        let up: Vec<usize> = self.up().into_iter().filter(|&i| i != byz).collect();
        let Some(&t) = self.rng.pick(&up) else {
            return Ok(());
        };
        let victim = self.devices[v].id;
        // The victim's current incarnation (any member sees its replica in
        // version vectors): forgeries aim at the positions it numbers next.
        let incarnation = self.devices[v].lib.as_ref().map_or(0, |l| l.incarnation());
        let msg = match self.rng.below(3) {
            0 => self.altered_chunk(&lib, replica_id(victim, incarnation))?,
            1 => Some(Msg::Heartbeat {
                term: Term {
                    epoch: u64::MAX,
                    leader: victim,
                },
                role: Role::Leader,
                seq: 0,
                vv: VersionVector::new(),
                horizon: None,
            }),
            _ => None,
        };
        let msg = match msg {
            Some(m) => m,
            None => self.in_anothers_name(&lib, byz, (victim, incarnation))?,
        };
        self.forgeries.sent += 1;
        let me = self.devices[byz].id;
        let env = Envelope {
            id: self.rng.next_u64(),
            library: lib.id(),
            from: me,
            msg,
        };
        let to = self.devices[t].id;
        let link = self.net.link(me);
        tokio::spawn(async move {
            let _ = link.request(to, env).await;
        });
        Ok(())
    }

    /// New tags in `victim`'s name (a device and its incarnation) at its next
    /// positions, sealed with the forger's key.
    fn in_anothers_name(
        &mut self,
        lib: &Library,
        byz: usize,
        (victim, incarnation): (Uuid, u64),
    ) -> Result<Msg, String> {
        let next = lib
            .with_log(|l| l.max_seq(replica_id(victim, incarnation)))
            .map_err(|e| e.to_string())?
            + 1
            + self.rng.below(3);
        let hlc = lib.hlc().last();
        let mut entries: Vec<LogEntry> = (0..1 + self.rng.below(3))
            .map(|k| {
                let tag = Tag {
                    id: self.rng.uuid(),
                    name: format!("{FORGED}{}-{k}", self.forgeries.sent),
                    color: None,
                };
                LogEntry {
                    origin: victim,
                    origin_seq: next + k,
                    incarnation,
                    hlc,
                    lib_seq: None,
                    epoch: None,
                    model: Tag::INFO.name.to_string(),
                    record: tag.id,
                    op: Op::Insert(FieldWrite::all(tag.to_values())),
                    seal: None,
                }
            })
            .collect();
        seal_entries(&self.devices[byz].key, lib.id(), &mut entries);
        Ok(Msg::PushEntries { entries })
    }

    /// A genuine sealed chunk of the replica `victim` from the forger's log,
    /// one entry's clock moved by one; `None` when the log holds no whole
    /// chunk of it.
    fn altered_chunk(&mut self, lib: &Library, victim: Uuid) -> Result<Option<Msg>, String> {
        let held = lib
            .with_log(|l| l.fetch_origin(victim, 0, 300))
            .map_err(|e| e.to_string())?;
        let carriers: Vec<usize> = (0..held.len())
            .filter(|&i| held[i].seal.is_some_and(|s| s.first >= held[0].origin_seq))
            .collect();
        let Some(&c) = self.rng.pick(&carriers) else {
            return Ok(None);
        };
        let first = held[c].seal.map_or(0, |s| s.first);
        let Some(start) = held[..=c].iter().position(|e| e.origin_seq == first) else {
            return Ok(None);
        };
        let mut chunk = held[start..=c].to_vec();
        if chunk
            .iter()
            .enumerate()
            .any(|(k, e)| e.origin_seq != first + k as u64)
        {
            return Ok(None);
        }
        let k = self.rng.below(chunk.len() as u64) as usize;
        self.forgeries
            .altered
            .insert(chunk[k].id(), chunk[k].clone());
        chunk[k].hlc += 1;
        Ok(Some(Msg::PushEntries { entries: chunk }))
    }

    /// No device holds a tag the forger made up, and every device that holds
    /// an entry the forger relayed altered holds the genuine one.
    pub(crate) fn check_forgeries(&self) -> Result<(), String> {
        for (i, d) in self.devices.iter().enumerate() {
            let Some(lib) = &d.lib else { continue };
            let made_up: i64 = lib
                .read(|c| {
                    Ok(c.query_row(
                        "SELECT COUNT(*) FROM tags WHERE name LIKE ?1",
                        [format!("{FORGED}%")],
                        |r| r.get(0),
                    )?)
                })
                .map_err(|e| e.to_string())?;
            if made_up > 0 {
                return Err(format!("device {i} applied {made_up} forged tags"));
            }
            for (&(origin, seq), genuine) in &self.forgeries.altered {
                let held = lib
                    .with_log(|l| l.fetch_origin(origin, seq - 1, 1))
                    .map_err(|e| e.to_string())?;
                if let Some(e) = held.first().filter(|e| e.origin_seq == seq) {
                    if (e.hlc, &e.op, &e.record) != (genuine.hlc, &genuine.op, &genuine.record) {
                        return Err(format!(
                            "device {i} holds an altered copy of entry {origin}:{seq}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
