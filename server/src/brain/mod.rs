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
mod forward;
mod history;
mod link;
mod move_leader;
mod read_index;
pub mod service;

pub use forward::LeaderRequest;
pub use history::BrainHistory;
pub use link::{LeaderLink, LinkError};

use ::watch::Hub;
use backend::StoreOptions;
use backend::engine::{AnyEngine, Condition};
use backend::kv::{KvError, KvResult};
use backend::mvcc::keys;
use election::{ElectionConfig, LeaderRecord, Leadership};
pub use move_leader::MoveLeaderError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

/// The store of a member, on whichever engine `--engine` chose.
pub type Store = backend::Store<AnyEngine>;

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

/// This member's current role.
#[derive(Clone)]
pub enum Role {
    /// No leader known: serializable reads only.
    Candidate {
        store: Store,
    },
    Leader {
        store: Store,
        term: u64,
    },
    Follower {
        store: Store,
        leader: Arc<LeaderLink>,
    },
}

impl Role {
    /// Where a write goes in this role; None while no leader is known.
    fn route(&self) -> Option<Route> {
        match self {
            Role::Leader { store, .. } => Some(Route::Local(store.clone())),
            Role::Follower { leader, .. } => Some(Route::Forward(leader.clone())),
            Role::Candidate { .. } => None,
        }
    }

    pub fn store(&self) -> &Store {
        match self {
            Role::Candidate { store }
            | Role::Leader { store, .. }
            | Role::Follower { store, .. } => store,
        }
    }
}

/// Where a write goes.
pub enum Route {
    Local(Store),
    Forward(Arc<LeaderLink>),
}

/// The tasks a brain runs.
pub struct BrainTasks {
    /// Campaigns, leads or watches the leader; when stopped, releases the lead first.
    pub election: tokio::task::JoinHandle<()>,
    /// Switches this member's role as the election decides.
    pub roles: tokio::task::JoinHandle<()>,
}

/// One member's state, shared by its gRPC services.
pub struct Brain {
    engine: AnyEngine,
    hub: Arc<Hub>,
    role: watch::Sender<Role>,
    options: BrainOptions,
    member_id: u64,
    /// Times the leader (member and term) changed as this member saw it.
    leader_changes: std::sync::atomic::AtomicU64,
    /// While set, the member replicates the etcd it migrates from (see `crate::migrate`): its
    /// store takes no client writes.
    replicating: AtomicBool,
    /// The source's newest revision as last heard, while replicating.
    source_revision: AtomicI64,
    /// The member MoveLeader asks this member's election to hand the lead to.
    handover: watch::Sender<u64>,
}

impl Brain {
    /// Opens the member on `engine` (as a candidate), and starts its election and the task
    /// that switches roles. Setting `stop` makes a leader release the lead.
    pub async fn start(
        engine: AnyEngine,
        options: BrainOptions,
        stop: watch::Receiver<bool>,
    ) -> KvResult<(Arc<Self>, BrainTasks)> {
        let store = Store::open_follower(engine.clone(), options.store.max_request_bytes).await?;
        let hub = Hub::new(store.revision(), options.window);
        let replicating = options.store.replicating;
        let brain = Arc::new(Brain {
            engine: engine.clone(),
            hub,
            role: watch::Sender::new(Role::Candidate { store }),
            member_id: options.election.member.id,
            options,
            leader_changes: Default::default(),
            replicating: AtomicBool::new(replicating),
            source_revision: AtomicI64::new(0),
            handover: watch::Sender::new(0),
        });
        let handover = brain.handover.subscribe();
        let (leadership, election) =
            election::start(engine, brain.options.election.clone(), stop, handover);
        let roles = tokio::spawn(brain.clone().switch_roles(leadership));
        Ok((brain, BrainTasks { election, roles }))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn engine(&self) -> &AnyEngine {
        &self.engine
    }

    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn roles(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The store reads are served from, whatever the role.
    pub fn store(&self) -> Store {
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

    /// Whether the member replicates the etcd it migrates from (and takes no writes).
    pub fn replicating(&self) -> bool {
        self.replicating.load(Ordering::Acquire)
    }

    /// Records the source's newest revision, as the replication last heard it.
    pub fn set_source_revision(&self, revision: i64) {
        self.source_revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// How many revisions the store is behind the source it replicates (`None` when it does
    /// not replicate).
    pub fn replication_lag(&self) -> Option<i64> {
        self.replicating().then(|| {
            let source = self.source_revision.load(Ordering::Acquire);
            (source - self.store().revision()).max(0)
        })
    }

    /// The member stops replicating and takes writes: from now on, and whenever it leads.
    pub fn end_replication(&self) {
        self.replicating.store(false, Ordering::Release);
        self.store().end_replication();
    }

    /// Where writes go now; waits up to about two election leases for a leader to be known.
    pub async fn route(&self) -> KvResult<Route> {
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
        let previous = self.store();
        let options = StoreOptions {
            listener: Some(self.hub.clone()),
            fence: Some(Condition {
                key: keys::brain_term(),
                expected: Some(election::encode_term(term)),
            }),
            replicating: self.replicating(),
            ..self.options.store.clone()
        };
        let store = Store::open(self.engine.clone(), options).await?;
        store.take_alarms_from(&previous);
        // What this member missed while following is in the store: its watchers read it from
        // there, and the log goes on after the store's revision.
        self.hub.restart_after(store.revision());
        tracing::info!(term, revision = store.revision(), "leading");
        self.role.send_replace(Role::Leader { store, term });
        Ok(())
    }

    /// A read-only store for a member that does not lead.
    async fn follower_store(&self) -> KvResult<Store> {
        let current = self.store();
        if current.is_follower() {
            return Ok(current);
        }
        let store =
            Store::open_follower(self.engine.clone(), self.options.store.max_request_bytes).await?;
        store.take_alarms_from(&current);
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

    async fn follow(
        &self,
        record: LeaderRecord,
    ) -> Result<tokio::task::JoinHandle<()>, FollowError> {
        let store = self.follower_store().await?;
        let link = Arc::new(LeaderLink::connect(
            record,
            self.options.client_tls.as_ref(),
        )?);
        tracing::info!(leader = %link.record.name, term = link.record.term, "following");
        let task = tokio::spawn(follow::run(self.hub.clone(), store.clone(), link.clone()));
        self.role.send_replace(Role::Follower {
            store,
            leader: link,
        });
        Ok(task)
    }
}

/// Why this member could not start following the leader.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Store(#[from] KvError),
    #[error(transparent)]
    Link(#[from] LinkError),
}
