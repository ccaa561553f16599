//! The single writer: group commit of queued requests into one engine batch (made durable and
//! published by the [`pipeline`](super::pipeline)).

use super::Shared;
use super::pipeline::{Failure, Pending, within};
use crate::engine::{Engine, EngineError, Snapshot, WriteBatch};
use crate::kv::{Apply, KvError, KvResult, revision_entry};
use crate::lease::LeaseTable;
use crate::mvcc::keys;
use crate::mvcc::overlay::Overlay;
use crate::mvcc::record::{encode_counter, encode_index, owned_kv};
use crate::mvcc::written::WrittenLatest;
use crate::mvcc::{Version, View};
use crate::store::StoreOptions;
use crate::store::stats::BatchSample;
use bytes::Bytes;
use etcdpb::etcdserverpb::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    ResponseHeader, TxnRequest, TxnResponse,
};
use etcdpb::mvccpb::Event;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// The events of one committed revision, in the order its ops ran.
#[derive(Debug, Clone)]
pub struct CommittedRevision {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// Receives every committed revision exactly once, in revision order, after it is durable and
/// published to readers.
pub trait CommitListener: Send + Sync {
    fn committed(&self, revisions: Vec<CommittedRevision>);

    /// The store found revisions up to `revision` committed that it never announced (a batch
    /// whose write timed out did commit): they exist only in the store's history now, and
    /// announcements go on after `revision`.
    fn resumed_after(&self, revision: i64) {
        let _ = revision;
    }
}

/// Physical removal of compacted history, handed to the writer so that it is ordered with the
/// writes it could otherwise race with.
#[derive(Debug, Default)]
pub struct CompactStep {
    /// `REVS` entries no read at or above the compacted revision can see.
    pub versions: Vec<Bytes>,
    /// `LOG` entries of revisions below the compacted one.
    pub log: Vec<Bytes>,
    /// Tombstones at or below the compacted revision: (user key, revision). Their `INDEX` entry
    /// goes too if the tombstone is still the key's latest version.
    pub tombstones: Vec<(Bytes, i64)>,
    /// Set on the last step of a sweep: compaction is physically complete up to here.
    pub done: Option<i64>,
}

pub enum Op {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    CompactStep(CompactStep),
    LeaseGrant { id: i64, ttl: i64 },
    LeaseRevoke { id: i64 },
}

pub enum Reply {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    CompactStep,
    LeaseGrant(i64),
    LeaseRevoke(i64),
}

pub struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<KvResult<Reply>>,
}

/// What a batch changes besides the overlay's versions.
#[derive(Default)]
struct Extra {
    compacted: Option<i64>,
    swept: Option<i64>,
    versions: Vec<Bytes>,
    index_removals: Vec<(Bytes, i64)>,
}

/// A group-commit batch being filled: requests are evaluated into it one by one, in arrival
/// order, on top of revision `base` (the newest revision written to the engine: the published
/// one, or the last of the batch being synced), and its effects go to the engine in one write.
///
/// It is filled while the batch before it is being synced and written when that sync returns,
/// so that each sync carries everything that arrived during the previous one. (Closing a batch
/// as soon as the writer was free split a steady load into a large batch and a batch of the
/// one or two requests that came in between, each paying a full journal sync.)
pub(super) struct OpenBatch<S> {
    snapshot: S,
    base: i64,
    compacted: i64,
    overlay: Overlay,
    extra: Extra,
    /// The revision of the last request evaluated that wrote.
    revision: i64,
    committed: Vec<CommittedRevision>,
    replies: Vec<(oneshot::Sender<KvResult<Reply>>, KvResult<Reply>)>,
    sample: BatchSample,
    started: std::time::Instant,
}

impl<S: Snapshot> OpenBatch<S> {
    /// An empty batch on top of revision `base`, which must be in the engine already, as must
    /// every version `written` remembers.
    pub(super) async fn begin<E: Engine<Snapshot = S>>(
        shared: &Shared<E>,
        base: i64,
        written: WrittenLatest,
    ) -> Result<Self, EngineError> {
        let started = std::time::Instant::now();
        let snapshot = shared.engine.snapshot().await?;
        Ok(OpenBatch {
            snapshot,
            base,
            compacted: shared.compacted.load(Ordering::Acquire),
            overlay: Overlay::on_top_of(written),
            extra: Extra::default(),
            revision: base,
            committed: Vec::new(),
            replies: Vec::new(),
            sample: BatchSample::default(),
            started,
        })
    }

    /// Requests evaluated so far.
    pub(super) fn len(&self) -> usize {
        self.replies.len()
    }

    /// Evaluates `job` as if every request before it in the batch had been committed. On an
    /// engine failure the overlay may hold part of the request: every request of the batch
    /// fails, and so does the batch.
    pub(super) async fn evaluate(&mut self, job: Job, leases: &LeaseTable) -> Result<(), Failure> {
        let mut apply = Apply {
            snapshot: &self.snapshot,
            overlay: &mut self.overlay,
            begin: self.revision,
            compacted: self.compacted,
            published: self.base,
            leases,
            changed: false,
            events: Vec::new(),
        };
        let result = match job.op {
            Op::Put(req) => apply.put(&req).await.map(Reply::Put),
            Op::DeleteRange(req) => apply.delete_range(&req).await.map(Reply::DeleteRange),
            Op::Txn(req) => apply.txn(&req).await.map(Reply::Txn),
            Op::Compact(rev) => {
                if rev <= self.compacted {
                    Err(KvError::Compacted)
                } else if rev > self.revision {
                    Err(KvError::FutureRevision)
                } else {
                    self.compacted = rev;
                    self.extra.compacted = Some(rev);
                    Ok(Reply::Compact(CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: self.revision,
                            ..Default::default()
                        }),
                    }))
                }
            }
            Op::LeaseGrant { id, ttl } => apply.lease_grant(id, ttl).map(Reply::LeaseGrant),
            Op::LeaseRevoke { id } => match apply.lease_revoke(id).await {
                Ok(()) => Ok(Reply::LeaseRevoke(apply.revision())),
                Err(err) => Err(err),
            },
            Op::CompactStep(step) => {
                match plan_removals(&View::new(&self.snapshot), &mut self.extra, step).await {
                    Ok(()) => Ok(Reply::CompactStep),
                    Err(err) => Err(KvError::Engine(err)),
                }
            }
        };
        match &result {
            Ok(Reply::LeaseGrant(_)) => self.sample.leases_granted += 1,
            Ok(Reply::LeaseRevoke(_)) => self.sample.leases_revoked += 1,
            _ => {}
        }
        if apply.changed && result.is_ok() {
            self.revision += 1;
            self.committed.push(CommittedRevision {
                revision: self.revision,
                events: apply.events.drain(..).map(owned_event).collect(),
            });
        }
        if let Err(KvError::Engine(err)) = result {
            let _ = job.reply.send(Err(storage_error(&err)));
            self.fail(&err);
            return Err(Failure { fenced: false, err });
        }
        self.replies.push((job.reply, result));
        Ok(())
    }

    /// Answers every request evaluated so far with `err`.
    pub(super) fn fail(&mut self, err: &EngineError) {
        for (reply, _) in self.replies.drain(..) {
            let _ = reply.send(Err(storage_error(err)));
        }
    }

    /// Writes the batch's effects to the engine, not yet synced, and hands back what the
    /// writer remembers of its latest versions, this batch's included. On an engine failure
    /// every request of the batch fails (and what was remembered is dropped).
    pub(super) async fn write<E: Engine<Snapshot = S>>(
        self,
        shared: &Shared<E>,
        options: &StoreOptions,
    ) -> Result<(Pending, WrittenLatest), Failure> {
        let OpenBatch {
            snapshot,
            base,
            mut overlay,
            extra,
            revision,
            committed,
            replies,
            sample,
            started,
            ..
        } = self;
        // The snapshot pins engine state; the batch needs it no longer.
        drop(snapshot);
        let lease_changes = std::mem::take(&mut overlay.leases);
        let mut batch = build_batch(&overlay, &lease_changes, &extra, &committed, base, revision);
        if let Some(fence) = &options.fence {
            batch.conditions.push(fence.clone());
        }
        let stored = shared.revision_stored.load(Ordering::Acquire);
        batch.require(keys::meta_revision(), stored.then(|| encode_counter(base)));
        let wrote = !batch.is_empty();
        let writing = std::time::Instant::now();
        let written = if !wrote {
            Ok(())
        } else {
            let write = shared.engine.write_unsynced(batch);
            within(options.write_timeout, "engine write", write).await
        };
        if let Err(err) = written {
            let fenced = matches!(
                (&err, &options.fence),
                (EngineError::ConditionFailed { key }, Some(fence)) if *key == fence.key
            );
            if fenced {
                // A newer election took the lead: nothing more may be written through this store.
                tracing::warn!("write fenced off: another member leads now");
                shared.deposed.send_replace(true);
            }
            for (reply, _) in replies {
                let answer = if fenced {
                    KvError::NotLeader
                } else {
                    storage_error(&err)
                };
                let _ = reply.send(Err(answer));
            }
            return Err(Failure { fenced, err });
        }
        if revision != base {
            shared.revision_stored.store(true, Ordering::Release);
        }
        tracing::trace!(requests = replies.len(), "batch written");
        let mut written = overlay.take_written();
        // A key both in the overlay and among the index removals ends as the overlay says:
        // `remember` forgets the removals first.
        written.remember(
            overlay.keys(),
            extra.index_removals.iter().map(|(key, _)| key),
        );
        let pending = Pending {
            base,
            revision,
            wrote,
            committed,
            replies,
            lease_changes,
            compacted: extra.compacted,
            sample,
            started,
            engine_time: wrote.then(|| writing.elapsed()),
        };
        Ok((pending, written))
    }
}

/// `event` with bytes of its own ([`owned_kv`]): the watch hub keeps events for thousands of
/// revisions (measured with slices of the requests' buffers: 16k events of 1 KiB values held
/// ~160 MiB instead of ~35).
pub fn owned_event(mut event: Event) -> Event {
    for kv in [event.kv.as_mut(), event.prev_kv.as_mut()]
        .into_iter()
        .flatten()
    {
        *kv = owned_kv(kv);
    }
    event
}

/// The answer to each request of a batch that failed with `err` (engine errors are not
/// `Clone`; every request gets the same message).
pub(super) fn storage_error(err: &EngineError) -> KvError {
    let message = match err {
        // Not `to_string()`: that would say "storage engine:" twice.
        EngineError::Storage(message) => message.clone(),
        other => other.to_string(),
    };
    KvError::Engine(EngineError::Storage(message))
}

/// Decides what a compaction step removes, against the writer's current view.
async fn plan_removals<S: crate::engine::Snapshot>(
    view: &View<'_, S>,
    extra: &mut Extra,
    step: CompactStep,
) -> Result<(), EngineError> {
    extra.versions.extend(step.versions);
    extra.versions.extend(step.log);
    for (key, rev) in step.tombstones {
        extra.versions.push(keys::revision_key(&key, rev));
        let latest = view.version_at(&key, i64::MAX).await?;
        if matches!(latest, Some(Version::Tombstone { mod_revision, .. }) if mod_revision == rev) {
            extra.index_removals.push((key, rev));
        }
    }
    if step.done.is_some() {
        extra.swept = step.done;
    }
    Ok(())
}

fn build_batch(
    overlay: &Overlay,
    leases: &BTreeMap<i64, Option<i64>>,
    extra: &Extra,
    committed: &[CommittedRevision],
    published: i64,
    revision: i64,
) -> WriteBatch {
    let mut batch = WriteBatch::default();
    // Compaction's removals first: the overlay's writes of the same keys must win.
    for version in &extra.versions {
        batch.delete(version.clone());
    }
    for (key, rev) in &extra.index_removals {
        if !overlay.contains(key) {
            let index = keys::index_key(key);
            batch.require(index.clone(), Some(encode_index(*rev, false)));
            batch.delete(index);
        }
    }
    for (id, granted) in leases {
        match granted {
            Some(ttl) => batch.put(keys::lease_key(*id), encode_counter(*ttl)),
            None => batch.delete(keys::lease_key(*id)),
        }
    }
    for ((id, key), attached) in &overlay.lease_keys {
        let entry = keys::lease_key_entry(*id, key);
        if *attached {
            batch.put(entry, Bytes::new());
        } else {
            batch.delete(entry);
        }
    }
    for (key, pending) in overlay.keys() {
        let index = keys::index_key(key);
        batch.require(index.clone(), pending.base_index.clone());
        let mut last = None;
        for version in &pending.versions {
            let (k, v) = revision_entry(version);
            batch.put(k, v);
            last = Some(version);
        }
        if let Some(last) = last {
            batch.put(index, last.index_value());
        }
    }
    for rev in committed {
        for (index, event) in rev.events.iter().enumerate() {
            if let Some(kv) = &event.kv {
                batch.put(keys::log_key(rev.revision, index as u32), kv.key.clone());
            }
        }
    }
    if revision != published {
        batch.put(keys::meta_revision(), encode_counter(revision));
    }
    if let Some(rev) = extra.compacted {
        batch.put(keys::meta_compacted(), encode_counter(rev));
    }
    if let Some(rev) = extra.swept {
        batch.put(keys::meta_compaction_done(), encode_counter(rev));
    }
    batch
}
