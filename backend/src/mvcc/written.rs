//! The latest version of each key the writer wrote in earlier batches, carried from one batch
//! to the next.
//!
//! Every request the writer evaluates first reads its key's newest version: two point reads
//! (`INDEX`, then `REVS`) in the engine. On keys written again and again (node leases,
//! endpoints, a hot key) the memtable holds thousands of versions of each, and those reads
//! were 12-13% of the server's CPU under a put load on 1,000 keys. The writer wrote those
//! versions itself, so it can remember them instead.
//!
//! It is right only while nothing else changes the engine: the writer is the only writer of
//! its term (a new term opens a new store), compaction tells it which keys lose their index
//! entry, and the map moves into each batch and comes back only from a batch that reached the
//! engine: a batch that fails drops it, and the writer starts again from the engine.

use super::record::{Version, owned_kv};
use bytes::Bytes;
use etcdpb::mvccpb::KeyValue;
use std::collections::HashMap;

/// Keys remembered before the map starts over: enough for the hot keys of a cluster, small
/// beside the memtable.
const MAX_KEYS: usize = 16_384;
const MAX_BYTES: usize = 8 << 20;

#[derive(Debug, Default)]
pub struct WrittenLatest {
    /// Only live versions: deletes are not remembered.
    versions: HashMap<Bytes, KeyValue>,
    bytes: usize,
}

impl WrittenLatest {
    /// The newest version of `key` in the engine, if the writer wrote it in an earlier batch.
    pub fn get(&self, key: &[u8]) -> Option<Version> {
        self.versions.get(key).cloned().map(Version::Put)
    }

    /// Takes in a batch that reached the engine: each key it wrote with its last version, and
    /// the keys whose
    /// index entry compaction removed with it (their latest version was a compacted tombstone:
    /// the engine now has no version of them).
    ///
    /// Only updates are remembered (a put of a key that existed: `version >= 2`). Most keys
    /// are created and rarely written again (events, pods): remembering creates cost a copy
    /// and a map insert per create and 8 MiB of RSS for nothing (measured: +4% CPU per create).
    /// A hot key pays one engine read, at its first update.
    pub fn remember<'a>(
        &mut self,
        written: impl IntoIterator<Item = (&'a Bytes, Option<&'a Version>)>,
        index_removed: impl IntoIterator<Item = &'a Bytes>,
    ) {
        for key in index_removed {
            self.forget(key);
        }
        for (key, last) in written {
            let Some(last) = last else {
                continue;
            };
            let Version::Put(kv) = last else {
                // A delete is not remembered, and what was remembered of the key is out of date.
                self.forget(key);
                continue;
            };
            if kv.version < 2 {
                // A create (or re-create): not remembered.
                self.forget(key);
                continue;
            }
            match self.versions.get_mut(&key[..]) {
                // Replaced in place; its key (the map's and the version's) is kept from the
                // first time.
                Some(slot) => {
                    let kv = KeyValue {
                        key: slot.key.clone(),
                        value: Bytes::copy_from_slice(&kv.value),
                        ..kv.clone()
                    };
                    self.bytes = self.bytes + size(&kv) - size(slot);
                    *slot = kv;
                }
                None => {
                    let kv = owned_kv(kv);
                    self.bytes += size(&kv);
                    self.versions.insert(kv.key.clone(), kv);
                }
            }
        }
        if self.versions.len() > MAX_KEYS || self.bytes > MAX_BYTES {
            *self = WrittenLatest::default();
        }
    }

    fn forget(&mut self, key: &[u8]) {
        if let Some(gone) = self.versions.remove(key) {
            self.bytes -= size(&gone);
        }
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

/// What a remembered version costs, roughly: its key (shared by the map and the version), its
/// value and the map's entry.
fn size(kv: &KeyValue) -> usize {
    kv.key.len() + kv.value.len() + 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn put(key: &str, rev: i64, value: usize) -> Version {
        Version::Put(KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            value: Bytes::from(vec![b'v'; value]),
            lease: 0,
        })
    }

    /// Each key of a batch with its last version.
    fn batch(versions: &[(&str, Version)]) -> BTreeMap<Bytes, Version> {
        let mut keys = BTreeMap::new();
        for (key, version) in versions {
            keys.insert(Bytes::copy_from_slice(key.as_bytes()), version.clone());
        }
        keys
    }

    fn remember<'a>(
        written: &mut WrittenLatest,
        batch: &'a BTreeMap<Bytes, Version>,
        removed: impl IntoIterator<Item = &'a Bytes>,
    ) {
        written.remember(batch.iter().map(|(k, v)| (k, Some(v))), removed);
    }

    #[test]
    fn remembers_each_updated_keys_last_version() {
        let mut written = WrittenLatest::default();
        // a is created (version 1) and updated in one batch; b is only created.
        remember(
            &mut written,
            &batch(&[
                ("a", put("a", 2, 8)),
                ("a", put("a", 3, 8)),
                ("b", put("b", 2, 8)),
            ]),
            [],
        );
        assert_eq!(written.get(b"a"), Some(put("a", 3, 8)));
        assert_eq!(written.get(b"b"), None, "creates are not remembered");
        remember(&mut written, &batch(&[("b", put("b", 4, 8))]), []);
        assert_eq!(written.get(b"b"), Some(put("b", 4, 8)));
    }

    #[test]
    fn forgets_keys_deleted_recreated_or_left_without_an_index_entry() {
        let mut written = WrittenLatest::default();
        remember(
            &mut written,
            &batch(&[("a", put("a", 3, 8)), ("b", put("b", 3, 8))]),
            [],
        );
        remember(&mut written, &batch(&[("c", put("c", 3, 8))]), []);
        assert_eq!(written.len(), 3);
        let tombstone = Version::Tombstone {
            key: Bytes::from_static(b"a"),
            mod_revision: 4,
        };
        let mut recreated = put("b", 5, 8);
        if let Version::Put(kv) = &mut recreated {
            kv.version = 1;
        }
        remember(
            &mut written,
            &batch(&[("a", tombstone), ("b", recreated)]),
            [],
        );
        assert_eq!((written.get(b"a"), written.get(b"b")), (None, None));
        remember(&mut written, &BTreeMap::new(), [&Bytes::from_static(b"c")]);
        assert!(written.is_empty());
        assert_eq!(written.bytes, 0, "sizes are given back");
    }

    #[test]
    fn starts_over_past_its_bounds() {
        let mut written = WrittenLatest::default();
        let big = MAX_BYTES / 4;
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            remember(
                &mut written,
                &batch(&[(key, put(key, i as i64 + 3, big))]),
                [],
            );
        }
        assert_eq!(written.len(), 3);
        // Rewriting a key replaces its size, it does not add to it.
        remember(&mut written, &batch(&[("a", put("a", 9, big))]), []);
        assert_eq!(written.len(), 3);
        remember(&mut written, &batch(&[("d", put("d", 10, big))]), []);
        assert!(
            written.is_empty(),
            "past {MAX_BYTES} bytes the map starts over"
        );
    }
}
