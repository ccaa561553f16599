//! The LSM engine's fault: fjall takes no more writes once one failed.
//!
//! Every failed journal write, journal sync, memtable flush or compaction poisons a fjall
//! database for good (its code poisons on each of them, and measured: after ENOSPC or EIO,
//! every later write answers `Poisoned` even once the disk has room or the device works
//! again); reads keep working, and only opening the database again clears it. So the first
//! failure of a write or sync is latched here, as the engine's [`fault`](super::Engine::fault):
//! later writes fail at once with that cause instead of fjall's bare `Poisoned`, and the member
//! above knows it serves reads only. A failure in fjall's background worker (a flush finding
//! the disk full) is met as `Poisoned` by the next write, without its cause: it is taken as a
//! full disk when the data directory's filesystem has less room than a memtable flush needs.

use crate::engine::EngineError;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The first write failure, once there is one.
pub(super) struct FaultLatch {
    first: OnceLock<EngineError>,
    /// Where fjall writes its files (for the free-space guess on a bare `Poisoned`).
    dir: PathBuf,
    /// Room a memtable flush needs: less free than this, and a bare `Poisoned` was the disk.
    flush_bytes: u64,
}

impl FaultLatch {
    pub(super) fn new(dir: PathBuf, flush_bytes: u64) -> FaultLatch {
        FaultLatch {
            first: OnceLock::new(),
            dir,
            flush_bytes,
        }
    }

    pub(super) fn get(&self) -> Option<EngineError> {
        self.first.get().cloned()
    }

    /// Fails at once if a write failed before.
    pub(super) fn check(&self) -> Result<(), EngineError> {
        match self.first.get() {
            Some(fault) => Err(fault.clone()),
            None => Ok(()),
        }
    }

    /// Latches `err`, the failure of a write or sync, and returns what to answer with: the
    /// first fault, whose cause this one may only echo.
    pub(super) fn record(&self, err: &fjall::Error) -> EngineError {
        let fault = self.first.get_or_init(|| {
            let fault = self.classify(err);
            tracing::error!(
                %fault,
                "the storage engine failed a write and takes no more until the member \
                 restarts; serving reads only"
            );
            fault
        });
        fault.clone()
    }

    fn classify(&self, err: &fjall::Error) -> EngineError {
        if let Some(io) = io_error(err) {
            return if is_no_space(io) {
                EngineError::NoSpace(io.to_string())
            } else {
                EngineError::Storage(format!("write failed: {io}"))
            };
        }
        if matches!(err, fjall::Error::Poisoned) {
            let free = crate::engine::disk::free_bytes(&self.dir);
            if free.is_some_and(|free| free < self.flush_bytes) {
                return EngineError::NoSpace(format!(
                    "a background flush failed with {} bytes free",
                    free.unwrap_or(0)
                ));
            }
            return EngineError::Storage(
                "a background flush or compaction failed (see the log)".into(),
            );
        }
        EngineError::Storage(err.to_string())
    }
}

/// The I/O error under a fjall error, if it is one.
fn io_error(err: &fjall::Error) -> Option<&io::Error> {
    match err {
        fjall::Error::Io(io) => Some(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    }
}

/// ENOSPC, or EDQUOT (a filesystem quota): no room for the write.
pub(super) fn is_no_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latch() -> FaultLatch {
        FaultLatch::new(std::env::temp_dir(), 0)
    }

    #[test]
    fn enospc_and_edquot_are_no_space_other_errors_are_storage_faults() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let err = fjall::Error::Io(io::Error::from_raw_os_error(errno));
            assert!(matches!(latch().record(&err), EngineError::NoSpace(_)));
            let err =
                fjall::Error::Storage(fjall::LsmError::Io(io::Error::from_raw_os_error(errno)));
            assert!(matches!(latch().record(&err), EngineError::NoSpace(_)));
        }
        let err = fjall::Error::Io(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(latch().record(&err), EngineError::Storage(_)));
    }

    #[test]
    fn the_first_fault_is_kept_and_answered_from_then_on() {
        let latch = latch();
        assert!(latch.check().is_ok());
        assert!(latch.get().is_none());
        let first = latch.record(&fjall::Error::Io(io::Error::from_raw_os_error(libc::EIO)));
        let later = latch.record(&fjall::Error::Poisoned);
        assert!(matches!(first, EngineError::Storage(_)));
        assert_eq!(
            first.to_string(),
            later.to_string(),
            "a later Poisoned echoes the first cause"
        );
        let checked = latch.check().unwrap_err();
        assert_eq!(checked.to_string(), first.to_string());
        assert_eq!(latch.get().unwrap().to_string(), first.to_string());
    }

    #[test]
    fn a_bare_poisoned_is_a_full_disk_only_when_a_flush_would_not_fit() {
        let roomy = FaultLatch::new(std::env::temp_dir(), 0);
        assert!(matches!(
            roomy.record(&fjall::Error::Poisoned),
            EngineError::Storage(_)
        ));
        let full = FaultLatch::new(std::env::temp_dir(), u64::MAX);
        assert!(matches!(
            full.record(&fjall::Error::Poisoned),
            EngineError::NoSpace(_)
        ));
    }
}
