//! Range, exactly as etcd 3.5 answers it: limit with `more`, `count` over the whole range,
//! sorting, revision filters, keys_only and count_only.

use super::error::{KvError, KvResult};
use crate::engine::{Snapshot, next_key};
use crate::mvcc::{Bounds, View};
use etcdpb::etcdserverpb::{
    RangeRequest, RangeResponse, ResponseHeader,
    range_request::{SortOrder, SortTarget},
};
use etcdpb::mvccpb::KeyValue;
use std::cmp::Ordering;

/// The revisions a read is answered against.
#[derive(Debug, Clone, Copy)]
pub struct ReadRevisions {
    /// The revision "now" for this read: the header revision, and what revision 0 means.
    pub current: i64,
    /// Reads below this revision fail as compacted.
    pub compacted: i64,
}

impl ReadRevisions {
    /// The revision a request asking for `requested` (0 = now) reads at.
    pub fn resolve(&self, requested: i64) -> KvResult<i64> {
        if requested <= 0 {
            Ok(self.current)
        } else if requested > self.current {
            Err(KvError::FutureRevision)
        } else if requested < self.compacted {
            Err(KvError::Compacted)
        } else {
            Ok(requested)
        }
    }
}

/// The user-key bounds of `key`/`range_end` in etcd's convention: empty end = the key alone,
/// `"\0"` = every key from `key` on.
pub fn bounds<'a>(key: &'a [u8], range_end: &'a [u8], single: &'a mut Vec<u8>) -> Bounds<'a> {
    let end = match range_end {
        [] => {
            single.clear();
            single.extend_from_slice(key);
            single.push(0);
            Some(&single[..])
        }
        [0] => None,
        end => Some(end),
    };
    Bounds { start: key, end }
}

pub async fn range<S: Snapshot>(
    view: &View<'_, S>,
    req: &RangeRequest,
    revs: ReadRevisions,
) -> KvResult<RangeResponse> {
    let rev = revs.resolve(req.revision)?;
    let mut single = Vec::new();
    let bounds = bounds(&req.key, &req.range_end, &mut single);
    let limit = usize::try_from(req.limit).unwrap_or(0);
    // Out of range, as etcd takes them: an unknown order sorts nothing; an unknown target is
    // the key (etcd 3.5 crashes on one it must sort by: its sorter is nil).
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;

    let header = Some(ResponseHeader {
        revision: revs.current,
        ..Default::default()
    });
    if req.count_only {
        let count = view.count(bounds, rev, revs.compacted).await?;
        return Ok(RangeResponse {
            header,
            count: count as i64,
            ..Default::default()
        });
    }

    // etcd fetches the whole range when it must sort or filter, otherwise limit + 1 (to learn
    // `more`); descending by key is the same as a reverse scan, which we do instead.
    let reverse_by_key = order == SortOrder::Descend && target == SortTarget::Key && !filtered;
    let fetch_all = limit == 0 || ((order != SortOrder::None || filtered) && !reverse_by_key);
    let mut kvs = if fetch_all {
        view.scan(bounds, rev, None, reverse_by_key).await?
    } else {
        view.scan(bounds, rev, Some(limit + 1), reverse_by_key)
            .await?
    };
    let count = if fetch_all || kvs.len() <= limit {
        kvs.len()
    } else {
        view.count(bounds, rev, revs.compacted).await?
    };

    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });

    let order = match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, SortOrder::Descend) if reverse_by_key => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, order) => order,
    };
    if order != SortOrder::None {
        let cmp = comparator(target);
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }

    let more = limit > 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
        if !fetch_all && !reverse_by_key {
            // A paginated list asks for its next page from just after this page's last key
            // (kube-apiserver's continue key is `last ++ "\0"`). The page holds the first
            // `limit` live keys of the range in key order, so what remains after it is
            // `count - limit`: remembered here, the next page's count costs nothing, where it
            // would otherwise walk this page's keys again (at a past revision, every version).
            let next = next_key(&kvs[limit - 1].key);
            let rest = Bounds {
                start: &next,
                end: bounds.end,
            };
            view.remember_count(rest, rev, count.saturating_sub(limit));
        }
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count: count as i64,
    })
}

fn comparator(target: SortTarget) -> fn(&KeyValue, &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => |a, b| a.key.cmp(&b.key),
        SortTarget::Version => |a, b| a.version.cmp(&b.version),
        SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => |a, b| a.value.cmp(&b.value),
    }
}
