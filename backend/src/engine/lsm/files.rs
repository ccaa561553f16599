//! The file pacer: a thread that follows the files fjall writes and deletes in the background,
//! so that the kernel's work on them comes in small steps instead of the bursts that stall
//! Engram's journal syncs behind them.
//!
//! - tables and blob files being written have their writeback started as they grow
//!   ([`writeback`](super::writeback));
//! - tables, blob files and journals are kept open while fjall uses them, and once fjall
//!   deletes one its blocks are given back step by step ([`deletion`](super::deletion)).
//!
//! It follows fjall's folder layout (`keyspaces/<id>/{tables,blobs}/`, journals `*.jnl` at the
//! top), which is fjall's, not ours: the LSM engine's tests fail if an upgrade moves it. A file
//! the pacer does not see is written and deleted the way fjall does it. Linux only.

use super::deletion::Deleting;
use super::writeback::{self, Growing};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often growing and deleted files are looked at.
const TICK: Duration = Duration::from_millis(5);
/// How often the folders are looked at while no file grows or is being freed: a new file is
/// found within this. A look stats the folders and lists them only when one changed: an idle
/// server spends ~0.1% of a core on the pacer (measured: 6 vs 2 ticks of CPU over 30 idle
/// seconds; listing every folder on every look cost 13).
const IDLE_TICK: Duration = Duration::from_millis(50);
/// Files kept open to be freed gradually, at most (a store of 64 MiB tables holds this many
/// files per 16 GiB; beyond it, files are deleted the way fjall does it), and never more than
/// an eighth of the process's descriptor limit, which clients' connections and fjall need.
const MAX_HELD: usize = 256;

/// How many descriptors the pacer may hold in this process.
fn max_held() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return 0;
    }
    usize::try_from(limit.rlim_cur / 8).map_or(MAX_HELD, |n| n.min(MAX_HELD))
}

/// The background thread; stops when dropped.
pub struct FilePacer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Bytes whose writeback the pacer has started.
    started: AtomicU64,
    /// Bytes of deleted files the pacer has given back.
    freed: AtomicU64,
}

impl FilePacer {
    /// Follows the files under `lsm_dir`. Returns `None` where the platform cannot pace
    /// writeback.
    pub fn start(lsm_dir: &Path) -> Option<FilePacer> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let (stop, stopped) = mpsc::channel();
        let dir = lsm_dir.to_path_buf();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("engram-files".into())
            .spawn(move || run(&dir, stopped, &shared))
            .map_err(|err| tracing::warn!(%err, "file pacer not started"))
            .ok()?;
        Some(FilePacer {
            stop: Some(stop),
            thread: Some(thread),
            counters,
        })
    }

    /// Bytes whose writeback the pacer has started so far.
    #[cfg(test)]
    pub fn started_bytes(&self) -> u64 {
        self.counters.started.load(Ordering::Relaxed)
    }

    /// Bytes of deleted files the pacer has given back so far.
    #[cfg(test)]
    pub fn freed_bytes(&self) -> u64 {
        self.counters.freed.load(Ordering::Relaxed)
    }
}

impl Drop for FilePacer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        tracing::debug!(
            started_bytes = self.counters.started.load(Ordering::Relaxed),
            freed_bytes = self.counters.freed.load(Ordering::Relaxed),
            "file pacer stopped"
        );
    }
}

/// What the pacer knows of a file fjall has.
enum Known {
    /// A table or blob file being written.
    Growing(Growing),
    /// Complete (or a journal, which fjall syncs itself): held open, if there was room, to be
    /// freed gradually once deleted.
    Held(Option<File>),
}

impl Known {
    fn file(self) -> Option<File> {
        match self {
            Known::Growing(growing) => Some(growing.file),
            Known::Held(file) => file,
        }
    }
}

/// Opens `path` to pace and later truncate it (truncation needs a writable descriptor; it
/// only ever happens once nothing links to the file).
fn open(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()
}

fn run(dir: &Path, stopped: mpsc::Receiver<()>, counters: &Counters) {
    let mut pacer = Pacer::open(dir);
    let mut tick = IDLE_TICK;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
        // Files are listed again only when a folder changed (a file created or deleted): an
        // idle tick costs a few stats.
        if pacer.folders.changed(dir) {
            pacer.follow(dir);
        }
        tick = if pacer.step(counters) {
            TICK
        } else {
            IDLE_TICK
        };
    }
}

/// The pacer thread's state.
struct Pacer {
    folders: Folders,
    known: HashMap<PathBuf, Known>,
    /// Files fjall deleted, being freed.
    deleting: Vec<Deleting>,
    /// Descriptors it may hold.
    max_held: usize,
}

impl Pacer {
    fn open(dir: &Path) -> Pacer {
        let mut pacer = Pacer {
            folders: Folders::default(),
            known: HashMap::new(),
            deleting: Vec::new(),
            max_held: max_held(),
        };
        pacer.folders.changed(dir);
        // Files present at start are complete: fjall finished them before it opened.
        for (path, _) in pacer.folders.files(dir) {
            let held = pacer.has_room().then(|| open(&path)).flatten();
            pacer.known.insert(path, Known::Held(held));
        }
        pacer
    }

    /// After a folder changed: files that are gone are freed if fjall deleted them, new ones
    /// are followed.
    fn follow(&mut self, dir: &Path) {
        let listed = self.folders.files(dir);
        let present: HashSet<&PathBuf> = listed.iter().map(|(path, _)| path).collect();
        let gone: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|path| !present.contains(path))
            .cloned()
            .collect();
        for path in gone {
            if let Some(file) = self.known.remove(&path).and_then(Known::file)
                && let Some(file) = Deleting::unlinked(file)
            {
                self.deleting.push(file);
            }
        }
        for (path, kind) in listed {
            if self.known.contains_key(&path) {
                continue;
            }
            // A file deleted between listing and opening (a compaction's input), or
            // unreadable, is not followed.
            let state = match kind {
                Kind::Data => open(&path).map(|file| Known::Growing(Growing::new(file))),
                Kind::Journal => Some(Known::Held(self.has_room().then(|| open(&path)).flatten())),
            };
            if let Some(state) = state {
                self.known.insert(path, state);
            }
        }
    }

    /// Paces growing files and frees a step of each deleted one; whether any is left to do.
    fn step(&mut self, counters: &Counters) -> bool {
        let mut busy = false;
        let mut finished = Vec::new();
        for (path, state) in &mut self.known {
            if let Known::Growing(growing) = state {
                let (done, bytes) = writeback::pace(growing);
                counters.started.fetch_add(bytes, Ordering::Relaxed);
                if done {
                    finished.push(path.clone());
                } else {
                    busy = true;
                }
            }
        }
        // Written: kept open, if there is room, to be freed gradually once fjall deletes it.
        for path in finished {
            if let Some(Known::Growing(growing)) = self.known.remove(&path) {
                let keep = self.has_room().then_some(growing.file);
                self.known.insert(path, Known::Held(keep));
            }
        }
        self.deleting.retain_mut(|file| {
            let (freed, done) = file.step();
            counters.freed.fetch_add(freed, Ordering::Relaxed);
            !done
        });
        busy || !self.deleting.is_empty()
    }

    /// Whether one more descriptor may be held (looked at only when a file appears or is
    /// finished, which is rare).
    fn has_room(&self) -> bool {
        let held = self
            .known
            .values()
            .filter(|k| !matches!(k, Known::Held(None)))
            .count()
            + self.deleting.len();
        held < self.max_held
    }
}

/// What a file is to the pacer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A table or blob file: written once in the background, then read.
    Data,
    /// A journal: written and synced by the commits, deleted after a flush.
    Journal,
}

/// The folders whose entries the pacer follows (the LSM folder with its journals,
/// `keyspaces/`, each keyspace's folder, and its `tables/` and `blobs/`), with their
/// modification times at the last look.
#[derive(Default)]
struct Folders {
    watched: Vec<(PathBuf, Option<std::time::SystemTime>)>,
    /// The folders holding data files: each keyspace's `tables/` and `blobs/`.
    data: Vec<PathBuf>,
}

impl Folders {
    /// Whether an entry was added to or removed from any of them since the last call (true on
    /// the first). A change within one timestamp tick of the last look can go unseen until the
    /// next change; its file is then written or deleted as fjall does it.
    fn changed(&mut self, dir: &Path) -> bool {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if !self.watched.is_empty() && self.watched.iter().all(|(path, at)| modified(path) == *at) {
            return false;
        }
        let root = dir.join("keyspaces");
        let keyspaces: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        self.data = keyspaces
            .iter()
            .flat_map(|keyspace| [keyspace.join("tables"), keyspace.join("blobs")])
            .collect();
        self.watched = [dir.to_path_buf(), root]
            .into_iter()
            .chain(keyspaces)
            .chain(self.data.iter().cloned())
            .map(|path| {
                let at = modified(&path);
                (path, at)
            })
            .collect();
        true
    }

    /// The files in the folders as of the last [`Folders::changed`]: journals in `dir`, data
    /// files in the keyspaces' folders.
    fn files(&self, dir: &Path) -> Vec<(PathBuf, Kind)> {
        let list = |folder: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(folder)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default()
        };
        let journals = list(dir)
            .into_iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "jnl"))
            .map(|path| (path, Kind::Journal));
        let data = self
            .data
            .iter()
            .flat_map(|folder| list(folder))
            .map(|path| (path, Kind::Data));
        journals.chain(data).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tables_blob_files_and_journals_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        for folder in [
            "keyspaces/0/tables",
            "keyspaces/7/blobs",
            "keyspaces/7/other",
        ] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        for file in [
            "keyspaces/0/tables/1",
            "keyspaces/7/blobs/2",
            "keyspaces/7/other/3",
            "keyspaces/7/v1",
            "0.jnl",
            "lock",
        ] {
            File::create(dir.path().join(file)).unwrap();
        }
        let mut folders = Folders::default();
        folders.changed(dir.path());
        let mut found = folders.files(dir.path());
        found.sort();
        assert_eq!(
            found,
            vec![
                (dir.path().join("0.jnl"), Kind::Journal),
                (dir.path().join("keyspaces/0/tables/1"), Kind::Data),
                (dir.path().join("keyspaces/7/blobs/2"), Kind::Data),
            ]
        );
    }

    #[test]
    fn folders_report_created_and_deleted_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("keyspaces/0/tables");
        std::fs::create_dir_all(&tables).unwrap();
        let mut folders = Folders::default();
        assert!(folders.changed(dir.path()), "the first look lists");
        assert!(!folders.changed(dir.path()));

        // Timestamps have a granularity: wait past it so that the change is visible.
        std::thread::sleep(Duration::from_millis(20));
        let mut table = File::create(tables.join("1")).unwrap();
        assert!(folders.changed(dir.path()), "a new table");
        table.write_all(b"grows").unwrap();
        assert!(
            !folders.changed(dir.path()),
            "a growing file is not a folder change"
        );

        std::thread::sleep(Duration::from_millis(20));
        std::fs::create_dir(dir.path().join("keyspaces/0/blobs")).unwrap();
        assert!(folders.changed(dir.path()), "a new blobs folder");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::remove_file(tables.join("1")).unwrap();
        assert!(folders.changed(dir.path()), "a deleted table");
        std::thread::sleep(Duration::from_millis(20));
        File::create(dir.path().join("1.jnl")).unwrap();
        assert!(folders.changed(dir.path()), "a new journal");
    }
}
