//! Leases: the in-memory table of live leases and their deadlines.
//!
//! The durable truth is in the engine (a `LEASE` record per lease, a `LEASE_KEYS` entry per
//! attached key), written by the store's writer in the same batches as the keys. This table is
//! what the leader consults between batches: which leases exist and when each expires. After a
//! restart every lease gets its full TTL again, as etcd grants on a leader change, so nothing
//! expires early because Engram restarted.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// etcd's smallest TTL with its default election settings (1.5 s, rounded up).
pub const MIN_TTL: i64 = 2;
/// etcd's largest TTL.
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// The TTL granted, in seconds.
    pub ttl: i64,
    /// When the lease expires unless kept alive.
    pub deadline: Instant,
}

impl LeaseInfo {
    /// Whole seconds left, as etcd reports them (0 once expired).
    pub fn remaining(&self, now: Instant) -> i64 {
        self.deadline.saturating_duration_since(now).as_secs() as i64
    }
}

#[derive(Default)]
pub struct LeaseTable {
    leases: Mutex<HashMap<i64, LeaseInfo>>,
}

fn deadline(now: Instant, ttl: i64) -> Instant {
    now + Duration::from_secs(ttl.max(0) as u64)
}

impl LeaseTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, LeaseInfo>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: i64) -> Option<LeaseInfo> {
        self.lock().get(&id).copied()
    }

    pub fn exists(&self, id: i64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Records a granted (or recovered) lease with a full TTL from now.
    pub fn insert(&self, id: i64, ttl: i64) {
        let now = Instant::now();
        self.lock().insert(
            id,
            LeaseInfo {
                id,
                ttl,
                deadline: deadline(now, ttl),
            },
        );
    }

    pub fn remove(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Renews a lease for its full TTL; returns the TTL, or None if it does not exist.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let now = Instant::now();
        let mut leases = self.lock();
        let lease = leases.get_mut(&id)?;
        lease.deadline = deadline(now, lease.ttl);
        Some(lease.ttl)
    }

    /// Up to `max` leases whose deadline has passed, soonest first.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let leases = self.lock();
        let mut due: Vec<&LeaseInfo> = leases.values().filter(|l| l.deadline <= now).collect();
        due.sort_by_key(|l| l.deadline);
        due.into_iter().take(max).map(|l| l.id).collect()
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_renews_and_expiry_finds_due_leases() {
        let table = LeaseTable::default();
        table.insert(1, 10);
        table.insert(2, 0);
        assert_eq!(table.keep_alive(1), Some(10));
        assert_eq!(table.keep_alive(3), None);
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(table.expired(later, 10), vec![2]);
        assert!(table.get(1).unwrap().remaining(Instant::now()) >= 9);
        table.remove(2);
        assert_eq!(table.ids(), vec![1]);
    }
}
