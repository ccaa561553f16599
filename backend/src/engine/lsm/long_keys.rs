//! Keys longer than the LSM tree accepts.
//!
//! fjall keys are at most 64 KiB; etcd accepts keys up to its request size. A longer key is
//! kept in a bucket: the entry `key[..DIRECT] ++ 0x00` holds, in order, every long key that
//! starts with the same `DIRECT` bytes, with its value. No direct key has that length, and the
//! bucket sorts exactly where its keys would (after `key[..DIRECT]`, before any other key),
//! so scans stay in key order by expanding buckets in place.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

/// Keys up to this length are stored as they are.
pub const DIRECT: usize = 65_000;

pub fn is_long(key: &[u8]) -> bool {
    key.len() > DIRECT
}

/// Where a long key's bucket is stored.
pub fn bucket_of(key: &[u8]) -> Vec<u8> {
    let mut bucket = key[..DIRECT.min(key.len())].to_vec();
    bucket.push(0);
    bucket
}

/// Whether a stored key is a bucket.
pub fn is_bucket(stored: &[u8]) -> bool {
    stored.len() == DIRECT + 1
}

/// The long keys of one bucket, by full key.
#[derive(Debug, Default, PartialEq)]
pub struct Bucket(pub BTreeMap<Bytes, Bytes>);

impl Bucket {
    pub fn decode(stored_key: &[u8], mut value: &[u8]) -> Option<Bucket> {
        let prefix = stored_key.get(..DIRECT)?;
        let mut items = BTreeMap::new();
        while value.has_remaining() {
            if value.remaining() < 4 {
                return None;
            }
            let len = value.get_u32() as usize;
            let suffix = value.get(..len)?;
            value.advance(len);
            if value.remaining() < 4 {
                return None;
            }
            let vlen = value.get_u32() as usize;
            let v = value.get(..vlen)?;
            value.advance(vlen);
            let mut key = BytesMut::with_capacity(DIRECT + len);
            key.put_slice(prefix);
            key.put_slice(suffix);
            items.insert(key.freeze(), Bytes::copy_from_slice(v));
        }
        Some(Bucket(items))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in &self.0 {
            let suffix = &key[DIRECT..];
            out.put_u32(suffix.len() as u32);
            out.put_slice(suffix);
            out.put_u32(value.len() as u32);
            out.put_slice(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_and_sort_where_their_keys_would() {
        let long = |tail: &[u8]| {
            let mut k = vec![b'k'; DIRECT];
            k.extend_from_slice(tail);
            Bytes::from(k)
        };
        let mut bucket = Bucket::default();
        bucket.0.insert(long(b"b"), Bytes::from_static(b"2"));
        bucket.0.insert(long(b"a\0"), Bytes::from_static(b""));
        let stored = bucket_of(&long(b"a"));
        assert!(is_bucket(&stored));
        assert_eq!(Bucket::decode(&stored, &bucket.encode()), Some(bucket));
        // The bucket sorts after the direct key equal to its prefix and before the next one.
        let prefix = vec![b'k'; DIRECT];
        assert!(prefix < stored);
        let mut next = prefix.clone();
        *next.last_mut().unwrap() += 1;
        assert!(stored < next);
        assert!(!is_long(&prefix) && is_long(&long(b"x")));
    }
}
