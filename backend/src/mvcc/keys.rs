//! How etcd's keyspace is laid out in the engine's keyspace.
//!
//! Three disjoint regions, told apart by their first byte:
//! - `META` holds Engram's own durable counters (the current and compacted revisions);
//! - `INDEX` holds one entry per user key: the revision of its latest version and whether that
//!   version is live. Writers guard their batches with it (compare-and-swap), and counts at the
//!   current revision read only these small entries;
//! - `REVS` holds every version of every key, newest first: `enc(key) ++ !revision`, so the
//!   latest version of a key is the first entry at or after `enc(key)`: one forward seek.
//!
//! - `LOG` lists what each revision changed, in op order: `revision ++ op index → user key`.
//!   Watchers replay history from it without scanning unrelated keys.
//! - `LEASE` holds each live lease's TTL (`id → ttl`), and `LEASE_KEYS` the keys attached to it
//!   (`id ++ key → ""`), so revoking a lease finds its keys without scanning the keyspace.
//!
//! - `AUTH` holds users, roles and permissions (see `crate::auth::records`), outside etcd's
//!   keyspace and its history too.
//! - `BRAIN` holds the members' own records, outside etcd's keyspace and its history: the
//!   election term (the fencing token every leader batch is conditioned on), the leader record
//!   and each member's registration. Hashes and backups leave it out: it describes who serves
//!   the data, not the data.
//!
//! `enc` is an order-preserving, prefix-free escape of raw key bytes (`0x00` becomes
//! `0x00 0xFF`, and `0x00 0x01` terminates), so user keys may contain any byte, byte ranges of
//! user keys map to byte ranges of encoded keys, and no user key is a prefix of another's entries.

use crate::engine::KeyRange;
use bytes::{BufMut, Bytes, BytesMut};

pub const META: u8 = 0x01;
pub const INDEX: u8 = 0x02;
pub const REVS: u8 = 0x03;
pub const LOG: u8 = 0x04;
pub const LEASE: u8 = 0x05;
pub const LEASE_KEYS: u8 = 0x06;
pub const BRAIN: u8 = 0x07;
/// Users, roles and permissions (see `auth::records`); like `BRAIN`, outside `data_range`.
pub const AUTH: u8 = 0x08;

const ESCAPE: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

/// The durable current revision.
pub fn meta_revision() -> Bytes {
    Bytes::from_static(b"\x01revision")
}

/// The election term: bumped by every leader takeover, and required unchanged by every batch a
/// leader writes, so a deposed leader can never commit.
pub fn brain_term() -> Bytes {
    Bytes::from_static(b"\x07term")
}

/// Who leads, and how recently it renewed its lease.
pub fn brain_leader() -> Bytes {
    Bytes::from_static(b"\x07leader")
}

/// The registration of member `id` (its name and client URLs).
pub fn brain_member(id: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(15);
    buf.put_slice(b"\x07member/");
    buf.put_u64(id);
    buf.freeze()
}

/// Every member's registration.
pub fn brain_members() -> KeyRange {
    KeyRange::new(
        Bytes::from_static(b"\x07member/"),
        Some(Bytes::from_static(b"\x07member0")),
    )
}

/// Everything of etcd's keyspace and Engram's bookkeeping of it: all regions before `BRAIN`.
pub fn data_range() -> KeyRange {
    KeyRange::new(Bytes::new(), Some(Bytes::from_static(&[BRAIN])))
}

/// The durable compacted revision.
pub fn meta_compacted() -> Bytes {
    Bytes::from_static(b"\x01compacted")
}

/// The revision up to which compaction has physically finished.
pub fn meta_compaction_done() -> Bytes {
    Bytes::from_static(b"\x01compaction_done")
}

fn encode_into(buf: &mut BytesMut, key: &[u8]) {
    let mut rest = key;
    while let Some(at) = memchr::memchr(0, rest) {
        buf.put_slice(&rest[..=at]);
        buf.put_u8(ESCAPE);
        rest = &rest[at + 1..];
    }
    buf.put_slice(rest);
    buf.put_u8(0);
    buf.put_u8(TERMINATOR);
}

fn encoded(region: u8, key: &[u8], extra: usize) -> BytesMut {
    let zeros = memchr::memchr_iter(0, key).count();
    let mut buf = BytesMut::with_capacity(1 + key.len() + zeros + 2 + extra);
    buf.put_u8(region);
    encode_into(&mut buf, key);
    buf
}

/// The index entry of `key`.
pub fn index_key(key: &[u8]) -> Bytes {
    encoded(INDEX, key, 0).freeze()
}

/// The entry of `key`'s version written at `revision`.
pub fn revision_key(key: &[u8], revision: i64) -> Bytes {
    let mut buf = encoded(REVS, key, 8);
    buf.put_u64(!(revision as u64));
    buf.freeze()
}

/// `encoded` (the region byte and encoded key an entry of any region starts with) moved to
/// `region`, with room for `extra` more bytes.
fn moved(region: u8, encoded: &[u8], extra: usize) -> BytesMut {
    let rest = encoded.get(1..).unwrap_or_default();
    let mut buf = BytesMut::with_capacity(1 + rest.len() + extra);
    buf.put_u8(region);
    buf.put_slice(rest);
    buf
}

/// `encoded` (the region byte and encoded key an entry of any region starts with) in `region`.
pub fn in_region(region: u8, encoded: &[u8]) -> Bytes {
    moved(region, encoded, 0).freeze()
}

/// The `REVS` key of revision `revision` of the key whose `INDEX` entry is `index_entry`
/// (the same encoded key in the other region), or `None` if `index_entry` is not one.
pub fn revision_key_of_index(index_entry: &[u8], revision: i64) -> Option<Bytes> {
    if index_entry.first() != Some(&INDEX) || !index_entry.ends_with(&[0, TERMINATOR]) {
        return None;
    }
    let mut buf = moved(REVS, index_entry, 8);
    buf.put_u64(!(revision as u64));
    Some(buf.freeze())
}

/// All versions of `key`, newest first, from `revision` down (`revision = i64::MAX`: all).
pub fn versions_of(key: &[u8], at_or_below: i64) -> KeyRange {
    let start = revision_key(key, at_or_below);
    let mut end = encoded(REVS, key, 0);
    // The terminator's last byte + 1: past every entry of this key, before any other key.
    let last = end.len() - 1;
    end[last] = TERMINATOR + 1;
    KeyRange::new(start, Some(end.freeze()))
}

/// The engine range covering the entries of every user key in `[start, end)` in `region`;
/// `end = None` is unbounded.
pub fn region_range(region: u8, start: &[u8], end: Option<&[u8]>) -> KeyRange {
    let start = encoded(region, start, 0).freeze();
    let end = match end {
        Some(end) => encoded(region, end, 0).freeze(),
        None => Bytes::copy_from_slice(&[region + 1]),
    };
    KeyRange::new(start, Some(end))
}

/// The `LOG` entry of the `index`-th change of `revision`.
pub fn log_key(revision: i64, index: u32) -> Bytes {
    let mut buf = BytesMut::with_capacity(13);
    buf.put_u8(LOG);
    buf.put_u64(revision as u64);
    buf.put_u32(index);
    buf.freeze()
}

/// `LOG` entries of revisions in `[from, to)`.
pub fn log_range(from: i64, to: i64) -> KeyRange {
    KeyRange::new(log_key(from.max(0), 0), Some(log_key(to.max(0), 0)))
}

/// The record of lease `id`.
pub fn lease_key(id: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(9);
    buf.put_u8(LEASE);
    buf.put_i64(id);
    buf.freeze()
}

/// Every lease record.
pub fn lease_records() -> KeyRange {
    KeyRange::new(
        Bytes::from_static(&[LEASE]),
        Some(Bytes::from_static(&[LEASE + 1])),
    )
}

/// The entry saying `key` is attached to lease `id`.
pub fn lease_key_entry(id: i64, key: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(9 + key.len());
    buf.put_u8(LEASE_KEYS);
    buf.put_i64(id);
    buf.put_slice(key);
    buf.freeze()
}

/// The entries of every key attached to lease `id`.
pub fn lease_keys_of(id: i64) -> KeyRange {
    let start = lease_key_entry(id, b"");
    let end = match id.checked_add(1) {
        Some(next) => lease_key_entry(next, b""),
        None => Bytes::from_static(&[LEASE_KEYS + 1]),
    };
    KeyRange::new(start, Some(end))
}

/// Splits a `LOG` entry key into (revision, op index).
pub fn decode_log_key(entry: &[u8]) -> Option<(i64, u32)> {
    if entry.len() != 13 || entry[0] != LOG {
        return None;
    }
    let rev = u64::from_be_bytes(entry[1..9].try_into().ok()?) as i64;
    let index = u32::from_be_bytes(entry[9..13].try_into().ok()?);
    Some((rev, index))
}

/// Splits a region entry into (user key, rest after the terminator).
pub fn decode(entry: &[u8]) -> Option<(Bytes, &[u8])> {
    let body = entry.get(1..)?;
    // Keys rarely hold a 0x00 byte: the first one found is usually the terminator, and the key
    // is a single copy.
    let first = memchr::memchr(0, body)?;
    if body.get(first + 1) == Some(&TERMINATOR) {
        return Some((Bytes::copy_from_slice(&body[..first]), &body[first + 2..]));
    }
    let mut key = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = memchr::memchr(0, rest) {
        key.extend_from_slice(&rest[..at]);
        match rest.get(at + 1) {
            Some(&ESCAPE) => key.push(0),
            Some(&TERMINATOR) => return Some((Bytes::from(key), &rest[at + 2..])),
            _ => return None,
        }
        rest = &rest[at + 2..];
    }
    None
}

/// Splits a `REVS` entry into its encoded key (the entry's bytes up to and including the
/// terminator: equal for two entries exactly when their user keys are equal, as the encoding
/// is prefix-free) and its revision, without decoding or copying the key.
pub fn split_revision_key(entry: &[u8]) -> Option<(&[u8], i64)> {
    let at = entry.len().checked_sub(8)?;
    let (encoded, rev) = entry.split_at(at);
    if encoded.first() != Some(&REVS) || !encoded.ends_with(&[0, TERMINATOR]) {
        return None;
    }
    let rev: [u8; 8] = rev.try_into().ok()?;
    Some((encoded, !u64::from_be_bytes(rev) as i64))
}

/// Splits a `REVS` entry into (user key, revision).
pub fn decode_revision_key(entry: &[u8]) -> Option<(Bytes, i64)> {
    let (key, rest) = decode(entry)?;
    let rev: [u8; 8] = rest.try_into().ok()?;
    Some((key, !u64::from_be_bytes(rev) as i64))
}

/// The encoded prefix shared by all of `key`'s `REVS` entries (to tell a key's entries apart
/// without decoding them).
pub fn revision_prefix(key: &[u8]) -> Bytes {
    encoded(REVS, key, 0).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_entry_names_the_same_key_in_revs() {
        for key in [&b""[..], b"a", b"a\0b", b"\0", b"\xff\x01"] {
            assert_eq!(
                revision_key_of_index(&index_key(key), 42),
                Some(revision_key(key, 42))
            );
            assert_eq!(in_region(INDEX, &revision_prefix(key)), index_key(key));
        }
        assert_eq!(revision_key_of_index(&revision_prefix(b"a"), 1), None);
        assert_eq!(revision_key_of_index(b"\x02a", 1), None);
    }

    #[test]
    fn encoding_preserves_byte_order_and_is_prefix_free() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0",
            b"\0\x01",
            b"a",
            b"a\0",
            b"a\0b",
            b"a\x01",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\xff",
        ];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            let (a, b) = (index_key(w[0]), index_key(w[1]));
            assert!(a < b, "{:?} !< {:?}", w[0], w[1]);
            assert!(!b.starts_with(&a), "{a:?} is a prefix of {b:?}");
            // every version of the smaller key sorts before every version of the larger one
            assert!(revision_key(w[0], 1) < revision_key(w[1], i64::MAX));
        }
        for k in keys {
            assert_eq!(decode(&index_key(k)).unwrap().0, k);
            let entry = revision_key(k, 42);
            let (encoded, rev) = split_revision_key(&entry).unwrap();
            assert_eq!((encoded, rev), (&revision_prefix(k)[..], 42));
            assert_eq!(
                decode_revision_key(&revision_key(k, 42)).unwrap(),
                (Bytes::copy_from_slice(k), 42)
            );
        }
    }

    #[test]
    fn newer_revisions_sort_first() {
        assert!(revision_key(b"k", 10) < revision_key(b"k", 9));
        let versions = versions_of(b"k", 9);
        assert!(versions.contains(&revision_key(b"k", 9)));
        assert!(versions.contains(&revision_key(b"k", 1)));
        assert!(!versions.contains(&revision_key(b"k", 10)));
        assert!(!versions.contains(&revision_key(b"k\0", 1)));
        assert!(!versions.contains(&revision_key(b"j", 1)));
    }

    #[test]
    fn region_ranges_match_user_ranges() {
        let r = region_range(REVS, b"a", Some(b"b"));
        assert!(r.contains(&revision_key(b"a", 5)));
        assert!(r.contains(&revision_key(b"a\0", 5)));
        assert!(r.contains(&revision_key(b"az", 5)));
        assert!(!r.contains(&revision_key(b"b", 5)));
        let all = region_range(REVS, b"a", None);
        assert!(all.contains(&revision_key(b"\xff\xff", 1)));
        assert!(!all.contains(&index_key(b"z")));
    }
}
