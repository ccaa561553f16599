//! The values stored under `REVS` and `INDEX` entries.
//!
//! A version record starts with a kind byte, so a tombstone is told apart from a put by
//! structure, never by reserving a user value: any value, even one that looks like a marker,
//! round-trips.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use etcdpb::mvccpb::KeyValue;

const PUT: u8 = 1;
const TOMBSTONE: u8 = 2;
const PUT_HEADER: usize = 1 + 8 + 8 + 8;

/// `kv` with bytes of its own. Keys and values decoded from a request are slices of the buffer
/// the request arrived in: whatever outlives the request (the watch window's events, the
/// writer's remembered versions) keeps its own copy, or it would keep that whole buffer alive.
pub fn owned_kv(kv: &KeyValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(&kv.key),
        value: Bytes::copy_from_slice(&kv.value),
        ..kv.clone()
    }
}

/// One version of a key, as read back from the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Version {
    /// The key was written; `KeyValue` carries key, value, and all revisions.
    Put(KeyValue),
    /// The key was deleted at `mod_revision`.
    Tombstone { key: Bytes, mod_revision: i64 },
}

impl Version {
    pub fn mod_revision(&self) -> i64 {
        match self {
            Version::Put(kv) => kv.mod_revision,
            Version::Tombstone { mod_revision, .. } => *mod_revision,
        }
    }

    pub fn live(&self) -> Option<&KeyValue> {
        match self {
            Version::Put(kv) => Some(kv),
            Version::Tombstone { .. } => None,
        }
    }

    pub fn into_live(self) -> Option<KeyValue> {
        match self {
            Version::Put(kv) => Some(kv),
            Version::Tombstone { .. } => None,
        }
    }

    /// The engine value of this version's `REVS` entry.
    pub fn encode(&self) -> Bytes {
        match self {
            Version::Put(kv) => {
                let mut buf = BytesMut::with_capacity(PUT_HEADER + kv.value.len());
                buf.put_u8(PUT);
                buf.put_i64(kv.create_revision);
                buf.put_i64(kv.version);
                buf.put_i64(kv.lease);
                buf.put_slice(&kv.value);
                buf.freeze()
            }
            Version::Tombstone { .. } => Bytes::from_static(&[TOMBSTONE]),
        }
    }

    /// Rebuilds a version from its entry's key parts and value (the value is not copied).
    pub fn decode(key: Bytes, mod_revision: i64, mut value: Bytes) -> Option<Version> {
        match *value.first()? {
            PUT if value.len() >= PUT_HEADER => {
                value.advance(1);
                let create_revision = value.get_i64();
                let version = value.get_i64();
                let lease = value.get_i64();
                Some(Version::Put(KeyValue {
                    key,
                    create_revision,
                    mod_revision,
                    version,
                    value,
                    lease,
                }))
            }
            TOMBSTONE => Some(Version::Tombstone { key, mod_revision }),
            _ => None,
        }
    }

    /// The `INDEX` entry value that names this version as the key's latest.
    pub fn index_value(&self) -> Bytes {
        encode_index(self.mod_revision(), self.live().is_some())
    }
}

/// `INDEX` entry value: latest mod revision and whether the key is live there.
pub fn encode_index(mod_revision: i64, live: bool) -> Bytes {
    let mut buf = BytesMut::with_capacity(9);
    buf.put_i64(mod_revision);
    buf.put_u8(live as u8);
    buf.freeze()
}

/// Parses an `INDEX` entry value into (latest mod revision, live).
pub fn decode_index(mut value: &[u8]) -> Option<(i64, bool)> {
    if value.len() != 9 {
        return None;
    }
    let rev = value.get_i64();
    Some((rev, value.get_u8() == 1))
}

/// Durable counters in `META` are big-endian i64.
pub fn encode_counter(value: i64) -> Bytes {
    Bytes::copy_from_slice(&value.to_be_bytes())
}

pub fn decode_counter(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_looks_like_a_tombstone_round_trips() {
        for value in [&b""[..], &[TOMBSTONE], &[PUT], b"\x02\x00\x00"] {
            let kv = KeyValue {
                key: Bytes::from_static(b"k"),
                create_revision: 3,
                mod_revision: 7,
                version: 2,
                value: Bytes::copy_from_slice(value),
                lease: 99,
            };
            let v = Version::Put(kv);
            assert_eq!(
                Version::decode(Bytes::from_static(b"k"), 7, v.encode()),
                Some(v)
            );
        }
        let t = Version::Tombstone {
            key: Bytes::from_static(b"k"),
            mod_revision: 9,
        };
        assert_eq!(
            Version::decode(Bytes::from_static(b"k"), 9, t.encode()),
            Some(t)
        );
    }

    #[test]
    fn index_values_round_trip() {
        assert_eq!(decode_index(&encode_index(12, true)), Some((12, true)));
        assert_eq!(decode_index(&encode_index(13, false)), Some((13, false)));
        assert_eq!(decode_index(b"short"), None);
    }
}
