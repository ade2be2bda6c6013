//! The service's main loop: reacts to commits at once, heartbeats and watches
//! the leader on a timer, and wakes the follower's catch-up, until stopped.
//! Everything it starts runs off the loop and belongs to it.

use std::sync::atomic::Ordering;

use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

use super::protocol::Role;
use super::state::SyncService;
use crate::sync::txn::Source;

impl SyncService {
    /// The main loop: react to commits at once, heartbeat, elect, until stopped.
    pub async fn run(self) {
        let shared = &self.shared;
        let mut events = shared.lib.subscribe();
        let mut stop = shared.stop.subscribe();
        let mut next_tick = Instant::now();
        // Work spawned off the loop belongs to it: when the loop ends (stopped,
        // or its task aborted as in a crash) the set is dropped and that work
        // is cancelled, so nothing keeps acting for a stopped service.
        let mut work = tokio::task::JoinSet::new();
        // A fresh start reconciles with everyone reachable. A follower that
        // knows its leader catches up with it at once (reconcile, then propose
        // what the leader still lacks) instead of waiting for a heartbeat;
        // proposing before that reconcile could resend what the leader holds.
        let catch_up_first = self.role() == Role::Follower && self.term().leader != Uuid::nil();
        let mut dirty = !catch_up_first;
        if catch_up_first {
            shared.wake.notify_one();
            next_tick = Instant::now() + shared.config.heartbeat_interval;
        }
        loop {
            if *stop.borrow() {
                break;
            }
            while work.try_join_next().is_some() {}
            if dirty {
                dirty = false;
                self.kick_changes(&mut work);
            }
            // `biased`: a fixed polling order keeps the simulation deterministic.
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                ev = events.recv() => {
                    match ev {
                        Ok(ev) => {
                            dirty = ev.source == Source::Local || self.role() == Role::Leader;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    // Coalesce a burst: everything already queued is handled at once.
                    while let Ok(ev) = events.try_recv() {
                        dirty |= ev.source == Source::Local || self.role() == Role::Leader;
                    }
                }
                _ = shared.kick.notified() => dirty = true,
                _ = shared.wake.notified() => {
                    let service = self.clone();
                    work.spawn(async move { service.catch_up().await });
                }
                _ = shared.confirm.notified() => {
                    let service = self.clone();
                    work.spawn(async move { service.confirm_rumour().await });
                }
                _ = shared.suspect.notified() => {
                    if !shared.ticking.swap(true, Ordering::SeqCst) {
                        let service = self.clone();
                        work.spawn(async move {
                            service.check_leader().await;
                            service.shared.ticking.store(false, Ordering::SeqCst);
                        });
                    }
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = Instant::now() + shared.config.heartbeat_interval;
                    if !shared.ticking.swap(true, Ordering::SeqCst) {
                        let service = self.clone();
                        work.spawn(async move {
                            service.tick().await;
                            service.shared.ticking.store(false, Ordering::SeqCst);
                        });
                    }
                }
            }
        }
    }

    /// Propagate new entries without blocking the main loop: one propagation
    /// runs at a time and picks up everything that changed meanwhile.
    fn kick_changes(&self, work: &mut tokio::task::JoinSet<()>) {
        self.shared.changed.store(true, Ordering::SeqCst);
        let service = self.clone();
        work.spawn(async move {
            loop {
                {
                    let Ok(_running) = service.shared.propagating.try_lock() else {
                        return; // the running one will see `changed`
                    };
                    while service.shared.changed.swap(false, Ordering::SeqCst) {
                        service.on_change().await;
                    }
                }
                // A change may have arrived just as the runner finished.
                if !service.shared.changed.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
    }
}
