//! The leader-to-follower stream: the leader's ordered event log, readable from any revision.
//!
//! Followers serve Watch from their own [`Hub`], fed in order by this stream; the leader
//! serves it from its hub and, for revisions that left the hub's window (a follower that
//! connects late or falls behind), from the store's history. Either way a follower receives
//! every revision from the one it asks for, in order, without gaps: a follower whose next
//! revision was compacted away learns so ([`KvError::Compacted`]) and restarts after the
//! leader's current revision, its watchers then canceled as compacted as etcd's would be.

use crate::hub::{Hub, Window};
use crate::source::HistorySource;
use backend::CommittedRevision;
use backend::kv::{KvError, KvResult};
use futures::Stream;
use std::sync::Arc;

/// Revisions per message from the hub's window.
const REVISIONS_PER_MESSAGE: usize = 1024;
/// Events per message when reading history from the store.
const HISTORY_EVENTS_PER_MESSAGE: usize = 4096;

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Consecutive revisions, continuing where the previous batch ended.
    pub revisions: Vec<Arc<CommittedRevision>>,
    /// The revision through which the follower now knows everything (at least the last of
    /// `revisions`; history may cover revisions without events).
    pub through: i64,
    /// The leader's compacted revision when the batch was read.
    pub compacted: i64,
}

/// The log from revision `from` on: batches in order, waiting for new revisions when caught
/// up. The stream ends only with an error (a compacted start, or a store failure).
pub fn follow<H: HistorySource>(
    hub: Arc<Hub>,
    history: H,
    from: i64,
) -> impl Stream<Item = KvResult<Batch>> + Send {
    // Compaction makes no revision: the log alone would not carry it, so the stream also
    // wakes when the compacted revision moves. (A stream outlives no change of leader: the
    // store it listens to stays the leader's for its whole life.)
    let latest = hub.subscribe();
    let compactions = history.compactions();
    let position = hub.reader();
    let start = (
        hub,
        history,
        (latest, compactions, position),
        from,
        i64::MIN,
    );
    futures::stream::unfold(Some(start), |state| async move {
        // `sent`: the compacted revision the follower was last told.
        let (hub, history, (mut latest, mut compactions, position), next, sent) = state?;
        // The hub's window keeps what the follower reads next.
        position.set(Some(next));
        loop {
            let compacted = history.compacted();
            if next < compacted {
                return Some((Err(KvError::Compacted), None));
            }
            let now = *latest.borrow_and_update();
            if next > now {
                if compacted != sent {
                    // Nothing new but the compacted revision: say so.
                    let batch = Batch {
                        revisions: Vec::new(),
                        through: next - 1,
                        compacted,
                    };
                    let state = (
                        hub,
                        history,
                        (latest, compactions, position),
                        next,
                        compacted,
                    );
                    return Some((Ok(batch), Some(state)));
                }
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { return None },
                    changed = compactions.changed() => if changed.is_err() { return None },
                }
                continue;
            }
            let batch = match hub.read(next, REVISIONS_PER_MESSAGE) {
                Window::Revisions(revisions) => {
                    let through = revisions.last().map_or(next - 1, |r| r.revision);
                    Batch {
                        revisions,
                        through,
                        compacted,
                    }
                }
                Window::Evicted { oldest } => {
                    match history
                        .history(next, oldest - 1, HISTORY_EVENTS_PER_MESSAGE)
                        .await
                    {
                        Ok((revisions, through)) => Batch {
                            revisions: revisions.into_iter().map(Arc::new).collect(),
                            through,
                            compacted,
                        },
                        Err(err) => return Some((Err(err), None)),
                    }
                }
            };
            if batch.through < next {
                // Nothing readable yet (the store has not published it): wait for more.
                if latest.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            // The follower has it: the window need not keep it for this stream.
            position.set(Some(batch.through + 1));
            let after = (
                hub,
                history,
                (latest, compactions, position),
                batch.through + 1,
                batch.compacted,
            );
            return Some((Ok(batch), Some(after)));
        }
    })
}

/// Applies a follower's next batch to its hub: every listed revision in order, and empty
/// revisions for those the batch covers without listing (so the hub's log has no holes).
pub fn apply(hub: &Hub, batch: &Batch) {
    let mut next = hub.latest() + 1;
    let mut out = Vec::with_capacity(batch.revisions.len());
    for rev in &batch.revisions {
        while next < rev.revision {
            out.push(CommittedRevision {
                revision: next,
                events: Vec::new(),
            });
            next += 1;
        }
        if rev.revision == next {
            out.push(CommittedRevision::clone(rev));
            next += 1;
        }
    }
    while next <= batch.through {
        out.push(CommittedRevision {
            revision: next,
            events: Vec::new(),
        });
        next += 1;
    }
    backend::CommitListener::committed(hub, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WindowLimits;
    use crate::hub::Window;
    use crate::source::NoHistory;
    use backend::CommitListener;
    use futures::StreamExt;

    fn revisions(range: std::ops::RangeInclusive<i64>) -> Vec<CommittedRevision> {
        range
            .map(|revision| CommittedRevision {
                revision,
                events: vec![etcdpb::mvccpb::Event::default()],
            })
            .collect()
    }

    fn oldest(hub: &Hub) -> i64 {
        match hub.read(0, 1) {
            Window::Evicted { oldest } => oldest,
            Window::Revisions(_) => 0,
        }
    }

    #[tokio::test]
    async fn the_window_keeps_what_a_follower_has_yet_to_receive() {
        let hub = Hub::new(
            0,
            WindowLimits {
                events: 1000,
                bytes: usize::MAX,
                idle_events: 1,
                idle_bytes: usize::MAX,
            },
        );
        hub.committed(revisions(1..=3));
        let mut stream = Box::pin(follow(hub.clone(), NoHistory, 3));
        let batch = stream.next().await.expect("a batch").expect("no error");
        assert_eq!(batch.through, 3);
        // The follower has not asked for more: what it has yet to receive stays.
        hub.committed(revisions(4..=9));
        assert_eq!(oldest(&hub), 4);
        let batch = stream.next().await.expect("a batch").expect("no error");
        let got: Vec<i64> = batch.revisions.iter().map(|r| r.revision).collect();
        assert_eq!(got, [4, 5, 6, 7, 8, 9]);
        // Received, it goes at the next commit.
        hub.committed(revisions(10..=10));
        assert_eq!(oldest(&hub), 10);
        // A closed stream holds nothing either.
        drop(stream);
        hub.committed(revisions(11..=11));
        assert_eq!(oldest(&hub), 11);
    }
}
