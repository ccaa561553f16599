//! The Watch service: one task per stream (see the `watch` crate), adapted to tonic.

use crate::brain::{Brain, BrainHistory};
use backend::engine::Engine;
use etcdpb::etcdserverpb::{WatchRequest, WatchResponse, watch_server::Watch};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use watch::StreamOptions;

/// Responses buffered per stream before the stream's task waits for the client to read.
const STREAM_BUFFER: usize = 256;

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
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

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
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(watch::serve(
            self.brain.hub().clone(),
            BrainHistory(self.brain.clone()),
            inbound,
            tx,
            self.options.clone(),
        ));
        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
