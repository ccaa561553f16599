//! Engram's store read as etcd's `key` bucket: every change, in revision order and, within a
//! revision, in the order etcd makes them.

use crate::engine::{EngineResult, Snapshot, next_key};
use crate::mvcc::keys;
use crate::mvcc::{Version, View};
use bytes::Bytes;

/// Entries read per engine request.
const PAGE: usize = 1024;

/// One row: the change made to a key at (`main`, `sub`).
#[derive(Debug, Clone)]
pub struct Row {
    pub main: i64,
    pub sub: i64,
    /// What the change left: the new version, or a tombstone. `None` if that version is gone
    /// from the store (compaction removed it, and its `LOG` entry is about to go too).
    pub version: Option<Version>,
    pub key: Bytes,
}

impl Row {
    /// Whether etcd keeps this row once its store is compacted at `compacted`: every row above
    /// it; at or below it, only the newest version of each key that still exists there.
    pub async fn kept_at<S: Snapshot>(
        &self,
        view: &View<'_, S>,
        compacted: i64,
    ) -> EngineResult<bool> {
        if self.main > compacted {
            return Ok(self.version.is_some());
        }
        self.is_newest_put_at(view, compacted).await
    }

    /// Whether this row is a put and the newest version of its key at `revision`.
    pub async fn is_newest_put_at<S: Snapshot>(
        &self,
        view: &View<'_, S>,
        revision: i64,
    ) -> EngineResult<bool> {
        if !matches!(self.version, Some(Version::Put(_))) {
            return Ok(false);
        }
        let newest = view.version_at(&self.key, revision).await?;
        Ok(matches!(newest, Some(Version::Put(kv)) if kv.mod_revision == self.main))
    }
}

/// The rows of revisions `1..=upto`, in order, read a page at a time.
pub struct RowPages {
    range: crate::engine::KeyRange,
    done: bool,
}

impl RowPages {
    pub fn new(upto: i64) -> Self {
        RowPages {
            range: keys::log_range(0, upto.max(0) + 1),
            done: upto < 1,
        }
    }

    /// The next page of rows; `None` after the last.
    pub async fn next<S: Snapshot>(&mut self, snapshot: &S) -> EngineResult<Option<Vec<Row>>> {
        if self.done {
            return Ok(None);
        }
        let page = snapshot.scan(&self.range, PAGE, false).await?;
        self.done = page.len() < PAGE;
        if let Some((last, _)) = page.last() {
            self.range.start = next_key(last);
        }
        let mut found = Vec::with_capacity(page.len());
        let mut revs = Vec::with_capacity(page.len());
        for (entry, key) in page {
            let Some((main, sub)) = keys::decode_log_key(&entry) else {
                continue;
            };
            revs.push(keys::revision_key(&key, main));
            found.push((main, i64::from(sub), key));
        }
        let values = snapshot.get_many(&revs).await?;
        let rows = found
            .into_iter()
            .zip(values)
            .map(|((main, sub, key), value)| Row {
                version: value.and_then(|v| Version::decode(key.clone(), main, v)),
                main,
                sub,
                key,
            })
            .collect();
        Ok(Some(rows))
    }
}
