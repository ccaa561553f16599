//! The Lease service: grant, revoke, keep-alive, time-to-live, list.

use crate::auth_info::{Authenticator, Credentials};
use crate::brain::{Brain, LeaderLink, LeaderRequest, Role, Route, Store};
use crate::header::Identity;
use crate::service::kv::AsCaller;
use crate::status::{forwarded, from_kv};
use backend::kv::{KvError, KvResult};
use etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader, lease_server::Lease,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status, Streaming};

/// Leases live in the leader's memory (deadlines) and store (records): a follower forwards
/// every lease call to the leader.
pub struct LeaseService {
    brain: Arc<Brain>,
    auth: Arc<Authenticator>,
    identity: Identity,
    ids: LeaseIds,
}

impl LeaseService {
    pub fn new(brain: Arc<Brain>, auth: Arc<Authenticator>, identity: Identity) -> Self {
        LeaseService {
            brain,
            auth,
            identity,
            ids: LeaseIds::new(identity.member_id),
        }
    }

    /// `resp` with this member's identity, and the revision it reads at unless it has one.
    fn respond<R: etcdpb::header::WithHeader>(&self, resp: R) -> Response<R> {
        self.identity.respond(resp, self.brain.store().revision())
    }

    fn as_caller<R, T>(&self, req: Request<R>, f: impl FnOnce(R) -> T) -> AsCaller<T> {
        AsCaller {
            credentials: Credentials::of(&req),
            req: f(req.into_inner()),
            auth: self.auth.clone(),
        }
    }
}

/// Source of server-chosen lease ids.
pub struct LeaseIds(AtomicU64);

impl LeaseIds {
    /// Seeded from the clock and the member, so ids chosen before and after a restart, or by
    /// two members, do not collide in practice; a collision is retried anyway.
    pub fn new(member_id: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        LeaseIds(AtomicU64::new(nanos ^ member_id.rotate_left(32)))
    }

    /// A positive id no live lease of `store` has.
    fn choose(&self, store: &Store) -> i64 {
        loop {
            // A positive id from a well-mixed counter (splitmix64 step).
            let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let id = ((z ^ (z >> 31)) & (i64::MAX as u64)) as i64;
            if id != 0 && store.lease(id).is_none() {
                return id;
            }
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // A grant needs no permission, but etcd authenticates the token a request carries
        // (none is fine) before it proposes the grant.
        self.auth
            .info_on(&Credentials::of(&req), &self.brain.store())?;
        let grant = Grant {
            req: req.into_inner(),
            ids: &self.ids,
        };
        Ok(self.respond(self.brain.on_leader(grant).await?))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = self.as_caller(req, |r| r);
        Ok(self.respond(self.brain.on_leader(req).await?))
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
                _ => return Err(from_kv(KvError::NoLeader)),
            },
            Route::Forward(leader) => {
                let out = leader
                    .lease()
                    .lease_keep_alive(inbound)
                    .await
                    .map_err(forwarded)?
                    .into_inner()
                    .map(move |resp| {
                        resp.map_err(forwarded).map(|mut resp| {
                            identity.stamp(&mut resp, 0);
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
                let mut resp = LeaseKeepAliveResponse {
                    header: None,
                    id: req.id,
                    ttl,
                };
                identity.stamp(&mut resp, store.revision());
                Ok(resp)
            });
        Ok(Response::new(Box::pin(out)))
    }

    /// An unknown (or expired) lease is answered with TTL -1, as etcd does.
    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = self.as_caller(req, |r| r);
        Ok(self.respond(self.brain.on_leader(req).await?))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(self.respond(self.brain.on_leader(req.into_inner()).await?))
    }
}

/// Grants a lease of `ttl` seconds with an id the server chooses (as LeaseGrant with id 0
/// does); returns its id.
pub async fn grant(brain: &Brain, ids: &LeaseIds, ttl: i64) -> Result<i64, Status> {
    let req = LeaseGrantRequest { ttl, id: 0 };
    Ok(brain.on_leader(Grant { req, ids }).await?.id)
}

/// A LeaseGrant, with where a server-chosen id comes from.
struct Grant<'a> {
    req: LeaseGrantRequest,
    ids: &'a LeaseIds,
}

impl LeaderRequest for Grant<'_> {
    type Response = LeaseGrantResponse;

    async fn local(self, store: Store) -> KvResult<LeaseGrantResponse> {
        let client_chose = self.req.id != 0;
        let mut id = if client_chose {
            self.req.id
        } else {
            self.ids.choose(&store)
        };
        let ttl = loop {
            match store.lease_grant(id, self.req.ttl).await {
                Ok(ttl) => break ttl,
                // Our own pick raced with another grant: pick again.
                Err(KvError::LeaseExists) if !client_chose => id = self.ids.choose(&store),
                Err(err) => return Err(err),
            }
        };
        Ok(LeaseGrantResponse {
            header: None,
            id,
            ttl,
            error: String::new(),
        })
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<LeaseGrantResponse>, Status> {
        leader.lease().lease_grant(self.req).await
    }
}

impl LeaderRequest for AsCaller<LeaseRevokeRequest> {
    type Response = LeaseRevokeResponse;

    /// The caller must be allowed to write every key attached to the lease.
    async fn local(self, store: Store) -> KvResult<LeaseRevokeResponse> {
        let info = self.auth.info(&self.credentials, store.auth())?;
        info.check_lease_keys(self.req.id, &store).await?;
        let revision = store.lease_revoke_as(self.req.id, info.authority()).await?;
        Ok(LeaseRevokeResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
        })
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = self.auth.attach(&self.credentials, self.req);
        leader.lease().lease_revoke(req).await
    }
}

impl LeaderRequest for AsCaller<LeaseTimeToLiveRequest> {
    type Response = LeaseTimeToLiveResponse;

    /// The caller must be allowed to read every key attached to the lease (as etcd 3.5.9 on).
    async fn local(self, store: Store) -> KvResult<LeaseTimeToLiveResponse> {
        let info = self.auth.info(&self.credentials, store.auth())?;
        info.check_lease_readable(self.req.id, &store).await?;
        let req = self.req;
        let Some(lease) = store.lease(req.id) else {
            return Ok(LeaseTimeToLiveResponse {
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let keys = if req.keys {
            store.lease_keys(req.id).await?
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: None,
            id: req.id,
            ttl: lease.remaining(Instant::now()),
            granted_ttl: lease.ttl,
            keys,
        })
    }

    async fn forward(
        self,
        leader: &LeaderLink,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = self.auth.attach(&self.credentials, self.req);
        leader.lease().lease_time_to_live(req).await
    }
}

impl LeaderRequest for LeaseLeasesRequest {
    type Response = LeaseLeasesResponse;

    async fn local(self, store: Store) -> KvResult<LeaseLeasesResponse> {
        Ok(LeaseLeasesResponse {
            header: None,
            leases: store
                .lease_ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        })
    }

    async fn forward(self, leader: &LeaderLink) -> Result<Response<LeaseLeasesResponse>, Status> {
        leader.lease().lease_leases(self).await
    }
}
