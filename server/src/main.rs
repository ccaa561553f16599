//! The `engram` binary: etcd's v3 gRPC API over Engram's MVCC store.

mod config;
mod header;
mod http;
mod hub_listener;
mod metrics;
mod service;
mod space;
mod status;
mod tls;

use backend::engine::{BTreeEngine, Engine, LsmEngine, MemoryEngine};
use backend::{Store, StoreOptions};
use clap::Parser;
use config::{Command, Config, EngineKind};
use etcdpb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use futures::StreamExt;
use header::Identity;
use hub_listener::HubListener;
use metrics::{GrpcMetricsLayer, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tower::layer::util::{Identity as NoLayer, Stack};

/// glibc's allocator spent ~17% of the server's CPU under write load (fragmentation of the
/// many short-lived request buffers); mimalloc is built for exactly that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Room gRPC allows beyond --max-request-bytes before refusing a message outright (etcd's
/// `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Largest response message sent (etcd: `grpc.MaxSendMsgSize(math.MaxInt32)`, 2 GiB).
const MAX_SEND_BYTES: usize = i32::MAX as usize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = run(config).await {
        tracing::error!(%err, "engram stopped");
        eprintln!("engram: {err}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), BoxError> {
    if let Some(Command::Restore {
        snapshot,
        data_dir,
        engine,
    }) = &config.command
    {
        return restore(snapshot, data_dir, *engine, config.cache_size_mb).await;
    }
    match config.engine {
        EngineKind::Lsm => {
            let cache = (config.cache_size_mb as u64) << 20;
            let engine = LsmEngine::open(&config.data_dir, cache)?;
            serve(config, engine).await
        }
        EngineKind::Btree => {
            let engine = BTreeEngine::open(&config.data_dir, config.cache_size_mb << 20)?;
            serve(config, engine).await
        }
        EngineKind::Memory => serve(config, MemoryEngine::new()).await,
    }
}

/// `engram restore`: a snapshot file into a fresh data directory.
async fn restore(
    snapshot: &std::path::Path,
    data_dir: &std::path::Path,
    engine: EngineKind,
    cache_size_mb: usize,
) -> Result<(), BoxError> {
    let file = std::io::BufReader::new(
        std::fs::File::open(snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?,
    );
    let entries = match engine {
        EngineKind::Lsm => {
            let engine = LsmEngine::open(data_dir, (cache_size_mb as u64) << 20)?;
            backend::snapshot::restore(&engine, file).await?
        }
        EngineKind::Btree => {
            let engine = BTreeEngine::open(data_dir, cache_size_mb << 20)?;
            backend::snapshot::restore(&engine, file).await?
        }
        EngineKind::Memory => return Err("restore needs a durable engine (lsm or btree)".into()),
    };
    tracing::info!(entries, data_dir = %data_dir.display(), "snapshot restored");
    println!("restored {entries} entries into {}", data_dir.display());
    Ok(())
}

async fn serve<E: Engine>(config: Config, engine: E) -> Result<(), BoxError> {
    let hub = Arc::new(HubListener::default());
    // Defaults for the options the flags do not set (none today; the backend may add some).
    #[allow(clippy::needless_update)]
    let options = StoreOptions {
        max_batch: config.max_batch,
        max_request_bytes: config.max_request_bytes,
        listener: Some(hub.clone()),
        ..StoreOptions::default()
    };
    let store = Store::open(engine, options).await?;
    let hub = hub.start(store.revision(), config.watch_window_events);
    tokio::spawn(space::watch(
        store.clone(),
        space::SpaceLimits {
            quota_bytes: config.quota_backend_bytes,
            min_free_bytes: config.space_alarm_min_free_bytes,
            data_dir: config.data_dir.clone(),
            interval: std::time::Duration::from_secs(1),
        },
    ));
    let advertised = config.advertised_urls();
    let identity = Identity::new(&config.name, &advertised);
    let watch_options = watch::StreamOptions {
        progress_interval: config.watch_progress_notify_interval,
        max_response_bytes: config.max_request_bytes + GRPC_OVERHEAD_BYTES,
        header: identity.header(),
    };
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;

    let revision = {
        let store = store.clone();
        Arc::new(move || store.revision())
    };
    let mut services = RoutesBuilder::default();
    services
        .add_service(
            KvServer::new(service::kv::KvService::new(
                store.clone(),
                identity,
                max_message,
            ))
            .max_decoding_message_size(max_message.saturating_mul(4).max(64 << 20))
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(service::watch::WatchService::new(
                hub,
                store.clone(),
                watch_options,
            ))
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(
            LeaseServer::new(service::lease::LeaseService::new(store.clone(), identity))
                .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(
            MaintenanceServer::new(service::maintenance::MaintenanceService::new(
                store.clone(),
                identity,
            ))
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(
            ClusterServer::new(service::cluster::ClusterService::new(
                identity,
                config.name.clone(),
                advertised,
            ))
            .max_encoding_message_size(MAX_SEND_BYTES),
        )
        .add_service(AuthServer::new(service::auth::AuthService::new(
            identity, revision,
        )));

    let metrics = Arc::new(Metrics::new()?);
    // Like etcd, each client port serves gRPC and the HTTP endpoints.
    let client_routes = http::add_routes(
        services.routes().into_axum_router(),
        store.clone(),
        metrics.clone(),
    );
    let metrics_routes = http::add_routes(axum::Router::new(), store.clone(), metrics.clone());
    let client_router = server_builder(&config, &metrics).add_routes(Routes::from(client_routes));
    let metrics_router = server_builder(&config, &metrics).add_routes(Routes::from(metrics_routes));

    let tls = tls::server_config(&config)?;
    // Bind every listener before serving any, so that a client that reaches one finds all.
    let mut listeners = Vec::new();
    for url in &config.listen_client_urls {
        listeners.push((bind(url, &tls).await?, url, "gRPC and HTTP", &client_router));
    }
    for url in &config.listen_metrics_urls {
        listeners.push((bind(url, &tls).await?, url, "HTTP", &metrics_router));
    }
    let mut servers = tokio::task::JoinSet::new();
    for (listener, url, what, router) in listeners {
        tracing::info!(%url, "serving {what}");
        let router = router.clone();
        match listener {
            Listener::Plain(listener) => {
                // Small responses must leave at once: without TCP_NODELAY, Nagle's algorithm
                // holds them until the client's delayed ACK (about 40 ms).
                let incoming = TcpListenerStream::new(listener).map(|conn| {
                    if let Ok(conn) = &conn {
                        let _ = conn.set_nodelay(true);
                    }
                    conn
                });
                servers.spawn(router.serve_with_incoming_shutdown(incoming, shutdown_signal()))
            }
            Listener::Tls(listener, tls) => servers.spawn(
                router
                    .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown_signal()),
            ),
        };
    }
    while let Some(done) = servers.join_next().await {
        done??;
    }
    tracing::info!("engram shut down");
    Ok(())
}

type ServerLayers = Stack<GrpcMetricsLayer, NoLayer>;

/// The HTTP/2 settings etcd's clients and kube-apiserver rely on, with HTTP/1.1 accepted too.
fn server_builder(config: &Config, metrics: &Arc<Metrics>) -> Server<ServerLayers> {
    Server::builder()
        .accept_http1(true)
        // etcd's --grpc-keepalive-interval/-timeout. Client pings are answered however often
        // they come (hyper has no ping policy to enforce, unlike grpc-go's 5s minimum).
        .http2_keepalive_interval(Some(config.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout))
        // etcd: math.MaxUint32 streams per connection (kube-apiserver multiplexes watches).
        .max_concurrent_streams(u32::MAX)
        .layer(GrpcMetricsLayer::new(metrics.clone()))
}

enum Listener {
    Plain(TcpListener),
    Tls(TcpListener, Arc<tokio_rustls::rustls::ServerConfig>),
}

async fn bind(
    url: &str,
    tls: &Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> Result<Listener, BoxError> {
    let (addr, secure) = parse_listen_url(url).await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listen on {url}: {e}"))?;
    if !secure {
        return Ok(Listener::Plain(listener));
    }
    match tls {
        Some(tls) => Ok(Listener::Tls(listener, tls.clone())),
        None => Err(format!("{url}: https needs --cert-file and --key-file").into()),
    }
}

/// `http://host:port` or `https://host:port` → a socket address, and whether it is TLS.
async fn parse_listen_url(url: &str) -> Result<(SocketAddr, bool), BoxError> {
    let (hostport, secure) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(format!("{url}: listen URLs look like http://127.0.0.1:2379").into());
    };
    let hostport = hostport.trim_end_matches('/');
    let addr = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok((addr, secure))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
