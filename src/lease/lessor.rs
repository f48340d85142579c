//! This member's in-memory view of the leases: etcd's `lessor`, minus what goes to disk.
//!
//! Every member knows every lease (apply keeps this in step with `lease::store`); only the
//! primary (the raft leader) gives them deadlines. A deadline lives on the monotonic clock
//! and is never written anywhere: keep-alives move it in memory, and what survives a restart
//! or a change of leader is the remaining TTL that `expiry` checkpoints through the log.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::LeaseId;
use crate::proto::cairnpb::Lease;
use crate::proto::etcdserverpb::LeaseCheckpoint;

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The deadline moved to now + TTL; the granted TTL, in seconds.
    Renewed(i64),
    NotFound,
    /// This member is not the leader, so it keeps no deadlines.
    NotPrimary,
    /// The lease has a checkpointed remaining TTL, which a restart would resume from: it
    /// must be cleared through the log before the renewal, or a crash right after the
    /// renewal would bring the lease back with less time than the client was promised.
    NeedsClear,
    /// Expired and being revoked, or a checkpoint of it is in flight: ask again once the
    /// lessor changes.
    Wait,
}

#[derive(Debug)]
struct LeaseState {
    /// Granted TTL, seconds.
    ttl: i64,
    /// Last checkpointed remaining TTL, seconds; 0 = none.
    remaining_ttl: i64,
    /// On the primary only.
    deadline: Option<Instant>,
    /// A revocation of it is proposed and not yet answered.
    revoking: bool,
    /// A checkpoint of it is proposed and not yet answered.
    checkpointing: bool,
}

impl LeaseState {
    fn new(ttl: i64, remaining_ttl: i64) -> Self {
        LeaseState {
            ttl,
            remaining_ttl,
            deadline: None,
            revoking: false,
            checkpointing: false,
        }
    }

    /// What a new primary resumes from: the checkpoint if there is one, else the full TTL.
    fn resumable_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Default)]
struct Inner {
    leases: HashMap<LeaseId, LeaseState>,
    /// Deadlines of the leases not being revoked, soonest first (primary only).
    deadlines: BTreeSet<(Instant, LeaseId)>,
    primary: bool,
}

impl Inner {
    fn set_deadline(&mut self, id: LeaseId, at: Instant) {
        if let Some(l) = self.leases.get_mut(&id) {
            if let Some(old) = l.deadline.replace(at) {
                self.deadlines.remove(&(old, id));
            }
            if !l.revoking {
                self.deadlines.insert((at, id));
            }
        }
    }
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(n.max(0) as u64)
}

/// Whole seconds left, rounded up: a checkpoint must never shorten a lease.
fn ceil_secs(d: Duration) -> i64 {
    let s = d.as_secs() as i64;
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

#[derive(Default)]
pub struct Lessor {
    inner: Mutex<Inner>,
    /// Woken on every change a waiting renewal could be waiting for.
    changed: Notify,
}

impl Lessor {
    pub fn new() -> Self {
        Lessor::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent enough
        // to serve: deadlines are advisory until a revocation is applied.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces every lease with the stored ones (start-up, snapshot installation).
    pub fn recover(&self, stored: Vec<Lease>) {
        let mut inner = self.lock();
        inner.leases = stored
            .into_iter()
            .map(|l| (l.id, LeaseState::new(l.ttl, l.remaining_ttl)))
            .collect();
        inner.deadlines.clear();
        if inner.primary {
            let now = Instant::now();
            let resume: Vec<(LeaseId, i64)> = inner.leases.iter().map(|(id, l)| (*id, l.resumable_ttl())).collect();
            for (id, ttl) in resume {
                inner.set_deadline(id, now + secs(ttl));
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    // ---- apply: the state machine reports what it wrote ----

    pub fn granted(&self, id: LeaseId, ttl: i64) {
        let mut inner = self.lock();
        if let Some(old) = inner.leases.insert(id, LeaseState::new(ttl, 0)) {
            if let Some(at) = old.deadline {
                inner.deadlines.remove(&(at, id));
            }
        }
        if inner.primary {
            inner.set_deadline(id, Instant::now() + secs(ttl));
        }
    }

    pub fn revoked(&self, id: LeaseId) {
        let mut inner = self.lock();
        if let Some(l) = inner.leases.remove(&id) {
            if let Some(at) = l.deadline {
                inner.deadlines.remove(&(at, id));
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// A checkpoint was applied. The primary's deadline stays: the checkpoint was taken from it.
    pub fn checkpointed(&self, id: LeaseId, remaining_ttl: i64) {
        if let Some(l) = self.lock().leases.get_mut(&id) {
            l.remaining_ttl = remaining_ttl;
        }
    }

    // ---- leadership ----

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// This member became leader: every lease resumes its remaining TTL, plus `extend` (an
    /// election timeout, as etcd gives) for clients to find the new leader.
    pub fn promote(&self, extend: Duration) {
        let mut inner = self.lock();
        inner.primary = true;
        inner.deadlines.clear();
        let now = Instant::now();
        let resume: Vec<(LeaseId, i64)> = inner
            .leases
            .iter_mut()
            .map(|(id, l)| {
                l.deadline = None;
                l.revoking = false;
                l.checkpointing = false;
                (*id, l.resumable_ttl())
            })
            .collect();
        for (id, ttl) in resume {
            inner.set_deadline(id, now + extend + secs(ttl));
        }
    }

    pub fn demote(&self) {
        let mut inner = self.lock();
        inner.primary = false;
        inner.deadlines.clear();
        for l in inner.leases.values_mut() {
            l.deadline = None;
            l.revoking = false;
            l.checkpointing = false;
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    // ---- clients ----

    pub fn renew(&self, id: LeaseId) -> Renewal {
        let mut inner = self.lock();
        if !inner.primary {
            return Renewal::NotPrimary;
        }
        let now = Instant::now();
        let Some(l) = inner.leases.get(&id) else {
            return Renewal::NotFound;
        };
        if l.revoking || l.checkpointing || l.deadline.is_some_and(|d| d <= now) {
            return Renewal::Wait;
        }
        if l.remaining_ttl > 0 {
            return Renewal::NeedsClear;
        }
        let ttl = l.ttl;
        inner.set_deadline(id, now + secs(ttl));
        Renewal::Renewed(ttl)
    }

    /// Renews, waiting (up to `timeout`) while the lease is being revoked or checkpointed.
    /// `None` when the wait timed out.
    pub async fn renew_when_settled(&self, id: LeaseId, timeout: Duration) -> Option<Renewal> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.renew(id) {
                Renewal::Wait => {}
                settled => return Some(settled),
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Granted TTL and whole seconds left (truncated, as etcd reports them), if the lease
    /// exists. Off the primary, the TTL a new leader would resume from.
    pub fn time_to_live(&self, id: LeaseId) -> Option<(i64, i64)> {
        let inner = self.lock();
        let l = inner.leases.get(&id)?;
        let remaining = match l.deadline {
            Some(at) => at.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => l.resumable_ttl(),
        };
        Some((l.ttl, remaining))
    }

    /// Every lease, soonest deadline first (etcd sorts `LeaseLeases` by expiry).
    pub fn leases(&self) -> Vec<LeaseId> {
        let inner = self.lock();
        let mut all: Vec<(Option<Instant>, LeaseId)> = inner.leases.iter().map(|(id, l)| (l.deadline, *id)).collect();
        all.sort_unstable();
        all.into_iter().map(|(_, id)| id).collect()
    }

    // ---- the expiry loop ----

    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().deadlines.first().map(|(at, _)| *at)
    }

    /// Up to `max` leases whose deadline has passed, marked as being revoked.
    pub fn take_expired(&self, now: Instant, max: usize) -> Vec<LeaseId> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            match inner.deadlines.first().copied() {
                Some((at, id)) if at <= now => {
                    inner.deadlines.remove(&(at, id));
                    if let Some(l) = inner.leases.get_mut(&id) {
                        l.revoking = true;
                    }
                    out.push(id);
                }
                _ => break,
            }
        }
        out
    }

    /// A revocation could not be committed (lost leadership, timeout): it is retried.
    pub fn revoke_failed(&self, id: LeaseId) {
        let mut inner = self.lock();
        if let Some(l) = inner.leases.get_mut(&id) {
            l.revoking = false;
            if let Some(at) = l.deadline {
                inner.deadlines.insert((at, id));
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Checkpoints due now, at most `max`, marked as in flight. A lease is due once less
    /// than half its TTL is left (clients renew at a third of the TTL, so leases kept alive
    /// never are, and keep-alives never write) and it has aged at least `interval` since the
    /// TTL a restart would resume from.
    pub fn take_checkpoints(&self, now: Instant, interval: Duration, max: usize) -> Vec<LeaseCheckpoint> {
        let step = ceil_secs(interval).max(1);
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (id, l) in inner.leases.iter_mut() {
            if out.len() >= max {
                break;
            }
            let Some(at) = l.deadline else { continue };
            if l.revoking || l.checkpointing {
                continue;
            }
            let left = ceil_secs(at.saturating_duration_since(now));
            if left == 0 || left * 2 > l.ttl || l.resumable_ttl() - left < step {
                continue;
            }
            l.checkpointing = true;
            out.push(LeaseCheckpoint {
                id: *id,
                remaining_ttl: left,
            });
        }
        out
    }

    /// The checkpoints of `ids` were answered (applied or failed).
    pub fn checkpoints_done(&self, ids: impl IntoIterator<Item = LeaseId>) {
        let mut inner = self.lock();
        for id in ids {
            if let Some(l) = inner.leases.get_mut(&id) {
                l.checkpointing = false;
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: LeaseId, ttl: i64, remaining_ttl: i64) -> Lease {
        Lease { id, ttl, remaining_ttl }
    }

    #[test]
    fn only_the_primary_keeps_deadlines_and_renews() {
        let l = Lessor::new();
        l.granted(1, 10);
        assert_eq!(l.renew(1), Renewal::NotPrimary);
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.time_to_live(1), Some((10, 10)));
        l.promote(Duration::ZERO);
        assert!(l.next_deadline().is_some());
        assert_eq!(l.renew(1), Renewal::Renewed(10));
        assert_eq!(l.renew(2), Renewal::NotFound);
        l.demote();
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn promotion_resumes_checkpointed_ttl() {
        let l = Lessor::new();
        l.recover(vec![lease(1, 100, 40), lease(2, 100, 0)]);
        l.promote(Duration::ZERO);
        let (granted, left) = l.time_to_live(1).unwrap_or_default();
        assert_eq!(granted, 100);
        assert!((39..=40).contains(&left), "{left}");
        let (_, left) = l.time_to_live(2).unwrap_or_default();
        assert!((99..=100).contains(&left), "{left}");
        // A checkpointed lease is cleared through the log before it is renewed.
        assert_eq!(l.renew(1), Renewal::NeedsClear);
        l.checkpointed(1, 0);
        assert_eq!(l.renew(1), Renewal::Renewed(100));
    }

    #[test]
    fn expired_leases_are_taken_once_and_retried_after_failure() {
        let l = Lessor::new();
        l.promote(Duration::ZERO);
        l.granted(1, 5);
        l.granted(2, 50);
        let later = Instant::now() + Duration::from_secs(6);
        assert_eq!(l.take_expired(later, 10), vec![1]);
        assert_eq!(l.take_expired(later, 10), Vec::<LeaseId>::new());
        assert_eq!(l.renew(1), Renewal::Wait);
        l.revoke_failed(1);
        assert_eq!(l.take_expired(later, 10), vec![1]);
        l.revoked(1);
        assert_eq!(l.renew(1), Renewal::NotFound);
    }

    #[test]
    fn checkpoints_start_at_half_the_ttl_and_step_by_the_interval() {
        let l = Lessor::new();
        l.promote(Duration::ZERO);
        l.granted(1, 100);
        let start = Instant::now();
        let every = Duration::from_secs(5);
        assert!(l
            .take_checkpoints(start + Duration::from_secs(30), every, 10)
            .is_empty());
        let due = l.take_checkpoints(start + Duration::from_secs(60), every, 10);
        assert_eq!(due.len(), 1);
        assert!((40..=41).contains(&due[0].remaining_ttl), "{due:?}");
        // In flight: not taken twice, and renewals wait for it.
        assert!(l
            .take_checkpoints(start + Duration::from_secs(61), every, 10)
            .is_empty());
        assert_eq!(l.renew(1), Renewal::Wait);
        l.checkpointed(1, due[0].remaining_ttl);
        l.checkpoints_done([1]);
        // Less than one interval later: nothing new to record.
        assert!(l
            .take_checkpoints(start + Duration::from_secs(62), every, 10)
            .is_empty());
        assert_eq!(l.take_checkpoints(start + Duration::from_secs(66), every, 10).len(), 1);
    }
}
