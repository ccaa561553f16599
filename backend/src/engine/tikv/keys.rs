//! Engram's keys inside a shared TiKV keyspace.
//!
//! Several Engram clusters (and other tenants) may share one TiKV cluster, so every engine key
//! is stored under the cluster's `--key-prefix`: TiKV key = prefix ++ engine key. Concatenation
//! preserves order, so an engine range maps to one contiguous TiKV range, and a range that is
//! open at the end (`end: None`) stops where this prefix's keys stop, never in a neighbour's.

use crate::engine::KeyRange;
use std::ops::Bound;
use tikv_client::{BoundRange, Key};

/// The TiKV key that stores engine key `key`.
pub fn encode(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    out
}

/// The engine key stored at TiKV key `stored`, or None if `stored` lies outside the prefix
/// (which a correctly bounded read never returns).
pub fn decode<'a>(prefix: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    stored.strip_prefix(prefix)
}

/// The smallest key greater than every key that starts with `prefix`: the exclusive end of the
/// prefix's keyspace. None when there is no such key (an empty prefix, or one of only `0xff`
/// bytes): the keyspace then runs to the end of TiKV's.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&byte| byte != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// The TiKV bounds `[start, end)` of an engine range (`end` None: unbounded), or None when the
/// range is empty (its end is not after its start).
pub fn bounds(prefix: &[u8], range: &KeyRange) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    if range.end.as_ref().is_some_and(|end| *end <= range.start) {
        return None;
    }
    let start = encode(prefix, &range.start);
    let end = match &range.end {
        Some(end) => Some(encode(prefix, end)),
        None => prefix_end(prefix),
    };
    Some((start, end))
}

/// tikv-client's range for TiKV bounds. Built from explicit `Bound`s: its conversions from
/// Rust ranges treat a trailing `0x00` byte specially, and Engram's keys may end in one.
pub fn bound_range(start: Vec<u8>, end: Option<Vec<u8>>) -> BoundRange {
    let upper = match end {
        Some(end) => Bound::Excluded(Key::from(end)),
        None => Bound::Unbounded,
    };
    BoundRange::new(Bound::Included(Key::from(start)), upper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn range(start: &[u8], end: Option<&[u8]>) -> KeyRange {
        KeyRange::new(
            Bytes::copy_from_slice(start),
            end.map(Bytes::copy_from_slice),
        )
    }

    #[test]
    fn keys_round_trip_under_the_prefix() {
        let stored = encode(b"cluster-a/", b"\x00key\xff");
        assert_eq!(stored, b"cluster-a/\x00key\xff".to_vec());
        assert_eq!(decode(b"cluster-a/", &stored), Some(&b"\x00key\xff"[..]));
        assert_eq!(decode(b"cluster-b/", &stored), None);
        assert_eq!(decode(b"", b"abc"), Some(&b"abc"[..]));
        assert_eq!(encode(b"", b"abc"), b"abc".to_vec());
        assert_eq!(decode(b"p/", b"p/"), Some(&b""[..]));
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"ab\xff"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\x00"), Some(b"\x01".to_vec()));
        assert_eq!(prefix_end(b"\xfe\xff"), Some(b"\xff".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        // Every key under the prefix sorts before the end, and the end is not under it.
        let end = prefix_end(b"p\xff").unwrap();
        assert!(encode(b"p\xff", b"\xff\xff\xff").as_slice() < end.as_slice());
        assert!(!end.starts_with(b"p\xff"));
    }

    #[test]
    fn ranges_map_inside_the_prefix() {
        assert_eq!(
            bounds(b"p/", &range(b"a", Some(b"b"))),
            Some((b"p/a".to_vec(), Some(b"p/b".to_vec())))
        );
        // Open end: the end of this prefix's keyspace.
        assert_eq!(
            bounds(b"p/", &range(b"a", None)),
            Some((b"p/a".to_vec(), Some(b"p0".to_vec())))
        );
        assert_eq!(
            bounds(b"p/", &range(b"", None)),
            Some((b"p/".to_vec(), Some(b"p0".to_vec())))
        );
        // No prefix: TiKV's whole keyspace.
        assert_eq!(
            bounds(b"", &range(b"\x00", None)),
            Some((b"\x00".to_vec(), None))
        );
        assert_eq!(
            bounds(b"\xff", &range(b"", None)),
            Some((b"\xff".to_vec(), None))
        );
        // Empty ranges.
        assert_eq!(bounds(b"p/", &range(b"b", Some(b"b"))), None);
        assert_eq!(bounds(b"p/", &range(b"c", Some(b"b"))), None);
        assert_eq!(bounds(b"p/", &range(b"", Some(b""))), None);
    }

    #[test]
    fn bound_ranges_keep_trailing_zero_bytes_exact() {
        let r = bound_range(b"a\x00".to_vec(), Some(b"b\x00".to_vec()));
        assert_eq!(r.from, Bound::Included(Key::from(b"a\x00".to_vec())));
        assert_eq!(r.to, Bound::Excluded(Key::from(b"b\x00".to_vec())));
        let (start, end) = r.into_keys();
        assert_eq!(Vec::<u8>::from(start), b"a\x00".to_vec());
        assert_eq!(end.map(Vec::<u8>::from), Some(b"b\x00".to_vec()));

        let r = bound_range(b"p/".to_vec(), None);
        assert_eq!(r.to, Bound::Unbounded);
    }
}
