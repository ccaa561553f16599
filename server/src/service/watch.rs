//! The Watch service: one task per stream (see the `watch` crate), adapted to tonic.

use backend::Store;
use backend::engine::Engine;
use etcdpb::etcdserverpb::{WatchRequest, WatchResponse, watch_server::Watch};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use watch::{Hub, StreamOptions};

/// Responses buffered per stream before the stream's task waits for the client to read.
const STREAM_BUFFER: usize = 256;

pub struct WatchService<E> {
    hub: Arc<Hub>,
    store: Store<E>,
    options: StreamOptions,
}

impl<E: Engine> WatchService<E> {
    pub fn new(hub: Arc<Hub>, store: Store<E>, options: StreamOptions) -> Self {
        WatchService {
            hub,
            store,
            options,
        }
    }
}

#[tonic::async_trait]
impl<E: Engine> Watch for WatchService<E> {
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
            self.hub.clone(),
            self.store.clone(),
            inbound,
            tx,
            self.options.clone(),
        ));
        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
