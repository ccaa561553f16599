//! Early writeback of the tables and blob files fjall writes in the background.
//!
//! fjall writes a flushed memtable (64 MiB by default) or a compaction's output through the
//! page cache and fsyncs each file once, when it is complete. On ext4 (`data=ordered`) that
//! fsync makes the kernel write the whole file at once, and the journal commit which Engram's
//! own journal fdatasync needs at the same moment waits for it: measured under a sustained
//! create load, the flush worker's fsync took ~130 ms every ~5 s and the commit fdatasync that
//! overlapped it ~90-125 ms, against a p50 of 0.8 ms. Those were the write stalls in p99.9.
//!
//! The [file pacer](super::files) asks the kernel to start writing each growing file every few milliseconds
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which only starts writeback and waits for
//! nothing), so when fjall's fsync comes little is left to write, and a concurrent commit
//! waits for at most one step's worth. It is RocksDB's `bytes_per_sync`, from outside fjall.
//! Measured with the same load (200k creates, 256 clients, four runs each way): commit
//! fdatasyncs over 50 ms went from 6 to 2-3 per run, their p99.9 from 60-104 ms to 12-25 ms,
//! and the load's p99 from 81-88 ms to 67-77 ms; throughput did not change.
//!
//! It changes no data and no durability: fjall still fsyncs every file before it relies on it,
//! and Engram still syncs the journal before answering. A file the pacer misses (created and
//! finished between two looks) is simply written the old way. Only Linux has
//! `sync_file_range`.

use std::fs::File;

/// Writeback is started once a file has grown by this much since the last start: about what
/// a disk writes in a few milliseconds, so a commit never waits for much more.
pub(super) const STEP_BYTES: u64 = 256 << 10;
/// A file that has not grown for this many ticks is finished (tables and blob files are
/// immutable once written): its tail is started and it is no longer paced.
const FINISHED_AFTER_TICKS: u32 = 100;

/// One file being written.
pub(super) struct Growing {
    pub(super) file: File,
    /// Bytes whose writeback has been started.
    pub(super) started: u64,
    /// Length at the last look.
    seen: u64,
    idle_ticks: u32,
}

impl Growing {
    pub(super) fn new(file: File) -> Growing {
        Growing {
            file,
            started: 0,
            seen: 0,
            idle_ticks: 0,
        }
    }
}

/// Starts writeback of what `growing` gained; returns whether it is finished, and how many
/// bytes' writeback was started.
pub(super) fn pace(growing: &mut Growing) -> (bool, u64) {
    let Ok(len) = growing.file.metadata().map(|m| m.len()) else {
        return (true, 0);
    };
    if len > growing.seen {
        growing.seen = len;
        growing.idle_ticks = 0;
    } else {
        growing.idle_ticks += 1;
    }
    let pending = growing.seen - growing.started;
    let mut started = 0;
    // A full step at once; a smaller tail when the file stops growing.
    if pending >= STEP_BYTES || (pending > 0 && growing.idle_ticks > 0) {
        if start_writeback(&growing.file, growing.started, growing.seen) {
            started = pending;
        }
        growing.started = growing.seen;
    }
    (growing.idle_ticks >= FINISHED_AFTER_TICKS, started)
}

/// Asks the kernel to start writing `from..to` of `file`; false if it refused.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, to: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return false;
    };
    // SAFETY: the descriptor is open for the duration of the call; SYNC_FILE_RANGE_WRITE
    // only starts writeback of already written pages and touches no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::debug!(err = %std::io::Error::last_os_error(), "sync_file_range failed");
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _to: u64) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn growing(path: &std::path::Path) -> Growing {
        Growing::new(File::open(path).unwrap())
    }

    /// What `pace` reports as started, where the kernel can start writeback.
    fn started(bytes: u64) -> u64 {
        if cfg!(target_os = "linux") { bytes } else { 0 }
    }

    #[test]
    fn writeback_starts_by_steps_then_the_tail_once_the_file_stops_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        let mut out = File::create(&path).unwrap();
        let mut file = growing(&path);

        out.write_all(&vec![7; STEP_BYTES as usize + 10]).unwrap();
        out.flush().unwrap();
        assert_eq!(
            pace(&mut file),
            (false, started(STEP_BYTES + 10)),
            "a full step is started at once"
        );

        out.write_all(&[7; 100]).unwrap();
        assert_eq!(
            pace(&mut file),
            (false, 0),
            "a small tail waits while it grows"
        );
        assert_eq!(
            pace(&mut file),
            (false, started(100)),
            "the tail is started once the file stops growing"
        );
        assert_eq!(file.started, STEP_BYTES + 110);

        for _ in 2..FINISHED_AFTER_TICKS {
            assert_eq!(pace(&mut file), (false, 0));
        }
        assert_eq!(pace(&mut file), (true, 0), "an idle file is finished");
    }
}
