//! The Lease service: grant, revoke, keep-alive, time-to-live, list.

use crate::header::Identity;
use crate::status::from_kv;
use backend::Store;
use backend::engine::Engine;
use etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status, Streaming};

pub struct LeaseService<E> {
    store: Store<E>,
    identity: Identity,
    /// Source of server-chosen lease ids.
    next_id: AtomicU64,
}

impl<E: Engine> LeaseService<E> {
    pub fn new(store: Store<E>, identity: Identity) -> Self {
        // Seeded from the clock and the member, so ids chosen before and after a restart, or by
        // two members, do not collide in practice; a collision is retried anyway.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        LeaseService {
            store,
            identity,
            next_id: AtomicU64::new(nanos ^ identity.member_id.rotate_left(32)),
        }
    }

    fn choose_id(&self) -> i64 {
        loop {
            // A positive id from a well-mixed counter (splitmix64 step).
            let mut z = self
                .next_id
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let id = ((z ^ (z >> 31)) & (i64::MAX as u64)) as i64;
            if id != 0 && self.store.lease(id).is_none() {
                return id;
            }
        }
    }

    fn header(&self) -> Option<etcdpb::etcdserverpb::ResponseHeader> {
        let mut header = None;
        self.identity.fill(&mut header, self.store.revision());
        header
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<E: Engine> Lease for LeaseService<E> {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        let client_chose = req.id != 0;
        let mut id = if client_chose {
            req.id
        } else {
            self.choose_id()
        };
        let ttl = loop {
            match self.store.lease_grant(id, req.ttl).await {
                Ok(ttl) => break ttl,
                // Our own pick raced with another grant: pick again.
                Err(backend::kv::KvError::LeaseExists) if !client_chose => id = self.choose_id(),
                Err(err) => return Err(from_kv(err)),
            }
        };
        Ok(Response::new(LeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let revision = self
            .store
            .lease_revoke(req.into_inner().id)
            .await
            .map_err(from_kv)?;
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
        let store = self.store.clone();
        let identity = self.identity;
        let out = req
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()))
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
        let Some(lease) = self.store.lease(req.id) else {
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.header(),
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if req.keys {
            self.store.lease_keys(req.id).await.map_err(from_kv)?
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(),
            id: req.id,
            ttl: lease.remaining(Instant::now()),
            granted_ttl: lease.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(),
            leases: self
                .store
                .lease_ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }))
    }
}
