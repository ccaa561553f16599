//! The filesystem under an engine's data directory.

use std::path::Path;

/// Free bytes for unprivileged writers on the filesystem holding `path`; None if unknown
/// (the memory engine's directory need not exist).
pub fn free_bytes(path: &Path) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn free_bytes_of_an_existing_directory_only() {
        assert!(super::free_bytes(&std::env::temp_dir()).is_some_and(|free| free > 0));
        assert_eq!(super::free_bytes("/no/such/dir".as_ref()), None);
    }
}
