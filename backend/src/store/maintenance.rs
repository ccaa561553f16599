//! What operators ask of the store: consistency hashes.

use crate::engine::{Snapshot, for_each_page};
use crate::kv::{KvResult, ReadRevisions};
use crate::mvcc::keys::{self, REVS};

/// HashKV: a CRC-32 of every version written after the compacted revision and at or below
/// `revision` (0 = now), in key order. Compaction only ever removes versions at or below the
/// compacted revision, so the hash of the same history is the same whatever the progress of
/// the physical sweep. Returns (hash, the revision hashed, the compacted revision).
pub(super) async fn hash_kv<S: Snapshot>(
    snapshot: &S,
    revs: ReadRevisions,
    revision: i64,
) -> KvResult<(u32, i64, i64)> {
    let revision = revs.resolve(revision)?;
    let mut crc = crc32fast::Hasher::new();
    let versions = keys::region_range(REVS, b"", None);
    for_each_page(snapshot, versions, 1024, |page| {
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
pub(super) async fn hash<S: Snapshot>(snapshot: &S) -> KvResult<u32> {
    let mut crc = crc32fast::Hasher::new();
    for_each_page(snapshot, keys::data_range(), 1024, |page| {
        for (k, v) in page {
            crc.update(k);
            crc.update(v);
        }
        true
    })
    .await?;
    Ok(crc.finalize())
}
