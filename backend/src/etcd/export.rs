//! Engram's store written as an etcd 3.5 database: what `etcdctl snapshot save` receives from
//! Engram, which `etcdutl snapshot restore` turns into a data directory a real etcd starts on,
//! with the same keys, history, revisions, leases, users, roles and auth revision.
//!
//! The store is read from one snapshot in the engine and the file written in one pass on a
//! thread of its own (bbolt's pages are plain file writes), a page of rows at a time: memory
//! stays small whatever the size of the store.

use super::auth::{AUTH_BUCKET, ROLES_BUCKET, USERS_BUCKET};
use super::rows::RowPages;
use super::{
    CONSISTENT_INDEX, EtcdDbError, FINISHED_COMPACT, KEY_BUCKET, LEASE_BUCKET, LeaseRecord,
    META_BUCKET, SCHEDULED_COMPACT, TERM, lease_key, revision_bytes, row_key, row_value,
};
use crate::bolt::BoltWriter;
use crate::engine::{Snapshot, for_each_page};
use crate::kv::ReadRevisions;
use crate::mvcc::record::decode_counter;
use crate::mvcc::{Version, View, keys};
use prost::Message;
use std::fs::File;
use std::sync::mpsc;

/// The cluster version etcd 3.5 records in its `cluster` bucket.
const CLUSTER_VERSION: &[u8] = b"3.5.0";

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Bytes of the database.
    pub size: u64,
    /// Rows of the `key` bucket.
    pub rows: u64,
    pub leases: u64,
}

/// One step for the thread writing the file.
enum Write {
    Bucket(&'static [u8]),
    Put(Vec<u8>, Vec<u8>),
    End,
}

/// Writes `snapshot`, read at `revs`, into `file` as an etcd database.
pub async fn export<S: Snapshot>(
    snapshot: &S,
    revs: ReadRevisions,
    file: File,
) -> Result<(File, Exported), EtcdDbError> {
    let (tx, rx) = mpsc::sync_channel::<Vec<Write>>(16);
    let writer = tokio::task::spawn_blocking(move || -> Result<(File, u64), EtcdDbError> {
        let mut bolt = BoltWriter::new(file)?;
        for batch in rx {
            for step in batch {
                match step {
                    Write::Bucket(name) => bolt.begin_bucket(name)?,
                    Write::Put(key, value) => bolt.put(&key, &value)?,
                    Write::End => bolt.end_bucket()?,
                }
            }
        }
        Ok(bolt.finish()?)
    });
    let read = read_store(snapshot, revs, &tx).await;
    drop(tx);
    let (file, size) = match writer.await {
        Ok(written) => written?,
        Err(_) => return Err(EtcdDbError::Invalid("the snapshot writer panicked".into())),
    };
    let (rows, leases) = read?;
    Ok((file, Exported { size, rows, leases }))
}

/// Sends every bucket of the store, in bbolt's order, to the writer. Returns the rows and
/// leases sent.
async fn read_store<S: Snapshot>(
    snapshot: &S,
    revs: ReadRevisions,
    tx: &mpsc::SyncSender<Vec<Write>>,
) -> Result<(u64, u64), EtcdDbError> {
    let send = |batch: Vec<Write>| {
        tx.send(batch)
            .map_err(|_| EtcdDbError::Invalid("the snapshot writer stopped".into()))
    };
    let bucket = |name: &'static [u8], entries: Vec<(&[u8], Vec<u8>)>| {
        let mut batch = vec![Write::Bucket(name)];
        batch.extend(entries.into_iter().map(|(k, v)| Write::Put(k.to_vec(), v)));
        batch.push(Write::End);
        batch
    };
    send(bucket(b"alarm", vec![]))?;
    // From the same engine snapshot as the keys: the auth state of the same moment.
    let auth = super::auth::to_etcd(snapshot).await?;
    for (name, entries) in [
        (AUTH_BUCKET, auth.auth),
        (ROLES_BUCKET, auth.roles),
        (USERS_BUCKET, auth.users),
    ] {
        let mut batch = vec![Write::Bucket(name)];
        batch.extend(entries.into_iter().map(|(k, v)| Write::Put(k, v)));
        batch.push(Write::End);
        send(batch)?;
    }
    send(bucket(
        b"cluster",
        vec![(&b"clusterVersion"[..], CLUSTER_VERSION.to_vec())],
    ))?;

    // key: every row etcd would hold after compacting at the compacted revision.
    send(vec![Write::Bucket(KEY_BUCKET)])?;
    let view = View::new(snapshot);
    let mut rows = 0u64;
    let mut pages = RowPages::new(revs.current);
    while let Some(page) = pages.next(snapshot).await? {
        let mut batch = Vec::with_capacity(page.len());
        for row in page {
            if !row.kept_at(&view, revs.compacted).await? {
                continue;
            }
            let (key, value) = match &row.version {
                Some(Version::Put(kv)) => (row_key(row.main, row.sub, false), row_value(kv, false)),
                Some(Version::Tombstone { key, .. }) => {
                    let kv = etcdpb::mvccpb::KeyValue {
                        key: key.clone(),
                        ..Default::default()
                    };
                    (row_key(row.main, row.sub, true), row_value(&kv, true))
                }
                None => continue,
            };
            batch.push(Write::Put(key, value));
            rows += 1;
        }
        send(batch)?;
    }
    send(vec![Write::End])?;

    let mut leases = Vec::new();
    for_each_page(snapshot, keys::lease_records(), 1024, |page| {
        for (k, v) in page {
            if let (Some(id), Some(ttl)) = (k.get(1..9), decode_counter(v)) {
                let id = i64::from_be_bytes(id.try_into().unwrap_or_default());
                leases.push((id, ttl));
            }
        }
        true
    })
    .await?;
    let lease_count = leases.len() as u64;
    // Lease ids sort as etcd's keys do: big-endian, so the ids' order is the keys' order for
    // the non-negative ids leases have.
    leases.sort_unstable_by_key(|(id, _)| lease_key(*id));
    let mut batch = vec![Write::Bucket(LEASE_BUCKET)];
    for (id, ttl) in leases {
        let record = LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        };
        batch.push(Write::Put(lease_key(id).to_vec(), record.encode_to_vec()));
    }
    batch.push(Write::End);
    send(batch)?;

    send(bucket(b"members", vec![]))?;
    send(bucket(b"members_removed", vec![]))?;
    // etcdutl snapshot restore rewrites the consistent index and the term for the cluster it
    // makes; etcd needs the bucket to hold them.
    let mut meta = vec![
        (
            CONSISTENT_INDEX,
            (revs.current as u64).to_be_bytes().to_vec(),
        ),
        (TERM, 1u64.to_be_bytes().to_vec()),
    ];
    if revs.compacted > 0 {
        meta.push((FINISHED_COMPACT, revision_bytes(revs.compacted)));
        meta.push((SCHEDULED_COMPACT, revision_bytes(revs.compacted)));
    }
    meta.sort();
    send(bucket(META_BUCKET, meta))?;
    Ok((rows, lease_count))
}
