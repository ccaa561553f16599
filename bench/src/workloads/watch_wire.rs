//! The watch stream as the load generator reads it: only the fields it measures.
//!
//! A watch benchmark at 10,000 watchers moves millions of events a second through a client
//! that shares the machine with the server. Decoding every event into etcd's full
//! `WatchResponse` (keys, revisions, headers) made the client the largest consumer of CPU in
//! the run, starving the server it measures. These messages carry the same field numbers as
//! etcd's; protobuf skips the fields they leave out, and the value arrives as a slice of the
//! receive buffer, not a copy. Both servers of a `--compare` run are read the same way.

use bytes::Bytes;
use etcdpb::etcdserverpb::WatchRequest;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use super::ctx::{Conn, MAX_MESSAGE};

/// `etcdserverpb.WatchResponse`, without the header, compact revision and fragment flag.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event`, without its type and previous key-value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

/// `mvccpb.KeyValue`: the value only (it starts with the put's send time).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
}

/// Opens `etcdserverpb.Watch/Watch` on `channel`, sending `requests`.
pub async fn watch<S>(channel: Conn, requests: S) -> Result<Streaming<WatchResponse>, Status>
where
    S: tokio_stream::Stream<Item = WatchRequest> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("watch channel not ready: {e}")))?;
    let codec = ProstCodec::<WatchRequest, WatchResponse>::default();
    let path = PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let response = grpc
        .streaming(tonic::Request::new(requests), path, codec)
        .await?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The lite messages read what etcd's full messages wrote, skipping the rest.
    #[test]
    fn reads_etcd_watch_responses() {
        let full = etcdpb::etcdserverpb::WatchResponse {
            header: Some(etcdpb::etcdserverpb::ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            watch_id: 7,
            created: false,
            canceled: true,
            compact_revision: 3,
            cancel_reason: "compacted".into(),
            fragment: true,
            events: vec![etcdpb::mvccpb::Event {
                r#type: 0,
                kv: Some(etcdpb::mvccpb::KeyValue {
                    key: Bytes::from_static(b"k"),
                    create_revision: 1,
                    mod_revision: 42,
                    version: 2,
                    value: Bytes::from_static(b"\0\0\0\0\0\0\0\x01payload"),
                    lease: 9,
                }),
                prev_kv: Some(etcdpb::mvccpb::KeyValue::default()),
            }],
        };
        let lite = WatchResponse::decode(Bytes::from(full.encode_to_vec())).unwrap();
        assert_eq!(lite.watch_id, 7);
        assert!(lite.canceled && !lite.created);
        assert_eq!(lite.cancel_reason, "compacted");
        assert_eq!(lite.events.len(), 1);
        let kv = lite.events[0].kv.as_ref().unwrap();
        assert_eq!(&kv.value[..], b"\0\0\0\0\0\0\0\x01payload");
    }
}
