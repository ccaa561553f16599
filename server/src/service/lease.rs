//! The Lease service: grant, revoke, keep-alive, time-to-live, list.

use crate::brain::{Brain, Role, Route, forwarded};
use crate::header::Identity;
use crate::status::from_kv;
use backend::Store;
use backend::engine::Engine;
use etcdpb::etcdserverpb::lease_client::LeaseClient;
use etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status, Streaming};

/// Leases live in the leader's memory (deadlines) and store (records): a follower forwards
/// every lease call to the leader.
pub struct LeaseService<E> {
    brain: Arc<Brain<E>>,
    identity: Identity,
    /// Source of server-chosen lease ids.
    next_id: AtomicU64,
}

impl<E: Engine + Clone> LeaseService<E> {
    pub fn new(brain: Arc<Brain<E>>, identity: Identity) -> Self {
        // Seeded from the clock and the member, so ids chosen before and after a restart, or by
        // two members, do not collide in practice; a collision is retried anyway.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        LeaseService {
            brain,
            identity,
            next_id: AtomicU64::new(nanos ^ identity.member_id.rotate_left(32)),
        }
    }

    fn choose_id(&self, store: &Store<E>) -> i64 {
        loop {
            // A positive id from a well-mixed counter (splitmix64 step).
            let mut z = self
                .next_id
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let id = ((z ^ (z >> 31)) & (i64::MAX as u64)) as i64;
            if id != 0 && store.lease(id).is_none() {
                return id;
            }
        }
    }

    fn header(&self, store: &Store<E>) -> Option<etcdpb::etcdserverpb::ResponseHeader> {
        let mut header = None;
        self.identity.fill(&mut header, store.revision());
        header
    }

    /// The leader's store, or a client of the leader to forward to.
    async fn leader(
        &self,
    ) -> Result<Result<Store<E>, LeaseClient<tonic::transport::Channel>>, Status> {
        match self.brain.route().await.map_err(from_kv)? {
            Route::Local(store) => Ok(Ok(store)),
            Route::Forward(leader) => Ok(Err(LeaseClient::new(leader.channel.clone()))),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<E: Engine + Clone> Lease for LeaseService<E> {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        let store = match self.leader().await? {
            Ok(store) => store,
            Err(mut client) => {
                let mut resp = client
                    .lease_grant(req)
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                self.identity.fill(&mut resp.header, 0);
                return Ok(Response::new(resp));
            }
        };
        let client_chose = req.id != 0;
        let mut id = if client_chose {
            req.id
        } else {
            self.choose_id(&store)
        };
        let ttl = loop {
            match store.lease_grant(id, req.ttl).await {
                Ok(ttl) => break ttl,
                // Our own pick raced with another grant: pick again.
                Err(backend::kv::KvError::LeaseExists) if !client_chose => {
                    id = self.choose_id(&store)
                }
                Err(err) => return Err(from_kv(err)),
            }
        };
        Ok(Response::new(LeaseGrantResponse {
            header: self.header(&store),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = req.into_inner();
        let store = match self.leader().await? {
            Ok(store) => store,
            Err(mut client) => {
                let mut resp = client
                    .lease_revoke(req)
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                self.identity.fill(&mut resp.header, 0);
                return Ok(Response::new(resp));
            }
        };
        let revision = store.lease_revoke(req.id).await.map_err(from_kv)?;
        let mut header = None;
        self.identity.fill(&mut header, revision);
        Ok(Response::new(LeaseRevokeResponse { header }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request renews the lease and is answered with its TTL; an unknown lease is
    /// answered with TTL 0, as etcd does.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let identity = self.identity;
        let inbound = req
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let (store, term) = match self.brain.route().await.map_err(from_kv)? {
            Route::Local(store) => match self.brain.role() {
                Role::Leader { term, .. } => (store, term),
                _ => return Err(from_kv(backend::kv::KvError::NoLeader)),
            },
            Route::Forward(leader) => {
                let mut client = LeaseClient::new(leader.channel.clone());
                let out = client
                    .lease_keep_alive(inbound)
                    .await
                    .map_err(forwarded)?
                    .into_inner()
                    .map(move |resp| {
                        resp.map_err(forwarded).map(|mut resp| {
                            identity.fill(&mut resp.header, 0);
                            resp
                        })
                    });
                return Ok(Response::new(Box::pin(out)));
            }
        };
        // Renewals count only while this member still leads in the same term: a deposed
        // leader's lease table is stale.
        let roles = self.brain.roles();
        let out = inbound
            .take_while(move |_| {
                let leading =
                    matches!(&*roles.borrow(), Role::Leader { term: t, .. } if *t == term);
                futures::future::ready(leading)
            })
            .map(move |req| {
                let ttl = store.lease_keep_alive(req.id).unwrap_or(0);
                let mut header = None;
                identity.fill(&mut header, store.revision());
                Ok(LeaseKeepAliveResponse {
                    header,
                    id: req.id,
                    ttl,
                })
            });
        Ok(Response::new(Box::pin(out)))
    }

    /// An unknown (or expired) lease is answered with TTL -1, as etcd does.
    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let store = match self.leader().await? {
            Ok(store) => store,
            Err(mut client) => {
                let mut resp = client
                    .lease_time_to_live(req)
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                self.identity.fill(&mut resp.header, 0);
                return Ok(Response::new(resp));
            }
        };
        let Some(lease) = store.lease(req.id) else {
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.header(&store),
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if req.keys {
            store.lease_keys(req.id).await.map_err(from_kv)?
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(&store),
            id: req.id,
            ttl: lease.remaining(Instant::now()),
            granted_ttl: lease.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let store = match self.leader().await? {
            Ok(store) => store,
            Err(mut client) => {
                let mut resp = client
                    .lease_leases(req.into_inner())
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                self.identity.fill(&mut resp.header, 0);
                return Ok(Response::new(resp));
            }
        };
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(&store),
            leases: store
                .lease_ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }))
    }
}
