//! A store that replicates another etcd (`engram migrate`): that etcd's revisions, leases,
//! compaction and auth state committed here as they are there, until the store takes over.

use super::Store;
use super::request::WriteRequest;
use crate::auth::AuthState;
use crate::engine::Engine;
use crate::kv::{KvError, KvResult};
use etcdpb::etcdserverpb::CompactionResponse;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// Replicated revisions handed to the writer (see [`Store::replicate`]).
pub struct Replicating(Vec<oneshot::Receiver<KvResult<()>>>);

impl Replicating {
    /// Waits until every revision is committed: the first failure, if one fails.
    pub async fn committed(self) -> KvResult<()> {
        for answer in self.0 {
            answer.await.map_err(|_| KvError::Stopped)??;
        }
        Ok(())
    }
}

impl<E: Engine> Store<E> {
    /// Whether the store replicates another etcd (see [`Store::replicate`]).
    pub fn replicating(&self) -> bool {
        self.shared.replicating.load(Ordering::Acquire)
    }

    /// Hands `revisions` of the etcd this store replicates to the writer, each (revision, its
    /// events in etcd's order) to be committed as the same revision here: the store stays that
    /// etcd's exact copy, revision for revision. The first must follow the last revision
    /// handed over, each the one before. Returns once they are queued; the [`Replicating`]
    /// returned says when they are committed. Revisions handed over before earlier ones are
    /// committed share group commits with them: one at a time, each would cost a sync.
    pub async fn replicate(
        &self,
        revisions: Vec<(i64, Vec<etcdpb::mvccpb::Event>)>,
    ) -> KvResult<Replicating> {
        let writer = match &self.writer {
            Some(writer) if !*self.shared.deposed.borrow() => writer,
            _ => return Err(KvError::NotLeader),
        };
        let mut answers = Vec::with_capacity(revisions.len());
        for (revision, events) in revisions {
            let (reply, rx) = oneshot::channel();
            let request = WriteRequest::Replicate {
                revision,
                events,
                reply,
            };
            writer.send(request).await.map_err(|_| KvError::Stopped)?;
            answers.push(rx);
        }
        Ok(Replicating(answers))
    }

    /// Makes the leases of the store those of the etcd it replicates: `leases` (id, TTL).
    pub async fn replicate_leases(&self, leases: Vec<(i64, i64)>) -> KvResult<()> {
        self.send(|reply| WriteRequest::ReplicateLeases { leases, reply })
            .await
    }

    /// Compacts as the etcd this store replicates did (a compaction makes no revision).
    pub async fn replicate_compaction(&self, revision: i64) -> KvResult<CompactionResponse> {
        self.send(|reply| WriteRequest::Compact(revision, reply))
            .await
    }

    /// The store stops replicating and takes writes from now on, its next revision the one
    /// after the last it replicated. Every lease gets its full TTL from now, as etcd grants
    /// when a new leader takes over.
    pub fn end_replication(&self) {
        for id in self.shared.leases.ids() {
            self.shared.leases.keep_alive(id);
        }
        self.shared.replicating.store(false, Ordering::Release);
    }

    /// Makes the users, roles, enabled flag and auth revision of the store those of the etcd
    /// it replicates (`source`, read from a snapshot of it: the watch stream does not carry
    /// them). Through the writer, so ordered with the replicated revisions and durable when it
    /// returns. Returns the auth revision.
    pub async fn replicate_auth(&self, source: AuthState) -> KvResult<u64> {
        let source = Box::new(source);
        self.send(|reply| WriteRequest::ReplicateAuth { source, reply })
            .await
    }
}
