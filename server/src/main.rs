//! The `engram` binary: etcd's v3 gRPC API over Engram's MVCC store.

mod config;
mod header;
mod hub_listener;
mod service;
mod status;

use backend::engine::{EmbeddedEngine, Engine, MemoryEngine};
use backend::{Store, StoreOptions};
use clap::Parser;
use config::{Config, EngineKind};
use etcdpb::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use header::Identity;
use hub_listener::HubListener;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Room gRPC allows beyond --max-request-bytes before refusing a message outright (etcd's
/// `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

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
    match config.engine {
        EngineKind::Embedded => {
            let cache = config.cache_size_mb * 1024 * 1024;
            let engine = EmbeddedEngine::open(&config.data_dir, cache)?;
            serve(config, engine).await
        }
        EngineKind::Memory => serve(config, MemoryEngine::new()).await,
    }
}

async fn serve<E: Engine>(config: Config, engine: E) -> Result<(), BoxError> {
    let hub = Arc::new(HubListener::default());
    let options = StoreOptions {
        max_batch: config.max_batch,
        max_request_bytes: config.max_request_bytes,
        listener: Some(hub.clone()),
        ..StoreOptions::default()
    };
    let store = Store::open(engine, options).await?;
    let hub = hub.start(store.revision(), config.watch_window_events);
    let advertised = config.advertised_urls();
    let identity = Identity::new(&config.name, &advertised);
    let watch_options = watch::StreamOptions {
        progress_interval: config.watch_progress_notify_interval,
        max_response_bytes: config.max_request_bytes,
        header: identity.header(),
    };
    let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;

    let revision = {
        let store = store.clone();
        Arc::new(move || store.revision())
    };
    let router = tonic::transport::Server::builder()
        .add_service(
            KvServer::new(service::kv::KvService::new(
                store.clone(),
                identity,
                max_message,
            ))
            .max_decoding_message_size(max_message.saturating_mul(4).max(64 << 20))
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(WatchServer::new(service::watch::WatchService::new(
            hub,
            store.clone(),
            watch_options,
        )))
        .add_service(LeaseServer::new(service::lease::LeaseService::new(
            store.clone(),
            identity,
        )))
        .add_service(MaintenanceServer::new(
            service::maintenance::MaintenanceService::new(store.clone(), identity),
        ))
        .add_service(ClusterServer::new(service::cluster::ClusterService::new(
            identity,
            config.name.clone(),
            advertised,
            revision,
        )));

    let mut servers = tokio::task::JoinSet::new();
    for url in &config.listen_client_urls {
        let addr = parse_listen_url(url).await?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listen on {url}: {e}"))?;
        tracing::info!(%url, "serving etcd v3 gRPC");
        let router = router.clone();
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
                .await
        });
    }
    while let Some(done) = servers.join_next().await {
        done??;
    }
    tracing::info!("engram shut down");
    Ok(())
}

/// `http://host:port` → a socket address; TLS listeners come with the security work.
async fn parse_listen_url(url: &str) -> Result<SocketAddr, BoxError> {
    let hostport = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(format!("{url}: TLS listeners are not supported yet").into());
    } else {
        return Err(format!("{url}: listen URLs look like http://127.0.0.1:2379").into());
    };
    let hostport = hostport.trim_end_matches('/');
    tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address").into())
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
