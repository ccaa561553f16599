//! The NOSPACE alarm, and the checks that raise it.
//!
//! As in etcd, an alarm belongs to a member: raising member 0's alarm (what a client does when
//! it names no member) leaves the real member's alone, and clearing one leaves the others.
//! While any NOSPACE alarm is raised, what adds data is refused (etcd's capped applier): Put,
//! a Txn with a top-level Put, LeaseGrant. Reads, deletes and compaction go on, so that an
//! operator can make room. The store raises its own member's alarm when a write does not fit
//! (see [`super::space`]) or the engine finds the disk full.

use super::Store;
use crate::engine::{Engine, EngineError};
use crate::kv::{KvError, KvResult};
use std::sync::atomic::Ordering;

impl<E: Engine> Store<E> {
    /// Whether any member's NOSPACE alarm is raised.
    pub fn no_space(&self) -> bool {
        self.shared.no_space.load(Ordering::Acquire)
    }

    /// Raises `member`'s NOSPACE alarm; false if it was raised already.
    pub fn raise_no_space(&self, member: u64) -> bool {
        let mut alarms = self.shared.lock_no_space_alarms();
        let raised = alarms.insert(member);
        self.shared.no_space.store(true, Ordering::Release);
        raised
    }

    /// Clears `member`'s NOSPACE alarm; false if it was not raised.
    pub fn clear_no_space(&self, member: u64) -> bool {
        let mut alarms = self.shared.lock_no_space_alarms();
        let cleared = alarms.remove(&member);
        self.shared
            .no_space
            .store(!alarms.is_empty(), Ordering::Release);
        cleared
    }

    /// The members whose NOSPACE alarm is raised, by id.
    pub fn no_space_alarms(&self) -> Vec<u64> {
        self.shared.lock_no_space_alarms().iter().copied().collect()
    }

    /// Takes over the alarms `other` has raised (a member's new store after a role change).
    pub fn take_alarms_from(&self, other: &Store<E>) {
        for member in other.no_space_alarms() {
            self.raise_no_space(member);
        }
    }

    /// Refuses a write that adds `cost` bytes (etcd's quota cost; 0 for writes that add
    /// nothing, which always pass) while a NOSPACE alarm is raised, and raises this member's
    /// when the write does not fit (see [`super::space`]).
    pub(super) fn check_space(&self, cost: u64) -> KvResult<()> {
        if cost == 0 {
            return Ok(());
        }
        if self.no_space() {
            return Err(KvError::NoSpace);
        }
        let Some(space) = &self.space else {
            return Ok(());
        };
        if let Err(shortage) = space.admit(cost, || self.shared.engine.logical_size()) {
            tracing::warn!(
                %shortage,
                "raising the NOSPACE alarm: writes that add data are refused until it is \
                 disarmed (etcdctl alarm disarm)"
            );
            self.raise_no_space(self.member_id);
            return Err(KvError::NoSpace);
        }
        Ok(())
    }

    /// What a write hears when the engine failed it with `err`: a full disk is etcd's NOSPACE,
    /// any other failure is answered as is. `first` (the failure itself, not a later write
    /// meeting the engine's fault) raises the alarm, so that the member says so everywhere;
    /// once an operator disarms it, later writes leave it to the member's storage watch to
    /// decide whether the engine is to be opened afresh.
    pub(super) fn engine_failed(&self, err: EngineError, first: bool) -> KvError {
        match err {
            EngineError::NoSpace(cause) => {
                if first && self.raise_no_space(self.member_id) {
                    tracing::error!(%cause, "the disk is full: raising the NOSPACE alarm");
                }
                KvError::NoSpace
            }
            err => KvError::Engine(err),
        }
    }
}
