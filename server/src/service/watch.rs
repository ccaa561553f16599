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
    auth: Arc<crate::auth_info::Authenticator>,
    options: StreamOptions,
    /// The largest request message taken (etcd: --max-request-bytes plus 512 KiB).
    max_message_bytes: usize,
    /// How long a `hasleader` stream survives its member knowing no leader (etcd: three
    /// election timeouts).
    leaderless_grace: Duration,
}

impl WatchService {
    pub fn new(
        brain: Arc<Brain>,
        auth: Arc<crate::auth_info::Authenticator>,
        options: StreamOptions,
        max_message_bytes: usize,
        leaderless_grace: Duration,
    ) -> Self {
        WatchService {
            brain,
            auth,
            options,
            max_message_bytes,
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
        // Each watch the stream creates is checked as its client, named by the stream's token:
        // the client must be allowed to read the keys (etcd's `isWatchPermitted`).
        let credentials = crate::auth_info::Credentials::of(&req);
        let permit: watch::Permit = {
            let (auth, brain) = (self.auth.clone(), self.brain.clone());
            Arc::new(move |key: &[u8], range_end: &[u8]| {
                auth.info(&credentials, brain.store().auth())
                    .and_then(|info| info.check_range(key, range_end))
                    .is_ok()
            })
        };
        let options = StreamOptions {
            permit: Some(permit),
            ..self.options.clone()
        };
        let (inbound, failed) = drain(req.into_inner(), self.max_message_bytes);
        let (tx, rx) = watch::outbound::channel(STREAM_BUFFER_BYTES);
        tokio::spawn(watch::serve(
            self.brain.hub().clone(),
            BrainHistory(self.brain.clone()),
            inbound,
            tx,
            options,
        ));
        let rx = until_unreadable(rx, failed);
        if !require_leader {
            return Ok(Response::new(Box::pin(rx)));
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
            rx.take_until(Box::pin(monitor)).chain(end),
        )))
    }
}

/// Requests read ahead of the stream's task, at most.
const READ_AHEAD: usize = 64 * 1024;

/// Reads the client's requests as fast as they arrive, into a queue the stream's task takes
/// them from. Requests a client pipelines (kube-apiserver and Go clients create many watches
/// on one stream, each without waiting) would otherwise wait in HTTP/2's buffers, and h2 ends
/// the whole connection, other streams included, once too many small frames wait there unread
/// ("too_many_data_frames"). A request that cannot be read (garbage, or over the size limit)
/// ends the queue; its error, in grpc-go's words, is what `failed` resolves to.
fn drain(
    mut requests: Streaming<WatchRequest>,
    max_message_bytes: usize,
) -> (
    futures::stream::BoxStream<'static, WatchRequest>,
    tokio::sync::oneshot::Receiver<Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let (fail, failed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            match requests.message().await {
                Ok(Some(request)) => {
                    if tx.send(request).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    let _ = fail.send(unreadable(status, max_message_bytes));
                    return;
                }
            }
        }
    });
    (
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        failed,
    )
}

/// The stream's responses, ended by the error of a request that could not be read, as etcd's
/// stream is. A client that merely stops sending (half-closes) keeps its watchers.
fn until_unreadable(
    responses: watch::outbound::Receiver,
    failed: tokio::sync::oneshot::Receiver<Status>,
) -> impl Stream<Item = Result<WatchResponseEncoded, Status>> + Send + 'static {
    // Resolves with the failure; never, if the requests ended without one.
    let failure: Pin<Box<dyn std::future::Future<Output = Status> + Send>> = Box::pin(async move {
        match failed.await {
            Ok(status) => status,
            Err(_) => std::future::pending().await,
        }
    });
    futures::stream::unfold(
        (responses, Some(failure)),
        |(mut responses, failure)| async move {
            let mut failure = failure?;
            tokio::select! {
                biased;
                resp = responses.next() => resp.map(|r| (Ok(r), (responses, Some(failure)))),
                status = &mut failure => Some((Err(status), (responses, None))),
            }
        },
    )
}

/// grpc-go's status for a stream message that could not be read: over the size limit, or not
/// a message.
fn unreadable(status: Status, max_message_bytes: usize) -> Status {
    let message = status.message();
    if let Some(found) = message
        .strip_prefix("Error, decoded message length too large: found ")
        .and_then(|rest| rest.split(' ').next())
    {
        return Status::resource_exhausted(format!(
            "grpc: received message larger than max ({found} vs. {max_message_bytes})"
        ));
    }
    if let Some(detail) = message.strip_prefix(UNMARSHAL_UNARY) {
        return Status::internal(format!(
            "grpc: failed to unmarshal the received message: {detail}"
        ));
    }
    status
}

/// How etcdpb's codec words a request it cannot decode (grpc-go's wording for a unary call).
const UNMARSHAL_UNARY: &str = "grpc: error unmarshalling request: ";

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
