//! Room for writes: etcd's space quota and the free-space margin of the data directory's
//! filesystem, checked before each write that adds data is accepted.
//!
//! A write is refused (and the NOSPACE alarm raised by the store) when the store's logical
//! size plus what was accepted since it was last measured plus the write's cost reaches the
//! quota (etcd's `size + cost < quota`), or when the disk's free space, less what accepted
//! writes will still take there, would drop under the margin. Measuring costs a statvfs and a
//! walk over the engine's files, so it is done at most every [`REMEASURE`]; in between, the
//! bytes accepted are added up, so that a burst of large writes cannot outrun the check.

use crate::engine::disk::free_bytes;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one measurement of size and free space is trusted.
pub const REMEASURE: Duration = Duration::from_millis(5);

/// Bytes that reach the disk per byte accepted before the next measurement sees them: the
/// journal's copy, then the memtable flush's.
const WRITE_AMPLIFICATION: u64 = 2;

/// What counts as out of space.
#[derive(Debug, Clone, Default)]
pub struct SpaceLimits {
    /// Largest logical size of the store, in bytes (etcd's `--quota-backend-bytes`); 0: none.
    pub quota_bytes: u64,
    /// Free bytes always left on the data directory's filesystem; 0: no margin.
    pub min_free_bytes: u64,
    /// Where the engine keeps its files; `None`: not on a local disk (no margin applies).
    pub data_dir: Option<PathBuf>,
}

/// Why a write does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shortage {
    #[error("the store holds {size} bytes; with {cost} more it reaches the quota of {quota}")]
    Quota { size: u64, cost: u64, quota: u64 },
    #[error(
        "{free} bytes are free on the data directory's filesystem; {pending} more would leave \
         less than the {min_free} kept free"
    )]
    Disk {
        free: u64,
        pending: u64,
        min_free: u64,
    },
}

/// The quota and margin of one member, shared by the stores it opens.
pub struct SpaceGuard {
    limits: SpaceLimits,
    last: Mutex<Measured>,
}

#[derive(Default)]
struct Measured {
    at: Option<Instant>,
    size: u64,
    free: Option<u64>,
    /// Cost of the writes accepted since.
    accepted: u64,
}

impl SpaceGuard {
    pub fn new(limits: SpaceLimits) -> SpaceGuard {
        SpaceGuard {
            limits,
            last: Mutex::new(Measured::default()),
        }
    }

    pub fn limits(&self) -> &SpaceLimits {
        &self.limits
    }

    /// Accepts a write of `cost` bytes (0: it adds nothing, and always fits), measuring the
    /// store's logical size with `size` when the last measurement is too old.
    pub fn admit(&self, cost: u64, size: impl FnOnce() -> u64) -> Result<(), Shortage> {
        let SpaceLimits {
            quota_bytes: quota,
            min_free_bytes: min_free,
            ..
        } = self.limits;
        if cost == 0 || (quota == 0 && min_free == 0) {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.at.is_none_or(|at| at.elapsed() >= REMEASURE) {
            *last = Measured {
                at: Some(Instant::now()),
                size: if quota > 0 { size() } else { 0 },
                free: self.free(),
                accepted: 0,
            };
        }
        let pending = last.accepted.saturating_add(cost);
        if quota > 0 && last.size.saturating_add(pending) >= quota {
            return Err(Shortage::Quota {
                size: last.size + last.accepted,
                cost,
                quota,
            });
        }
        if let Some(free) = last.free {
            let pending = pending.saturating_mul(WRITE_AMPLIFICATION);
            if free.saturating_sub(pending) < min_free {
                return Err(Shortage::Disk {
                    free,
                    pending,
                    min_free,
                });
            }
        }
        last.accepted = pending;
        Ok(())
    }

    /// Whether the disk has its margin free (true where no margin applies).
    pub fn disk_has_room(&self) -> bool {
        self.free()
            .is_none_or(|free| free >= self.limits.min_free_bytes)
    }

    /// Free bytes on the data directory's filesystem, margin or not (`None`: not on a local
    /// disk).
    pub fn disk_free(&self) -> Option<u64> {
        self.limits.data_dir.as_deref().and_then(free_bytes)
    }

    fn free(&self) -> Option<u64> {
        if self.limits.min_free_bytes == 0 {
            return None;
        }
        self.disk_free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(bytes: u64) -> SpaceGuard {
        SpaceGuard::new(SpaceLimits {
            quota_bytes: bytes,
            ..Default::default()
        })
    }

    #[test]
    fn writes_are_refused_once_size_and_accepted_bytes_reach_the_quota() {
        let guard = quota(1000);
        // Within one measurement, accepted bytes add up though the size did not move.
        assert_eq!(guard.admit(400, || 100), Ok(()));
        assert_eq!(guard.admit(400, || unreachable!("measured once")), Ok(()));
        assert_eq!(
            guard.admit(100, || unreachable!("measured once")),
            Err(Shortage::Quota {
                size: 900,
                cost: 100,
                quota: 1000
            }),
            "etcd's rule: size + cost must stay under the quota"
        );
        assert_eq!(guard.admit(99, || unreachable!()), Ok(()));
        assert_eq!(
            guard.admit(0, || unreachable!()),
            Ok(()),
            "deletes cost nothing"
        );
    }

    #[test]
    fn a_new_measurement_replaces_the_count_of_accepted_bytes() {
        let guard = quota(1000);
        assert_eq!(guard.admit(900, || 0), Ok(()));
        std::thread::sleep(REMEASURE * 2);
        assert_eq!(guard.admit(900, || 50), Ok(()));
        std::thread::sleep(REMEASURE * 2);
        assert!(matches!(
            guard.admit(100, || 950),
            Err(Shortage::Quota { size: 950, .. })
        ));
    }

    #[test]
    fn the_free_space_margin_counts_what_accepted_writes_will_take() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).unwrap();
        let guard = SpaceGuard::new(SpaceLimits {
            quota_bytes: 0,
            min_free_bytes: free / 2,
            data_dir: Some(dir.clone()),
        });
        assert_eq!(guard.admit(1, || unreachable!("no quota")), Ok(()));
        assert!(guard.disk_has_room());
        assert!(matches!(
            guard.admit(free / 2, || unreachable!()),
            Err(Shortage::Disk { .. })
        ));
        let full = SpaceGuard::new(SpaceLimits {
            quota_bytes: 0,
            min_free_bytes: u64::MAX,
            data_dir: Some(dir),
        });
        assert!(!full.disk_has_room());
        assert!(matches!(full.admit(1, || 0), Err(Shortage::Disk { .. })));
    }
}
