//! The Watch service: one task per stream (see the `watch` crate), adapted to tonic.
//!
//! Responses are `WatchResponseEncoded`: etcd's WatchResponse on the wire, with each event
//! encoded once by the hub and shared by every watcher that receives it.

use crate::brain::{Brain, BrainHistory};
use backend::engine::Engine;
use etcdpb::encoded::watch_server::Watch;
use etcdpb::etcdserverpb::{WatchRequest, WatchResponseEncoded};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};
use watch::StreamOptions;

/// Bytes of responses buffered per stream before the stream's task waits for the client to
/// read. Past it the stream's watchers fall behind in the log and their next responses batch
/// what they missed; the events themselves are shared, so this bounds what a lagging client
/// costs beyond the log's window.
const STREAM_BUFFER_BYTES: usize = 1 << 20;

/// Watches are served by every member from its own hub: the leader's is fed by its commits,
/// a follower's by the leader's event log.
pub struct WatchService<E> {
    brain: Arc<Brain<E>>,
    options: StreamOptions,
}

impl<E: Engine + Clone> WatchService<E> {
    pub fn new(brain: Arc<Brain<E>>, options: StreamOptions) -> Self {
        WatchService { brain, options }
    }
}

#[tonic::async_trait]
impl<E: Engine + Clone> Watch for WatchService<E> {
    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<WatchResponseEncoded, Status>> + Send + 'static>>;

    /// etcd clients send `hasleader` metadata to refuse a member without a leader; an Engram
    /// member always has one (itself, or the leader it forwards to), so it is accepted as is.
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
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
        Ok(Response::new(Box::pin(rx.map(Ok))))
    }
}
