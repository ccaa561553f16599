//! HashKV as etcd 3.5 computes it (`mvcc.(*store).HashByRev`, etcd 3.5.1), so that `etcdctl
//! endpoint hashkv` prints the same number for the same history on etcd and on Engram.
//!
//! A CRC-32C over the bucket name `key`, then every row of the `key` bucket up to the
//! revision asked for, its key bytes then its value bytes. Rows at or below the compacted
//! revision count only if they are the newest version of their key at the revision asked for
//! (etcd's `kvindex.Keep(rev)`), or, when no key exists at that revision at all, if they are
//! what compaction kept (the newest version of a key that still existed at the compacted
//! revision). Later etcd releases changed that filter; 3.5.1 is the reference here.

use super::rows::RowPages;
use super::{row_key, row_value};
use crate::engine::Snapshot;
use crate::kv::{KvError, KvResult, ReadRevisions};
use crate::mvcc::{Bounds, Version, View};

/// What HashKV answers: the hash, the current revision (etcd's header revision, whatever
/// revision was asked for) and the compacted revision (-1 before any compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    pub current: i64,
    pub compacted: i64,
}

/// HashKV of `snapshot` at `revision` (0: the current one). As etcd: a revision at or below
/// the compacted one fails as compacted (the compacted revision itself too), a future one as
/// future, and a negative one hashes nothing.
pub async fn hash_kv<S: Snapshot>(
    snapshot: &S,
    revs: ReadRevisions,
    revision: i64,
) -> KvResult<HashKv> {
    let ReadRevisions { current, compacted } = revs;
    if revision > 0 && revision <= compacted {
        return Err(KvError::Compacted);
    }
    if revision > current {
        return Err(KvError::FutureRevision);
    }
    let at = if revision == 0 { current } else { revision };
    let mut crc = crc32c::crc32c(b"key");
    let answer = |hash| HashKv {
        hash,
        current,
        compacted,
    };
    if at < 1 {
        return Ok(answer(crc));
    }
    let view = View::new(snapshot);
    let everything = Bounds {
        start: b"\0",
        end: None,
    };
    // etcd's Keep(rev) is empty when no key exists at `at`: then every row compaction kept is
    // hashed.
    let none_exists = compacted >= 1 && view.scan(everything, at, Some(1), false).await?.is_empty();
    let mut pages = RowPages::new(at);
    while let Some(rows) = pages.next(snapshot).await? {
        for row in rows {
            let Some(version) = &row.version else {
                continue;
            };
            if row.main <= compacted {
                let keep_at = if none_exists { compacted } else { at };
                if !row.is_newest_put_at(&view, keep_at).await? {
                    continue;
                }
            }
            let (kv, tombstone) = match version {
                Version::Put(kv) => (kv.clone(), false),
                Version::Tombstone { key, mod_revision } => (
                    etcdpb::mvccpb::KeyValue {
                        key: key.clone(),
                        mod_revision: *mod_revision,
                        ..Default::default()
                    },
                    true,
                ),
            };
            crc = crc32c::crc32c_append(crc, &row_key(row.main, row.sub, tombstone));
            crc = crc32c::crc32c_append(crc, &row_value(&kv, tombstone));
        }
    }
    Ok(answer(crc))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_history_hashes_the_bucket_name_alone() {
        // etcd 3.5.1 answers 1084519789 for an empty store, revision 1 and negative revisions.
        assert_eq!(crc32c::crc32c(b"key"), 1_084_519_789);
    }
}
