//! Watch streams at their limits, against a real etcd 3.5: 20,000 WatchCreates pipelined on one
//! stream all succeed while another stream on the same connection keeps working (h2 used to
//! end the whole connection), and a request that is garbage or over the size limit ends its
//! stream with etcd's status (INTERNAL, RESOURCE_EXHAUSTED), not with OK.

mod support;

use bytes::{Buf, BufMut, Bytes};
use etcdpb::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use std::time::Duration;
use support::{Engram, Etcd};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const CREATES: usize = 20_000;
/// Revisions each create replays, so that the server takes creates slower than they come.
const HISTORY: usize = 10;

fn create(key: &str) -> WatchRequest {
    create_from(key, 0)
}

/// A watch of the keys under `prefix` from revision `start` (0: from now).
fn create_from(prefix: &str, start: i64) -> WatchRequest {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: if start > 0 {
                Bytes::from(end)
            } else {
                Bytes::new()
            },
            start_revision: start,
            ..Default::default()
        })),
    }
}

/// On one connection: a watch on `other`, then 20,000 creates sent without waiting on a second
/// stream, each replaying 10 revisions of history, while the client reads nothing for a second;
/// every create is answered, and a put of `other` still reaches the first stream. Returns the
/// number of creates answered.
async fn pipelined_creates(endpoint: String) -> usize {
    let channel = Channel::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel.clone());
    let mut first = 0;
    for i in 0..HISTORY {
        let put = kv
            .put(PutRequest {
                key: Bytes::from(format!("h/{i}")),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if first == 0 {
            first = put.header.unwrap().revision;
        }
    }
    let mut watch = WatchClient::new(channel.clone());
    let (keep, requests) = tokio::sync::mpsc::channel(CREATES + 1);
    keep.send(create("other")).await.unwrap();
    let mut other = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    assert!(other.message().await.unwrap().unwrap().created);

    // Each request in a DATA frame of its own, as clients that write each message as it comes
    // send them (tonic would pack requests that are ready together into one frame).
    let requests = futures::stream::unfold(0usize, move |sent| async move {
        tokio::task::yield_now().await;
        (sent < CREATES).then(|| (create_from("h/", first), sent + 1))
    });
    let mut stream = watch.watch(requests).await.unwrap().into_inner();
    let mut created = 0;
    while created < CREATES {
        let resp = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("answers keep coming")
            .unwrap_or_else(|status| panic!("{endpoint}: after {created} creates: {status}"))
            .expect("the stream stays open");
        created += usize::from(resp.created);
    }
    kv.put(PutRequest {
        key: Bytes::from_static(b"other"),
        value: Bytes::from_static(b"1"),
        ..Default::default()
    })
    .await
    .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), other.message())
        .await
        .expect("the other stream still gets its events")
        .unwrap()
        .unwrap();
    assert_eq!(event.events.len(), 1);
    drop(keep);
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_pipelined_creates_on_one_stream() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    assert_eq!(pipelined_creates(etcd.endpoint()).await, CREATES);
    assert_eq!(pipelined_creates(engram.endpoint()).await, CREATES);
}

/// Sends `payload` as the one message of a Watch stream, and returns how the stream ends:
/// (code, message).
async fn watch_raw(endpoint: String, payload: Vec<u8>) -> (tonic::Code, String) {
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(payload).await.unwrap();
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut stream = match grpc.streaming(request, path, RawCodec).await {
        Ok(response) => response.into_inner(),
        // Ended before any answer (trailers only).
        Err(status) => return (status.code(), status.message().to_string()),
    };
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return (tonic::Code::Ok, String::new()),
                Err(status) => return (status.code(), status.message().to_string()),
            }
        }
    })
    .await
    .expect("the stream ends");
    drop(tx);
    ended
}

#[tokio::test]
async fn unreadable_watch_requests_end_the_stream_as_etcd_does() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    // Field 1 (create_request) with a length running past the end: not a message.
    let garbage = vec![0x0a, 0x7f, 0x01, 0x02];
    let (code, message) = watch_raw(etcd.endpoint(), garbage.clone()).await;
    assert_eq!(code, tonic::Code::Internal, "{message}");
    assert_eq!(watch_raw(engram.endpoint(), garbage).await.0, code);
    // Over the limit (1.5 MiB + 512 KiB): etcd's exact words.
    let mut huge = Vec::new();
    let key = vec![b'k'; 3 << 20];
    prost::Message::encode(&create(std::str::from_utf8(&key).unwrap()), &mut huge).unwrap();
    let expected = watch_raw(etcd.endpoint(), huge.clone()).await;
    assert_eq!(expected.0, tonic::Code::ResourceExhausted, "{}", expected.1);
    assert_eq!(watch_raw(engram.endpoint(), huge).await, expected);
}

/// Sends bytes as they are, reads responses as bytes.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let out = buf.chunk().to_vec();
        buf.advance(out.len());
        Ok(Some(out))
    }
}

/// 1,000 watch streams on one connection, each watching one key: a put of every key reaches
/// every stream. Returns the events received.
async fn many_streams(endpoint: String) -> usize {
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut streams = Vec::new();
    let mut keep = Vec::new();
    for i in 0..1000 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(create(&format!("s/{i}"))).await.unwrap();
        let mut stream = WatchClient::new(channel.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().unwrap().created);
        streams.push(stream);
        keep.push(tx);
    }
    let mut kv = KvClient::new(channel);
    for i in 0..1000 {
        kv.put(PutRequest {
            key: Bytes::from(format!("s/{i}")),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut events = 0;
    for stream in &mut streams {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        events += resp.events.len();
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_on_one_connection() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    assert_eq!(many_streams(etcd.endpoint()).await, 1000);
    assert_eq!(many_streams(engram.endpoint()).await, 1000);
}
