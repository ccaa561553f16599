//! The commit pipeline: batches are written to the engine in order, made durable by a sync,
//! then published and answered in order.
//!
//! The writer evaluates a batch and writes it to the engine unsynced; a task syncs it while the
//! writer evaluates the requests that arrive meanwhile into the next batch, which is written
//! when that sync returns. Measured on a put load (256 clients), the writer spent three
//! quarters of each batch waiting for the journal's fsync; overlapping the two lets each sync
//! carry whatever arrived during the one before. (On the 2-core test machine, where the
//! load generator shares the CPU, end-to-end throughput did not move measurably: there the CPU
//! is the bound, not the disk.) Nothing is answered, published or handed to watchers before the
//! sync that covers it returns, and a batch is answered only after every batch before it, whose
//! state it may have read, is durable.

use super::Shared;
use super::writer::{CommittedRevision, Job, OpenBatch, Reply, storage_error};
use crate::engine::{Engine, EngineError};
use crate::kv::KvResult;
use crate::store::StoreOptions;
use crate::store::stats::BatchSample;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

pub(super) async fn run<E: Engine>(
    shared: Arc<Shared<E>>,
    mut rx: mpsc::Receiver<Job>,
    options: StoreOptions,
) {
    let max_batch = options.max_batch.max(1);
    // The last revision written to the engine: the published one, or the last of the batch
    // being synced.
    let mut applied = shared.revision.load(Ordering::Acquire);
    let mut in_flight: Option<InFlight> = None;
    // The batch being filled while `in_flight` syncs.
    let mut open: Option<OpenBatch<E::Snapshot>> = None;
    loop {
        // Lease and compaction changes are read from the shared state, which a batch updates
        // only once it is durable: nothing is evaluated on top of such a batch before it settles.
        let may_evaluate = open.as_ref().map_or(0, OpenBatch::len) < max_batch
            && !in_flight.as_ref().is_some_and(|f| f.changes_state);
        tokio::select! {
            // A settled batch is collected before anything else is evaluated, so that one whose
            // sync failed has the store re-read first.
            biased;
            ok = async {
                match in_flight.as_mut() {
                    Some(flight) => (&mut flight.task).await,
                    None => std::future::pending().await,
                }
            }, if in_flight.is_some() => {
                in_flight = None;
                if !ok.unwrap_or(false) {
                    resync(&shared, &options).await;
                    if let Some(mut batch) = open.take() {
                        // Evaluated on top of a batch that failed to become durable. The store
                        // was re-read since (publishing whatever of it did reach the disk), so
                        // the outcome of these requests is unknown.
                        batch.fail(&EngineError::Storage(
                            "an earlier batch failed to become durable; outcome unknown".into(),
                        ));
                    }
                    applied = shared.revision.load(Ordering::Acquire);
                    continue;
                }
                if let Some(batch) = open.take() {
                    start(&shared, &options, batch, &mut in_flight, &mut applied).await;
                }
            }
            job = rx.recv(), if may_evaluate => {
                let Some(job) = job else { break };
                // Whatever else is queued is evaluated at once too (one pass through the
                // select per burst of requests, not per request).
                let mut next = Some(job);
                let mut failed = false;
                while let Some(job) = next.take() {
                    if !evaluate(&shared, &mut open, applied, job).await {
                        failed = true;
                        break;
                    }
                    if open.as_ref().map_or(0, OpenBatch::len) < max_batch {
                        next = rx.try_recv().ok();
                    }
                }
                if failed {
                    recover_from_failed_batch(&shared, &options, &mut in_flight, &mut applied)
                        .await;
                    continue;
                }
                // Nothing is syncing: write at once.
                if in_flight.is_none()
                    && let Some(batch) = open.take()
                {
                    start(&shared, &options, batch, &mut in_flight, &mut applied).await;
                }
            }
        }
    }
    // Every sender is gone: finish what was accepted.
    let settled = settle_in_flight(&shared, &options, &mut in_flight).await;
    if let Some(mut batch) = open.take() {
        if settled {
            start(&shared, &options, batch, &mut in_flight, &mut applied).await;
            settle_in_flight(&shared, &options, &mut in_flight).await;
        } else {
            batch.fail(&EngineError::Storage(
                "an earlier batch failed to become durable; outcome unknown".into(),
            ));
        }
    }
}

/// Evaluates `job` into the open batch, opening one on top of `applied` if there is none.
/// `false` if the batch failed (its requests are answered already).
async fn evaluate<E: Engine>(
    shared: &Shared<E>,
    open: &mut Option<OpenBatch<E::Snapshot>>,
    applied: i64,
    job: Job,
) -> bool {
    if open.is_none() {
        match OpenBatch::begin(shared, applied).await {
            Ok(batch) => *open = Some(batch),
            Err(err) => {
                tracing::error!(%err, "write batch failed");
                let _ = job.reply.send(Err(storage_error(&err)));
                return false;
            }
        }
    }
    let Some(batch) = open.as_mut() else {
        return false;
    };
    match batch.evaluate(job, &shared.leases).await {
        Ok(()) => true,
        Err(Failure { err, .. }) => {
            tracing::error!(%err, "write batch failed");
            *open = None;
            false
        }
    }
}

/// After a batch failed to evaluate: the engine could not be read, so the store is re-read
/// once the batch in flight has settled.
async fn recover_from_failed_batch<E: Engine>(
    shared: &Shared<E>,
    options: &StoreOptions,
    in_flight: &mut Option<InFlight>,
    applied: &mut i64,
) {
    // A failed in-flight batch re-reads the store itself.
    if settle_in_flight(shared, options, in_flight).await {
        resync(shared, options).await;
    }
    *applied = shared.revision.load(Ordering::Acquire);
}

/// Writes `batch` to the engine and starts its sync, which publishes and answers it. Only
/// called with nothing in flight: batches are published in order, and a reply is sent only
/// after every batch it may have read from is durable.
async fn start<E: Engine>(
    shared: &Arc<Shared<E>>,
    options: &StoreOptions,
    batch: OpenBatch<E::Snapshot>,
    in_flight: &mut Option<InFlight>,
    applied: &mut i64,
) {
    debug_assert!(in_flight.is_none());
    match batch.write(shared, options).await {
        Ok(pending) => {
            *applied = pending.revision;
            let changes_state = pending.changes_state();
            let task = tokio::spawn(settle(shared.clone(), options.clone(), pending));
            *in_flight = Some(InFlight {
                task,
                changes_state,
            });
        }
        Err(Failure { fenced, err }) => {
            tracing::error!(%err, "write batch failed");
            if !fenced {
                resync(shared, options).await;
            }
            *applied = shared.revision.load(Ordering::Acquire);
        }
    }
}

/// A batch that took longer than this from its first request's evaluation to its answers is
/// logged, with where the time went (etcd warns of applies over 100 ms the same way).
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// The batch being synced while the writer evaluates the next one.
struct InFlight {
    /// Syncs, publishes and answers the batch; `false` if it failed.
    task: tokio::task::JoinHandle<bool>,
    /// Whether the batch changes leases or the compacted revision.
    changes_state: bool,
}

/// Waits for the in-flight batch, if any. `false` if it failed to become durable; the store
/// has been re-read since.
async fn settle_in_flight<E: Engine>(
    shared: &Shared<E>,
    options: &StoreOptions,
    in_flight: &mut Option<InFlight>,
) -> bool {
    let Some(flight) = in_flight.take() else {
        return true;
    };
    let ok = flight.task.await.unwrap_or(false);
    if !ok {
        resync(shared, options).await;
    }
    ok
}

/// A batch that failed before reaching the engine or while being written; its requests are
/// answered already.
pub(super) struct Failure {
    pub(super) fenced: bool,
    pub(super) err: EngineError,
}

/// A batch written to the engine, waiting to be durable before it is published and answered.
pub(super) struct Pending {
    /// The revision the batch was evaluated on.
    pub(super) base: i64,
    /// Its last revision (`base` if it wrote no revision).
    pub(super) revision: i64,
    /// Whether anything reached the engine (and so needs a sync).
    pub(super) wrote: bool,
    pub(super) committed: Vec<CommittedRevision>,
    pub(super) replies: Vec<(oneshot::Sender<KvResult<Reply>>, KvResult<Reply>)>,
    pub(super) lease_changes: BTreeMap<i64, Option<i64>>,
    pub(super) compacted: Option<i64>,
    pub(super) sample: BatchSample,
    pub(super) started: std::time::Instant,
    /// Time spent writing to the engine so far (the sync is added to it).
    pub(super) engine_time: Option<std::time::Duration>,
}

impl Pending {
    fn changes_state(&self) -> bool {
        !self.lease_changes.is_empty() || self.compacted.is_some()
    }
}

/// Makes `pending` durable, then publishes its revisions, lease and compaction changes and
/// answers its requests. Returns `false` (its requests failed) if the sync failed.
async fn settle<E: Engine>(
    shared: Arc<Shared<E>>,
    options: StoreOptions,
    pending: Pending,
) -> bool {
    let Pending {
        base,
        revision,
        wrote,
        committed,
        replies,
        lease_changes,
        compacted,
        mut sample,
        started,
        engine_time,
    } = pending;
    let syncing = std::time::Instant::now();
    if wrote {
        let synced = match tokio::time::timeout(options.write_timeout, shared.engine.sync()).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::Storage(format!(
                "engine sync took longer than {:?}; its outcome is unknown",
                options.write_timeout
            ))),
        };
        if let Err(err) = synced {
            tracing::error!(%err, "write batch failed to become durable");
            for (reply, _) in replies {
                let _ = reply.send(Err(storage_error(&err)));
            }
            return false;
        }
    }
    let synced = syncing.elapsed();
    sample.commit = engine_time.map(|t| t + synced);
    sample.requests = replies.len();
    sample.total = started.elapsed();
    if sample.total >= SLOW_BATCH {
        tracing::warn!(
            requests = sample.requests,
            took_ms = sample.total.as_millis() as u64,
            write_ms = engine_time.unwrap_or_default().as_millis() as u64,
            sync_ms = synced.as_millis() as u64,
            "write batch took too long"
        );
    }
    shared.stats.record_batch(sample);
    if revision != base {
        shared.publish(revision);
    }
    for (id, granted) in lease_changes {
        match granted {
            Some(ttl) => shared.leases.insert(id, ttl),
            None => shared.leases.remove(id),
        }
    }
    if let Some(rev) = compacted {
        shared.set_compacted(rev);
    }
    if let Some(listener) = &options.listener
        && !committed.is_empty()
    {
        listener.committed(committed);
    }
    for (reply, result) in replies {
        let _ = reply.send(result);
    }
    true
}

/// After a failed batch: a write that failed with an unknown outcome may have committed after
/// all. If the durable revision moved past what was published, that batch is in the store:
/// publish its revision (its events are read back from history by whoever needs them) and
/// take over its lease changes, so the next batch neither reuses its revisions nor fails on
/// them forever.
async fn resync<E: Engine>(shared: &Shared<E>, options: &StoreOptions) {
    let published = shared.revision.load(Ordering::Acquire);
    // Whatever the engine holds is published only once it is durable.
    match tokio::time::timeout(options.write_timeout, shared.engine.sync()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(%err, "syncing the store after a failed batch");
            return;
        }
        Err(_) => {
            tracing::warn!("syncing the store after a failed batch timed out");
            return;
        }
    }
    let recovered = match super::recover(&shared.engine).await {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(%err, "re-reading the store after a failed batch");
            return;
        }
    };
    if recovered.revision <= published {
        return;
    }
    tracing::warn!(
        published,
        durable = recovered.revision,
        "a batch whose outcome was unknown did commit; resuming after it"
    );
    let live = recovered.leases.ids();
    for id in shared.leases.ids() {
        if live.binary_search(&id).is_err() {
            shared.leases.remove(id);
        }
    }
    for id in live {
        if shared.leases.get(id).is_none()
            && let Some(lease) = recovered.leases.get(id)
        {
            shared.leases.insert(id, lease.ttl);
        }
    }
    shared.revision_stored.store(true, Ordering::Release);
    if recovered.compacted > shared.compacted.load(Ordering::Acquire) {
        shared.set_compacted(recovered.compacted);
    }
    shared.publish(recovered.revision);
    if let Some(listener) = &options.listener {
        listener.resumed_after(recovered.revision);
    }
}
