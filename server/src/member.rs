//! One running member: its brain, its listeners and its background tasks, from start to a
//! graceful stop.

use crate::brain::election::{ElectionConfig, MemberRecord};
use crate::brain::{Brain, BrainOptions, BrainTasks};
use crate::config::{Command, Config, EngineKind};
use crate::error::BoxError;
use crate::header::Identity;
use crate::listen::{self, Listener};
use crate::metrics::Metrics;
use crate::routes::{self, SERVED};
use crate::{gateway, http, space, tls};
use backend::StoreOptions;
use backend::engine::AnyEngine;
use backend::store::space::{SpaceGuard, SpaceLimits};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

/// One running member.
pub struct Member {
    pub brain: Arc<Brain>,
    /// The URLs clients reach this member at (ports chosen by the system filled in).
    pub client_urls: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
    servers: tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
    tasks: Tasks,
    lease: Duration,
}

/// A member's background tasks.
struct Tasks {
    brain: BrainTasks,
    /// Watches the disk and the engine's faults (see [`space`]); ends when the member must
    /// restart.
    space: JoinHandle<String>,
}

impl Member {
    /// Binds every listener, starts the member's election and serves until
    /// [`Member::shutdown`]. Listen URLs with port 0 get a port from the system; the member
    /// then advertises that port (unless --advertise-client-urls says otherwise).
    pub async fn start(config: Config, engine: AnyEngine) -> Result<Self, BoxError> {
        Member::start_with(config, engine, axum::Router::new()).await
    }

    /// [`Member::start`], with `routes` added to the HTTP endpoints of each client port.
    pub async fn start_with(
        config: Config,
        engine: AnyEngine,
        routes: axum::Router,
    ) -> Result<Self, BoxError> {
        let tls = tls::server_config(&config)?;
        // Bind every listener before serving any, so that a client that reaches one finds all.
        let mut client_listeners = Vec::new();
        let mut client_urls = Vec::new();
        for url in &config.listen_client_urls {
            let listener = listen::bind(url, &tls).await?;
            client_urls.push(listen::bound_url(url, listener.local_addr()?));
            client_listeners.push((listener, url.clone()));
        }
        let mut metrics_listeners = Vec::new();
        for url in &config.listen_metrics_urls {
            metrics_listeners.push((listen::bind(url, &tls).await?, url.clone()));
        }
        let advertised = if config.advertise_client_urls.is_empty() {
            client_urls.clone()
        } else {
            config.advertise_client_urls.clone()
        };
        let identity = Identity::new(&config.key_prefix, &config.name, &advertised);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let space_guard = Arc::new(SpaceGuard::new(SpaceLimits {
            quota_bytes: config.quota_backend_bytes,
            min_free_bytes: config.space_alarm_min_free_bytes,
            data_dir: local_data_dir(&config),
        }));
        let (brain, brain_tasks) = Brain::start(
            engine,
            brain_options(&config, &identity, advertised, space_guard.clone())?,
            stopped.clone(),
        )
        .await?;
        let space = tokio::spawn(space::watch(
            brain.clone(),
            space_guard,
            local_data_dir(&config),
            Duration::from_secs(1),
        ));

        let metrics = Arc::new(Metrics::new(config.quota_backend_bytes)?);
        // Like etcd, each client port serves gRPC and the HTTP endpoints.
        let grpc = routes::grpc_services(&config, &brain, identity, stopped.clone())?;
        let grpc = grpc.into_axum_router();
        // Like etcd, the client port also answers the gRPC-JSON gateway's paths.
        let gateway = gateway::routes(&grpc, brain.clone());
        let client_routes = http::add_routes(
            grpc.merge(gateway).merge(routes),
            brain.clone(),
            metrics.clone(),
        );
        let metrics_routes = http::add_routes(axum::Router::new(), brain.clone(), metrics.clone());
        let client_router = routes::server_builder(&config, &metrics, SERVED)
            .add_routes(Routes::from(client_routes));
        let metrics_router =
            routes::server_builder(&config, &metrics, &[]).add_routes(Routes::from(metrics_routes));

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
            let mut stopping = stopped.clone();
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
            tasks: Tasks {
                brain: brain_tasks,
                space,
            },
            lease: config.election_lease,
        })
    }

    /// Waits until a listener fails, or the member must restart because its storage engine
    /// failed and the cause is gone (see [`space`]); it never ends otherwise.
    pub async fn serving(&mut self) -> Result<(), BoxError> {
        let listeners = async {
            while let Some(done) = self.servers.join_next().await {
                done??;
            }
            std::future::pending::<Result<(), BoxError>>().await
        };
        tokio::select! {
            result = listeners => result,
            restart = &mut self.tasks.space => match restart {
                Ok(reason) => Err(reason.into()),
                Err(err) => Err(format!("the storage watch failed: {err}").into()),
            },
        }
    }

    /// Stops gracefully: a leader hands the lead over first (releases its record, so a
    /// follower takes over at once), then the listeners stop.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        // The election releases the lead; the rest may stop once it has.
        let grace = self.lease + Duration::from_secs(1);
        if tokio::time::timeout(grace, &mut self.tasks.brain.election)
            .await
            .is_err()
        {
            tracing::warn!("the election did not stop in time");
        }
        self.tasks.brain.roles.abort();
        self.tasks.space.abort();
        let drain = async { while self.servers.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), drain)
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
        self.tasks.brain.election.abort();
    }
}

/// What the brain needs from the flags.
fn brain_options(
    config: &Config,
    identity: &Identity,
    advertised: Vec<String>,
    space: Arc<SpaceGuard>,
) -> Result<BrainOptions, BoxError> {
    Ok(BrainOptions {
        election: ElectionConfig {
            member: MemberRecord {
                id: identity.member_id,
                name: config.name.clone(),
                client_urls: advertised,
            },
            lease: config.election_lease,
        },
        store: StoreOptions {
            max_batch: config.max_batch,
            max_request_bytes: config.max_request_bytes,
            // `engram migrate` starts as a replica of the etcd it migrates from.
            replicating: matches!(config.command, Some(Command::Migrate(_))),
            space: Some(space),
            member_id: identity.member_id,
            ..StoreOptions::default()
        },
        window: watch::WindowLimits {
            events: config.watch_window_events,
            bytes: config.watch_window_mb.saturating_mul(1 << 20),
            idle_events: config.watch_window_idle_events,
            idle_bytes: config.watch_window_idle_mb.saturating_mul(1 << 20),
        },
        client_tls: tls::client_config(config)?,
    })
}

/// The data directory, where the engine keeps its files on a local disk (not on TiKV).
fn local_data_dir(config: &Config) -> Option<std::path::PathBuf> {
    (config.engine != EngineKind::Tikv).then(|| config.data_dir.clone())
}
