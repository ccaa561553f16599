//! Key names of the workloads and the ranges that cover them.

use bytes::Bytes;

/// Zero-padded decimal, so that keys sort like their numbers.
pub fn key(prefix: &str, n: u64) -> Bytes {
    Bytes::from(format!("{prefix}{n:012}"))
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(&prefix_end(b"/a/")[..], b"/a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff")[..], b"\0");
    }

    #[test]
    fn keys_sort_numerically() {
        assert!(key("/p/", 9) < key("/p/", 10));
    }
}
