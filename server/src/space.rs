//! The member's watch over its storage, once a second.
//!
//! Each write that adds data is checked against the quota and the free-space margin before it
//! is accepted (the store's [`SpaceGuard`]); this watch raises the NOSPACE alarm when the disk
//! runs low while no write comes, and decides what a member whose engine failed a write does.
//! Such an engine (fjall, once any write, sync or flush failed) takes no more writes until it
//! is opened again; the member serves reads meanwhile and waits for the cause to go away:
//! - a full disk: the NOSPACE alarm stays raised until an operator makes room and disarms it
//!   (`etcdctl alarm disarm`); disarmed with less room than the margin (and at least a
//!   memtable flush) on the disk, it is raised again;
//! - any other failure (EIO): until a probe file can be written and synced in the data
//!   directory again.
//!
//! Then the watch ends with the reason, and the member exits with it, so that its supervisor
//! (the StatefulSet) restarts it and the engine is opened afresh.

use crate::brain::Brain;
use backend::engine::{Engine, EngineError};
use backend::store::space::SpaceGuard;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Free bytes a full disk must have again before the engine is opened afresh: a memtable's
/// flush (fjall's default memtable), or the engine fails its first flush at once.
const ROOM_TO_REOPEN: u64 = 64 << 20;

/// Watches until the member must restart; returns why.
pub async fn watch(
    brain: Arc<Brain>,
    guard: Arc<SpaceGuard>,
    data_dir: Option<PathBuf>,
    interval: Duration,
) -> String {
    let mut ticker = tokio::time::interval(interval);
    // Whether the engine's full disk was logged (with what to do about it).
    let mut announced = false;
    loop {
        ticker.tick().await;
        let store = brain.store();
        let Some(fault) = store.engine().fault() else {
            if !store.no_space() && !guard.disk_has_room() {
                tracing::warn!(
                    min_free = guard.limits().min_free_bytes,
                    "the data directory's filesystem is short of its free-space margin: \
                     raising the NOSPACE alarm; writes that add data are refused until it is \
                     disarmed"
                );
                store.raise_no_space(brain.member_id());
            }
            continue;
        };
        match fault {
            EngineError::NoSpace(cause) => {
                if store.no_space() {
                    if !announced {
                        announced = true;
                        tracing::error!(
                            %cause,
                            "the disk filled up and the storage engine takes no more writes; \
                             serving reads only. Make room on the data directory's \
                             filesystem, then disarm the NOSPACE alarm (etcdctl alarm \
                             disarm): the member then exits, to be restarted with its engine \
                             opened afresh"
                        );
                    }
                    continue;
                }
                // Not raised: disarmed by an operator, or never raised for this fault (an
                // election write met it first).
                let free = guard.disk_free().unwrap_or(u64::MAX);
                let room = guard.limits().min_free_bytes.max(ROOM_TO_REOPEN);
                if free >= room {
                    return "the NOSPACE alarm was disarmed and the disk has room again: \
                            exiting so that the storage engine, which takes no writes after a \
                            failed one, is opened afresh"
                        .to_string();
                }
                if announced {
                    tracing::warn!(
                        free,
                        room,
                        "the NOSPACE alarm was disarmed, but the disk has too little room for \
                         the engine to be opened afresh: raising it again"
                    );
                }
                store.raise_no_space(brain.member_id());
            }
            fault => {
                let Some(dir) = &data_dir else { continue };
                match probe(dir) {
                    Ok(()) => {
                        return format!(
                            "the storage engine failed ({fault}) and takes no more writes, but \
                             the data directory takes writes again: exiting so that the engine \
                             is opened afresh"
                        );
                    }
                    Err(err) => tracing::error!(
                        %fault,
                        probe = %err,
                        "the storage engine takes no more writes and the data directory still \
                         fails them; serving reads only"
                    ),
                }
            }
        }
    }
}

/// Writes and syncs a small file in `dir`: whether the device takes writes.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(".engram-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0; 4096])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}
