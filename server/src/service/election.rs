//! etcd's Election service (`v3electionpb.Election`), as etcd's `concurrency.Election` runs
//! an election (see [`recipes`](super::recipes)): the candidate whose key under `<name>/` was
//! created first leads, with the value of its key.

use super::recipes::{self, Recipes};
use crate::header::Identity;
use bytes::Bytes;
use etcdpb::etcdserverpb::{ResponseHeader, TxnRequest};
use etcdpb::mvccpb::event::EventType;
use etcdpb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Bytes of Observe responses buffered per stream.
const OBSERVE_BUFFER: usize = 16;

pub struct ElectionService {
    recipes: Arc<Recipes>,
    identity: Identity,
}

impl ElectionService {
    pub fn new(recipes: Arc<Recipes>, identity: Identity) -> Self {
        ElectionService { recipes, identity }
    }

    fn respond<R: etcdpb::header::WithHeader>(&self, resp: R) -> Response<R> {
        self.identity.respond(resp, 0)
    }
}

/// etcd's answers for the Election service's own failures: plain errors, which gRPC-go
/// sends as Unknown.
fn missing_leader_key() -> Status {
    Status::unknown(r#""leader" field must be provided"#)
}

fn not_leader() -> Status {
    Status::unknown("election: not leader")
}

fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl election_server::Election for ElectionService {
    /// Puts the candidate's key (or finds it, proclaiming the new value if it differs), then
    /// waits until every key created before it is deleted. A candidate that goes away while
    /// waiting resigns.
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let CampaignRequest { name, lease, value } = req.into_inner();
        let lease = recipes.session_lease(lease).await?;
        let prefix = recipes::prefix_of(&name);
        let key = recipes::key_of(&prefix, lease);
        let enter = TxnRequest {
            compare: vec![recipes::created_at(&key, 0)],
            success: vec![recipes::put_op(&key, value.clone(), lease)],
            failure: vec![recipes::range_op(recipes::get_key(&key))],
        };
        let resp = recipes.txn(enter).await?;
        let mut rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut leader = LeaderKey {
            name,
            key: key.clone(),
            rev,
            lease,
        };
        if !resp.succeeded {
            let existing = recipes::range_kvs(&resp, 0).first().cloned();
            if let Some(kv) = existing {
                rev = kv.create_revision;
                leader.rev = rev;
                if kv.value != value
                    && let Err(err) = proclaim(&recipes, &leader, value).await
                {
                    let _ = resign(&recipes, &leader).await;
                    return Err(err);
                }
            }
        }
        // Cancelled while waiting, the candidate resigns; failing otherwise, its key stays (as
        // etcd's Campaign leaves it).
        let waiting = Resigning::new(recipes.clone(), leader.clone());
        let waited = recipes.wait_deletes(&prefix, rev - 1).await;
        waiting.disarm();
        waited?;
        Ok(self.respond(CampaignResponse {
            header: resp.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let ProclaimRequest { leader, value } = req.into_inner();
        let leader = leader.ok_or_else(missing_leader_key)?;
        let header = proclaim(&recipes, &leader, value).await?;
        Ok(self.respond(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let prefix = recipes::prefix_of(&req.into_inner().name);
        let resp = recipes.get(&recipes::first_created(&prefix)).await?;
        let kv = resp.kvs.into_iter().next().ok_or_else(no_leader)?;
        Ok(self.respond(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    /// The leader now (or, with none, the first candidate to come), then every value it
    /// proclaims, then the next leader once its key is deleted, and so on.
    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let prefix = recipes::prefix_of(&req.into_inner().name);
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_BUFFER);
        let identity = self.identity;
        tokio::spawn(async move {
            let sent = observe(&recipes, &prefix, |mut resp: LeaderResponse| {
                identity.stamp(&mut resp, 0);
                let tx = tx.clone();
                async move { tx.send(Ok(resp)).await.is_ok() }
            })
            .await;
            if let Err(status) = sent {
                tracing::debug!(%status, "an election's observer ended");
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let recipes = self.recipes.for_caller(&req);
        let leader = req.into_inner().leader.ok_or_else(missing_leader_key)?;
        let header = resign(&recipes, &leader).await?;
        Ok(self.respond(ResignResponse { header }))
    }
}

/// The leader's new value, if `leader` still leads (its key still has its create revision).
async fn proclaim(
    recipes: &Recipes,
    leader: &LeaderKey,
    value: Bytes,
) -> Result<Option<ResponseHeader>, Status> {
    let txn = TxnRequest {
        compare: vec![recipes::created_at(&leader.key, leader.rev)],
        success: vec![recipes::put_op(&leader.key, value, leader.lease)],
        failure: Vec::new(),
    };
    let resp = recipes.txn(txn).await?;
    if !resp.succeeded {
        return Err(not_leader());
    }
    Ok(resp.header)
}

/// Deletes the leader's key if it is still the one `leader` names.
async fn resign(recipes: &Recipes, leader: &LeaderKey) -> Result<Option<ResponseHeader>, Status> {
    let txn = TxnRequest {
        compare: vec![recipes::created_at(&leader.key, leader.rev)],
        success: vec![recipes::delete_op(&leader.key)],
        failure: Vec::new(),
    };
    Ok(recipes.txn(txn).await?.header)
}

/// Sends what an observer of the election under `prefix` sees to `send` (etcd's
/// `Election.observe`), until `send` answers false or a read or watch fails.
async fn observe<F, Fut>(recipes: &Recipes, prefix: &Bytes, send: F) -> Result<(), Status>
where
    F: Fn(LeaderResponse) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        let resp = recipes.get(&recipes::first_created(prefix)).await?;
        let (header, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (resp.header, kv),
            None => {
                // No candidate: the first one put under the prefix leads.
                let from = resp.header.as_ref().map_or(0, |h| h.revision);
                let end = recipes::first_created(prefix).range_end;
                let mut watch = Box::pin(recipes.watch(prefix.clone(), end, from));
                let mut first = None;
                while first.is_none() {
                    let Some(resp) = watch.next().await else {
                        return Ok(());
                    };
                    let resp = resp?;
                    let put = resp
                        .events
                        .into_iter()
                        .find(|e| e.r#type() == EventType::Put);
                    if let Some(kv) = put.and_then(|e| e.kv) {
                        let mut header = resp.header.unwrap_or_default();
                        header.revision = kv.mod_revision;
                        first = Some((Some(header), kv));
                    }
                }
                first.unwrap_or_default()
            }
        };
        let from = header.as_ref().map_or(0, |h| h.revision) + 1;
        let key = kv.key.clone();
        if !send(LeaderResponse {
            header,
            kv: Some(kv),
        })
        .await
        {
            return Ok(());
        }
        // Each value the leader proclaims, until its key is deleted.
        let mut watch = Box::pin(recipes.watch(key, Bytes::new(), from));
        'leader: loop {
            let Some(resp) = watch.next().await else {
                return Ok(());
            };
            let resp = resp?;
            for event in resp.events {
                if event.r#type() == EventType::Delete {
                    break 'leader;
                }
                let update = LeaderResponse {
                    header: resp.header,
                    kv: event.kv,
                };
                if !send(update).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Resigns a candidate whose Campaign call ends before it leads (the client went away), as
/// etcd's Election does when its campaign's context is canceled.
struct Resigning {
    recipes: Option<Arc<Recipes>>,
    leader: LeaderKey,
}

impl Resigning {
    fn new(recipes: Arc<Recipes>, leader: LeaderKey) -> Self {
        Resigning {
            recipes: Some(recipes),
            leader,
        }
    }

    fn disarm(mut self) {
        self.recipes = None;
    }
}

impl Drop for Resigning {
    fn drop(&mut self) {
        if let Some(recipes) = self.recipes.take() {
            let leader = std::mem::take(&mut self.leader);
            tokio::spawn(async move {
                if let Err(err) = resign(&recipes, &leader).await {
                    tracing::warn!(%err, "resigning an abandoned campaign");
                }
            });
        }
    }
}
