//! Background removal of compacted history.
//!
//! Compact(rev) itself only records the compacted revision (reads below it fail at once, as in
//! etcd). This task then walks the versions in bounded pages and hands each page's removals to
//! the writer, so that writes are never blocked for longer than one ordinary batch.

use super::request::{CompactStep, WriteRequest};
use super::shared::Shared;
use crate::engine::{Engine, EngineResult, Snapshot, for_each_page};
use crate::mvcc::Version;
use crate::mvcc::keys::{self, REVS};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::sync::Weak;
use tokio::sync::{mpsc, oneshot, watch};

/// Versions examined per step.
const PAGE: usize = 1024;

/// Sweeps up to each new compacted revision. Holds the store only while sweeping: the
/// compacted-revision channel lives in the store, so it closes (and this task ends) once
/// everything else let go of the store.
pub(super) async fn run<E: Engine>(
    store: Weak<Shared<E>>,
    writer: mpsc::WeakSender<WriteRequest>,
    mut target: watch::Receiver<i64>,
    mut swept: i64,
) {
    loop {
        let goal = *target.borrow_and_update();
        if goal > swept {
            let Some(shared) = store.upgrade() else {
                return;
            };
            match sweep(&shared, &writer, goal).await {
                Ok(true) => {
                    swept = goal;
                    // Engines with MVCC history of their own (TiKV) may now collect it.
                    if let Err(err) = shared.engine.history_released().await {
                        tracing::warn!(%err, goal, "engine could not release history after compaction");
                    }
                }
                Ok(false) => return, // the store is shutting down
                Err(err) => {
                    tracing::warn!(%err, goal, "compaction sweep failed; retrying on next compaction");
                }
            }
        }
        if target.changed().await.is_err() {
            return;
        }
    }
}

/// Removes every version that no read at or above `goal` can see. Returns false if the writer
/// is gone.
async fn sweep<E: Engine>(
    shared: &Shared<E>,
    writer: &mpsc::WeakSender<WriteRequest>,
    goal: i64,
) -> EngineResult<bool> {
    let snapshot = shared.engine.snapshot().await?;
    let mut range = keys::region_range(REVS, b"", None);
    let mut current: Option<Bytes> = None;
    let mut kept = false;
    loop {
        let page = snapshot.scan(&range, PAGE, false).await?;
        let mut step = CompactStep::default();
        // The keys whose version at a revision goes, by revision: their `LOG` entries go too.
        let mut removed: BTreeMap<i64, HashSet<Bytes>> = BTreeMap::new();
        for (k, v) in &page {
            let Some((key, rev)) = keys::decode_revision_key(k) else {
                continue;
            };
            if current.as_ref() != Some(&key) {
                current = Some(key.clone());
                kept = false;
            }
            if rev > goal {
                continue;
            }
            if kept {
                step.versions.push(k.clone());
                removed.entry(rev).or_default().insert(key);
            } else {
                kept = true;
                if let Some(Version::Tombstone { .. }) =
                    Version::decode(key.clone(), rev, v.clone())
                {
                    step.tombstones.push((key.clone(), rev));
                    removed.entry(rev).or_default().insert(key);
                }
            }
        }
        step.log = log_entries(&snapshot, &removed).await?;
        let last_page = page.len() < PAGE;
        let idle = step.versions.is_empty() && step.tombstones.is_empty();
        if !idle && !send(writer, step).await {
            return Ok(false);
        }
        match page.last() {
            Some((last, _)) if !last_page => range.start = crate::engine::next_key(last),
            _ => break,
        }
    }
    let done = CompactStep {
        done: Some(goal),
        ..Default::default()
    };
    Ok(send(writer, done).await)
}

/// The `LOG` entries of the versions `removed` names (by revision, the keys whose version
/// there goes). What stays of the log below the compacted revision is then exactly what
/// etcd's `key` bucket keeps: one row for the newest version of each key that still exists
/// there (see `crate::etcd`).
async fn log_entries<S: Snapshot>(
    snapshot: &S,
    removed: &BTreeMap<i64, HashSet<Bytes>>,
) -> EngineResult<Vec<Bytes>> {
    let mut out = Vec::new();
    for (revision, gone) in removed {
        let of_revision = keys::log_range(*revision, revision + 1);
        for_each_page(snapshot, of_revision, PAGE, |page| {
            out.extend(
                page.iter()
                    .filter(|(_, key)| gone.contains(key))
                    .map(|(entry, _)| entry.clone()),
            );
            true
        })
        .await?;
    }
    Ok(out)
}

async fn send(writer: &mpsc::WeakSender<WriteRequest>, step: CompactStep) -> bool {
    let Some(writer) = writer.upgrade() else {
        return false;
    };
    let (reply, rx) = oneshot::channel();
    if writer
        .send(WriteRequest::CompactStep(step, reply))
        .await
        .is_err()
    {
        return false;
    }
    matches!(rx.await, Ok(Ok(_)))
}
