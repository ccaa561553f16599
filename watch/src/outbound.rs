//! The outbound side of one watch stream: its responses in order, buffered up to a number of
//! bytes rather than of responses.
//!
//! A response that batches a thousand revisions and one that says `created` are not the same
//! load: counting bytes keeps what a lagging client leaves in memory bounded however the
//! responses are shaped. When the budget is spent the stream's task waits (only that stream:
//! the hub never waits for a watcher); its watchers fall behind in the log meanwhile, and
//! their next responses batch every revision they missed.

use etcdpb::etcdserverpb::WatchResponseEncoded;
use futures::Stream;
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// What a queued response costs besides its encoded bytes (its place in the queue).
const OVERHEAD_BYTES: usize = 64;

/// The receiving side is gone: the client closed the stream.
#[derive(Debug)]
pub struct Closed;

/// A channel for one stream's responses holding at most about `budget_bytes` of them (a
/// single larger response is let through alone).
pub fn channel(budget_bytes: usize) -> (Sender, Receiver) {
    let max = budget_bytes.clamp(OVERHEAD_BYTES, u32::MAX as usize);
    let budget = Arc::new(Semaphore::new(max));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Sender {
            tx,
            budget: budget.clone(),
            max: max as u32,
        },
        Receiver { rx, budget },
    )
}

/// Where a stream's task puts its responses.
pub struct Sender {
    tx: mpsc::UnboundedSender<(WatchResponseEncoded, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max: u32,
}

impl Sender {
    /// Queues `resp` once the buffer has room for it.
    pub async fn send(&self, resp: WatchResponseEncoded) -> Result<(), Closed> {
        let cost = (resp.encoded_len() + OVERHEAD_BYTES).min(self.max as usize) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx.send((resp, permit)).map_err(|_| Closed)
    }

    /// Resolves once the receiving side is gone (the client closed the stream).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The stream of responses for the transport; frees their budget as it hands them over.
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<(WatchResponseEncoded, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl Stream for Receiver {
    type Item = WatchResponseEncoded;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|(resp, _permit)| resp))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // A sender waiting for room learns at once that there is no reader any more.
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use std::time::Duration;

    fn resp(watch_id: i64, event_bytes: usize) -> WatchResponseEncoded {
        WatchResponseEncoded {
            watch_id,
            events: vec![Bytes::from(vec![0u8; event_bytes])],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn bounded_by_bytes_in_order() {
        let (tx, mut rx) = channel(10_000);
        // Many small responses fit.
        for i in 0..50 {
            tx.send(resp(i, 10)).await.unwrap();
        }
        // A big one waits until the reader takes some.
        let sent = tokio::spawn(async move {
            tx.send(resp(50, 9_000)).await.unwrap();
            // A response larger than the whole budget still goes through alone.
            tx.send(resp(51, 50_000)).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sent.is_finished());
        for i in 0..52 {
            assert_eq!(rx.next().await.unwrap().watch_id, i);
        }
        sent.await.unwrap();
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn closed_reader_releases_a_waiting_sender() {
        let (tx, rx) = channel(1_000);
        tx.send(resp(0, 900)).await.unwrap();
        let waiting = tokio::spawn(async move { tx.send(resp(1, 900)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert!(waiting.await.unwrap().is_err());
    }
}
