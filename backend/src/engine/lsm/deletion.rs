//! Gradual freeing of the files fjall deletes.
//!
//! fjall deletes a sealed journal (64-120 MiB) after each memtable flush, and the input tables
//! of each compaction. Unlinking a large file frees all its blocks in one ext4 journal
//! transaction, and with online discard (the `discard` mount option, common on cloud disks)
//! the commit of that transaction also discards them: a journal fdatasync that needs the same
//! commit waits for all of it. Measured on this machine's disk: unlinking a 118 MiB file took
//! 83-94 ms and a concurrent 50 KB fdatasync waited up to 71-81 ms (p99 0.7-1.1 ms);
//! truncating it by 4 MiB steps first, the fdatasync waited at most 4-8 ms. Under a put load
//! the journal's deletion after each flush stalled a commit by ~120 ms every ~4 s.
//!
//! The [file pacer](super::files) keeps each file open while fjall uses it. Once fjall
//! unlinks it, the open descriptor keeps its blocks; they are given back step by step by
//! truncating it, and the descriptor is closed when it is empty. This is RocksDB's
//! `DeleteScheduler` (trash files truncated by `bytes_max_delete_chunk`), from outside fjall.
//!
//! Only an unlinked file is ever truncated (its link count is checked through the descriptor):
//! no name leads to it, so no reader can open it again and no recovery can find it; fjall
//! deletes a table or a journal only once nothing reads it any more.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

/// Bytes given back per step: small enough that a commit waits only for a few milliseconds
/// of freeing (and discarding), large enough to keep up with compactions.
pub(super) const STEP_BYTES: u64 = 4 << 20;

/// An unlinked file whose blocks are being given back.
pub(super) struct Deleting {
    file: File,
    /// Its length now.
    left: u64,
}

impl Deleting {
    /// `file` if nothing links to it any more; `None` (and the descriptor closed) otherwise,
    /// e.g. if it was renamed rather than deleted.
    pub(super) fn unlinked(file: File) -> Option<Deleting> {
        let meta = file.metadata().ok()?;
        (meta.nlink() == 0).then_some(Deleting {
            file,
            left: meta.len(),
        })
    }

    /// Gives back one step; returns the bytes freed and whether the file is empty (it can be
    /// closed: closing an empty unlinked file frees nothing more).
    pub(super) fn step(&mut self) -> (u64, bool) {
        let to = self.left.saturating_sub(STEP_BYTES);
        if self.file.set_len(to).is_err() {
            // Not truncatable: closing it frees the rest at once, as fjall's unlink would have.
            return (0, true);
        }
        let freed = self.left - to;
        self.left = to;
        (freed, to == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn an_unlinked_file_is_freed_step_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.jnl");
        let mut out = File::create(&path).unwrap();
        out.write_all(&vec![1; (2 * STEP_BYTES + 100) as usize])
            .unwrap();
        out.sync_all().unwrap();
        let held = open(&path);
        let blocks = |file: &File| file.metadata().unwrap().blocks();
        let before = blocks(&held);
        std::fs::remove_file(&path).unwrap();
        // The descriptor still holds the blocks.
        assert_eq!(blocks(&held), before);

        let mut deleting = Deleting::unlinked(held).expect("unlinked");
        assert_eq!(deleting.step(), (STEP_BYTES, false));
        assert!(blocks(&deleting.file) < before, "blocks given back");
        assert_eq!(deleting.step(), (STEP_BYTES, false));
        assert_eq!(deleting.step(), (100, true));
        assert_eq!(deleting.file.metadata().unwrap().len(), 0);
        assert_eq!(blocks(&deleting.file), 0);
    }

    #[test]
    fn a_file_still_linked_is_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1");
        std::fs::write(&path, b"table").unwrap();
        assert!(Deleting::unlinked(open(&path)).is_none());
        // Renamed, not deleted: still linked.
        let renamed = dir.path().join("2");
        let held = open(&path);
        std::fs::rename(&path, &renamed).unwrap();
        assert!(Deleting::unlinked(held).is_none());
        assert_eq!(std::fs::read(&renamed).unwrap(), b"table");
    }
}
