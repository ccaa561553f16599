//! A group-commit batch: requests evaluated one after another on top of the engine and the
//! batch's own pending versions, then written to the engine as one conditional batch.

use super::commit::{CommittedRevision, owned_event};
use super::options::StoreOptions;
use super::request::{Answer, CompactStep, WriteRequest};
use super::shared::Shared;
use super::stats::BatchSample;
use crate::auth::{AuthState, Authority, token};
use crate::engine::{Engine, EngineError, Snapshot, WriteBatch};
use crate::kv::{Apply, KvError, revision_entry};
use crate::lease::LeaseTable;
use crate::mvcc::keys;
use crate::mvcc::overlay::Overlay;
use crate::mvcc::record::{encode_counter, encode_index};
use crate::mvcc::written::WrittenLatest;
use crate::mvcc::{Version, View};
use bytes::Bytes;
use etcdpb::etcdserverpb::{CompactionResponse, ResponseHeader};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What a batch changes besides the overlay's versions.
#[derive(Default)]
struct Extra {
    compacted: Option<i64>,
    swept: Option<i64>,
    versions: Vec<Bytes>,
    index_removals: Vec<(Bytes, i64)>,
    /// The auth state the batch leaves (`None`: unchanged) and the rows that store it.
    auth: Option<Arc<AuthState>>,
    auth_rows: Vec<(Bytes, Option<Bytes>)>,
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
    answers: Vec<Answer>,
    sample: BatchSample,
    started: std::time::Instant,
    /// The auth state requests are checked against: the published one when the batch began
    /// (a batch that changes it settles before anything is evaluated on top of it), then as
    /// this batch's own auth changes leave it.
    auth: Arc<AuthState>,
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
            answers: Vec::new(),
            sample: BatchSample::default(),
            started,
            auth: shared.auth(),
        })
    }

    /// Requests evaluated so far.
    pub(super) fn len(&self) -> usize {
        self.answers.len()
    }

    /// Evaluates `request` as if every request before it in the batch had been committed. On
    /// an engine failure the overlay may hold part of the request: every request of the batch
    /// fails, and so does the batch.
    pub(super) async fn evaluate(
        &mut self,
        request: WriteRequest,
        leases: &LeaseTable,
    ) -> Result<(), Failure> {
        // Auth changes earlier in this batch count: a write checked before them is refused.
        let auth = &self.auth;
        let admit = |authority: Authority| authority.admit(auth).map_err(KvError::Auth);
        let mut changed_auth = None;
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
        let answer = match request {
            WriteRequest::Put(req, authority, reply) => match admit(authority) {
                Ok(()) => Answer::Put(reply, apply.put(&req).await),
                Err(err) => Answer::Put(reply, Err(err)),
            },
            WriteRequest::DeleteRange(req, authority, reply) => match admit(authority) {
                Ok(()) => Answer::DeleteRange(reply, apply.delete_range(&req).await),
                Err(err) => Answer::DeleteRange(reply, Err(err)),
            },
            WriteRequest::Txn(req, authority, reply) => match admit(authority) {
                Ok(()) => Answer::Txn(reply, apply.txn(&req).await),
                Err(err) => Answer::Txn(reply, Err(err)),
            },
            WriteRequest::Compact(rev, reply) => {
                let result = if rev <= self.compacted {
                    Err(KvError::Compacted)
                } else if rev > self.revision {
                    Err(KvError::FutureRevision)
                } else {
                    self.compacted = rev;
                    self.extra.compacted = Some(rev);
                    Ok(CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: self.revision,
                            ..Default::default()
                        }),
                    })
                };
                Answer::Compact(reply, result)
            }
            WriteRequest::LeaseGrant { id, ttl, reply } => {
                let result = apply.lease_grant(id, ttl);
                if result.is_ok() {
                    self.sample.leases_granted += 1;
                }
                Answer::LeaseGrant(reply, result)
            }
            WriteRequest::LeaseRevoke {
                id,
                authority,
                reply,
            } => {
                let result = match admit(authority) {
                    Ok(()) => apply.lease_revoke(id).await.map(|()| apply.revision()),
                    Err(err) => Err(err),
                };
                if result.is_ok() {
                    self.sample.leases_revoked += 1;
                }
                Answer::LeaseRevoke(reply, result)
            }
            WriteRequest::Auth {
                change,
                caller,
                reply,
            } => {
                let permitted = auth.check_admin(caller.as_deref()).map_err(KvError::Auth);
                let result = permitted.and_then(|()| match change.apply(auth, token::new_key) {
                    Ok(Some(applied)) => {
                        let revision = applied.state.revision();
                        self.extra.auth_rows.extend(applied.rows);
                        changed_auth = Some(applied.state);
                        Ok(revision)
                    }
                    Ok(None) => Ok(auth.revision()),
                    Err(err) => Err(KvError::Auth(err)),
                });
                Answer::Auth(reply, result)
            }
            WriteRequest::CompactStep(step, reply) => {
                let view = View::new(&self.snapshot);
                let planned = plan_removals(&view, &mut self.extra, step).await;
                Answer::Done(reply, planned.map_err(KvError::Engine))
            }
            WriteRequest::Replicate {
                revision,
                events,
                reply,
            } => {
                let result = if revision != self.revision + 1 {
                    Err(KvError::ReplicationGap {
                        current: self.revision,
                        got: revision,
                    })
                } else {
                    apply.replicate(&events).await
                };
                Answer::Done(reply, result)
            }
            WriteRequest::ReplicateLeases {
                leases: wanted,
                reply,
            } => {
                let wanted: BTreeMap<i64, i64> = wanted.into_iter().collect();
                for id in leases.ids() {
                    if !wanted.contains_key(&id) {
                        apply.overlay.leases.insert(id, None);
                    }
                }
                for (id, ttl) in wanted {
                    if !apply.lease_exists(id) {
                        apply.overlay.leases.insert(id, Some(ttl));
                    }
                }
                Answer::Done(reply, Ok(()))
            }
            WriteRequest::ReplicateAuth { source, reply } => {
                let revision = source.revision();
                if let Some(applied) = crate::auth::replicate(auth, &source, token::new_key) {
                    self.extra.auth_rows.extend(applied.rows);
                    changed_auth = Some(applied.state);
                }
                Answer::Auth(reply, Ok(revision))
            }
        };
        if let Some(state) = changed_auth {
            let state = Arc::new(state);
            self.auth = state.clone();
            self.extra.auth = Some(state);
        }
        if apply.changed && answer.is_ok() {
            self.revision += 1;
            self.committed.push(CommittedRevision {
                revision: self.revision,
                events: apply.events.drain(..).map(owned_event).collect(),
            });
        }
        if let Some(err) = answer.engine_error().cloned() {
            answer.fail(KvError::Engine(err.clone()));
            self.fail(&err);
            return Err(Failure { fenced: false, err });
        }
        self.answers.push(answer);
        Ok(())
    }

    /// Answers every request evaluated so far with `err`.
    pub(super) fn fail(&mut self, err: &EngineError) {
        for answer in self.answers.drain(..) {
            answer.fail(KvError::Engine(err.clone()));
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
            answers,
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
            for answer in answers {
                answer.fail(if fenced {
                    KvError::NotLeader
                } else {
                    KvError::Engine(err.clone())
                });
            }
            return Err(Failure { fenced, err });
        }
        if revision != base {
            shared.revision_stored.store(true, Ordering::Release);
        }
        tracing::trace!(requests = answers.len(), "batch written");
        let mut written = overlay.take_written();
        // A key both in the overlay and among the index removals ends as the overlay says:
        // `remember` forgets the removals first.
        written.remember(
            overlay
                .keys()
                .iter()
                .map(|(key, pending)| (key, pending.versions.last())),
            extra.index_removals.iter().map(|(key, _)| key),
        );
        let pending = Pending {
            base,
            revision,
            wrote,
            committed,
            answers,
            lease_changes,
            compacted: extra.compacted,
            auth: extra.auth.clone(),
            sample,
            started,
            engine_time: wrote.then(|| writing.elapsed()),
        };
        Ok((pending, written))
    }
}

/// Runs an engine call, failing it after `limit`: its outcome is then unknown.
pub(super) async fn within<T>(
    limit: std::time::Duration,
    what: &str,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(EngineError::Undetermined(format!(
            "{what} took longer than {limit:?}"
        )))
    })
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
    pub(super) answers: Vec<Answer>,
    pub(super) lease_changes: BTreeMap<i64, Option<i64>>,
    pub(super) compacted: Option<i64>,
    /// The auth state to publish with the batch, if it changed it.
    pub(super) auth: Option<Arc<AuthState>>,
    pub(super) sample: BatchSample,
    pub(super) started: std::time::Instant,
    /// Time spent writing to the engine so far (the sync is added to it).
    pub(super) engine_time: Option<std::time::Duration>,
}

impl Pending {
    pub(super) fn changes_state(&self) -> bool {
        !self.lease_changes.is_empty() || self.compacted.is_some() || self.auth.is_some()
    }
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
        // Whether another writer could have changed this entry is settled by the META condition
        // every batch carries (every writer moves META, so a batch applies only on top of the
        // exact state it was evaluated on). What the per-key condition adds is a check of the
        // writer's own bookkeeping (the overlay and the remembered versions of `written.rs`):
        // the state it evaluated against is the engine's. It costs a point lookup per key in
        // the engine's write, a fifth of that write on a put load (profiled: ~5% of the
        // server's CPU per put), so debug builds, which every test runs, check it and release
        // builds trust it.
        if cfg!(debug_assertions) {
            batch.require(index.clone(), pending.base_index.clone());
        }
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
    for (key, value) in &extra.auth_rows {
        match value {
            Some(value) => batch.put(key.clone(), value.clone()),
            None => batch.delete(key.clone()),
        }
    }
    batch
}
