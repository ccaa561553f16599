//! etcd's own data, as etcd 3.5 keeps it in a bbolt file (its data directory's `member/snap/db`
//! and the backups `etcdctl snapshot save` writes), and Engram's store seen as that data: the
//! way a cluster moves from etcd to Engram and back with every revision unchanged, and the
//! HashKV that proves it.
//!
//! etcd's `key` bucket holds one row per change: the key is the revision it was made at, 8
//! bytes of main revision (big-endian), `_`, 8 bytes of sub revision (the change's position in
//! its revision), and a `t` for a deletion; the value is the marshalled `mvccpb.KeyValue` (a
//! deletion's holds only the key). Engram's `LOG` region is the same list, in the same order
//! (revision, position: the events of each revision in the order etcd makes them), and its
//! `REVS` region holds each row's `KeyValue`: [`rows`] reads Engram's store as that bucket.
//! Compaction leaves the same rows in both: at or below the compacted revision, only the
//! newest version of each key that still exists there.
//!
//! The `meta` bucket holds the compacted revision (`finishedCompactRev`, and
//! `scheduledCompactRev` while a compaction runs); the current revision is the last row's, or
//! the compacted one if that is later. The `lease` bucket holds each lease's id and TTL; keys
//! are attached to the lease their newest row names. The `auth`, `authUsers` and `authRoles`
//! buckets hold users, roles and the enabled flag: [`auth`] moves them to and from Engram's
//! `AUTH` region.

pub mod auth;
pub mod export;
pub mod hash;
pub mod import;
mod rows;

use crate::bolt::BoltError;
use crate::engine::EngineError;
use crate::kv::KvError;
use bytes::Bytes;
use etcdpb::mvccpb::KeyValue;
use prost::Message;

/// Why an etcd database could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EtcdDbError {
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error("SHA-256 checksum mismatch: the snapshot file is corrupt")]
    Checksum,
    #[error("not an etcd database: {0}")]
    Invalid(String),
    #[error("the target store is not empty")]
    NotEmpty,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub use rows::{Row, RowPages};

/// etcd 3.5's buckets, in the byte order bbolt keeps them.
pub const BUCKETS: [&[u8]; 10] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"key",
    b"lease",
    b"members",
    b"members_removed",
    b"meta",
];
pub const KEY_BUCKET: &[u8] = b"key";
pub const LEASE_BUCKET: &[u8] = b"lease";
pub const META_BUCKET: &[u8] = b"meta";

pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const TERM: &[u8] = b"term";

/// A row's key in the `key` bucket: `main`, `_`, `sub` (big-endian), and `t` for a deletion.
pub fn row_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// (main, sub, tombstone) of a `key` bucket key.
pub fn parse_row_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// A revision as `meta` stores the compacted ones: [`row_key`] with sub revision 0.
pub fn revision_bytes(main: i64) -> Vec<u8> {
    row_key(main, 0, false)
}

/// A row's value: the `KeyValue` as etcd marshals it (fields in order, zero values left out;
/// prost and etcd's gogo-protobuf agree on both). A deletion's holds only the key.
pub fn row_value(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    if tombstone {
        KeyValue {
            key: kv.key.clone(),
            ..Default::default()
        }
        .encode_to_vec()
    } else {
        kv.encode_to_vec()
    }
}

/// A lease as etcd's `lease` bucket holds it (`leasepb.Lease`).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A lease's key in the `lease` bucket.
pub fn lease_key(id: i64) -> Bytes {
    Bytes::copy_from_slice(&id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes read off a real etcd 3.5.1 database: a put of `a` = `11` at revision 4 (version
    /// 2, created at 2), and the deletion of `b`.
    #[test]
    fn rows_are_encoded_as_etcd_stores_them() {
        let kv = KeyValue {
            key: Bytes::from_static(b"a"),
            create_revision: 2,
            mod_revision: 4,
            version: 2,
            value: Bytes::from_static(b"11"),
            lease: 0,
        };
        assert_eq!(
            row_value(&kv, false),
            [
                0x0a, 0x01, b'a', 0x10, 0x02, 0x18, 0x04, 0x20, 0x02, 0x2a, 0x02, b'1', b'1'
            ]
        );
        let deleted = KeyValue {
            key: Bytes::from_static(b"b"),
            mod_revision: 6,
            ..Default::default()
        };
        assert_eq!(row_value(&deleted, true), [0x0a, 0x01, b'b']);
        let key = row_key(4, 0, false);
        assert_eq!(key, b"\0\0\0\0\0\0\0\x04_\0\0\0\0\0\0\0\0");
        assert_eq!(parse_row_key(&key), Some((4, 0, false)));
        assert_eq!(parse_row_key(&row_key(12, 2, true)), Some((12, 2, true)));
        assert_eq!(parse_row_key(b"short"), None);
        // ID 0x1a5ea24ec9a55d04, TTL 600, as etcd stored it.
        let lease = LeaseRecord {
            id: 0x1a5e_a24e_c9a5_5d04,
            ttl: 600,
            remaining_ttl: 0,
        };
        assert_eq!(
            lease.encode_to_vec(),
            [
                0x08, 0x84, 0xba, 0x95, 0xcd, 0xec, 0xc9, 0xa8, 0xaf, 0x1a, 0x10, 0xd8, 0x04
            ]
        );
    }
}
