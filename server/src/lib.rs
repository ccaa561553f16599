//! Engram's server: etcd's v3 gRPC API over Engram's MVCC store, as one member of a cluster
//! of stateless brains (one leader, any number of followers) over a shared engine.
//!
//! [`run`] is the `engram` binary; [`Member`] is one running member, which tests start several
//! of in one process over one engine.

pub mod brain;
pub mod config;
mod grpc_call;
mod header;
mod http;
pub mod local_cluster;
mod metrics;
mod service;
mod space;
mod status;
mod tls;
mod unknown_method;

use backend::StoreOptions;
use backend::engine::{BTreeEngine, Engine, LsmEngine, LsmOptions, MemoryEngine};
use brain::election::{ElectionConfig, MemberRecord};
use brain::{Brain, BrainOptions};
use config::{Command, Config, EngineKind};
use etcdpb::brainpb::brain_server::BrainServer;
// Watch answers with events encoded once and shared (wire-identical to etcd's WatchResponse).
use etcdpb::encoded::watch_server::WatchServer;
use etcdpb::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use etcdpb::health::health_server::HealthServer;
use futures::StreamExt;
use header::Identity;
use metrics::{GrpcMetricsLayer, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tower::layer::util::{Identity as NoLayer, Stack};
use unknown_method::UnknownMethodLayer;

/// Room gRPC allows beyond --max-request-bytes before refusing a message outright (etcd's
/// `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Largest response message sent (etcd: `grpc.MaxSendMsgSize(math.MaxInt32)`, 2 GiB).
const MAX_SEND_BYTES: usize = i32::MAX as usize;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `engram` with `config` until SIGINT/SIGTERM (or a listener fails).
pub async fn run(config: Config) -> Result<(), BoxError> {
    if let Some(Command::Restore {
        snapshot,
        data_dir,
        engine,
    }) = &config.command
    {
        return restore(snapshot, data_dir, *engine, &config).await;
    }
    match config.engine {
        EngineKind::Lsm => {
            let engine = LsmEngine::open_with(&config.data_dir, &lsm_options(&config))?;
            // Creation-time options may differ from the flags on an existing directory.
            tracing::info!(
                separates_values = engine.separates_values(),
                "lsm engine opened"
            );
            serve(config, Arc::new(engine)).await
        }
        EngineKind::Btree => {
            let engine = BTreeEngine::open(&config.data_dir, config.cache_size_mb << 20)?;
            serve(config, Arc::new(engine)).await
        }
        EngineKind::Memory => serve(config, Arc::new(MemoryEngine::new())).await,
        EngineKind::Tikv => serve_tikv(config).await,
    }
}

#[cfg(feature = "tikv")]
async fn serve_tikv(config: Config) -> Result<(), BoxError> {
    if config.pd_endpoints.is_empty() {
        return Err("--engine tikv needs --pd-endpoints host:port,...".into());
    }
    let prefix = bytes::Bytes::from(config.key_prefix.clone().into_bytes());
    let engine = backend::engine::TikvEngine::connect(config.pd_endpoints.clone(), prefix).await?;
    serve(config, Arc::new(engine)).await
}

#[cfg(not(feature = "tikv"))]
async fn serve_tikv(_config: Config) -> Result<(), BoxError> {
    Err("this engram was built without the TiKV engine (cargo feature `tikv`)".into())
}

/// The LSM engine's options from the flags.
fn lsm_options(config: &Config) -> LsmOptions {
    LsmOptions {
        cache_bytes: (config.cache_size_mb as u64) << 20,
        memtable_bytes: Some(config.memtable_size_mb << 20),
        separate_values_from: (config.value_separation_bytes > 0)
            .then_some(config.value_separation_bytes),
    }
}

/// `engram restore`: a snapshot file into a fresh data directory.
async fn restore(
    snapshot: &std::path::Path,
    data_dir: &std::path::Path,
    engine: EngineKind,
    config: &Config,
) -> Result<(), BoxError> {
    let file = std::io::BufReader::new(
        std::fs::File::open(snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?,
    );
    let entries = match engine {
        EngineKind::Lsm => {
            // The restored directory is created here, so it takes the creation-time options.
            let engine = LsmEngine::open_with(data_dir, &lsm_options(config))?;
            backend::snapshot::restore(&engine, file).await?
        }
        EngineKind::Btree => {
            let engine = BTreeEngine::open(data_dir, config.cache_size_mb << 20)?;
            backend::snapshot::restore(&engine, file).await?
        }
        EngineKind::Memory | EngineKind::Tikv => {
            return Err("restore writes a data directory: --engine lsm or btree".into());
        }
    };
    tracing::info!(entries, data_dir = %data_dir.display(), "snapshot restored");
    println!("restored {entries} entries into {}", data_dir.display());
    Ok(())
}

async fn serve<E: Engine + Clone>(config: Config, engine: E) -> Result<(), BoxError> {
    let mut member = Member::start(config, engine).await?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: handing over the lead first");
            member.shutdown().await;
        }
        result = member.serving() => result?,
    }
    tracing::info!("engram shut down");
    Ok(())
}

/// One running member: its brain, its listeners and its background tasks.
pub struct Member<E> {
    pub brain: Arc<Brain<E>>,
    /// The URLs clients reach this member at (ports chosen by the system filled in).
    pub client_urls: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
    servers: tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    lease: std::time::Duration,
}

impl<E: Engine + Clone> Member<E> {
    /// Binds every listener, starts the member's election and serves until
    /// [`Member::shutdown`]. Listen URLs with port 0 get a port from the system; the member
    /// then advertises that port (unless --advertise-client-urls says otherwise).
    pub async fn start(config: Config, engine: E) -> Result<Self, BoxError> {
        let tls = tls::server_config(&config)?;
        // Bind every listener before serving any, so that a client that reaches one finds all.
        let mut client_listeners = Vec::new();
        let mut client_urls = Vec::new();
        for url in &config.listen_client_urls {
            let listener = bind(url, &tls).await?;
            client_urls.push(bound_url(url, listener.local_addr()?));
            client_listeners.push((listener, url.clone()));
        }
        let mut metrics_listeners = Vec::new();
        for url in &config.listen_metrics_urls {
            metrics_listeners.push((bind(url, &tls).await?, url.clone()));
        }
        let advertised = if config.advertise_client_urls.is_empty() {
            client_urls.clone()
        } else {
            config.advertise_client_urls.clone()
        };
        let identity = Identity::new(&config.key_prefix, &config.name, &advertised);

        let options = BrainOptions {
            election: ElectionConfig {
                member: MemberRecord {
                    id: identity.member_id,
                    name: config.name.clone(),
                    client_urls: advertised.clone(),
                },
                lease: config.election_lease,
            },
            store: StoreOptions {
                max_batch: config.max_batch,
                max_request_bytes: config.max_request_bytes,
                ..StoreOptions::default()
            },
            window: watch::WindowLimits {
                events: config.watch_window_events,
                bytes: config.watch_window_mb.saturating_mul(1 << 20),
                idle_events: config.watch_window_idle_events,
                idle_bytes: config.watch_window_idle_mb.saturating_mul(1 << 20),
            },
            client_tls: tls::client_config(&config)?,
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (brain, mut tasks) = Brain::start(engine, options, stop_rx.clone()).await?;
        tasks.push(tokio::spawn(space::watch(
            brain.clone(),
            space::SpaceLimits {
                quota_bytes: config.quota_backend_bytes,
                min_free_bytes: config.space_alarm_min_free_bytes,
                data_dir: config.data_dir.clone(),
                interval: std::time::Duration::from_secs(1),
            },
        )));
        let watch_options = watch::StreamOptions {
            progress_interval: config.watch_progress_notify_interval,
            max_response_bytes: config.max_request_bytes + GRPC_OVERHEAD_BYTES,
            header: identity.header(),
        };
        let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let revision = {
            let brain = brain.clone();
            Arc::new(move || brain.store().revision())
        };
        let mut services = RoutesBuilder::default();
        services
            .add_service(
                KvServer::new(service::kv::KvService::new(
                    brain.clone(),
                    identity,
                    max_message,
                ))
                .max_decoding_message_size(max_message.saturating_mul(4).max(64 << 20))
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                WatchServer::new(service::watch::WatchService::new(
                    brain.clone(),
                    watch_options,
                    config.election_lease * 2,
                ))
                .max_encoding_message_size(MAX_SEND_BYTES),
            )
            .add_service(
                LeaseServer::new(service::lease::LeaseService::new(brain.clone(), identity))
                    .max_encoding_message_size(MAX_SEND_BYTES),
            )
            .add_service(
                MaintenanceServer::new(service::maintenance::MaintenanceService::new(
                    brain.clone(),
                    identity,
                ))
                .max_encoding_message_size(MAX_SEND_BYTES),
            )
            .add_service(
                ClusterServer::new(service::cluster::ClusterService::new(
                    identity,
                    brain.clone(),
                ))
                .max_encoding_message_size(MAX_SEND_BYTES),
            )
            .add_service(AuthServer::new(service::auth::AuthService::new(
                identity, revision,
            )))
            .add_service(HealthServer::new(service::health::HealthService::new(
                stop_rx.clone(),
            )))
            .add_service(
                BrainServer::new(brain::service::BrainService::new(brain.clone()))
                    .max_encoding_message_size(MAX_SEND_BYTES),
            );

        let metrics = Arc::new(Metrics::new(config.quota_backend_bytes)?);
        // Like etcd, each client port serves gRPC and the HTTP endpoints.
        let client_routes = http::add_routes(
            services.routes().into_axum_router(),
            brain.clone(),
            metrics.clone(),
        );
        let metrics_routes = http::add_routes(axum::Router::new(), brain.clone(), metrics.clone());
        let client_router =
            server_builder(&config, &metrics, SERVED).add_routes(Routes::from(client_routes));
        let metrics_router =
            server_builder(&config, &metrics, &[]).add_routes(Routes::from(metrics_routes));

        let mut servers = tokio::task::JoinSet::new();
        let listeners = client_listeners
            .into_iter()
            .map(|(l, url)| (l, url, "gRPC and HTTP", &client_router))
            .chain(
                metrics_listeners
                    .into_iter()
                    .map(|(l, url)| (l, url, "HTTP", &metrics_router)),
            );
        for (listener, url, what, router) in listeners {
            tracing::info!(%url, "serving {what}");
            let router = router.clone();
            let mut stopping = stop_rx.clone();
            let stopped = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            match listener {
                Listener::Plain(listener) => {
                    // Small responses must leave at once: without TCP_NODELAY, Nagle's
                    // algorithm holds them until the client's delayed ACK (about 40 ms).
                    let incoming = TcpListenerStream::new(listener).map(|conn| {
                        if let Ok(conn) = &conn {
                            let _ = conn.set_nodelay(true);
                        }
                        conn
                    });
                    servers.spawn(router.serve_with_incoming_shutdown(incoming, stopped))
                }
                Listener::Tls(listener, tls) => servers.spawn(
                    router.serve_with_incoming_shutdown(tls::incoming(listener, tls), stopped),
                ),
            };
        }
        Ok(Member {
            brain,
            client_urls,
            stop,
            servers,
            tasks,
            lease: config.election_lease,
        })
    }

    /// Waits until a listener fails (it never ends otherwise).
    pub async fn serving(&mut self) -> Result<(), BoxError> {
        while let Some(done) = self.servers.join_next().await {
            done??;
        }
        std::future::pending().await
    }

    /// Stops gracefully: a leader hands the lead over first (releases its record, so a
    /// follower takes over at once), then the listeners stop.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        // The election goes first (tasks[0]): it releases the lead, then the rest may stop.
        let grace = self.lease + std::time::Duration::from_secs(1);
        let mut tasks = self.tasks.drain(..);
        if let Some(election) = tasks.next()
            && tokio::time::timeout(grace, election).await.is_err()
        {
            tracing::warn!("the election did not stop in time");
        }
        for task in tasks {
            task.abort();
        }
        let drain = async { while self.servers.join_next().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            self.servers.abort_all();
        }
    }

    /// Stops this member's election without telling anyone, as if its process froze: it keeps
    /// serving as the leader it believes it is, while the others elect a new one. For tests of
    /// fencing.
    #[doc(hidden)]
    pub fn freeze_election(&mut self) {
        if let Some(election) = self.tasks.first() {
            election.abort();
        }
    }
}

/// `url` with the port the system chose for it.
fn bound_url(url: &str, addr: SocketAddr) -> String {
    let scheme = if url.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

type ServerLayers = Stack<UnknownMethodLayer, Stack<GrpcMetricsLayer, NoLayer>>;

/// The HTTP/2 settings etcd's clients and kube-apiserver rely on, with HTTP/1.1 accepted too,
/// for a port serving the gRPC services named in `served`.
fn server_builder(
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
        .layer(GrpcMetricsLayer::new(metrics.clone()))
        .layer(UnknownMethodLayer::new(served))
}

/// The gRPC services each client port serves.
const SERVED: &[&str] = &[
    etcdpb::etcdserverpb::kv_server::SERVICE_NAME,
    etcdpb::etcdserverpb::watch_server::SERVICE_NAME,
    etcdpb::etcdserverpb::lease_server::SERVICE_NAME,
    etcdpb::etcdserverpb::maintenance_server::SERVICE_NAME,
    etcdpb::etcdserverpb::cluster_server::SERVICE_NAME,
    etcdpb::etcdserverpb::auth_server::SERVICE_NAME,
    etcdpb::health::health_server::SERVICE_NAME,
    etcdpb::brainpb::brain_server::SERVICE_NAME,
];

enum Listener {
    Plain(TcpListener),
    Tls(TcpListener, Arc<tokio_rustls::rustls::ServerConfig>),
}

impl Listener {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Plain(l) | Listener::Tls(l, _) => l.local_addr(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn lsm_options_follow_the_flags() {
        let config = Config::try_parse_from([
            "engram",
            "--cache-size-mb",
            "8",
            "--memtable-size-mb",
            "32",
            "--value-separation-bytes",
            "512",
        ])
        .unwrap();
        assert_eq!(
            lsm_options(&config),
            LsmOptions {
                cache_bytes: 8 << 20,
                memtable_bytes: Some(32 << 20),
                separate_values_from: Some(512),
            }
        );
        let defaults = Config::try_parse_from(["engram"]).unwrap();
        assert_eq!(lsm_options(&defaults).separate_values_from, None);
        assert_eq!(lsm_options(&defaults).memtable_bytes, Some(64 << 20));
    }
}
