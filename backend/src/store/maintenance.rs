//! What operators ask of the store: consistency hashes and backups.

use super::Store;
use crate::engine::{Engine, EngineError, for_each_page};
use crate::kv::KvResult;
use crate::mvcc::keys::{self, REVS};
use bytes::Bytes;
use tokio::sync::mpsc;

impl<E: Engine> Store<E> {
    /// HashKV: a CRC-32 of every version written after the compacted revision and at or below
    /// `revision` (0 = now), in key order. Compaction only ever removes versions at or below the
    /// compacted revision, so the hash of the same history is the same whatever the progress of
    /// the physical sweep. Returns (hash, the revision hashed, the compacted revision).
    pub async fn hash_kv(&self, revision: i64) -> KvResult<(u32, i64, i64)> {
        let (revs, snapshot) = self.snapshot().await?;
        let revision = revs.resolve(revision)?;
        let mut crc = crc32fast::Hasher::new();
        let versions = keys::region_range(REVS, b"", None);
        for_each_page(&snapshot, versions, 1024, |page| {
            for (k, v) in page {
                if let Some((_, rev)) = keys::decode_revision_key(k)
                    && rev > revs.compacted
                    && rev <= revision
                {
                    crc.update(k);
                    crc.update(v);
                }
            }
            true
        })
        .await?;
        Ok((crc.finalize(), revision, revs.compacted))
    }

    /// Hash: a CRC-32 of the whole engine keyspace as it is now (but the members' election
    /// records, which change with every lease renewal).
    pub async fn hash(&self) -> KvResult<u32> {
        let snapshot = self.shared.engine.snapshot().await?;
        let mut crc = crc32fast::Hasher::new();
        for_each_page(&snapshot, keys::data_range(), 1024, |page| {
            for (k, v) in page {
                crc.update(k);
                crc.update(v);
            }
            true
        })
        .await?;
        Ok(crc.finalize())
    }

    /// A consistent backup stream of the whole store (see [`crate::snapshot`]), in chunks of
    /// about `chunk` bytes.
    pub async fn backup(
        &self,
        chunk: usize,
    ) -> KvResult<mpsc::Receiver<Result<Bytes, EngineError>>> {
        let snapshot = self.shared.engine.snapshot().await?;
        // The snapshot may hold a batch the writer has not synced yet; syncing after taking it
        // makes everything it holds durable, so a backup never holds a revision that a crash
        // of this server could still take back.
        self.shared.engine.sync().await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(crate::snapshot::dump(snapshot, chunk, tx));
        Ok(rx)
    }
}
