//! Lease expiry: the leader revokes leases whose deadline passed, through the writer, so each
//! expiry deletes its keys in one revision with ordinary delete events.

use super::request::WriteRequest;
use super::shared::Shared;
use crate::engine::Engine;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(250);
/// Leases revoked per round: thousands expiring at once are spread over rounds, each of which
/// shares group commits with ordinary writes instead of stalling them.
const PER_ROUND: usize = 256;

pub(super) async fn run<E: Engine>(shared: Arc<Shared<E>>, writer: mpsc::WeakSender<WriteRequest>) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if shared.replicating.load(Ordering::Acquire) {
            // The source expires its leases; the deletions arrive with its revisions.
            if writer.strong_count() == 0 {
                return;
            }
            continue;
        }
        let due = shared.leases.expired(Instant::now(), PER_ROUND);
        if due.is_empty() {
            if writer.strong_count() == 0 {
                return;
            }
            continue;
        }
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let mut replies = Vec::with_capacity(due.len());
        for id in due {
            let (reply, rx) = oneshot::channel();
            if writer
                .send(WriteRequest::LeaseRevoke {
                    id,
                    authority: crate::auth::Authority::Internal,
                    reply,
                })
                .await
                .is_err()
            {
                return;
            }
            replies.push((id, rx));
        }
        drop(writer);
        for (id, rx) in replies {
            match rx.await {
                Ok(Ok(_)) => tracing::debug!(lease = id, "lease expired"),
                // Revoked by a client meanwhile: nothing left to do.
                Ok(Err(crate::kv::KvError::LeaseNotFound)) => {}
                Ok(Err(err)) => tracing::warn!(lease = id, %err, "lease expiry failed; will retry"),
                Err(_) => return,
            }
        }
    }
}
