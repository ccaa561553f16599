//! Key-range permissions as etcd checks them: a user's read and write permissions, each the
//! union of the ranges its roles grant, and whether a request's key or range falls inside it.
//!
//! A permission names one key (`range_end` empty), a range `[key, range_end)`, or every key
//! from `key` on (`range_end` = `\0`). A request for one key is allowed if any granted range
//! holds it; a request for a range only if the granted ranges, merged, cover all of it (two
//! grants `[a, b)` and `[b, c)` cover `[a, c)`), as etcd's interval tree decides.

use etcdpb::authpb::{Permission, permission::Type};

/// The end of a range: a key (exclusive), or past every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Unbounded,
}

/// Disjoint, sorted ranges `[begin, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RangeSet(Vec<(Vec<u8>, End)>);

impl RangeSet {
    fn from_ranges(mut ranges: Vec<(Vec<u8>, End)>) -> Self {
        ranges.sort();
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(ranges.len());
        for (begin, end) in ranges {
            if let Some(last) = merged.last_mut() {
                let touches = match &last.1 {
                    End::Unbounded => true,
                    End::Key(last_end) => begin <= *last_end,
                };
                if touches {
                    if end > last.1 {
                        last.1 = end;
                    }
                    continue;
                }
            }
            merged.push((begin, end));
        }
        RangeSet(merged)
    }

    /// The range that starts at or before `key`, if any.
    fn around(&self, key: &[u8]) -> Option<&(Vec<u8>, End)> {
        let at = self.0.partition_point(|(begin, _)| begin.as_slice() <= key);
        at.checked_sub(1).map(|i| &self.0[i])
    }

    fn holds(&self, key: &[u8]) -> bool {
        self.around(key).is_some_and(|(_, end)| match end {
            End::Unbounded => true,
            End::Key(end) => key < end.as_slice(),
        })
    }

    fn covers(&self, key: &[u8], end: &End) -> bool {
        self.around(key).is_some_and(|(_, granted)| granted >= end)
    }
}

/// The ranges a permission grants.
fn granted_range(perm: &Permission) -> (Vec<u8>, End) {
    let end = match &perm.range_end[..] {
        [] => {
            // One key: [key, key\0).
            let mut end = perm.key.to_vec();
            end.push(0);
            End::Key(end)
        }
        [0] => End::Unbounded,
        end => End::Key(end.to_vec()),
    };
    (perm.key.to_vec(), end)
}

/// What one user may read and write: the union of its roles' permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPermissions {
    read: RangeSet,
    write: RangeSet,
}

/// Whether a request reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl UserPermissions {
    pub fn new<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> Self {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for perm in perms {
            let range = granted_range(perm);
            match perm.perm_type() {
                Type::Read => read.push(range),
                Type::Write => write.push(range),
                Type::Readwrite => {
                    read.push(range.clone());
                    write.push(range);
                }
            }
        }
        UserPermissions {
            read: RangeSet::from_ranges(read),
            write: RangeSet::from_ranges(write),
        }
    }

    /// Whether `access` to `key` (with `range_end` empty), or to `[key, range_end)` (`\0`: every
    /// key from `key` on), is granted.
    pub fn allows(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        match range_end {
            [] => set.holds(key),
            [0] => set.covers(key, &End::Unbounded),
            end => set.covers(key, &End::Key(end.to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: Type, key: &str, end: &[u8]) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            range_end: bytes::Bytes::copy_from_slice(end),
        }
    }

    #[test]
    fn single_keys_ranges_and_open_ends() {
        let perms = UserPermissions::new(&[
            perm(Type::Read, "/a", b"/b"),
            perm(Type::Readwrite, "/k", b""),
            perm(Type::Write, "/p/", b"/p0"),
            perm(Type::Read, "/open", b"\0"),
        ]);
        assert!(perms.allows(Access::Read, b"/a", b""));
        assert!(perms.allows(Access::Read, b"/aa", b""));
        assert!(perms.allows(Access::Read, b"/a", b"/b"));
        assert!(!perms.allows(Access::Read, b"/a", b"/c"));
        assert!(!perms.allows(Access::Read, b"/b", b""));
        assert!(perms.allows(Access::Read, b"/k", b""));
        assert!(perms.allows(Access::Write, b"/k", b""));
        assert!(!perms.allows(Access::Write, b"/k", b"/l"));
        assert!(!perms.allows(Access::Read, b"/k0", b""));
        assert!(perms.allows(Access::Write, b"/p/x", b""));
        assert!(!perms.allows(Access::Read, b"/c", b""));
        // Readable through the open-ended grant from /open on.
        assert!(perms.allows(Access::Read, b"/p/x", b""));
        assert!(perms.allows(Access::Read, b"/open", b"\0"));
        assert!(perms.allows(Access::Read, b"/zzz", b""));
        assert!(!perms.allows(Access::Read, b"/a", b"\0"));
        assert!(!perms.allows(Access::Write, b"/a", b""));
    }

    #[test]
    fn adjacent_grants_cover_their_union() {
        let perms = UserPermissions::new(&[
            perm(Type::Read, "a", b"c"),
            perm(Type::Readwrite, "c", b"e"),
            perm(Type::Read, "x", b""),
        ]);
        assert!(perms.allows(Access::Read, b"a", b"e"));
        assert!(perms.allows(Access::Read, b"b", b"d"));
        assert!(!perms.allows(Access::Read, b"a", b"f"));
        assert!(!perms.allows(Access::Write, b"a", b"e"));
        assert!(perms.allows(Access::Write, b"c", b"e"));
        // A single-key grant covers the range of that key alone.
        assert!(perms.allows(Access::Read, b"x", b"x\0"));
        assert!(!perms.allows(Access::Read, b"x", b"y"));
    }

    #[test]
    fn nothing_granted_allows_nothing() {
        let perms = UserPermissions::new(&[]);
        assert!(!perms.allows(Access::Read, b"a", b""));
        assert!(!perms.allows(Access::Write, b"\0", b"\0"));
    }
}
