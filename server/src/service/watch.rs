//! The Watch service: one task per stream (see the `watch` crate), adapted to tonic.
//!
//! Responses are `WatchResponseEncoded`: etcd's WatchResponse on the wire, with each event
//! encoded once by the hub and shared by every watcher that receives it.

use crate::brain::{Brain, BrainHistory, Role};

use etcdpb::encoded::watch_server::Watch;
use etcdpb::etcdserverpb::{WatchRequest, WatchResponseEncoded};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};
use watch::StreamOptions;

/// Bytes of responses buffered per stream before the stream's task waits for the client to
/// read. Past it the stream's watchers fall behind in the log and their next responses batch
/// what they missed; the events themselves are shared, so this bounds what a lagging client
/// costs beyond the log's window.
const STREAM_BUFFER_BYTES: usize = 1 << 20;

/// Watches are served by every member from its own hub: the leader's is fed by its commits,
/// a follower's by the leader's event log.
pub struct WatchService {
    brain: Arc<Brain>,
    options: StreamOptions,
    /// How long a `hasleader` stream survives its member knowing no leader (etcd: three
    /// election timeouts).
    leaderless_grace: Duration,
}

impl WatchService {
    pub fn new(brain: Arc<Brain>, options: StreamOptions, leaderless_grace: Duration) -> Self {
        WatchService {
            brain,
            options,
            leaderless_grace,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<WatchResponseEncoded, Status>> + Send + 'static>>;

    /// etcd clients (kube-apiserver among them) send `hasleader: true` metadata so that a
    /// member without a leader refuses the stream, or ends it once it has been without one for
    /// a while: the client then moves to a member that still gets events, instead of waiting
    /// on one that cannot.
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = req
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if require_leader && self.brain.leader().is_none() {
            return Err(no_leader());
        }
        // A transport error ends the stream like a close does.
        let inbound = req
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()))
            .boxed();
        let (tx, rx) = watch::outbound::channel(STREAM_BUFFER_BYTES);
        tokio::spawn(watch::serve(
            self.brain.hub().clone(),
            BrainHistory(self.brain.clone()),
            inbound,
            tx,
            self.options.clone(),
        ));
        if !require_leader {
            return Ok(Response::new(Box::pin(rx.map(Ok))));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let monitor = {
            let lost = lost.clone();
            let roles = self.brain.roles();
            let grace = self.leaderless_grace;
            async move {
                leader_lost(roles, grace).await;
                lost.store(true, Ordering::Release);
            }
        };
        let end = futures::stream::once(async move { lost.load(Ordering::Acquire) })
            .filter_map(|lost| futures::future::ready(lost.then(|| Err(no_leader()))));
        Ok(Response::new(Box::pin(
            rx.map(Ok).take_until(Box::pin(monitor)).chain(end),
        )))
    }
}

/// etcd's answer on a member without a leader.
fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

/// Resolves once the member has known no leader for `grace` without a break.
async fn leader_lost(mut roles: tokio::sync::watch::Receiver<Role>, grace: Duration) {
    loop {
        let leaderless = roles
            .wait_for(|r| matches!(r, Role::Candidate { .. }))
            .await
            .is_ok();
        if !leaderless {
            // The member is gone: its streams end with it.
            return std::future::pending().await;
        }
        let back = tokio::time::timeout(
            grace,
            roles.wait_for(|r| !matches!(r, Role::Candidate { .. })),
        )
        .await
        .map(|found| found.is_ok());
        match back {
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}
