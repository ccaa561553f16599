//! Protocol types of the etcd v3 gRPC API, as spoken by Engram.
//!
//! Engram re-implements etcd's v3 API so that unmodified etcd clients
//! (etcdctl, kube-apiserver, the `etcd-client` crate, ...) can talk to it.
//! This crate holds our own `.proto` definitions of that API (wire-identical
//! to etcd 3.5) and the Rust code generated from them at build time: prost
//! messages plus tonic clients and servers for the `KV`, `Watch`, `Lease`,
//! `Cluster`, `Maintenance` and `Auth` services, and the `Lock` and `Election`
//! services etcd serves beside them. All protobuf `bytes` fields
//! are `bytes::Bytes`, so keys and values are shared rather than copied.
//!
//! `brainpb` is Engram's own member-to-member service.
//!
//! The modules mirror the protobuf packages and are siblings so that
//! the generated cross-package paths (`super::mvccpb::KeyValue`) resolve.

/// Package `etcdserverpb`: the services and their request/response messages.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// Package `mvccpb`: `KeyValue` and watch `Event`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Package `authpb`: stored users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// Package `brainpb`: Engram's own service between the members of a cluster (the leader's
/// event log and ReadIndex); not part of etcd's API.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod brainpb {
    include!(concat!(env!("OUT_DIR"), "/brainpb.rs"));
}

/// Package `grpc.health.v1`: gRPC's standard health-checking service, which etcd serves.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// Package `v3lockpb`: etcd's server-side Lock service.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// Package `v3electionpb`: etcd's server-side Election service.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// etcd's Watch service answering with [`etcdserverpb::WatchResponseEncoded`]: the same gRPC
/// path (`/etcdserverpb.Watch/Watch`) and the same bytes on the wire as the generated
/// `etcdserverpb::watch_server`, but a server can encode each event once and hand the same
/// bytes to every watcher that receives it. Clients use `etcdserverpb::watch_client` and
/// decode plain `WatchResponse`s.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod encoded {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}

pub mod codec;
pub mod header;
pub mod methods;

impl From<etcdserverpb::WatchResponse> for etcdserverpb::WatchResponseEncoded {
    /// The same response with each event encoded (what the client receives is unchanged).
    fn from(resp: etcdserverpb::WatchResponse) -> Self {
        use prost::Message;
        etcdserverpb::WatchResponseEncoded {
            header: resp.header,
            watch_id: resp.watch_id,
            created: resp.created,
            canceled: resp.canceled,
            compact_revision: resp.compact_revision,
            cancel_reason: resp.cancel_reason,
            fragment: resp.fragment,
            events: resp
                .events
                .iter()
                .map(|e| bytes::Bytes::from(e.encode_to_vec()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Wire-format checks: the expected bytes are computed by hand from the
    //! etcd field numbers (tag byte = field_number << 3 | wire_type), so a
    //! wrong field number in the `.proto` files makes these tests fail.

    use super::authpb;
    use super::etcdserverpb::{
        self as pb, compare, request_op, response_op, watch_create_request, watch_request,
    };
    use super::mvccpb::{self, event};
    use bytes::Bytes;
    use prost::Message;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn enc<M: Message>(m: &M) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn range_request() {
        let req = pb::RangeRequest {
            key: b("a"),
            range_end: b("b"),
            limit: 5,
            ..Default::default()
        };
        assert_eq!(enc(&req), [0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 5]);

        let req = pb::RangeRequest {
            revision: 7,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Value as i32,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 1,
            max_mod_revision: 2,
            min_create_revision: 3,
            max_create_revision: 4,
            ..Default::default()
        };
        assert_eq!(
            enc(&req),
            [
                0x20, 7, // revision = 4
                0x28, 2, // sort_order = 5 (DESCEND)
                0x30, 4, // sort_target = 6 (VALUE)
                0x38, 1, // serializable = 7
                0x40, 1, // keys_only = 8
                0x48, 1, // count_only = 9
                0x50, 1, // min_mod_revision = 10
                0x58, 2, // max_mod_revision = 11
                0x60, 3, // min_create_revision = 12
                0x68, 4, // max_create_revision = 13
            ]
        );
    }

    #[test]
    fn put_request() {
        let req = pb::PutRequest {
            key: b("k"),
            value: b("v"),
            lease: 9,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        };
        assert_eq!(
            enc(&req),
            [
                0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 9, 0x20, 1, 0x28, 1, 0x30, 1
            ]
        );
    }

    #[test]
    fn key_value_and_range_response() {
        let kv = mvccpb::KeyValue {
            key: b("k"),
            create_revision: 2,
            mod_revision: 3,
            version: 4,
            value: b("v"),
            lease: 6,
        };
        let kv_bytes = [
            0x0a, 1, b'k', 0x10, 2, 0x18, 3, 0x20, 4, 0x2a, 1, b'v', 0x30, 6,
        ];
        assert_eq!(enc(&kv), kv_bytes);

        let resp = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            kvs: vec![kv],
            more: true,
            count: 10,
        };
        let mut want = vec![0x0a, 8, 0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4];
        want.extend([0x12, kv_bytes.len() as u8]);
        want.extend(kv_bytes);
        want.extend([0x18, 1, 0x20, 10]);
        assert_eq!(enc(&resp), want);
    }

    #[test]
    fn compare_with_range_end() {
        let cmp = pb::Compare {
            result: pb::compare::CompareResult::NotEqual as i32,
            target: pb::compare::CompareTarget::Mod as i32,
            key: b("a"),
            target_union: Some(compare::TargetUnion::ModRevision(5)),
            range_end: b("b"),
        };
        assert_eq!(
            enc(&cmp),
            [
                0x08, 3, // result = 1 (NOT_EQUAL)
                0x10, 2, // target = 2 (MOD)
                0x1a, 1, b'a', // key = 3
                0x30, 5, // mod_revision = 6
                0x82, 0x04, 1, b'b', // range_end = 64: tag (64 << 3 | 2) = 514 as varint
            ]
        );
        // The other target_union members.
        let cases: [(compare::TargetUnion, &[u8]); 5] = [
            (compare::TargetUnion::Version(1), &[0x20, 1]),
            (compare::TargetUnion::CreateRevision(1), &[0x28, 1]),
            (compare::TargetUnion::ModRevision(1), &[0x30, 1]),
            (compare::TargetUnion::Value(b("x")), &[0x3a, 1, b'x']),
            (compare::TargetUnion::Lease(1), &[0x40, 1]),
        ];
        for (tu, want) in cases {
            let cmp = pb::Compare {
                target_union: Some(tu),
                ..Default::default()
            };
            assert_eq!(enc(&cmp), want);
        }
    }

    #[test]
    fn txn_request_and_response() {
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b("a"),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: b("a"),
                    ..Default::default()
                })),
            }],
            failure: vec![
                pb::RequestOp {
                    request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                        key: b("a"),
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            prev_kv: true,
                            ..Default::default()
                        },
                    )),
                },
                pb::RequestOp {
                    request: Some(request_op::Request::RequestTxn(pb::TxnRequest::default())),
                },
            ],
        };
        assert_eq!(
            enc(&txn),
            [
                0x0a, 3, 0x1a, 1, b'a', // compare = 1 { key = 3 }
                0x12, 5, 0x12, 3, 0x0a, 1, b'a', // success = 2 { request_put = 2 }
                0x1a, 5, 0x0a, 3, 0x0a, 1, b'a', // failure = 3 { request_range = 1 }
                0x1a, 4, 0x1a, 2, 0x18, 1, // failure { delete_range = 3 { prev_kv = 3 } }
                0x1a, 2, 0x22, 0, // failure { request_txn = 4 {} }
            ]
        );

        let resp = pb::TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponseRange(
                        pb::RangeResponse::default(),
                    )),
                },
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponsePut(
                        pb::PutResponse::default(),
                    )),
                },
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(
                        pb::DeleteRangeResponse {
                            deleted: 2,
                            ..Default::default()
                        },
                    )),
                },
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(
                        pb::TxnResponse::default(),
                    )),
                },
            ],
        };
        assert_eq!(
            enc(&resp),
            [
                0x10, 1, // succeeded = 2
                0x1a, 2, 0x0a, 0, // responses = 3 { response_range = 1 }
                0x1a, 2, 0x12, 0, // { response_put = 2 }
                0x1a, 4, 0x1a, 2, 0x10, 2, // { response_delete_range = 3 { deleted = 2 } }
                0x1a, 2, 0x22, 0, // { response_txn = 4 }
            ]
        );
    }

    #[test]
    fn watch_request_create() {
        let req = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b("a"),
                    range_end: b("b"),
                    start_revision: 3,
                    progress_notify: true,
                    filters: vec![
                        watch_create_request::FilterType::Noput as i32,
                        watch_create_request::FilterType::Nodelete as i32,
                    ],
                    prev_kv: true,
                    watch_id: 7,
                    fragment: true,
                },
            )),
        };
        let inner = [
            0x0a, 1, b'a', // key = 1
            0x12, 1, b'b', // range_end = 2
            0x18, 3, // start_revision = 3
            0x20, 1, // progress_notify = 4
            0x2a, 2, 0, 1, // filters = 5, packed [NOPUT, NODELETE]
            0x30, 1, // prev_kv = 6
            0x38, 7, // watch_id = 7
            0x40, 1, // fragment = 8
        ];
        let mut want = vec![0x0a, inner.len() as u8];
        want.extend(inner);
        assert_eq!(enc(&req), want);

        let cancel = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                pb::WatchCancelRequest { watch_id: 4 },
            )),
        };
        assert_eq!(enc(&cancel), [0x12, 2, 0x08, 4]);

        let progress = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        };
        assert_eq!(enc(&progress), [0x1a, 0]);

        // And back: decoding recovers the oneof.
        let decoded = pb::WatchRequest::decode(want.as_slice()).unwrap();
        assert_eq!(decoded, req);
    }

    #[test]
    fn watch_response_with_events() {
        let resp = pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 1,
            created: true,
            canceled: true,
            compact_revision: 2,
            cancel_reason: "x".to_owned(),
            fragment: true,
            events: vec![mvccpb::Event {
                r#type: event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: b("k"),
                    ..Default::default()
                }),
                prev_kv: Some(mvccpb::KeyValue {
                    value: b("v"),
                    ..Default::default()
                }),
            }],
        };
        assert_eq!(
            enc(&resp),
            [
                0x0a, 2, 0x18, 9, // header = 1 { revision = 3 }
                0x10, 1, // watch_id = 2
                0x18, 1, // created = 3
                0x20, 1, // canceled = 4
                0x28, 2, // compact_revision = 5
                0x32, 1, b'x', // cancel_reason = 6
                0x38, 1, // fragment = 7
                0x5a, 12, // events = 11
                0x08, 1, // type = 1 (DELETE)
                0x12, 3, 0x0a, 1, b'k', // kv = 2 { key = 1 }
                0x1a, 3, 0x2a, 1, b'v', // prev_kv = 3 { value = 5 }
            ]
        );
    }

    /// `WatchResponseEncoded` is `WatchResponse` on the wire: the same bytes, either way.
    #[test]
    fn watch_response_encoded_is_wire_identical() {
        let put = mvccpb::Event {
            r#type: event::EventType::Put as i32,
            kv: Some(mvccpb::KeyValue {
                key: b("k"),
                create_revision: 2,
                mod_revision: 5,
                version: 3,
                value: Bytes::from(vec![7u8; 300]),
                lease: 0,
            }),
            prev_kv: Some(mvccpb::KeyValue {
                key: b("k"),
                create_revision: 2,
                mod_revision: 4,
                version: 2,
                value: b("old"),
                lease: 0,
            }),
        };
        let delete = mvccpb::Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: b("j"),
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let cases = [
            pb::WatchResponse {
                header: Some(pb::ResponseHeader {
                    cluster_id: 11,
                    member_id: 12,
                    revision: 5,
                    raft_term: 1,
                }),
                watch_id: 3,
                fragment: true,
                events: vec![put.clone(), delete.clone(), put],
                ..Default::default()
            },
            pb::WatchResponse {
                watch_id: -1,
                created: true,
                canceled: true,
                compact_revision: 9,
                cancel_reason: "mvcc: required revision has been compacted".to_owned(),
                ..Default::default()
            },
            pb::WatchResponse {
                events: vec![delete],
                ..Default::default()
            },
            pb::WatchResponse::default(),
        ];
        for resp in cases {
            let plain = enc(&resp);
            let encoded = pb::WatchResponseEncoded::from(resp.clone());
            assert_eq!(enc(&encoded), plain);
            assert_eq!(encoded.encoded_len(), plain.len());
            assert_eq!(pb::WatchResponse::decode(plain.as_slice()).unwrap(), resp);
            // The encoded events are each event's own encoding.
            for (bytes, event) in encoded.events.iter().zip(&resp.events) {
                assert_eq!(mvccpb::Event::decode(bytes.clone()).unwrap(), *event);
            }
        }
    }

    /// The encoded Watch server answers on etcd's path.
    #[test]
    fn encoded_watch_service_name() {
        use tonic::server::NamedService;
        assert_eq!(
            <super::encoded::watch_server::WatchServer<()> as NamedService>::NAME,
            "etcdserverpb.Watch"
        );
    }

    #[test]
    fn lease_messages() {
        assert_eq!(
            enc(&pb::LeaseGrantRequest { ttl: 10, id: 3 }),
            [0x08, 10, 0x10, 3]
        );
        assert_eq!(enc(&pb::LeaseKeepAliveRequest { id: 5 }), [0x08, 5]);
        assert_eq!(
            enc(&pb::LeaseKeepAliveResponse {
                header: None,
                id: 5,
                ttl: 30
            }),
            [0x10, 5, 0x18, 30]
        );
        assert_eq!(
            enc(&pb::LeaseTimeToLiveRequest { id: 5, keys: true }),
            [0x08, 5, 0x10, 1]
        );
        assert_eq!(
            enc(&pb::LeaseTimeToLiveResponse {
                header: None,
                id: 5,
                ttl: 4,
                granted_ttl: 10,
                keys: vec![b("k")],
            }),
            [0x10, 5, 0x18, 4, 0x20, 10, 0x2a, 1, b'k']
        );
    }

    #[test]
    fn status_response() {
        let resp = pb::StatusResponse {
            header: None,
            version: "3.5.0".to_owned(),
            db_size: 3,
            leader: 4,
            raft_index: 5,
            raft_term: 6,
            raft_applied_index: 7,
            errors: vec!["e".to_owned()],
            db_size_in_use: 9,
            is_learner: true,
        };
        assert_eq!(
            enc(&resp),
            [
                0x12, 5, b'3', b'.', b'5', b'.', b'0', // version = 2
                0x18, 3, // dbSize = 3
                0x20, 4, // leader = 4
                0x28, 5, // raftIndex = 5
                0x30, 6, // raftTerm = 6
                0x38, 7, // raftAppliedIndex = 7
                0x42, 1, b'e', // errors = 8
                0x48, 9, // dbSizeInUse = 9
                0x50, 1, // isLearner = 10
            ]
        );
    }

    #[test]
    fn member_and_auth() {
        let m = pb::Member {
            id: 1,
            name: "n".to_owned(),
            peer_ur_ls: vec!["p".to_owned()],
            client_ur_ls: vec!["c".to_owned()],
            is_learner: true,
        };
        assert_eq!(
            enc(&m),
            [
                0x08, 1, 0x12, 1, b'n', 0x1a, 1, b'p', 0x22, 1, b'c', 0x28, 1
            ]
        );

        let perm = authpb::Permission {
            perm_type: authpb::permission::Type::Readwrite as i32,
            key: b("a"),
            range_end: b("b"),
        };
        assert_eq!(enc(&perm), [0x08, 2, 0x12, 1, b'a', 0x1a, 1, b'b']);
        assert_eq!(
            enc(&pb::AuthStatusResponse {
                header: None,
                enabled: true,
                auth_revision: 3
            }),
            [0x10, 1, 0x18, 3]
        );
    }

    #[test]
    fn grpc_service_names() {
        use super::etcdserverpb::{
            auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
            lease_server::LeaseServer, maintenance_server::MaintenanceServer,
            watch_server::WatchServer,
        };
        use tonic::server::NamedService;

        assert_eq!(
            super::etcdserverpb::kv_server::SERVICE_NAME,
            "etcdserverpb.KV"
        );
        assert_eq!(<KvServer<()> as NamedService>::NAME, "etcdserverpb.KV");
        assert_eq!(
            <WatchServer<()> as NamedService>::NAME,
            "etcdserverpb.Watch"
        );
        assert_eq!(
            <LeaseServer<()> as NamedService>::NAME,
            "etcdserverpb.Lease"
        );
        assert_eq!(
            <ClusterServer<()> as NamedService>::NAME,
            "etcdserverpb.Cluster"
        );
        assert_eq!(
            <MaintenanceServer<()> as NamedService>::NAME,
            "etcdserverpb.Maintenance"
        );
        assert_eq!(<AuthServer<()> as NamedService>::NAME, "etcdserverpb.Auth");
    }

    /// A client transport that records the HTTP/2 path of every call and
    /// answers with an empty (hence invalid) gRPC response.
    #[derive(Clone, Default)]
    struct RecordPaths(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for RecordPaths {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            self.0.lock().unwrap().push(req.uri().path().to_owned());
            std::future::ready(Ok(tonic::codegen::http::Response::new(
                tonic::body::Body::empty(),
            )))
        }
    }

    /// Every rpc of etcd 3.5 is reachable under etcd's exact method path.
    #[tokio::test]
    async fn grpc_method_paths() {
        use super::etcdserverpb::{
            auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
            lease_client::LeaseClient, maintenance_client::MaintenanceClient,
            watch_client::WatchClient,
        };
        use tonic::codegen::http::Uri;

        let rec = RecordPaths::default();
        let origin = Uri::from_static("http://engram.test");

        let mut kv = KvClient::with_origin(rec.clone(), origin.clone());
        let _ = kv.range(pb::RangeRequest::default()).await;
        let _ = kv.put(pb::PutRequest::default()).await;
        let _ = kv.delete_range(pb::DeleteRangeRequest::default()).await;
        let _ = kv.txn(pb::TxnRequest::default()).await;
        let _ = kv.compact(pb::CompactionRequest::default()).await;

        let mut watch = WatchClient::with_origin(rec.clone(), origin.clone());
        let _ = watch.watch(tokio_stream::empty::<pb::WatchRequest>()).await;

        let mut lease = LeaseClient::with_origin(rec.clone(), origin.clone());
        let _ = lease.lease_grant(pb::LeaseGrantRequest::default()).await;
        let _ = lease.lease_revoke(pb::LeaseRevokeRequest::default()).await;
        let _ = lease
            .lease_keep_alive(tokio_stream::empty::<pb::LeaseKeepAliveRequest>())
            .await;
        let _ = lease
            .lease_time_to_live(pb::LeaseTimeToLiveRequest::default())
            .await;
        let _ = lease.lease_leases(pb::LeaseLeasesRequest::default()).await;

        let mut cluster = ClusterClient::with_origin(rec.clone(), origin.clone());
        let _ = cluster.member_add(pb::MemberAddRequest::default()).await;
        let _ = cluster
            .member_remove(pb::MemberRemoveRequest::default())
            .await;
        let _ = cluster
            .member_update(pb::MemberUpdateRequest::default())
            .await;
        let _ = cluster.member_list(pb::MemberListRequest::default()).await;
        let _ = cluster
            .member_promote(pb::MemberPromoteRequest::default())
            .await;

        let mut mnt = MaintenanceClient::with_origin(rec.clone(), origin.clone());
        let _ = mnt.alarm(pb::AlarmRequest::default()).await;
        let _ = mnt.status(pb::StatusRequest::default()).await;
        let _ = mnt.defragment(pb::DefragmentRequest::default()).await;
        let _ = mnt.hash(pb::HashRequest::default()).await;
        let _ = mnt.hash_kv(pb::HashKvRequest::default()).await;
        let _ = mnt.snapshot(pb::SnapshotRequest::default()).await;
        let _ = mnt.move_leader(pb::MoveLeaderRequest::default()).await;
        let _ = mnt.downgrade(pb::DowngradeRequest::default()).await;

        let mut auth = AuthClient::with_origin(rec.clone(), origin);
        let _ = auth.auth_enable(pb::AuthEnableRequest::default()).await;
        let _ = auth.auth_disable(pb::AuthDisableRequest::default()).await;
        let _ = auth.auth_status(pb::AuthStatusRequest::default()).await;
        let _ = auth.authenticate(pb::AuthenticateRequest::default()).await;
        let _ = auth.user_add(pb::AuthUserAddRequest::default()).await;
        let _ = auth.user_get(pb::AuthUserGetRequest::default()).await;
        let _ = auth.user_list(pb::AuthUserListRequest::default()).await;
        let _ = auth.user_delete(pb::AuthUserDeleteRequest::default()).await;
        let _ = auth
            .user_change_password(pb::AuthUserChangePasswordRequest::default())
            .await;
        let _ = auth
            .user_grant_role(pb::AuthUserGrantRoleRequest::default())
            .await;
        let _ = auth
            .user_revoke_role(pb::AuthUserRevokeRoleRequest::default())
            .await;
        let _ = auth.role_add(pb::AuthRoleAddRequest::default()).await;
        let _ = auth.role_get(pb::AuthRoleGetRequest::default()).await;
        let _ = auth.role_list(pb::AuthRoleListRequest::default()).await;
        let _ = auth.role_delete(pb::AuthRoleDeleteRequest::default()).await;
        let _ = auth
            .role_grant_permission(pb::AuthRoleGrantPermissionRequest::default())
            .await;
        let _ = auth
            .role_revoke_permission(pb::AuthRoleRevokePermissionRequest::default())
            .await;

        let paths = rec.0.lock().unwrap().clone();
        let want = [
            "/etcdserverpb.KV/Range",
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/DeleteRange",
            "/etcdserverpb.KV/Txn",
            "/etcdserverpb.KV/Compact",
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.Lease/LeaseGrant",
            "/etcdserverpb.Lease/LeaseRevoke",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            "/etcdserverpb.Lease/LeaseTimeToLive",
            "/etcdserverpb.Lease/LeaseLeases",
            "/etcdserverpb.Cluster/MemberAdd",
            "/etcdserverpb.Cluster/MemberRemove",
            "/etcdserverpb.Cluster/MemberUpdate",
            "/etcdserverpb.Cluster/MemberList",
            "/etcdserverpb.Cluster/MemberPromote",
            "/etcdserverpb.Maintenance/Alarm",
            "/etcdserverpb.Maintenance/Status",
            "/etcdserverpb.Maintenance/Defragment",
            "/etcdserverpb.Maintenance/Hash",
            "/etcdserverpb.Maintenance/HashKV",
            "/etcdserverpb.Maintenance/Snapshot",
            "/etcdserverpb.Maintenance/MoveLeader",
            "/etcdserverpb.Maintenance/Downgrade",
            "/etcdserverpb.Auth/AuthEnable",
            "/etcdserverpb.Auth/AuthDisable",
            "/etcdserverpb.Auth/AuthStatus",
            "/etcdserverpb.Auth/Authenticate",
            "/etcdserverpb.Auth/UserAdd",
            "/etcdserverpb.Auth/UserGet",
            "/etcdserverpb.Auth/UserList",
            "/etcdserverpb.Auth/UserDelete",
            "/etcdserverpb.Auth/UserChangePassword",
            "/etcdserverpb.Auth/UserGrantRole",
            "/etcdserverpb.Auth/UserRevokeRole",
            "/etcdserverpb.Auth/RoleAdd",
            "/etcdserverpb.Auth/RoleGet",
            "/etcdserverpb.Auth/RoleList",
            "/etcdserverpb.Auth/RoleDelete",
            "/etcdserverpb.Auth/RoleGrantPermission",
            "/etcdserverpb.Auth/RoleRevokePermission",
        ];
        assert_eq!(paths, want);
    }
}
