//! etcd's gRPC-JSON gateway, on the client port: `POST /v3/kv/range` and the rest of etcd's
//! paths, with messages in proto3's JSON form as etcd's gateway writes them (fields by their
//! proto names, 64-bit integers as strings, bytes as base64, enums by name, defaults left
//! out; unknown fields ignored). Each request is made into the gRPC call it stands for and run
//! through the member's own gRPC router ([`call`]), so the gateway adds no second
//! implementation of anything. Streaming methods (Watch, LeaseKeepAlive, Snapshot, Observe)
//! read requests as a sequence of JSON objects from the body and answer one
//! `{"result": ...}` line per message, as grpc-gateway does.

mod call;
mod certificate;
mod handle;

use crate::brain::Brain;
use axum::Router;
use etcdpb::etcdserverpb as pb;
use etcdpb::{v3electionpb as election, v3lockpb as lock};
use handle::{Streaming, Unary};
use std::sync::Arc;

/// The gateway's routes, calling the gRPC services of `grpc`; `brain` tells whether
/// authentication is enabled (see [`certificate`]).
pub fn routes(grpc: &Router, brain: Arc<Brain>) -> Router {
    let unary = |path| Unary(grpc.clone(), path);
    let stream = |path| Streaming(grpc.clone(), path);
    Router::new()
        .route(
            "/v3/kv/range",
            unary("/etcdserverpb.KV/Range").of::<pb::RangeRequest, pb::RangeResponse>(),
        )
        .route(
            "/v3/kv/put",
            unary("/etcdserverpb.KV/Put").of::<pb::PutRequest, pb::PutResponse>(),
        )
        .route(
            "/v3/kv/deleterange",
            unary("/etcdserverpb.KV/DeleteRange")
                .of::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>(),
        )
        .route(
            "/v3/kv/txn",
            unary("/etcdserverpb.KV/Txn").of::<pb::TxnRequest, pb::TxnResponse>(),
        )
        .route(
            "/v3/kv/compaction",
            unary("/etcdserverpb.KV/Compact").of::<pb::CompactionRequest, pb::CompactionResponse>(),
        )
        .route(
            "/v3/watch",
            stream("/etcdserverpb.Watch/Watch").of::<pb::WatchRequest, pb::WatchResponse>(),
        )
        .route(
            "/v3/lease/grant",
            unary("/etcdserverpb.Lease/LeaseGrant")
                .of::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>(),
        )
        .route(
            "/v3/lease/revoke",
            unary("/etcdserverpb.Lease/LeaseRevoke")
                .of::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>(),
        )
        .route(
            "/v3/kv/lease/revoke",
            unary("/etcdserverpb.Lease/LeaseRevoke")
                .of::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>(),
        )
        .route(
            "/v3/lease/keepalive",
            stream("/etcdserverpb.Lease/LeaseKeepAlive")
                .of::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>(),
        )
        .route(
            "/v3/lease/timetolive",
            unary("/etcdserverpb.Lease/LeaseTimeToLive")
                .of::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>(),
        )
        .route(
            "/v3/kv/lease/timetolive",
            unary("/etcdserverpb.Lease/LeaseTimeToLive")
                .of::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>(),
        )
        .route(
            "/v3/lease/leases",
            unary("/etcdserverpb.Lease/LeaseLeases")
                .of::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>(),
        )
        .route(
            "/v3/kv/lease/leases",
            unary("/etcdserverpb.Lease/LeaseLeases")
                .of::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>(),
        )
        .route(
            "/v3/cluster/member/add",
            unary("/etcdserverpb.Cluster/MemberAdd")
                .of::<pb::MemberAddRequest, pb::MemberAddResponse>(),
        )
        .route(
            "/v3/cluster/member/remove",
            unary("/etcdserverpb.Cluster/MemberRemove")
                .of::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>(),
        )
        .route(
            "/v3/cluster/member/update",
            unary("/etcdserverpb.Cluster/MemberUpdate")
                .of::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>(),
        )
        .route(
            "/v3/cluster/member/list",
            unary("/etcdserverpb.Cluster/MemberList")
                .of::<pb::MemberListRequest, pb::MemberListResponse>(),
        )
        .route(
            "/v3/cluster/member/promote",
            unary("/etcdserverpb.Cluster/MemberPromote")
                .of::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>(),
        )
        .route(
            "/v3/maintenance/alarm",
            unary("/etcdserverpb.Maintenance/Alarm").of::<pb::AlarmRequest, pb::AlarmResponse>(),
        )
        .route(
            "/v3/maintenance/status",
            unary("/etcdserverpb.Maintenance/Status").of::<pb::StatusRequest, pb::StatusResponse>(),
        )
        .route(
            "/v3/maintenance/defragment",
            unary("/etcdserverpb.Maintenance/Defragment")
                .of::<pb::DefragmentRequest, pb::DefragmentResponse>(),
        )
        .route(
            "/v3/maintenance/hash",
            unary("/etcdserverpb.Maintenance/Hash").of::<pb::HashRequest, pb::HashResponse>(),
        )
        .route(
            "/v3/maintenance/hashkv",
            unary("/etcdserverpb.Maintenance/HashKV").of::<pb::HashKvRequest, pb::HashKvResponse>(),
        )
        .route(
            "/v3/maintenance/snapshot",
            stream("/etcdserverpb.Maintenance/Snapshot")
                .of::<pb::SnapshotRequest, pb::SnapshotResponse>(),
        )
        .route(
            "/v3/maintenance/transfer-leadership",
            unary("/etcdserverpb.Maintenance/MoveLeader")
                .of::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>(),
        )
        .route(
            "/v3/maintenance/downgrade",
            unary("/etcdserverpb.Maintenance/Downgrade")
                .of::<pb::DowngradeRequest, pb::DowngradeResponse>(),
        )
        .route(
            "/v3/auth/enable",
            unary("/etcdserverpb.Auth/AuthEnable")
                .of::<pb::AuthEnableRequest, pb::AuthEnableResponse>(),
        )
        .route(
            "/v3/auth/disable",
            unary("/etcdserverpb.Auth/AuthDisable")
                .of::<pb::AuthDisableRequest, pb::AuthDisableResponse>(),
        )
        .route(
            "/v3/auth/status",
            unary("/etcdserverpb.Auth/AuthStatus")
                .of::<pb::AuthStatusRequest, pb::AuthStatusResponse>(),
        )
        .route(
            "/v3/auth/authenticate",
            unary("/etcdserverpb.Auth/Authenticate")
                .of::<pb::AuthenticateRequest, pb::AuthenticateResponse>(),
        )
        .route(
            "/v3/auth/user/add",
            unary("/etcdserverpb.Auth/UserAdd")
                .of::<pb::AuthUserAddRequest, pb::AuthUserAddResponse>(),
        )
        .route(
            "/v3/auth/user/get",
            unary("/etcdserverpb.Auth/UserGet")
                .of::<pb::AuthUserGetRequest, pb::AuthUserGetResponse>(),
        )
        .route(
            "/v3/auth/user/list",
            unary("/etcdserverpb.Auth/UserList")
                .of::<pb::AuthUserListRequest, pb::AuthUserListResponse>(),
        )
        .route(
            "/v3/auth/user/delete",
            unary("/etcdserverpb.Auth/UserDelete")
                .of::<pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse>(),
        )
        .route(
            "/v3/auth/user/changepw",
            unary("/etcdserverpb.Auth/UserChangePassword")
                .of::<pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse>(),
        )
        .route(
            "/v3/auth/user/grant",
            unary("/etcdserverpb.Auth/UserGrantRole")
                .of::<pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse>(),
        )
        .route(
            "/v3/auth/user/revoke",
            unary("/etcdserverpb.Auth/UserRevokeRole")
                .of::<pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse>(),
        )
        .route(
            "/v3/auth/role/add",
            unary("/etcdserverpb.Auth/RoleAdd")
                .of::<pb::AuthRoleAddRequest, pb::AuthRoleAddResponse>(),
        )
        .route(
            "/v3/auth/role/get",
            unary("/etcdserverpb.Auth/RoleGet")
                .of::<pb::AuthRoleGetRequest, pb::AuthRoleGetResponse>(),
        )
        .route(
            "/v3/auth/role/list",
            unary("/etcdserverpb.Auth/RoleList")
                .of::<pb::AuthRoleListRequest, pb::AuthRoleListResponse>(),
        )
        .route(
            "/v3/auth/role/delete",
            unary("/etcdserverpb.Auth/RoleDelete")
                .of::<pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse>(),
        )
        .route(
            "/v3/auth/role/grant",
            unary("/etcdserverpb.Auth/RoleGrantPermission")
                .of::<pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse>(),
        )
        .route(
            "/v3/auth/role/revoke",
            unary("/etcdserverpb.Auth/RoleRevokePermission")
                .of::<pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse>(),
        )
        .route(
            "/v3/lock/lock",
            unary("/v3lockpb.Lock/Lock").of::<lock::LockRequest, lock::LockResponse>(),
        )
        .route(
            "/v3/lock/unlock",
            unary("/v3lockpb.Lock/Unlock").of::<lock::UnlockRequest, lock::UnlockResponse>(),
        )
        .route(
            "/v3/election/campaign",
            unary("/v3electionpb.Election/Campaign")
                .of::<election::CampaignRequest, election::CampaignResponse>(),
        )
        .route(
            "/v3/election/proclaim",
            unary("/v3electionpb.Election/Proclaim")
                .of::<election::ProclaimRequest, election::ProclaimResponse>(),
        )
        .route(
            "/v3/election/leader",
            unary("/v3electionpb.Election/Leader")
                .of::<election::LeaderRequest, election::LeaderResponse>(),
        )
        .route(
            "/v3/election/observe",
            stream("/v3electionpb.Election/Observe")
                .of::<election::LeaderRequest, election::LeaderResponse>(),
        )
        .route(
            "/v3/election/resign",
            unary("/v3electionpb.Election/Resign")
                .of::<election::ResignRequest, election::ResignResponse>(),
        )
        .route_layer(axum::middleware::from_fn(move |request, next| {
            certificate::refuse_named(brain.clone(), request, next)
        }))
}
