//! A follower's half of the leader's event log: the stream from the leader into the member's
//! hub and read-only store.

use super::link::LeaderLink;
use backend::engine::AnyEngine;
use backend::{CommittedRevision, Store};
use etcdpb::brainpb::{FollowRequest, FollowResponse};
use std::sync::Arc;
use std::time::Duration;
use watch::Hub;
use watch::replication::{self, Batch};

/// Pause before reconnecting after the stream broke.
const RECONNECT: Duration = Duration::from_millis(200);

/// How often a follower re-reads users, roles and permissions, which the leader changes
/// without a revision (so its event log does not carry them): the longest a permission
/// change takes to apply to reads served here. Writes are checked by the leader itself.
const AUTH_POLL: Duration = Duration::from_millis(200);

/// Follows the leader until the task is aborted (the role changes): every batch moves the
/// store's revision, then feeds the hub, in order. A broken stream is resumed from the next
/// revision the hub lacks.
pub async fn run(hub: Arc<Hub>, store: Store<AnyEngine>, leader: Arc<LeaderLink>) {
    let _auth = AbortOnDrop(tokio::spawn(reload_auth(store.clone())));
    let mut client = leader.brain();
    loop {
        let from = hub.latest() + 1;
        match client
            .follow(FollowRequest {
                from_revision: from,
            })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => apply(&hub, &store, msg),
                        Ok(None) => break,
                        Err(status) if status.code() == tonic::Code::OutOfRange => {
                            // Our next revision was compacted away on the leader: what we
                            // missed cannot be replayed; go on from the leader's present.
                            restart_after_compaction(&hub, &store, &leader).await;
                            break;
                        }
                        Err(status) => {
                            tracing::debug!(%status, "the leader's event stream broke");
                            break;
                        }
                    }
                }
            }
            Err(status) => tracing::debug!(%status, "following the leader failed"),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Re-reads the auth state now and then, for as long as this member follows.
async fn reload_auth(store: Store<AnyEngine>) {
    let mut ticks = tokio::time::interval(AUTH_POLL);
    loop {
        ticks.tick().await;
        if let Err(err) = store.reload_auth().await {
            tracing::debug!(%err, "re-reading users and roles");
        }
    }
}

/// Stops a task when dropped (with the follower's task that owns it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn apply(hub: &Hub, store: &Store<AnyEngine>, msg: FollowResponse) {
    let batch = Batch {
        revisions: msg
            .revisions
            .into_iter()
            .map(|r| {
                Arc::new(CommittedRevision {
                    revision: r.revision,
                    // Decoded events are slices of the stream's receive buffers: the hub
                    // keeps them for long, so they get bytes of their own.
                    events: r
                        .events
                        .into_iter()
                        .map(backend::store::owned_event)
                        .collect(),
                })
            })
            .collect(),
        through: msg.revision,
        compacted: msg.compacted,
    };
    store.advance(batch.through, batch.compacted);
    replication::apply(hub, &batch);
}

async fn restart_after_compaction(hub: &Hub, store: &Store<AnyEngine>, leader: &LeaderLink) {
    let mut client = leader.brain();
    if let Ok(resp) = client
        .read_index(etcdpb::brainpb::ReadIndexRequest {})
        .await
    {
        let resp = resp.into_inner();
        tracing::warn!(
            revision = resp.revision,
            compacted = resp.compacted,
            "fell behind the leader's compaction; restarting the event log"
        );
        store.advance(resp.revision, resp.compacted);
        hub.restart_after(resp.revision);
    }
}
