//! Reading past revisions back as events, for watchers that start in the past or fall behind
//! the in-memory event window.

use super::commit::CommittedRevision;
use crate::engine::Snapshot;
use crate::kv::{KvError, KvResult, ReadRevisions};
use crate::mvcc::keys;
use crate::mvcc::{Version, View};
use etcdpb::mvccpb::{Event, KeyValue, event::EventType};

/// The events of revisions `from..=to` in `snapshot` (`to` clamped to the revision read at),
/// whole revisions only, about `max_events` of them at most (a single larger revision is
/// returned whole), and the revision through which the answer is complete (revisions without
/// events in the range are covered too). Each event carries its prev_kv where the previous
/// version still exists.
pub(super) async fn read<S: Snapshot>(
    snapshot: &S,
    revs: ReadRevisions,
    from: i64,
    to: i64,
    max_events: usize,
) -> KvResult<(Vec<CommittedRevision>, i64)> {
    if from < revs.compacted {
        return Err(KvError::Compacted);
    }
    let to = to.min(revs.current);
    let mut out: Vec<CommittedRevision> = Vec::new();
    if from > to {
        return Ok((out, to));
    }
    let view = View::new(snapshot);
    let mut range = keys::log_range(from, to + 1);
    let mut events = 0usize;
    loop {
        let page = snapshot.scan(&range, max_events.max(1), false).await?;
        let full = page.len() >= max_events.max(1);
        for (entry, key) in &page {
            let Some((revision, _)) = keys::decode_log_key(entry) else {
                continue;
            };
            if out.last().is_none_or(|r| r.revision != revision) {
                if events >= max_events {
                    return Ok((out, revision - 1));
                }
                out.push(CommittedRevision {
                    revision,
                    events: Vec::new(),
                });
            }
            let event = event_at(&view, key.clone(), revision).await?;
            events += 1;
            if let Some(last) = out.last_mut() {
                last.events.push(event);
            }
        }
        match page.last() {
            Some((last, _)) if full => range.start = crate::engine::next_key(last),
            _ => return Ok((out, to)),
        }
    }
}

/// The change `key` underwent at `revision`.
async fn event_at<S: Snapshot>(
    view: &View<'_, S>,
    key: bytes::Bytes,
    revision: i64,
) -> KvResult<Event> {
    let at = view.version_at(&key, revision).await?;
    let prev = view
        .version_at(&key, revision - 1)
        .await?
        .and_then(Version::into_live);
    Ok(match at {
        Some(Version::Put(kv)) if kv.mod_revision == revision => Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        },
        // A tombstone, or one that compaction already removed (the log says the key changed
        // here and no put at this revision remains).
        _ => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key,
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: prev,
        },
    })
}
