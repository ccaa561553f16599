//! The single writer: it takes every write request in arrival order, evaluates them into
//! group-commit batches ([`OpenBatch`]), writes each batch to the engine, makes it durable,
//! then publishes and answers it, batch after batch.
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

use super::batch::{Failure, OpenBatch, Pending, within};
use super::options::StoreOptions;
use super::request::{Answer, WriteRequest};
use super::shared::{Shared, recover};
use crate::engine::{Engine, EngineError};
use crate::kv::KvError;
use crate::mvcc::written::WrittenLatest;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

pub(super) async fn run<E: Engine>(
    shared: Arc<Shared<E>>,
    mut rx: mpsc::Receiver<WriteRequest>,
    options: StoreOptions,
) {
    let mut writer = Writer {
        max_batch: options.max_batch.max(1),
        applied: shared.revision.load(Ordering::Acquire),
        shared,
        options,
        in_flight: None,
        open: None,
        written: WrittenLatest::default(),
    };
    loop {
        let may_evaluate = writer.may_evaluate();
        tokio::select! {
            // A settled batch is collected before anything else is evaluated, so that one whose
            // sync failed has the store re-read first.
            biased;
            outcome = async {
                match writer.in_flight.as_mut() {
                    Some(flight) => (&mut flight.task).await,
                    None => std::future::pending().await,
                }
            }, if writer.in_flight.is_some() => {
                writer.in_flight = None;
                writer.settled(joined(outcome)).await;
            }
            request = rx.recv(), if may_evaluate => {
                let Some(request) = request else { break };
                writer.take(request, &mut rx).await;
            }
        }
    }
    writer.finish().await;
}

/// The writer's state between wakeups.
struct Writer<E: Engine> {
    shared: Arc<Shared<E>>,
    options: StoreOptions,
    max_batch: usize,
    /// The last revision written to the engine: the published one, or the last of the batch
    /// being synced.
    applied: i64,
    in_flight: Option<InFlight>,
    /// The batch being filled while `in_flight` syncs.
    open: Option<OpenBatch<E::Snapshot>>,
    /// The latest versions of the keys written by earlier batches (moved into the open batch
    /// while there is one). Dropped whenever a batch fails: the store is re-read then.
    written: WrittenLatest,
}

impl<E: Engine> Writer<E> {
    /// Whether a request may be evaluated now. Lease, compaction and auth changes are read from the
    /// shared state, which a batch updates only once it is durable: nothing is evaluated on top
    /// of such a batch before it settles.
    fn may_evaluate(&self) -> bool {
        self.open.as_ref().map_or(0, OpenBatch::len) < self.max_batch
            && !self.in_flight.as_ref().is_some_and(|f| f.changes_state)
    }

    /// The batch in flight settled (`Ok`: durable, published and answered): the open batch,
    /// evaluated on top of it, goes to the engine, or fails with it.
    async fn settled(&mut self, outcome: Result<(), Unanswered>) {
        match outcome {
            Ok(()) => {
                if let Some(batch) = self.open.take() {
                    self.start(batch).await;
                }
            }
            Err(unanswered) => self.sync_failed(unanswered).await,
        }
    }

    /// The batch in flight failed to become durable: the store is re-read (publishing whatever
    /// of it did reach the disk), what the writer remembered of its versions is dropped, and
    /// the open batch, evaluated on top of it, fails with it.
    async fn sync_failed(&mut self, unanswered: Unanswered) {
        self.shared.stats.record_batch_failed();
        self.written = WrittenLatest::default();
        resync(&self.shared, &self.options).await;
        if let Some(mut batch) = self.open.take() {
            self.shared.stats.record_batch_failed();
            batch.fail(&earlier_batch_failed());
        }
        self.applied = self.shared.revision.load(Ordering::Acquire);
        // Only now: a client that retries as soon as it hears of the failure is evaluated on
        // the re-read store, not into the batch that was just failed.
        unanswered.answer();
    }

    /// Evaluates `request` and whatever else is queued (one wakeup per burst of requests, not
    /// per request); with nothing syncing, writes them at once.
    async fn take(&mut self, request: WriteRequest, rx: &mut mpsc::Receiver<WriteRequest>) {
        let mut next = Some(request);
        while let Some(request) = next.take() {
            if !self.evaluate(request).await {
                self.recover_from_failed_batch().await;
                return;
            }
            if self.open.as_ref().map_or(0, OpenBatch::len) < self.max_batch {
                next = rx.try_recv().ok();
            }
        }
        if self.in_flight.is_none()
            && let Some(batch) = self.open.take()
        {
            self.start(batch).await;
        }
    }

    /// Evaluates `request` into the open batch, opening one on top of `applied` if there is
    /// none. `false` if the batch failed (its requests are answered already).
    async fn evaluate(&mut self, request: WriteRequest) -> bool {
        if self.open.is_none() {
            let written = std::mem::take(&mut self.written);
            match OpenBatch::begin(&self.shared, self.applied, written).await {
                Ok(batch) => self.open = Some(batch),
                Err(err) => {
                    tracing::error!(%err, "write batch failed");
                    request.fail(KvError::Engine(err));
                    return false;
                }
            }
        }
        let Some(batch) = self.open.as_mut() else {
            return false;
        };
        match batch.evaluate(request, &self.shared.leases).await {
            Ok(()) => true,
            Err(Failure { err, .. }) => {
                tracing::error!(%err, "write batch failed");
                self.open = None;
                false
            }
        }
    }

    /// After a batch failed to evaluate: the engine could not be read, so the store is re-read
    /// once the batch in flight has settled.
    async fn recover_from_failed_batch(&mut self) {
        // A failed in-flight batch re-reads the store itself.
        if self.settle_in_flight().await {
            resync(&self.shared, &self.options).await;
        }
        self.applied = self.shared.revision.load(Ordering::Acquire);
    }

    /// Writes `batch` to the engine and starts its sync, which publishes and answers it. Only
    /// called with nothing in flight: batches are published in order, and a reply is sent only
    /// after every batch it may have read from is durable.
    async fn start(&mut self, batch: OpenBatch<E::Snapshot>) {
        debug_assert!(self.in_flight.is_none());
        match batch.write(&self.shared, &self.options).await {
            Ok((pending, written)) => {
                self.written = written;
                self.applied = pending.revision;
                let changes_state = pending.changes_state();
                let settling = settle(self.shared.clone(), self.options.clone(), pending);
                self.in_flight = Some(InFlight {
                    task: tokio::spawn(settling),
                    changes_state,
                });
            }
            Err(Failure { fenced, err }) => {
                tracing::error!(%err, "write batch failed");
                self.shared.stats.record_batch_failed();
                if !fenced {
                    resync(&self.shared, &self.options).await;
                }
                self.applied = self.shared.revision.load(Ordering::Acquire);
            }
        }
    }

    /// Waits for the in-flight batch, if any. `false` if it failed to become durable (see
    /// [`Self::sync_failed`]: the open batch failed with it).
    async fn settle_in_flight(&mut self) -> bool {
        let Some(flight) = self.in_flight.take() else {
            return true;
        };
        match joined(flight.task.await) {
            Ok(()) => true,
            Err(unanswered) => {
                self.sync_failed(unanswered).await;
                false
            }
        }
    }

    /// Every sender is gone: finishes what was accepted.
    async fn finish(mut self) {
        // A failed sync fails the open batch with it.
        if self.settle_in_flight().await
            && let Some(batch) = self.open.take()
        {
            self.start(batch).await;
            self.settle_in_flight().await;
        }
    }
}

/// A sync task's outcome; one that panicked answered nobody (its requests' senders are gone).
fn joined(task: Result<Result<(), Unanswered>, tokio::task::JoinError>) -> Result<(), Unanswered> {
    task.unwrap_or_else(|_| Err(Unanswered::default()))
}

/// What the requests of a batch whose sync failed hear. The batch was written: whether it
/// reached the disk is unknown (a failed fsync may or may not have lost it), so its outcome is
/// unknown, never a failure. A full disk stays itself, so that the alarm is raised.
fn sync_failed(err: EngineError) -> EngineError {
    match err {
        EngineError::NoSpace(_) | EngineError::Undetermined(_) => err,
        err => EngineError::Undetermined(format!("syncing a written batch failed: {err}")),
    }
}

/// The answer to requests evaluated on top of a batch that failed to become durable: they
/// were never written.
fn earlier_batch_failed() -> EngineError {
    EngineError::Storage("an earlier batch failed to become durable; not applied".into())
}

/// A batch that took longer than this from its first request's evaluation to its answers is
/// logged, with where the time went (etcd warns of applies over 100 ms the same way).
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// The requests of a batch that failed to become durable, with the error they get. The writer,
/// not the task that synced the batch, answers them, and only once it has re-read the store:
/// a request sent after such an answer must never be evaluated on top of the failed batch.
#[derive(Default)]
struct Unanswered {
    answers: Vec<Answer>,
    /// `None` if the sync task panicked (its requests' senders are gone with it).
    err: Option<EngineError>,
}

impl Unanswered {
    fn answer(self) {
        let Some(err) = self.err else { return };
        for answer in self.answers {
            answer.fail(KvError::Engine(err.clone()));
        }
    }
}

/// The batch being synced while the writer evaluates the next one.
struct InFlight {
    /// Syncs, publishes and answers the batch; hands its requests back if the sync failed.
    task: tokio::task::JoinHandle<Result<(), Unanswered>>,
    /// Whether the batch changes leases or the compacted revision.
    changes_state: bool,
}

/// Makes `pending` durable, then publishes its revisions, lease and compaction changes and
/// answers its requests. If the sync failed, hands the requests back unanswered.
async fn settle<E: Engine>(
    shared: Arc<Shared<E>>,
    options: StoreOptions,
    pending: Pending,
) -> Result<(), Unanswered> {
    let Pending {
        base,
        revision,
        wrote,
        committed,
        answers,
        lease_changes,
        compacted,
        auth,
        mut sample,
        started,
        engine_time,
    } = pending;
    let syncing = std::time::Instant::now();
    if wrote {
        let synced = within(options.write_timeout, "engine sync", shared.engine.sync()).await;
        if let Err(err) = synced {
            tracing::error!(%err, "write batch failed to become durable");
            return Err(Unanswered {
                answers,
                err: Some(sync_failed(err)),
            });
        }
    }
    let synced = syncing.elapsed();
    sample.commit = engine_time.map(|t| t + synced);
    sample.sync = wrote.then_some(synced);
    sample.requests = answers.len();
    sample.total = started.elapsed();
    if sample.total >= SLOW_BATCH {
        let written = engine_time.unwrap_or_default();
        tracing::warn!(
            requests = sample.requests,
            took_ms = sample.total.as_millis() as u64,
            // Open: evaluating its requests and waiting for the batch before it to be durable
            // (a slow sync shows here, in the batch behind it, as well as in its own).
            open_ms = sample.total.saturating_sub(written + synced).as_millis() as u64,
            write_ms = written.as_millis() as u64,
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
    if let Some(auth) = auth {
        shared.set_auth(auth);
    }
    if let Some(listener) = &options.listener
        && !committed.is_empty()
    {
        listener.committed(committed);
    }
    for answer in answers {
        answer.send();
    }
    Ok(())
}

/// After a failed batch: a write that failed with an unknown outcome may have committed after
/// all. If the durable revision moved past what was published, that batch is in the store:
/// publish its revision (its events are read back from history by whoever needs them) and
/// take over its lease changes, so the next batch neither reuses its revisions nor fails on
/// them forever.
async fn resync<E: Engine>(shared: &Shared<E>, options: &StoreOptions) {
    let published = shared.revision.load(Ordering::Acquire);
    // Whatever the engine holds is published only once it is durable.
    if let Err(err) = within(options.write_timeout, "engine sync", shared.engine.sync()).await {
        tracing::warn!(%err, "syncing the store after a failed batch");
        return;
    }
    let recovered = match recover(&shared.engine).await {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(%err, "re-reading the store after a failed batch");
            return;
        }
    };
    // A batch that changed only users or roles moves no revision: its state is taken as read.
    if *shared.auth() != recovered.auth {
        shared.set_auth(std::sync::Arc::new(recovered.auth.clone()));
    }
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
