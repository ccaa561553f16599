//! What operators ask of the store: the hash of its whole keyspace (HashKV, the one etcd's
//! tools compare across members, is etcd's own: see `crate::etcd::hash`).

use crate::engine::{Snapshot, for_each_page};
use crate::kv::KvResult;
use crate::mvcc::keys;

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
