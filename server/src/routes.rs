//! What a port serves: the gRPC services of a client port and the HTTP/2 settings etcd's
//! clients rely on.

use crate::brain::Brain;
use crate::config::Config;
use crate::header::Identity;
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::service;
use crate::unknown_method::UnknownMethodLayer;
use etcdpb::brainpb::brain_server::BrainServer;
// Watch answers with events encoded once and shared (wire-identical to etcd's WatchResponse).
use etcdpb::encoded::watch_server::WatchServer;
use etcdpb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use etcdpb::health::health_server::HealthServer;
use etcdpb::v3electionpb::election_server::ElectionServer;
use etcdpb::v3lockpb::lock_server::LockServer;
use std::sync::Arc;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tower::layer::util::{Identity as NoLayer, Stack};

/// Room gRPC allows beyond --max-request-bytes before refusing a message outright (etcd's
/// `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Largest response message sent (etcd: `grpc.MaxSendMsgSize(math.MaxInt32)`, 2 GiB).
const MAX_SEND_BYTES: usize = i32::MAX as usize;

/// The gRPC services each client port serves.
pub const SERVED: &[&str] = &[
    etcdpb::etcdserverpb::kv_server::SERVICE_NAME,
    etcdpb::etcdserverpb::watch_server::SERVICE_NAME,
    etcdpb::etcdserverpb::lease_server::SERVICE_NAME,
    etcdpb::etcdserverpb::maintenance_server::SERVICE_NAME,
    etcdpb::etcdserverpb::cluster_server::SERVICE_NAME,
    etcdpb::etcdserverpb::auth_server::SERVICE_NAME,
    etcdpb::health::health_server::SERVICE_NAME,
    etcdpb::v3lockpb::lock_server::SERVICE_NAME,
    etcdpb::v3electionpb::election_server::SERVICE_NAME,
    etcdpb::brainpb::brain_server::SERVICE_NAME,
];

/// etcd's gRPC services (and the members' own) over `brain`, answering as `identity`.
/// `stopped` turns the health service to NOT_SERVING. Fails if `--auth-token` names keys that
/// cannot be used.
pub fn grpc_services(
    config: &Config,
    brain: &Arc<Brain>,
    identity: Identity,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Routes, crate::error::BoxError> {
    let watch_options = watch::StreamOptions {
        progress_interval: config.watch_progress_notify_interval,
        max_response_bytes: config.max_request_bytes + GRPC_OVERHEAD_BYTES,
        header: identity.header(),
        permit: None,
    };
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let auth = crate::auth_info::Authenticator::new(
        &config.auth_token,
        std::time::Duration::from_secs(config.auth_token_ttl),
        config.bcrypt_cost,
        brain.clone(),
    )
    .map_err(|err| format!("--auth-token: {err}"))?;
    let auth = Arc::new(auth);
    let recipes = Arc::new(service::recipes::Recipes::new(
        brain.clone(),
        auth.clone(),
        watch_options.clone(),
    ));
    let mut services = RoutesBuilder::default();
    services
        .add_service(
            KvServer::new(service::kv::KvService::new(
                brain.clone(),
                auth.clone(),
                identity,
                max_message,
            ))
            .max_decoding_message_size(max_message.saturating_mul(4).max(64 << 20))
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(service::watch::WatchService::new(
                brain.clone(),
                auth.clone(),
                watch_options,
                max_message,
                config.election_lease * 2,
            ))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(
            LeaseServer::new(service::lease::LeaseService::new(
                brain.clone(),
                auth.clone(),
                identity,
            ))
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(
            MaintenanceServer::new(service::maintenance::MaintenanceService::new(
                brain.clone(),
                auth.clone(),
                identity,
                backup_dir(config),
            ))
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(
            ClusterServer::new(service::cluster::ClusterService::new(
                identity,
                brain.clone(),
                auth.clone(),
            ))
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(AuthServer::new(service::auth::AuthService::new(
            brain.clone(),
            auth.clone(),
            identity,
        )))
        .add_service(HealthServer::new(service::health::HealthService::new(
            stopped,
        )))
        .add_service(LockServer::new(service::lock::LockService::new(
            recipes.clone(),
            identity,
        )))
        .add_service(ElectionServer::new(
            service::election::ElectionService::new(recipes, identity),
        ))
        .add_service(
            BrainServer::new(crate::brain::service::BrainService::new(brain.clone()))
                .max_encoding_message_size(MAX_SEND_BYTES),
        );
    Ok(services.routes())
}

/// Where snapshots are written before they are sent: beside the data when it is on local disk
/// (a snapshot is about as large as the data), else the system's temporary directory.
fn backup_dir(config: &Config) -> std::path::PathBuf {
    if config.data_dir.is_dir() {
        config.data_dir.clone()
    } else {
        std::env::temp_dir()
    }
}

pub type ServerLayers = Stack<UnknownMethodLayer, Stack<GrpcMetricsLayer, NoLayer>>;

/// The HTTP/2 settings etcd's clients and kube-apiserver rely on, with HTTP/1.1 accepted too,
/// for a port serving the gRPC services named in `served`.
pub fn server_builder(
    config: &Config,
    metrics: &Arc<Metrics>,
    served: &[&'static str],
) -> Server<ServerLayers> {
    Server::builder()
        .accept_http1(true)
        // etcd's --grpc-keepalive-interval/-timeout. Client pings are answered however often
        // they come (hyper has no ping policy to enforce, unlike grpc-go's 5s minimum).
        .http2_keepalive_interval(Some(config.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout))
        // etcd: math.MaxUint32 streams per connection (kube-apiserver multiplexes watches).
        .max_concurrent_streams(u32::MAX)
        // h2 ends a connection (GOAWAY ENHANCE_YOUR_CALM, "too_many_data_frames") once small
        // frames it has not handed to the server add up to half the connection window: with
        // hyper's 1 MiB window, ~2,500 WatchCreates pipelined on one stream. 16 MiB makes room
        // for ~40,000; watch streams read their requests as fast as they come (see
        // service/watch.rs).
        .initial_connection_window_size(16 << 20)
        // hyper's guard against a client provoking endless stream errors (tonic leaves none).
        .http2_max_local_error_reset_streams(Some(1024))
        .layer(GrpcMetricsLayer::new(metrics.grpc()))
        .layer(UnknownMethodLayer::new(served))
}
