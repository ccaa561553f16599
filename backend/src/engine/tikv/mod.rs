//! The TiKV engine: Engram's keyspace in a TiKV cluster (cargo feature `tikv`).
//!
//! TiKV is the engine Engram's contract was shaped after: an ordered, range-partitioned keyspace
//! with snapshot reads at a timestamp and atomic multi-key transactions. The mapping is direct:
//!
//! - **Keys** live under the cluster's key prefix ([`keys`]), so several Engram clusters can
//!   share one TiKV cluster; a range open at the end stops at the end of the prefix.
//! - **Snapshots** are TiKV reads at a fresh timestamp from PD. Every write that returned before
//!   committed at a PD timestamp taken before this one (see below), so the snapshot sees it.
//!   Scans are read in bounded pages; reverse scans use TiKV's own reverse scan.
//! - **Writes** are one TiKV transaction per [`WriteBatch`]: read every condition key inside
//!   it, check the conditions, apply the mutations, commit.
//!
//! ## Optimistic transactions, and why
//!
//! A batch reads its condition keys at the transaction's start timestamp and *locks them
//! optimistically*: they join the prewrite as `Lock` mutations (mutated keys join as puts and
//! deletes). TiKV's prewrite fails with a write conflict if any of those keys got a commit after
//! the start timestamp, so a batch that read a value commits only if that value is still
//! current: a lost race is a clean [`EngineError::ConditionFailed`], never an overwrite.
//!
//! Pessimistic transactions (`get_for_update`) were the alternative. They were not chosen, on
//! reasoning rather than measurement (no TiKV server could be run where this was written):
//! - Engram has one writer task per cluster that group-commits many requests into a batch; the
//!   conditions exist to fence off a second writer (a deposed leader), not to arbitrate
//!   everyday contention. Conflicts are rare, so optimistic's only cost (the whole batch aborts
//!   on a conflict) is rarely paid, and aborting is exactly what Engram wants then: the batch
//!   must fail, not wait and retry.
//! - Pessimistic mode costs more round trips on every batch: a PD timestamp and a lock request
//!   for the condition keys, and in tikv-client every mutated key is locked pessimistically as
//!   well before prewrite, which for a group-commit batch of thousands of keys doubles the
//!   write traffic. Optimistic costs a start timestamp, one read of the condition keys, the
//!   prewrite, a commit timestamp and the primary's commit (secondaries commit in the
//!   background; readers resolve them through the primary).
//! - A pessimistic lock waits for a conflicting holder; a deposed leader's batches should fail
//!   fast instead.
//!
//! ## No 1PC, no async commit
//!
//! Both are off (tikv-client's default), for correctness first:
//! - Engram's contract says a snapshot sees every write that returned before it. Plain 2PC
//!   takes the commit timestamp from PD after prewrite, so any later PD timestamp is greater.
//!   Async commit and 1PC compute the commit timestamp inside TiKV from `max_ts`; tikv-client
//!   0.4 leaves the `min_commit_ts` that would tie it to PD unset (a FIXME in its committer),
//!   so that guarantee would rest on TiKV's timestamp bookkeeping alone.
//! - tikv-client sets `try_one_pc` on every prewrite request of a transaction, including when
//!   the batch is split over several regions or request batches, and reports `OnePcFailure`
//!   instead of falling back; Engram's batches routinely span regions.
//!
//! Both save a round trip per batch; with Engram's group commit that is amortised over many
//! requests, so the plain protocol is the right default until it can be measured.
//!
//! ## History and GC
//!
//! TiKV keeps old versions of every key (its own MVCC) until its GC safepoint passes them, and
//! Engram's history lives in Engram's keys anyway. [`Engine::history_released`] (called after
//! each compaction sweep) advances the safepoint to the timestamp remembered at the *previous*
//! call, so every snapshot taken since then stays readable.
//!
//! Known limits: PD has one GC safepoint per TiKV cluster, so clusters sharing a TiKV cluster
//! advance it for each other (Engram's snapshots are short-lived reads, far shorter than the
//! compaction interval); tikv-client's `gc` also resolves expired locks over the whole keyspace.
//! TiKV refuses keys over its `max-key-size` (8 KiB by default), which etcd would accept.

mod keys;
mod metrics;
mod translate;

pub use metrics::tikv_metrics_text;

use super::{Engine, EngineError, EngineResult, Entry, KeyRange, Snapshot, WriteBatch};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use tikv_client::{
    CheckLevel, Config, KvPair, Timestamp, Transaction, TransactionClient, TransactionOptions,
};

/// Entries asked of TiKV per scan request. A scan spanning several regions asks each region
/// for up to this many, then keeps the first ones in order.
const SCAN_PAGE: usize = 512;

/// The largest gRPC response this client accepts (tikv-client's default is 4 MiB; a page of
/// etcd-sized values, up to 1.5 MiB each, needs more). A response the server itself refuses
/// to send is read again in smaller pages.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A TiKV cluster, reached through its PD endpoints, holding Engram's keys under a prefix.
#[derive(Clone)]
pub struct TikvEngine {
    client: TransactionClient,
    prefix: Bytes,
    /// The timestamp taken at the previous [`Engine::history_released`] call: what the next
    /// call may let TiKV collect up to. A lock also serialises the calls.
    released: Arc<tokio::sync::Mutex<Option<Timestamp>>>,
}

impl TikvEngine {
    /// Connects to the TiKV cluster whose PD answers at `pd_endpoints` (`host:port` each).
    /// Every key this engine reads or writes is stored under `key_prefix`.
    pub async fn connect(pd_endpoints: Vec<String>, key_prefix: Bytes) -> EngineResult<Self> {
        let config = Config::default().with_grpc_max_decoding_message_size(MAX_RESPONSE_BYTES);
        let client = TransactionClient::new_with_config(pd_endpoints, config)
            .await
            .map_err(|err| translate::storage(&err))?;
        Ok(TikvEngine {
            client,
            prefix: key_prefix,
            released: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// The key prefix this engine keeps its keys under.
    pub fn key_prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// Optimistic 2PC (see the module docs). A transaction abandoned half-way (its future
    /// dropped) only logs: its locks expire with their TTL and readers clean them up.
    fn write_options() -> TransactionOptions {
        TransactionOptions::new_optimistic().drop_check(CheckLevel::Warn)
    }

    /// Runs `batch` in `txn`. Returns whether it committed (a batch of conditions only has
    /// nothing to commit once they hold).
    async fn write_in(&self, txn: &mut Transaction, batch: &WriteBatch) -> EngineResult<bool> {
        let prefix = &self.prefix[..];
        let fallback = batch
            .conditions
            .first()
            .map(|c| c.key.clone())
            .or_else(|| batch.mutations.first().map(|m| mutation_key(m).clone()))
            .unwrap_or_default();
        let failed =
            |err: tikv_client::Error| translate::commit_error(prefix, &err, fallback.clone());

        let condition_keys = translate::condition_keys(prefix, &batch.conditions);
        if !condition_keys.is_empty() {
            let current: HashMap<Vec<u8>, Vec<u8>> = txn
                .batch_get(condition_keys.clone())
                .await
                .map_err(failed)?
                .map(|KvPair(key, value)| (key.into(), value))
                .collect();
            if let Some(condition) =
                translate::failed_condition(prefix, &batch.conditions, &current)
            {
                return Err(EngineError::ConditionFailed {
                    key: condition.key.clone(),
                });
            }
            if batch.mutations.is_empty() {
                // Read at a timestamp after every returned write: the conditions held then.
                return Ok(false);
            }
            // Join the prewrite, so that a commit on them since our read is a write conflict.
            txn.lock_keys(condition_keys).await.map_err(failed)?;
        }
        txn.batch_mutate(translate::mutations(prefix, &batch.mutations))
            .await
            .map_err(failed)?;
        txn.commit().await.map_err(failed)?;
        Ok(true)
    }
}

fn mutation_key(mutation: &super::Mutation) -> &Bytes {
    match mutation {
        super::Mutation::Put { key, .. } | super::Mutation::Delete { key } => key,
    }
}

/// A read-only view of the TiKV cluster at one PD timestamp.
pub struct TikvSnapshot {
    client: TransactionClient,
    timestamp: Timestamp,
    prefix: Bytes,
}

impl TikvSnapshot {
    /// A reader at the snapshot's timestamp. tikv-client's readers take `&mut self` and cache
    /// what they read; a fresh one per call keeps this snapshot shareable and its memory flat
    /// (creating one costs no request).
    fn reader(&self) -> tikv_client::Snapshot {
        self.client.snapshot(
            self.timestamp.clone(),
            TransactionOptions::new_optimistic().drop_check(CheckLevel::None),
        )
    }

    /// One scan request of up to `limit` entries within TiKV bounds.
    async fn scan_page(
        &self,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> tikv_client::Result<Vec<KvPair>> {
        let bounds = keys::bound_range(lower.to_vec(), upper.map(<[u8]>::to_vec));
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let mut reader = self.reader();
        if reverse {
            Ok(reader.scan_reverse(bounds, limit).await?.collect())
        } else {
            Ok(reader.scan(bounds, limit).await?.collect())
        }
    }
}

impl Snapshot for TikvSnapshot {
    /// Reads page by page and stops at the page where `visit` says stop, instead of reading
    /// all of `limit` first (counting a large range must not hold it in memory).
    async fn visit<F>(&self, range: &KeyRange, limit: usize, mut visit: F) -> EngineResult<usize>
    where
        F: FnMut(&[u8], &[u8]) -> bool + Send,
    {
        let mut range = range.clone();
        let mut shown = 0;
        while shown < limit {
            let want = (limit - shown).min(SCAN_PAGE);
            let page = self.scan(&range, want, false).await?;
            for (key, value) in &page {
                shown += 1;
                if !visit(key, value) {
                    return Ok(shown);
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == want => range.start = super::next_key(last),
                _ => break,
            }
        }
        Ok(shown)
    }

    async fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        let value = self
            .reader()
            .get(keys::encode(&self.prefix, key))
            .await
            .map_err(|err| translate::storage(&err))?;
        Ok(value.map(Bytes::from))
    }

    /// One batch get instead of a request per key.
    async fn get_many(&self, wanted: &[Bytes]) -> EngineResult<Vec<Option<Bytes>>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<Vec<u8>> = wanted
            .iter()
            .map(|key| keys::encode(&self.prefix, key))
            .collect();
        let found: HashMap<Vec<u8>, Bytes> = self
            .reader()
            .batch_get(stored.clone())
            .await
            .map_err(|err| translate::storage(&err))?
            .map(|KvPair(key, value)| (key.into(), Bytes::from(value)))
            .collect();
        // A key asked twice answers twice (a `Bytes` clone shares the value).
        Ok(stored.iter().map(|key| found.get(key).cloned()).collect())
    }

    async fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> EngineResult<Vec<Entry>> {
        let Some((mut lower, mut upper)) = keys::bounds(&self.prefix, range) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(limit.min(SCAN_PAGE));
        let mut page = SCAN_PAGE;
        while out.len() < limit {
            let want = (limit - out.len()).min(page);
            let pairs = match self
                .scan_page(&lower, upper.as_deref(), want, reverse)
                .await
            {
                Ok(pairs) => pairs,
                Err(err) if want > 1 && translate::is_response_too_large(&err) => {
                    page = want / 2;
                    continue;
                }
                Err(err) => return Err(translate::storage(&err)),
            };
            let full = pairs.len() == want;
            let mut last = None;
            for KvPair(key, value) in pairs {
                let stored = Bytes::from(Vec::<u8>::from(key));
                if keys::decode(&self.prefix, &stored).is_none() {
                    return Err(EngineError::Corrupt(format!(
                        "tikv: scan returned key {stored:?} outside prefix {:?}",
                        self.prefix
                    )));
                }
                out.push((stored.slice(self.prefix.len()..), Bytes::from(value)));
                last = Some(stored);
            }
            match last {
                Some(last) if full => {
                    if reverse {
                        upper = Some(last.to_vec());
                    } else {
                        lower = super::next_key(&last).to_vec();
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

impl Engine for TikvEngine {
    type Snapshot = TikvSnapshot;

    async fn snapshot(&self) -> EngineResult<TikvSnapshot> {
        let timestamp = self
            .client
            .current_timestamp()
            .await
            .map_err(|err| translate::storage(&err))?;
        Ok(TikvSnapshot {
            client: self.client.clone(),
            timestamp,
            prefix: self.prefix.clone(),
        })
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        if batch.conditions.is_empty() && batch.mutations.is_empty() {
            return Ok(());
        }
        let mut txn = self
            .client
            .begin_with_options(Self::write_options())
            .await
            .map_err(|err| translate::storage(&err))?;
        let outcome = self.write_in(&mut txn, &batch).await;
        if !matches!(outcome, Ok(true)) {
            // Releases the locks of a failed prewrite now rather than at their TTL. Rolling
            // back a transaction whose commit reached TiKV is refused by TiKV, so this never
            // undoes a commit; an uncertain outcome stays a Storage error either way.
            if let Err(err) = txn.rollback().await {
                tracing::debug!(%err, "tikv: rollback after a failed write");
            }
        }
        outcome.map(|_| ())
    }

    /// Always 0: the space a prefix occupies is TiKV's to report (PD's region statistics), and
    /// tikv-client has no cheap call for it. Engram's space quota therefore does not apply.
    fn size_on_disk(&self) -> u64 {
        0
    }

    async fn history_released(&self) -> EngineResult<()> {
        let mut remembered = self.released.lock().await;
        let now = self
            .client
            .current_timestamp()
            .await
            .map_err(|err| translate::storage(&err))?;
        if let Some(safepoint) = remembered.as_ref() {
            let advanced = self
                .client
                .gc(safepoint.clone())
                .await
                .map_err(|err| translate::storage(&err))?;
            if !advanced {
                // PD keeps a newer safepoint someone else set; ours is behind it, which is fine.
                tracing::debug!("tikv: GC safepoint already past the one Engram asked for");
            }
        }
        *remembered = Some(now);
        Ok(())
    }
}
