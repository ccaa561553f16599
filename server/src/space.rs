//! The NOSPACE alarm: raised when the store outgrows its quota or the disk under the data
//! directory runs low, so that writes fail with etcd's error instead of the disk filling up.

use crate::brain::Brain;
use backend::engine::Engine;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What counts as out of space.
#[derive(Debug, Clone)]
pub struct SpaceLimits {
    /// Largest store size in bytes (etcd's --quota-backend-bytes); 0 = no quota.
    pub quota_bytes: u64,
    /// Least free space on the data directory's filesystem.
    pub min_free_bytes: u64,
    pub data_dir: PathBuf,
    pub interval: Duration,
}

/// Free bytes for unprivileged writers on the filesystem holding `path`; None if unknown
/// (the memory engine's directory need not exist).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right type; statvfs initialises it fully when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `stat` is initialised.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Raises the alarm whenever the limits are crossed. Only an operator clears it (Alarm
/// DEACTIVATE, `etcdctl alarm disarm`), as in etcd; it is raised again at the next check if the
/// store is still over.
pub async fn watch(brain: Arc<Brain>, limits: SpaceLimits) {
    let mut ticker = tokio::time::interval(limits.interval);
    loop {
        ticker.tick().await;
        let store = brain.store();
        if store.no_space() {
            continue;
        }
        let size = store.engine().size_on_disk();
        let over_quota = limits.quota_bytes > 0 && size > limits.quota_bytes;
        let free = free_bytes(&limits.data_dir);
        let disk_low = free.is_some_and(|free| free < limits.min_free_bytes);
        if over_quota || disk_low {
            tracing::warn!(
                size,
                quota = limits.quota_bytes,
                free = free.unwrap_or(0),
                "raising the NOSPACE alarm: writes are refused until it is disarmed"
            );
            store.set_no_space(true);
        }
    }
}
