//! The brain: what role this member plays (leader or follower) and what that means for each
//! request.
//!
//! Every member runs an election (see [`election`]) over the shared engine. The leader opens the
//! store with a writer fenced by its term and feeds the member's watch [`Hub`] from its own
//! commits; a follower opens a read-only store, follows the leader's event log into its hub
//! ([`follow`]) and forwards writes to the leader ([`Route::Forward`]). The hub outlives role
//! changes, so watchers on a member carry on through a leader change: revisions the member
//! missed are read back from the store's history.

pub mod election;
pub mod follow;
pub mod service;

use ::watch::Hub;
use backend::engine::{Condition, Engine};
use backend::kv::{KvError, KvResult};
use backend::mvcc::keys;
use backend::{Store, StoreOptions};
use election::{ElectionConfig, LeaderRecord, Leadership};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// What a member needs to know to play either role.
#[derive(Clone)]
pub struct BrainOptions {
    pub election: ElectionConfig,
    /// Store options of the leader's store (the listener is the member's hub).
    pub store: StoreOptions,
    /// What the hub keeps in memory.
    pub window: ::watch::WindowLimits,
    /// TLS for talking to the leader when its URL is https.
    pub client_tls: Option<ClientTlsConfig>,
}

/// The leader as a follower reaches it.
pub struct LeaderLink {
    pub record: LeaderRecord,
    /// One HTTP/2 connection to the leader's client URL, shared by all forwarded calls.
    pub channel: Channel,
}

/// This member's current role.
#[derive(Clone)]
pub enum Role<E> {
    /// No leader known: serializable reads only.
    Candidate {
        store: Store<E>,
    },
    Leader {
        store: Store<E>,
        term: u64,
    },
    Follower {
        store: Store<E>,
        leader: Arc<LeaderLink>,
    },
}

impl<E> Role<E> {
    /// Where a write goes in this role; None while no leader is known.
    fn route(&self) -> Option<Route<E>> {
        match self {
            Role::Leader { store, .. } => Some(Route::Local(store.clone())),
            Role::Follower { leader, .. } => Some(Route::Forward(leader.clone())),
            Role::Candidate { .. } => None,
        }
    }

    pub fn store(&self) -> &Store<E> {
        match self {
            Role::Candidate { store }
            | Role::Leader { store, .. }
            | Role::Follower { store, .. } => store,
        }
    }
}

/// Where a write goes.
pub enum Route<E> {
    Local(Store<E>),
    Forward(Arc<LeaderLink>),
}

/// One member's state, shared by its gRPC services.
pub struct Brain<E> {
    engine: E,
    hub: Arc<Hub>,
    role: watch::Sender<Role<E>>,
    options: BrainOptions,
    member_id: u64,
    /// Times the leader (member and term) changed as this member saw it.
    leader_changes: std::sync::atomic::AtomicU64,
}

impl<E: Engine + Clone> Brain<E> {
    /// Opens the member on `engine` (as a candidate), and starts its election and the task
    /// that switches roles. Setting `stop` makes a leader release the lead.
    pub async fn start(
        engine: E,
        options: BrainOptions,
        stop: watch::Receiver<bool>,
    ) -> KvResult<(Arc<Self>, Vec<tokio::task::JoinHandle<()>>)> {
        let store = Store::open_follower(engine.clone(), options.store.max_request_bytes).await?;
        let hub = Hub::new(store.revision(), options.window);
        let brain = Arc::new(Brain {
            engine: engine.clone(),
            hub,
            role: watch::Sender::new(Role::Candidate { store }),
            member_id: options.election.member.id,
            options,
            leader_changes: Default::default(),
        });
        let (leadership, election) = election::start(engine, brain.options.election.clone(), stop);
        let roles = tokio::spawn(brain.clone().switch_roles(leadership));
        Ok((brain, vec![election, roles]))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    pub fn role(&self) -> Role<E> {
        self.role.borrow().clone()
    }

    pub fn roles(&self) -> watch::Receiver<Role<E>> {
        self.role.subscribe()
    }

    /// The store reads are served from, whatever the role.
    pub fn store(&self) -> Store<E> {
        self.role.borrow().store().clone()
    }

    /// The leader's member id and term, if one is known.
    pub fn leader(&self) -> Option<(u64, u64)> {
        match &*self.role.borrow() {
            Role::Leader { term, .. } => Some((self.member_id, *term)),
            Role::Follower { leader, .. } => Some((leader.record.member_id, leader.record.term)),
            Role::Candidate { .. } => None,
        }
    }

    /// How many times the leader changed since this member started (etcd's
    /// `leader_changes_seen_total`).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where writes go now; waits up to about two election leases for a leader to be known.
    pub async fn route(&self) -> KvResult<Route<E>> {
        if let Some(route) = self.role.borrow().route() {
            return Ok(route);
        }
        let mut roles = self.role.subscribe();
        let wait = self.options.election.lease * 2 + Duration::from_secs(1);
        let found = tokio::time::timeout(wait, roles.wait_for(|r| r.route().is_some())).await;
        match found {
            Ok(Ok(role)) => role.route().ok_or(KvError::NoLeader),
            _ => Err(KvError::NoLeader),
        }
    }

    /// The store to serve a read from. A serializable read takes this member's store as it is;
    /// a linearizable one must see every write acknowledged before it started: the leader's
    /// store has them all, and a follower first learns the leader's committed revision
    /// (ReadIndex) and waits until its own store has reached it.
    pub async fn read_store(&self, serializable: bool) -> KvResult<Store<E>> {
        if serializable {
            return Ok(self.store());
        }
        match self.route().await? {
            Route::Local(store) => Ok(store),
            Route::Forward(leader) => {
                let store = self.store();
                let mut client =
                    etcdpb::brainpb::brain_client::BrainClient::new(leader.channel.clone());
                let index = client
                    .read_index(etcdpb::brainpb::ReadIndexRequest {})
                    .await
                    .map_err(|status| {
                        tracing::debug!(%status, "ReadIndex failed");
                        KvError::NoLeader
                    })?
                    .into_inner();
                // Compaction makes no revision: take the leader's compacted revision as is.
                store.advance(0, index.compacted);
                let wait = self.options.election.lease * 2 + Duration::from_secs(1);
                tokio::time::timeout(wait, store.wait_for(index.revision))
                    .await
                    .map_err(|_| KvError::NoLeader)?;
                Ok(store)
            }
        }
    }

    /// Reacts to each change of leadership until the election stops.
    async fn switch_roles(self: Arc<Self>, mut leadership: watch::Receiver<Leadership>) {
        let mut follower: Option<tokio::task::JoinHandle<()>> = None;
        let mut last_leader = None;
        loop {
            let now = leadership.borrow_and_update().clone();
            let leader = match &now {
                Leadership::Leading { term } => Some((self.member_id, *term)),
                Leadership::Following { leader } => Some((leader.member_id, leader.term)),
                Leadership::Unknown => None,
            };
            if leader.is_some() && leader != last_leader {
                last_leader = leader;
                self.leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(task) = follower.take() {
                task.abort();
                let _ = task.await;
            }
            match now {
                Leadership::Leading { term } => match self.lead(term).await {
                    Ok(()) => {}
                    Err(err) => {
                        tracing::error!(%err, term, "opening the store as leader failed");
                        self.demote().await;
                    }
                },
                Leadership::Following { leader } => match self.follow(leader).await {
                    Ok(task) => follower = Some(task),
                    Err(err) => {
                        tracing::error!(%err, "following the leader failed");
                        self.demote().await;
                    }
                },
                Leadership::Unknown => self.demote().await,
            }
            // A leader whose write was fenced off learns it lost the lead before its
            // election does: it stops leading at once.
            let mut deposed = match self.role() {
                Role::Leader { store, .. } => Some(store.deposed()),
                _ => None,
            };
            let leading = deposed.is_some();
            let fenced = async {
                match deposed.as_mut() {
                    Some(deposed) => {
                        let _ = deposed.wait_for(|d| *d).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(fenced);
            tokio::select! {
                changed = leadership.changed() => {
                    if changed.is_ok() {
                        continue;
                    }
                    // The election ended. It says Unknown first when it stops normally, so
                    // this member already stepped down; if it died instead (a frozen
                    // process, in tests), the member stays as it is and fencing alone keeps
                    // its writes out.
                    if let Some(task) = follower.take() {
                        task.abort();
                    }
                    if !leading {
                        return;
                    }
                    (&mut fenced).await;
                }
                () = &mut fenced => {}
            }
            tracing::warn!("fenced off by a newer leader; stepping down");
            self.demote().await;
            if leadership.changed().await.is_err() {
                return;
            }
        }
    }

    async fn lead(&self, term: u64) -> KvResult<()> {
        let no_space = self.store().no_space();
        let options = StoreOptions {
            listener: Some(self.hub.clone()),
            fence: Some(Condition {
                key: keys::brain_term(),
                expected: Some(election::encode_term(term)),
            }),
            ..self.options.store.clone()
        };
        let store = Store::open(self.engine.clone(), options).await?;
        store.set_no_space(no_space);
        // What this member missed while following is in the store: its watchers read it from
        // there, and the log goes on after the store's revision.
        self.hub.restart_after(store.revision());
        tracing::info!(term, revision = store.revision(), "leading");
        self.role.send_replace(Role::Leader { store, term });
        Ok(())
    }

    /// A read-only store for a member that does not lead.
    async fn follower_store(&self) -> KvResult<Store<E>> {
        let current = self.store();
        if current.is_follower() {
            return Ok(current);
        }
        let store =
            Store::open_follower(self.engine.clone(), self.options.store.max_request_bytes).await?;
        store.set_no_space(current.no_space());
        Ok(store)
    }

    async fn demote(&self) {
        if matches!(*self.role.borrow(), Role::Candidate { .. }) {
            return;
        }
        match self.follower_store().await {
            Ok(store) => {
                self.role.send_replace(Role::Candidate { store });
            }
            Err(err) => tracing::error!(%err, "reopening the store read-only failed"),
        }
    }

    async fn follow(&self, record: LeaderRecord) -> KvResult<tokio::task::JoinHandle<()>> {
        let store = self.follower_store().await?;
        let url = record
            .client_urls
            .first()
            .cloned()
            .ok_or_else(|| KvError::Engine(storage("the leader has no client URL")))?;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| KvError::Engine(storage(&format!("leader URL {url}: {e}"))))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if url.starts_with("https://")
            && let Some(tls) = &self.options.client_tls
        {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| KvError::Engine(storage(&format!("TLS to {url}: {e}"))))?;
        }
        let link = Arc::new(LeaderLink {
            record,
            channel: endpoint.connect_lazy(),
        });
        tracing::info!(leader = %link.record.name, term = link.record.term, "following");
        let task = tokio::spawn(follow::run(self.hub.clone(), store.clone(), link.clone()));
        self.role.send_replace(Role::Follower {
            store,
            leader: link,
        });
        Ok(task)
    }
}

/// What a client hears when a call forwarded to the leader fails: the leader's own answer as
/// is, or, when the leader could not be reached or went away mid-call, etcd's `leader changed`
/// (Unavailable), which etcd clients and kube-apiserver know to retry.
pub fn forwarded(status: tonic::Status) -> tonic::Status {
    let from_leader = status.message().starts_with("etcdserver:")
        || status.message().starts_with("grpc:")
        || status.message().starts_with("mvcc:");
    if from_leader
        || !matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        )
    {
        return status;
    }
    tracing::debug!(%status, "forwarding to the leader failed");
    tonic::Status::unavailable("etcdserver: leader changed")
}

fn storage(message: &str) -> backend::engine::EngineError {
    backend::engine::EngineError::Storage(message.to_string())
}

/// The store's history for watchers, through whichever store the member has now.
pub struct BrainHistory<E>(pub Arc<Brain<E>>);

impl<E> Clone for BrainHistory<E> {
    fn clone(&self) -> Self {
        BrainHistory(self.0.clone())
    }
}

impl<E: Engine + Clone> ::watch::HistorySource for BrainHistory<E> {
    async fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> KvResult<(Vec<backend::CommittedRevision>, i64)> {
        self.0.store().history(from, to, max_events).await
    }

    fn compacted(&self) -> i64 {
        self.0.store().compacted()
    }

    fn compactions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.0.store().compactions()
    }
}
